/**
 * A minimal ACPI Machine Language (AML) encoder, enough to build the Secondary System Description
 * Table (SSDT) that declares virtio-mmio devices to Linux: one `LNRO0005` Device per window, with
 * `_HID`, `_UID` and a `_CRS` resource template (Memory32Fixed + level, active-high Interrupt).
 *
 * Linux binds its `virtio_mmio` driver to `LNRO0005` ACPI devices (`virtio_mmio_acpi_match`).
 * Debian's kernel is built without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so this table, loaded
 * through the kernel's ACPI table upgrade from the initrd (`kernel/firmware/acpi/*.aml`), is how a
 * stock kernel learns where our windows are. The encoding follows ACPI 6.5, chapter 20 (AML
 * grammar) and 6.4 (resource descriptors); the output for one device matches `iasl` byte for byte.
 *
 * ```asl
 * DefinitionBlock ("", "SSDT", 2, "VIRTIO", "VMMIO", 1) {
 *   Scope (\_SB) { Device (VR00) {
 *     Name (_HID, "LNRO0005")
 *     Name (_UID, 0)
 *     Name (_CRS, ResourceTemplate () {
 *       Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
 *       Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { 5 }
 *     })
 *   } }
 * }
 * ```
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../../spec/index.js';

/** AML opcodes used here (ACPI 6.5, 20.3). */
export const AmlOp = {
  Zero: 0x00,
  One: 0x01,
  Name: 0x08,
  BytePrefix: 0x0a,
  WordPrefix: 0x0b,
  DWordPrefix: 0x0c,
  StringPrefix: 0x0d,
  Scope: 0x10,
  Buffer: 0x11,
  RootChar: 0x5c,
  ExtPrefix: 0x5b,
  /** Second byte of DeviceOp (`5B 82`). */
  Device: 0x82,
} as const;

/** Small and large resource descriptor tags (ACPI 6.5, 6.4.2 / 6.4.3). */
export const AmlResource = {
  /** Large item 0x06: 32-bit fixed memory range, 9 bytes of data. */
  Memory32Fixed: 0x86,
  /** Large item 0x09: extended interrupt descriptor. */
  ExtendedInterrupt: 0x89,
  /** Small item 0x0F, length 1: end tag with a checksum byte. */
  EndTag: 0x79,
} as const;

/** The ACPI hardware ID Linux's virtio_mmio driver matches. */
export const VIRTIO_MMIO_ACPI_HID = 'LNRO0005';

/** Size of the common ACPI table header (ACPI 6.5, 5.2.6). */
export const ACPI_HEADER_SIZE = 36;

/** Offset of the checksum byte in the table header. */
export const ACPI_CHECKSUM_OFFSET = 9;

/** One virtio-mmio window as an ACPI device. */
export interface AmlVirtioDevice {
  /** Guest physical base of the register window. */
  base: number;
  /** Window size in bytes (0x200 is the usual virtio-mmio window). */
  size: number;
  /** Interrupt line (GSI): level-triggered, active-high, exclusive (virtio 4.2.3.4 is level). */
  irq: number;
}

/** Header fields of the SSDT. Strings are ASCII, padded with NUL bytes to their field width. */
export interface SsdtHeaderOptions {
  /** OEMID, up to 6 characters. Default "VIRTIO". */
  oemId?: string;
  /** OEM Table ID, up to 8 characters. Default "VMMIO". */
  oemTableId?: string;
  /** OEM Revision. Default 1. */
  oemRevision?: number;
  /** Creator ID, up to 4 characters. Default "VMIO". */
  creatorId?: string;
  /** Creator Revision. Default 1. */
  creatorRevision?: number;
}

/** Concatenates byte arrays. */
function concat(parts: readonly (Uint8Array | readonly number[])[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** ASCII bytes of `s`, checked to be printable. */
function ascii(s: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e)
      throw new VirtioError('INVALID_ARGUMENT', `non-printable character in aml string ${JSON.stringify(s)}`);
    out.push(c);
  }
  return out;
}

/** Little-endian bytes of an unsigned 32-bit value. */
function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

/**
 * Encodes a PkgLength (ACPI 6.5, 20.2.4) for a package whose contents (after the PkgLength itself)
 * are `contentLength` bytes. The encoded length counts the PkgLength bytes too.
 * @throws VirtioError `INVALID_ARGUMENT` when the package exceeds 2^28 - 1 bytes
 */
export function amlPkgLength(contentLength: number): Uint8Array {
  if (contentLength + 1 <= 0x3f) return Uint8Array.of(contentLength + 1);
  for (let extra = 1; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = new Uint8Array(1 + extra);
      out[0] = (extra << 6) | (total & 0x0f);
      for (let i = 0; i < extra; i++) out[1 + i] = (total >>> (4 + 8 * i)) & 0xff;
      return out;
    }
  }
  throw new VirtioError('INVALID_ARGUMENT', `aml package too long: ${hex(contentLength)} bytes`);
}

/**
 * A NameSeg (ACPI 6.5, 20.2.2): 1 to 4 characters, first `A-Z` or `_`, then `A-Z`, `0-9`, `_`,
 * padded with `_` to 4.
 * @throws VirtioError `INVALID_ARGUMENT` for an invalid name
 */
export function amlNameSeg(name: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(name)) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid aml name segment ${JSON.stringify(name)}`);
  }
  return Uint8Array.from(ascii(name.padEnd(4, '_')));
}

/**
 * An integer term with the shortest encoding: ZeroOp, OneOp, or Byte/Word/DWord prefix.
 * @throws VirtioError `INVALID_ARGUMENT` outside [0, 2^32)
 */
export function amlInteger(value: number): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new VirtioError('INVALID_ARGUMENT', `aml integer out of range: ${String(value)}`);
  }
  if (value === 0) return Uint8Array.of(AmlOp.Zero);
  if (value === 1) return Uint8Array.of(AmlOp.One);
  if (value <= 0xff) return Uint8Array.of(AmlOp.BytePrefix, value);
  if (value <= 0xffff) return Uint8Array.of(AmlOp.WordPrefix, value & 0xff, value >>> 8);
  return Uint8Array.from([AmlOp.DWordPrefix, ...le32(value)]);
}

/** A string term: StringPrefix, ASCII bytes, NUL. */
export function amlString(value: string): Uint8Array {
  return Uint8Array.from([AmlOp.StringPrefix, ...ascii(value), 0]);
}

/** `Name (name, value)`: NameOp NameSeg DataRefObject. */
export function amlName(name: string, value: Uint8Array): Uint8Array {
  return concat([[AmlOp.Name], amlNameSeg(name), value]);
}

/** `Buffer () { bytes }`: BufferOp PkgLength BufferSize bytes. */
export function amlBuffer(bytes: Uint8Array): Uint8Array {
  const body = concat([amlInteger(bytes.length), bytes]);
  return concat([[AmlOp.Buffer], amlPkgLength(body.length), body]);
}

/** `Scope (\name) { terms }` for a root-relative single-segment name (such as `_SB`). */
export function amlScope(rootName: string, terms: Uint8Array): Uint8Array {
  const body = concat([[AmlOp.RootChar], amlNameSeg(rootName), terms]);
  return concat([[AmlOp.Scope], amlPkgLength(body.length), body]);
}

/** `Device (name) { terms }`: ExtOpPrefix DeviceOp PkgLength NameSeg terms. */
export function amlDevice(name: string, terms: Uint8Array): Uint8Array {
  const body = concat([amlNameSeg(name), terms]);
  return concat([[AmlOp.ExtPrefix, AmlOp.Device], amlPkgLength(body.length), body]);
}

/**
 * The `_CRS` resource template of one window: Memory32Fixed (ReadWrite, base, size) and an
 * extended Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { irq }, then the end tag.
 * @throws VirtioError `INVALID_ARGUMENT` for a base, size or irq out of 32-bit range
 */
export function amlVirtioResources(dev: AmlVirtioDevice): Uint8Array {
  for (const [what, v] of [
    ['base', dev.base],
    ['size', dev.size],
    ['irq', dev.irq],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
      throw new VirtioError('INVALID_ARGUMENT', `virtio device ${what} out of range: ${String(v)}`);
    }
  }
  if (dev.size === 0 || dev.base + dev.size > 0x1_0000_0000) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid virtio window ${hex(dev.base)} size ${hex(dev.size)}`);
  }
  // Memory32Fixed: tag, length 9, information (bit 0: read-write), base, length.
  const mem = [AmlResource.Memory32Fixed, 9, 0, 0x01, ...le32(dev.base), ...le32(dev.size)];
  // Extended interrupt: flags bit 0 consumer, bit 1 = 0 level, bit 2 = 0 active-high, bit 3 = 0
  // exclusive; one interrupt number.
  const irq = [AmlResource.ExtendedInterrupt, 6, 0, 0x01, 1, ...le32(dev.irq)];
  // End tag with checksum 0 ("the checksum is treated as correct", ACPI 6.4.2.9).
  return Uint8Array.from([...mem, ...irq, AmlResource.EndTag, 0]);
}

/** A fixed-width, NUL-padded ASCII header field. */
function headerField(value: string, width: number, what: string): number[] {
  if (value.length > width) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `acpi ${what} longer than ${String(width)} characters: ${JSON.stringify(value)}`,
    );
  }
  const out = ascii(value);
  while (out.length < width) out.push(0);
  return out;
}

/** Sets byte 9 of an ACPI table so that all its bytes sum to 0 modulo 256. */
export function acpiFixChecksum(table: Uint8Array): void {
  table[ACPI_CHECKSUM_OFFSET] = 0;
  let sum = 0;
  for (const b of table) sum = (sum + b) & 0xff;
  table[ACPI_CHECKSUM_OFFSET] = (0x100 - sum) & 0xff;
}

/**
 * Builds a complete SSDT (header, checksum) with one `LNRO0005` Device per window, named `VR00`,
 * `VR01`, ... with `_UID` equal to its index, inside `Scope (\_SB)`.
 * @throws VirtioError `INVALID_ARGUMENT` for no devices, more than 256, or an invalid window
 */
export function buildVirtioSsdt(
  devices: readonly AmlVirtioDevice[],
  header: SsdtHeaderOptions = {},
): Uint8Array {
  if (devices.length === 0 || devices.length > 256) {
    throw new VirtioError('INVALID_ARGUMENT', `ssdt needs 1 to 256 devices, got ${String(devices.length)}`);
  }
  const terms = concat(
    devices.map((dev, i) =>
      amlDevice(
        `VR${i.toString(16).toUpperCase().padStart(2, '0')}`,
        concat([
          amlName('_HID', amlString(VIRTIO_MMIO_ACPI_HID)),
          amlName('_UID', amlInteger(i)),
          amlName('_CRS', amlBuffer(amlVirtioResources(dev))),
        ]),
      ),
    ),
  );
  const body = amlScope('_SB', terms);
  const length = ACPI_HEADER_SIZE + body.length;
  const table = concat([
    ascii('SSDT'),
    le32(length),
    [2, 0], // revision 2 (64-bit integers), checksum placeholder
    headerField(header.oemId ?? 'VIRTIO', 6, 'oem id'),
    headerField(header.oemTableId ?? 'VMMIO', 8, 'oem table id'),
    le32(header.oemRevision ?? 1),
    headerField(header.creatorId ?? 'VMIO', 4, 'creator id'),
    le32(header.creatorRevision ?? 1),
    body,
  ]);
  acpiFixChecksum(table);
  return table;
}
