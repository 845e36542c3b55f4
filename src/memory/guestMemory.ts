/**
 * Guest physical memory: one or more RAM regions over `ArrayBuffer` or `SharedArrayBuffer`, with
 * bounds-checked little-endian accesses.
 *
 * Addresses are plain numbers (guest physical addresses, "gpa"). A 64-bit register pair is combined
 * as `hi * 2 ** 32 + lo`; any value at or above `Number.MAX_SAFE_INTEGER` can never be inside RAM,
 * so rounding of such values never turns an invalid address into a valid one. No BigInt, and no
 * allocation per access: each region keeps one `DataView` and one `Uint8Array`, made once.
 *
 * @packageDocumentation
 */

import { hex, MemoryError, VirtioError } from '../spec/index.js';

/**
 * The consumer-side view of guest RAM that queues, devices and drivers use. Every accessor throws a
 * {@link MemoryError} (carrying the address) for an access that is not entirely inside one RAM
 * region; callers that process guest-controlled addresses check {@link GuestMemory.isValid} first.
 *
 * An emulator can implement this interface over its own RAM (for example to keep a JIT cache
 * coherent on writes); {@link RamMemory} is the standard implementation.
 */
export interface GuestMemory {
  /** True when `[gpa, gpa + length)` lies inside one RAM region. `length` 0 is valid anywhere in RAM. */
  isValid(gpa: number, length: number): boolean;
  /** Reads an unsigned byte. */
  read8(gpa: number): number;
  /** Reads an unsigned little-endian 16-bit value. */
  read16(gpa: number): number;
  /** Reads an unsigned little-endian 32-bit value. */
  read32(gpa: number): number;
  /**
   * Reads a little-endian 64-bit value as a number: exact below 2^53, rounded above (such values are
   * never valid addresses or lengths here).
   */
  read64(gpa: number): number;
  /** Writes a byte (the low 8 bits of `value`). */
  write8(gpa: number, value: number): void;
  /** Writes a little-endian 16-bit value (the low 16 bits). */
  write16(gpa: number, value: number): void;
  /** Writes a little-endian 32-bit value (the low 32 bits). */
  write32(gpa: number, value: number): void;
  /** Writes a little-endian 64-bit value; `value` must be an integer in [0, 2^53). */
  write64(gpa: number, value: number): void;
  /** Copies `dst.length` bytes from guest memory at `gpa` into `dst`. */
  readBytes(gpa: number, dst: Uint8Array): void;
  /** Copies `src` into guest memory at `gpa`. */
  writeBytes(gpa: number, src: Uint8Array): void;
  /** Sets `length` bytes at `gpa` to `byte`. */
  fill(gpa: number, length: number, byte: number): void;
  /**
   * A live view of `[gpa, gpa + length)` when it lies inside one region (zero-copy I/O), or `null`.
   * Allocates a view object: use per request, not per access.
   */
  view(gpa: number, length: number): Uint8Array | null;
  /**
   * A full memory barrier (Linux `virtio_mb`, QEMU `smp_mb`): every access before it is visible to
   * other threads before any access after it is performed. The split ring needs one where a side
   * publishes an index and then reads the other side's event index or flags (2.7.7.2, 2.7.10):
   * without it a store can wait in the store buffer while the following load runs, both sides
   * miss each other and a notification is lost. Optional: memory only one thread touches needs
   * none.
   */
  fence?(): void;
}

/** One RAM region: where it sits in the guest physical address space and what backs it. */
export interface RamRegionSpec {
  /** Guest physical address of the first byte. */
  gpa: number;
  /** Backing storage; the region covers all of it. */
  buffer: ArrayBuffer | SharedArrayBuffer | Uint8Array;
}

/** A region as kept internally: views made once. */
interface Region {
  readonly start: number;
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly dv: DataView;
}

/** 2^32, for combining and splitting 64-bit values without BigInt. */
const TWO_POW_32 = 2 ** 32;

/**
 * Guest RAM over one or more regions. Regions may not overlap, and every access, scalar or bulk,
 * must fall entirely within one region: an access spanning two regions is out of bounds even when
 * they are adjacent, so a device never has to split a buffer.
 */
export class RamMemory implements GuestMemory {
  private readonly regions: Region[];
  /** Index of the region that served the last access; most accesses hit it again. */
  private last = 0;
  /** A word for {@link RamMemory.fence} when a region is shared between threads; null otherwise. */
  private readonly fenceWord: Int32Array | null;

  /**
   * @param regions - one or more regions; a single `ArrayBuffer`/`SharedArrayBuffer` maps at gpa 0
   * @throws VirtioError `MEMORY_INVALID_REGION` for an empty region or a negative or unsafe base,
   *   `MEMORY_OVERLAP` for overlapping regions
   */
  constructor(regions: RamRegionSpec[] | ArrayBuffer | SharedArrayBuffer) {
    const specs: RamRegionSpec[] =
      regions instanceof ArrayBuffer ||
      (typeof SharedArrayBuffer !== 'undefined' && regions instanceof SharedArrayBuffer)
        ? [{ gpa: 0, buffer: regions }]
        : (regions as RamRegionSpec[]);
    if (specs.length === 0) {
      throw new VirtioError('MEMORY_INVALID_REGION', 'guest memory needs at least one region');
    }
    const built: Region[] = specs.map((s) => {
      const bytes = s.buffer instanceof Uint8Array ? s.buffer : new Uint8Array(s.buffer as ArrayBuffer);
      if (bytes.length === 0) {
        throw new VirtioError('MEMORY_INVALID_REGION', `empty ram region at ${hex(s.gpa)}`);
      }
      if (!Number.isSafeInteger(s.gpa) || s.gpa < 0 || !Number.isSafeInteger(s.gpa + bytes.length)) {
        throw new VirtioError('MEMORY_INVALID_REGION', `invalid ram region base ${String(s.gpa)}`);
      }
      return {
        start: s.gpa,
        end: s.gpa + bytes.length,
        bytes,
        dv: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      };
    });
    built.sort((a, b) => a.start - b.start);
    for (let i = 1; i < built.length; i++) {
      if (built[i].start < built[i - 1].end) {
        throw new VirtioError('MEMORY_OVERLAP', `ram regions overlap at ${hex(built[i].start)}`);
      }
    }
    this.regions = built;
    const shared =
      typeof SharedArrayBuffer !== 'undefined' &&
      built.some((r) => r.bytes.buffer instanceof SharedArrayBuffer);
    this.fenceWord = shared ? new Int32Array(new SharedArrayBuffer(4)) : null;
  }

  /**
   * A full barrier when a region is a SharedArrayBuffer: a sequentially consistent read-modify-write
   * (a locked instruction on x86, `dmb ish` on Arm), which orders the plain accesses around it.
   * Nothing to do for memory private to one thread.
   */
  fence(): void {
    const w = this.fenceWord;
    if (w !== null) Atomics.add(w, 0, 0);
  }

  /** Total bytes of RAM over all regions. */
  get totalSize(): number {
    let n = 0;
    for (const r of this.regions) n += r.end - r.start;
    return n;
  }

  /** The regions as `{ gpa, size }`, in address order. */
  get layout(): ReadonlyArray<{ gpa: number; size: number }> {
    return this.regions.map((r) => ({ gpa: r.start, size: r.end - r.start }));
  }

  /** The backing bytes of the region that contains `gpa` (for emulators and tests). */
  regionBytes(gpa: number): Uint8Array {
    const r = this.find(gpa, 0);
    if (r === undefined) throw new MemoryError(gpa, 0);
    return r.bytes;
  }

  /**
   * Finds the region holding `[gpa, gpa + length)`, or undefined. Hot path: no allocation.
   * `gpa + length` stays exact for any gpa/length below 2^52, and anything larger fails `end`.
   */
  private find(gpa: number, length: number): Region | undefined {
    const regions = this.regions;
    let r = regions[this.last];
    if (gpa >= r.start && gpa + length <= r.end && gpa >= 0 && length >= 0) return r;
    if (!(gpa >= 0 && length >= 0)) return undefined; // also rejects NaN
    for (let i = 0; i < regions.length; i++) {
      r = regions[i];
      if (gpa >= r.start && gpa + length <= r.end) {
        this.last = i;
        return r;
      }
    }
    return undefined;
  }

  private at(gpa: number, length: number): Region {
    const r = this.find(gpa, length);
    if (r === undefined) throw new MemoryError(gpa, length);
    return r;
  }

  isValid(gpa: number, length: number): boolean {
    return this.find(gpa, length) !== undefined;
  }

  read8(gpa: number): number {
    const r = this.at(gpa, 1);
    return r.bytes[gpa - r.start];
  }

  read16(gpa: number): number {
    const r = this.at(gpa, 2);
    return r.dv.getUint16(gpa - r.start, true);
  }

  read32(gpa: number): number {
    const r = this.at(gpa, 4);
    return r.dv.getUint32(gpa - r.start, true);
  }

  read64(gpa: number): number {
    const r = this.at(gpa, 8);
    const off = gpa - r.start;
    return r.dv.getUint32(off + 4, true) * TWO_POW_32 + r.dv.getUint32(off, true);
  }

  write8(gpa: number, value: number): void {
    const r = this.at(gpa, 1);
    r.bytes[gpa - r.start] = value;
  }

  write16(gpa: number, value: number): void {
    const r = this.at(gpa, 2);
    r.dv.setUint16(gpa - r.start, value, true);
  }

  write32(gpa: number, value: number): void {
    const r = this.at(gpa, 4);
    r.dv.setUint32(gpa - r.start, value >>> 0, true);
  }

  write64(gpa: number, value: number): void {
    const r = this.at(gpa, 8);
    const off = gpa - r.start;
    r.dv.setUint32(off, (value % TWO_POW_32) >>> 0, true);
    r.dv.setUint32(off + 4, Math.floor(value / TWO_POW_32) >>> 0, true);
  }

  readBytes(gpa: number, dst: Uint8Array): void {
    const r = this.at(gpa, dst.length);
    const off = gpa - r.start;
    dst.set(r.bytes.subarray(off, off + dst.length));
  }

  writeBytes(gpa: number, src: Uint8Array): void {
    const r = this.at(gpa, src.length);
    r.bytes.set(src, gpa - r.start);
  }

  fill(gpa: number, length: number, byte: number): void {
    const r = this.at(gpa, length);
    const off = gpa - r.start;
    r.bytes.fill(byte, off, off + length);
  }

  view(gpa: number, length: number): Uint8Array | null {
    const r = this.find(gpa, length);
    if (r === undefined) return null;
    const off = gpa - r.start;
    return r.bytes.subarray(off, off + length);
  }
}
