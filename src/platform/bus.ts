/**
 * The MMIO bus: guest physical address ranges mapped to device windows, with a counter for every
 * trapped access (each one is a VM exit in a real VMM, so the counters are the exit profile).
 *
 * Model: Firecracker / crosvm `Bus` (range → device, overlap check at insertion, `offset = addr -
 * base`), and the x86 convention for a cycle nobody claims: reads float to all ones, writes are
 * dropped (master abort).
 *
 * Counter layout, made once per mapping so the dispatch path allocates nothing:
 *
 * ```
 *   totals     Float64Array(2)       [0] reads  [1] writes      (whole window)
 *   regReads   Float64Array(slots)   [offset >>> 2]             slots = ceil(windowSize / 4)
 *   regWrites  Float64Array(slots)   [offset >>> 2]
 * ```
 *
 * A slot covers one 32-bit register; 8/16-bit configuration-space accesses count in the slot of the
 * 32-bit word that contains them. Float64 counters stay exact up to 2^53 accesses.
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../spec/index.js';
import type { AccessWidth, MmioAccess, MmioDevice } from '../transport/index.js';

/** Read and write counts of one 32-bit register slot of a window. */
export interface BusRegisterStats {
  /** Offset of the slot in the window (a multiple of 4). */
  readonly offset: number;
  /** Trapped reads of this slot. */
  readonly reads: number;
  /** Trapped writes of this slot. */
  readonly writes: number;
}

/** A snapshot of one mapped window and its access counters. */
export interface BusDeviceStats {
  /** Name given to {@link MmioBus.map}. */
  readonly name: string;
  /** Guest physical base address of the window. */
  readonly base: number;
  /** Window size in bytes. */
  readonly size: number;
  /** Trapped reads anywhere in the window. */
  readonly reads: number;
  /** Trapped writes anywhere in the window. */
  readonly writes: number;
  /** Every register slot touched at least once, by ascending offset. */
  readonly registers: readonly BusRegisterStats[];
}

/** A snapshot of the whole bus. */
export interface BusStats {
  /** Every mapped window, by ascending base address. */
  readonly devices: readonly BusDeviceStats[];
  /** Reads of addresses no device claims. */
  readonly unmappedReads: number;
  /** Writes to addresses no device claims. */
  readonly unmappedWrites: number;
  /** Every trapped read, mapped or not. */
  readonly totalReads: number;
  /** Every trapped write, mapped or not. */
  readonly totalWrites: number;
}

/** Construction options of {@link MmioBus}. */
export interface MmioBusOptions {
  /**
   * Called for an access no device claims (the guest-error log channel; QEMU logs these as
   * `LOG_GUEST_ERROR`). Not on the mapped fast path. Must not throw.
   */
  readonly onUnmapped?: (kind: 'read' | 'write', address: number, width: AccessWidth) => void;
}

/**
 * The value a 64-bit read of all-ones bytes has in this project's number convention (`hi * 2 **
 * 32 + lo`, as `GuestMemory.read64`): 2^64 - 1 is not a double, it rounds to 2^64, which callers
 * already treat as out of range (at or above `Number.MAX_SAFE_INTEGER`).
 */
const ALL_ONES_64 = 0xffff_ffff * 2 ** 32 + 0xffff_ffff;

/** What a read nobody answers returns: all ones for the access width (x86 master abort). */
function allOnes(width: number): number {
  if (width === 4) return 0xffff_ffff;
  if (width === 2) return 0xffff;
  if (width === 1) return 0xff;
  return ALL_ONES_64;
}

/** One mapped window. Monomorphic; all counter storage is allocated here, once. */
class BusEntry {
  /** First address past the window. */
  readonly end: number;
  /** [0] reads, [1] writes over the whole window. */
  readonly totals = new Float64Array(2);
  /** Reads per 32-bit slot. */
  readonly regReads: Float64Array;
  /** Writes per 32-bit slot. */
  readonly regWrites: Float64Array;

  constructor(
    readonly name: string,
    readonly base: number,
    readonly size: number,
    readonly device: MmioDevice,
  ) {
    this.end = base + size;
    const slots = Math.ceil(size / 4);
    this.regReads = new Float64Array(slots);
    this.regWrites = new Float64Array(slots);
  }

  /** `first..last` of the window in hex, for messages. */
  describe(): string {
    return `${this.name} at ${hex(this.base)}..${hex(this.end - 1)}`;
  }
}

/**
 * The guest-side accessor of one window: every access goes through {@link MmioBus.read} /
 * {@link MmioBus.write}, so it is dispatched and counted exactly like a trapped guest access. An
 * offset past the window reaches whatever the bus has there (as a stray pointer would).
 */
class BusWindow implements MmioAccess {
  constructor(
    private readonly bus: MmioBus,
    private readonly base: number,
  ) {}

  read32(offset: number): number {
    return this.bus.read(this.base + offset, 4);
  }

  write32(offset: number, value: number): void {
    this.bus.write(this.base + offset, 4, value);
  }

  read8(offset: number): number {
    return this.bus.read(this.base + offset, 1);
  }

  read16(offset: number): number {
    return this.bus.read(this.base + offset, 2);
  }

  write8(offset: number, value: number): void {
    this.bus.write(this.base + offset, 1, value);
  }

  write16(offset: number, value: number): void {
    this.bus.write(this.base + offset, 2, value);
  }
}

/**
 * Guest physical address ranges mapped to {@link MmioDevice} windows.
 *
 * Dispatch ({@link MmioBus.read}, {@link MmioBus.write}) never throws for a guest-chosen address,
 * width or value and allocates nothing: the last-hit window is checked first (a driver talks to one
 * device at a time), then a binary search over the windows sorted by base. An access is routed by
 * its first byte (as Firecracker's and crosvm's buses do); the device gets `addr - base` and handles
 * whatever width the guest used.
 */
export class MmioBus {
  /** Windows sorted by base address; never overlapping. */
  private readonly entries: BusEntry[] = [];
  /** Last window an access hit, or null. */
  private last: BusEntry | null = null;
  /** [0] unmapped reads, [1] unmapped writes. */
  private readonly unmapped = new Float64Array(2);
  private readonly onUnmapped: MmioBusOptions['onUnmapped'];

  /** @param options - see {@link MmioBusOptions} */
  constructor(options: MmioBusOptions = {}) {
    this.onUnmapped = options.onUnmapped;
  }

  /**
   * Maps `device` at `[base, base + device.windowSize)` under `name`.
   * @throws VirtioError `BUS_INVALID_RANGE` when `base` is not a non-negative safe integer, the
   *   window size is not a positive safe integer, or the window ends past `Number.MAX_SAFE_INTEGER`
   * @throws VirtioError `BUS_OVERLAP` when the range intersects a mapped window (the message names
   *   both devices and both ranges)
   * @throws VirtioError `INVALID_ARGUMENT` when `name` is empty or already mapped
   */
  map(base: number, device: MmioDevice, name: string): void {
    if (typeof name !== 'string' || name.length === 0) {
      throw new VirtioError('INVALID_ARGUMENT', 'bus mapping needs a non-empty name');
    }
    if (this.entries.some((e) => e.name === name)) {
      throw new VirtioError('INVALID_ARGUMENT', `a device named ${name} is already mapped`);
    }
    const size = device.windowSize;
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new VirtioError(
        'BUS_INVALID_RANGE',
        `cannot map ${name}: base ${String(base)} is not a valid address`,
      );
    }
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new VirtioError(
        'BUS_INVALID_RANGE',
        `cannot map ${name} at ${hex(base)}: window size ${String(size)} is not a positive integer`,
      );
    }
    if (base + size > Number.MAX_SAFE_INTEGER) {
      throw new VirtioError(
        'BUS_INVALID_RANGE',
        `cannot map ${name} at ${hex(base)}: window of ${hex(size)} bytes ends past ${hex(Number.MAX_SAFE_INTEGER)}`,
      );
    }
    const entry = new BusEntry(name, base, size, device);
    for (const e of this.entries) {
      if (base < e.end && e.base < entry.end) {
        throw new VirtioError('BUS_OVERLAP', `cannot map ${entry.describe()}: overlaps ${e.describe()}`);
      }
    }
    let at = 0;
    while (at < this.entries.length && this.entries[at].base < base) at++;
    this.entries.splice(at, 0, entry);
  }

  /**
   * A guest read of `width` bytes at guest physical address `addr`: the device's answer, or all
   * ones for the width when no device claims `addr` (counted as unmapped).
   */
  read(addr: number, width: AccessWidth): number {
    const e = this.lookup(addr);
    if (e === null) {
      this.unmapped[0]++;
      if (this.onUnmapped !== undefined) this.onUnmapped('read', addr, width);
      return allOnes(width);
    }
    const offset = addr - e.base;
    e.totals[0]++;
    e.regReads[offset >>> 2]++;
    return e.device.read(offset, width);
  }

  /** A guest write of `width` bytes at `addr`; dropped (and counted) when no device claims `addr`. */
  write(addr: number, width: AccessWidth, value: number): void {
    const e = this.lookup(addr);
    if (e === null) {
      this.unmapped[1]++;
      if (this.onUnmapped !== undefined) this.onUnmapped('write', addr, width);
      return;
    }
    const offset = addr - e.base;
    e.totals[1]++;
    e.regWrites[offset >>> 2]++;
    e.device.write(offset, width, value);
  }

  /**
   * A guest-side accessor bound to one window, by name or by exact base address. Its accesses are
   * dispatched and counted like any trapped access.
   * @throws VirtioError `DEVICE_NOT_FOUND` when no window has that name or base
   */
  window(nameOrBase: string | number): MmioAccess {
    return new BusWindow(this, this.entry(nameOrBase).base);
  }

  /**
   * A snapshot of one window's counters (allocates; not for the hot path).
   * @throws VirtioError `DEVICE_NOT_FOUND` when no window has that name or base
   */
  deviceStats(nameOrBase: string | number): BusDeviceStats {
    return snapshot(this.entry(nameOrBase));
  }

  /**
   * The counters of the 32-bit register slot holding `offset` in one window.
   * @throws VirtioError `DEVICE_NOT_FOUND` when no window has that name or base
   * @throws VirtioError `INVALID_ARGUMENT` when `offset` is outside the window
   */
  registerStats(nameOrBase: string | number, offset: number): BusRegisterStats {
    const e = this.entry(nameOrBase);
    if (!Number.isInteger(offset) || offset < 0 || offset >= e.size) {
      throw new VirtioError('INVALID_ARGUMENT', `offset ${hex(offset)} is outside ${e.describe()}`);
    }
    const slot = offset >>> 2;
    return { offset: slot * 4, reads: e.regReads[slot], writes: e.regWrites[slot] };
  }

  /** A snapshot of every counter (allocates; not for the hot path). */
  stats(): BusStats {
    const devices = this.entries.map(snapshot);
    let totalReads = this.unmapped[0];
    let totalWrites = this.unmapped[1];
    for (const d of devices) {
      totalReads += d.reads;
      totalWrites += d.writes;
    }
    return {
      devices,
      unmappedReads: this.unmapped[0],
      unmappedWrites: this.unmapped[1],
      totalReads,
      totalWrites,
    };
  }

  /** Zeroes every counter (mappings stay). */
  resetStats(): void {
    this.unmapped.fill(0);
    for (const e of this.entries) {
      e.totals.fill(0);
      e.regReads.fill(0);
      e.regWrites.fill(0);
    }
  }

  /** The window containing `addr`, or null. Allocation-free; NaN and negatives find nothing. */
  private lookup(addr: number): BusEntry | null {
    const last = this.last;
    // Written as "inside" rather than "outside" so that NaN fails the test.
    if (last !== null && addr >= last.base && addr < last.end) return last;
    const entries = this.entries;
    let lo = 0;
    let hi = entries.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = entries[mid];
      if (addr < e.base) hi = mid - 1;
      else if (addr >= e.end) lo = mid + 1;
      else if (addr >= e.base) {
        this.last = e;
        return e;
      } else break; // NaN: every comparison is false
    }
    return null;
  }

  /** The window with this name or exact base. */
  private entry(nameOrBase: string | number): BusEntry {
    const e =
      typeof nameOrBase === 'string'
        ? this.entries.find((x) => x.name === nameOrBase)
        : this.entries.find((x) => x.base === nameOrBase);
    if (e === undefined) {
      const what = typeof nameOrBase === 'string' ? nameOrBase : `at ${hex(nameOrBase)}`;
      throw new VirtioError('DEVICE_NOT_FOUND', `no device ${what} on the bus`);
    }
    return e;
  }
}

/** Plain-object snapshot of one entry; lists only touched slots. */
function snapshot(e: BusEntry): BusDeviceStats {
  const registers: BusRegisterStats[] = [];
  for (let slot = 0; slot < e.regReads.length; slot++) {
    const reads = e.regReads[slot];
    const writes = e.regWrites[slot];
    if (reads !== 0 || writes !== 0) registers.push({ offset: slot * 4, reads, writes });
  }
  return { name: e.name, base: e.base, size: e.size, reads: e.totals[0], writes: e.totals[1], registers };
}
