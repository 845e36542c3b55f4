/**
 * The register file of an MMIO transport as data: one row per 32-bit control register, and a dense
 * dispatch table indexed by `offset >> 2` built from the rows once (per layout version, and per
 * profile that adds or overrides rows).
 *
 * ```
 * control area 0x000..0x0ff: 64 slots of 4 bytes, slot = offset >> 2
 *   slot:  0 MagicValue | 1 Version | 2 DeviceID | 3 VendorID | 4 DeviceFeatures | ...
 *   an empty slot is an offset the layout does not describe (4.2.2.2: "The driver MUST NOT access
 *   memory locations not described in the table")
 * config area 0x100..: device-specific configuration space, not in the table
 * ```
 *
 * A row says what the spec says of the register: its name, its direction (R, W or RW) and what a
 * read or a write does. The direction is checked against the handlers when the table is built, so
 * the "read of a write-only register" and "write of a read-only register" guest errors, and the
 * tests for them, come from the same rows as the dispatch.
 *
 * @packageDocumentation
 */

import { hex, MmioReg, VirtioError } from '../spec/index.js';

/** Size of the control register area; device-specific configuration starts here (4.2.2). */
export const CONTROL_AREA_SIZE = MmioReg.Config;

/** Number of 32-bit slots in the control area: the length of a {@link RegisterTable}. */
export const REGISTER_SLOTS = CONTROL_AREA_SIZE >>> 2;

/** Direction of a register as the spec's layout table gives it (4.2.2: R, W or RW). */
export type RegisterAccess = 'r' | 'w' | 'rw';

/**
 * One 32-bit control register. `T` is what the handlers act on (the transport). A row has a `read`
 * handler exactly when `access` includes `r`, and a `write` handler exactly when it includes `w`.
 * Handlers are called only for 32-bit aligned accesses at `offset`; `value` is an unsigned 32-bit
 * integer. Handlers must not throw for any guest-chosen value.
 */
export interface RegisterRow<T> {
  /** Offset from the window base: a multiple of 4 below {@link CONTROL_AREA_SIZE}. */
  readonly offset: number;
  /** Register name as the spec spells it (`QueueSel`, `HostFeatures`), for guest error messages. */
  readonly name: string;
  /** Direction (4.2.2 table). */
  readonly access: RegisterAccess;
  /** What a read returns (an unsigned 32-bit value). */
  readonly read?: (target: T) => number;
  /** What a write does. */
  readonly write?: (target: T, value: number) => void;
}

/**
 * A dispatch table: {@link REGISTER_SLOTS} entries, entry `offset >> 2` is the row at that offset or
 * undefined for an undescribed offset. Built once, never modified.
 */
export type RegisterTable<T> = ReadonlyArray<RegisterRow<T> | undefined>;

/** Checks that a row is well-formed. @throws VirtioError `INVALID_ARGUMENT` */
function checkRow<T>(row: RegisterRow<T>): void {
  const where = `register ${row.name} at ${hex(row.offset)}`;
  if (!Number.isInteger(row.offset) || row.offset < 0 || row.offset >= CONTROL_AREA_SIZE) {
    throw new VirtioError('INVALID_ARGUMENT', `${where} is outside the control area`);
  }
  if ((row.offset & 3) !== 0) {
    throw new VirtioError('INVALID_ARGUMENT', `${where} is not 32-bit aligned`);
  }
  const readable = row.access !== 'w';
  const writable = row.access !== 'r';
  if (readable !== (row.read !== undefined) || writable !== (row.write !== undefined)) {
    throw new VirtioError('INVALID_ARGUMENT', `${where}: access '${row.access}' does not match its handlers`);
  }
}

/**
 * Builds a dispatch table from layers of rows. Rows of a later layer replace rows of an earlier
 * layer at the same offset (a profile overriding a standard register); two rows at one offset in
 * the same layer are an error.
 * @throws VirtioError `INVALID_ARGUMENT` for a malformed row or a duplicate offset within a layer
 */
export function buildRegisterTable<T>(...layers: ReadonlyArray<readonly RegisterRow<T>[]>): RegisterTable<T> {
  const table: Array<RegisterRow<T> | undefined> = Array.from({ length: REGISTER_SLOTS }, () => undefined);
  for (const rows of layers) {
    const seen = new Set<number>();
    for (const row of rows) {
      checkRow(row);
      if (seen.has(row.offset)) {
        throw new VirtioError('INVALID_ARGUMENT', `two registers at ${hex(row.offset)} (${row.name})`);
      }
      seen.add(row.offset);
      table[row.offset >>> 2] = row;
    }
  }
  return table;
}

/** The rows of a table in offset order (for reports and for tests generated from the table). */
export function registerRows<T>(table: RegisterTable<T>): RegisterRow<T>[] {
  const rows: RegisterRow<T>[] = [];
  for (const row of table) if (row !== undefined) rows.push(row);
  return rows;
}
