/**
 * A small typed adapter over the v86 internals an embedder needs to put virtio-mmio devices into a
 * v86 guest: the CPU object, MMIO registration, interrupt lines and guest RAM. None of these are in
 * v86's `.d.ts`; their names survive closure compilation (checked against npm `v86@0.5.462`).
 * {@link v86Cpu} checks every one of them at once and fails loudly, naming what is missing, so a
 * v86 update that drops one breaks the smoke test instead of hanging a guest.
 *
 * ```
 * emulator.v86.cpu
 *   .io.mmap_register(addr, size, read8, write8, read32, write32)   128 KiB granularity (addr >>> 17)
 *   .device_raise_irq(n) / .device_lower_irq(n)                      PIC, and the IO-APIC with acpi
 *   .mem8                     guest RAM (a Proxy over wasm memory; .subarray(0) is a real view)
 *   .memory_size[0]           RAM size in bytes
 *   .write8/16/32(addr, v), .write_blob(u8, addr)                   guest writes, JIT-coherent
 *   .jit_dirty_cache(start, end)                                    invalidate compiled code
 * ```
 *
 * How v86 turns guest MMIO accesses into callbacks: 32-bit loads and stores call read32/write32;
 * 16-bit ones are split into two 8-bit calls (low byte first); 8-bit ones call read8/write8.
 * {@link V86MmioWindows} forwards each call to {@link MmioDevice.read}/{@link MmioDevice.write}
 * with the width it arrived with: configuration space is byte-addressable (4.2.2.2 allows 8/16/32
 * bit accesses there), so a split 16-bit access reads or writes the same bytes; control registers
 * stay 32-bit, and an 8-bit access to one is what it is, a guest error the transport counts.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import {
  DeviceId,
  hex,
  MemoryError,
  MMIO_MAGIC_VALUE,
  MMIO_VERSION_MODERN,
  MmioReg,
  VirtioError,
} from '../../spec/index.js';
import type { AccessWidth, InterruptLine, MmioDevice } from '../../transport/index.js';

/** `cpu.io` as the adapter uses it. */
export interface V86Io {
  /** Maps `[addr, addr + size)` (multiples of 128 KiB) to callbacks taking absolute addresses. */
  mmap_register(
    addr: number,
    size: number,
    read8: (addr: number) => number,
    write8: (addr: number, value: number) => void,
    read32: (addr: number) => number,
    write32: (addr: number, value: number) => void,
  ): void;
}

/** The v86 CPU object (`emulator.v86.cpu`), reduced to what the adapter uses. */
export interface V86Cpu {
  io: V86Io;
  device_raise_irq(line: number): void;
  device_lower_irq(line: number): void;
  /** Guest RAM; a Proxy in v86 0.5.x: take `.subarray(0)` for a real, short-lived view. */
  mem8: Uint8Array;
  /** `memory_size[0]`: RAM size in bytes. */
  memory_size: Uint32Array;
  write8(addr: number, value: number): void;
  write16(addr: number, value: number): void;
  write32(addr: number, value: number): void;
  write_blob(blob: Uint8Array, addr: number): void;
  jit_dirty_cache(start: number, end: number): void;
}

/** Granularity of v86's MMIO map: `addr >>> 17`. */
export const V86_MMIO_GRANULE = 0x2_0000;

/**
 * Interrupt lines v86 itself drives (lines are a single level, not wired-OR: never share one).
 * 5 (SB16, idle unless programmed) and 3 (COM2, absent unless `uart1`) are free for us.
 */
export const V86_OWNED_IRQS: ReadonlySet<number> = new Set([0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 14, 15]);

/** Function members {@link v86Cpu} checks, as `path` strings. */
const CPU_FUNCTIONS = [
  'io.mmap_register',
  'device_raise_irq',
  'device_lower_irq',
  'write8',
  'write16',
  'write32',
  'write_blob',
  'jit_dirty_cache',
] as const;

/** Reads `obj.a.b` for a dotted path, or undefined. */
function at(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const key of path.split('.')) {
    if (cur === null || (typeof cur !== 'object' && typeof cur !== 'function')) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/**
 * The names {@link v86Cpu} needs that `emulator` lacks (empty when all are there). For smoke tests.
 */
export function missingV86Internals(emulator: unknown): string[] {
  const cpu = at(emulator, 'v86.cpu');
  if (cpu === undefined || cpu === null) return ['emulator.v86.cpu'];
  const missing: string[] = [];
  for (const f of CPU_FUNCTIONS) if (typeof at(cpu, f) !== 'function') missing.push(`cpu.${f}`);
  const mem8 = at(cpu, 'mem8') as { subarray?: unknown } | undefined;
  if (mem8 === undefined || typeof mem8.subarray !== 'function') missing.push('cpu.mem8');
  const size = at(cpu, 'memory_size') as ArrayLike<number> | undefined;
  if (size === undefined || typeof size[0] !== 'number') missing.push('cpu.memory_size');
  return missing;
}

/**
 * The CPU of a loaded v86 emulator (after `"emulator-loaded"`), typed.
 * @throws VirtioError `INVALID_STATE` naming every missing internal (v86 changed: pin the version)
 */
export function v86Cpu(emulator: unknown): V86Cpu {
  const missing = missingV86Internals(emulator);
  if (missing.length > 0) {
    throw new VirtioError(
      'INVALID_STATE',
      `v86 internals missing: ${missing.join(', ')} (is the emulator loaded, and is v86 the pinned version?)`,
    );
  }
  return at(emulator, 'v86.cpu') as V86Cpu;
}

/** 2^32, to split 64-bit values without BigInt. */
const TWO_POW_32 = 2 ** 32;

/**
 * {@link GuestMemory} over v86 guest RAM. Reads go straight to the bytes; writes go through v86's
 * `write8/16/32` and `write_blob`, which invalidate JIT-compiled code for the page (guest code
 * loaded by DMA must not run stale translations). {@link V86GuestMemory.view} invalidates its
 * range before handing out the live view (nothing runs in the guest until the device returns).
 */
export class V86GuestMemory implements GuestMemory {
  private bytes: Uint8Array;
  private dv: DataView;

  constructor(private readonly cpu: V86Cpu) {
    this.bytes = cpu.mem8.subarray(0);
    this.dv = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  /** RAM size in bytes. */
  get size(): number {
    return this.cpu.memory_size[0];
  }

  /** The RAM view, re-made when wasm memory grew (the old buffer is then detached). */
  private ram(): Uint8Array {
    if (this.bytes.byteLength === 0) {
      this.bytes = this.cpu.mem8.subarray(0);
      this.dv = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    }
    return this.bytes;
  }

  private check(gpa: number, length: number): void {
    if (!this.isValid(gpa, length)) throw new MemoryError(gpa, length);
  }

  isValid(gpa: number, length: number): boolean {
    return gpa >= 0 && length >= 0 && gpa + length <= this.ram().length && Number.isSafeInteger(gpa + length);
  }

  read8(gpa: number): number {
    this.check(gpa, 1);
    return this.bytes[gpa];
  }

  read16(gpa: number): number {
    this.check(gpa, 2);
    return this.dv.getUint16(gpa, true);
  }

  read32(gpa: number): number {
    this.check(gpa, 4);
    return this.dv.getUint32(gpa, true);
  }

  read64(gpa: number): number {
    this.check(gpa, 8);
    return this.dv.getUint32(gpa + 4, true) * TWO_POW_32 + this.dv.getUint32(gpa, true);
  }

  write8(gpa: number, value: number): void {
    this.check(gpa, 1);
    this.cpu.write8(gpa, value & 0xff);
  }

  write16(gpa: number, value: number): void {
    this.check(gpa, 2);
    this.cpu.write16(gpa, value & 0xffff);
  }

  write32(gpa: number, value: number): void {
    this.check(gpa, 4);
    this.cpu.write32(gpa, value | 0);
  }

  write64(gpa: number, value: number): void {
    this.check(gpa, 8);
    this.cpu.write32(gpa, (value % TWO_POW_32) | 0);
    this.cpu.write32(gpa + 4, Math.floor(value / TWO_POW_32) | 0);
  }

  readBytes(gpa: number, dst: Uint8Array): void {
    this.check(gpa, dst.length);
    dst.set(this.bytes.subarray(gpa, gpa + dst.length));
  }

  writeBytes(gpa: number, src: Uint8Array): void {
    this.check(gpa, src.length);
    this.cpu.write_blob(src, gpa);
  }

  fill(gpa: number, length: number, byte: number): void {
    this.check(gpa, length);
    if (length === 0) return;
    this.cpu.jit_dirty_cache(gpa, gpa + length);
    this.bytes.fill(byte, gpa, gpa + length);
  }

  view(gpa: number, length: number): Uint8Array | null {
    if (!this.isValid(gpa, length)) return null;
    // The caller may write through the view: invalidate first, the guest is not running meanwhile.
    if (length > 0) this.cpu.jit_dirty_cache(gpa, gpa + length);
    return this.bytes.subarray(gpa, gpa + length);
  }
}

/**
 * A level interrupt line of v86 driven by a device ({@link InterruptLine}): asserted means
 * `device_raise_irq(line)`, deasserted `device_lower_irq(line)`.
 */
export class V86IrqLine implements InterruptLine {
  /** Current level as last set. */
  asserted = false;
  /** Times the line went high. */
  raised = 0;

  /**
   * @throws VirtioError `IRQ_INVALID_LINE` for a line outside 0..15 or one v86 drives itself
   */
  constructor(
    private readonly cpu: V86Cpu,
    readonly line: number,
  ) {
    if (!Number.isInteger(line) || line < 0 || line > 15 || V86_OWNED_IRQS.has(line)) {
      throw new VirtioError('IRQ_INVALID_LINE', `irq ${String(line)} is not free in v86 (use 3 or 5)`);
    }
  }

  setLevel(asserted: boolean): void {
    this.asserted = asserted;
    if (asserted) {
      this.raised++;
      this.cpu.device_raise_irq(this.line);
    } else {
      this.cpu.device_lower_irq(this.line);
    }
  }
}

/**
 * An empty virtio-mmio slot: MagicValue, Version 2 and DeviceID 0, every other register 0, writes
 * ignored. Linux's virtio_mmio skips it silently (4.2.3.1.1: "If the device ID is zero, the driver
 * MUST ignore the device"), the way QEMU fills unused slots.
 */
export class EmptyMmioSlot implements MmioDevice {
  readonly windowSize: number;

  constructor(windowSize = 0x200) {
    this.windowSize = windowSize;
  }

  read(offset: number, width: AccessWidth): number {
    if (width !== 4) return 0;
    if (offset === MmioReg.MagicValue) return MMIO_MAGIC_VALUE;
    if (offset === MmioReg.Version) return MMIO_VERSION_MODERN;
    if (offset === MmioReg.DeviceID) return DeviceId.INVALID;
    return 0;
  }

  write(_offset: number, _width: AccessWidth, _value: number): void {}
}

/**
 * Windows of `stride` bytes mapped at `base`, `base + stride`, ... in v86's physical address
 * space, each backed by a replaceable {@link MmioDevice} (an {@link EmptyMmioSlot} by default).
 * Registers the covering 128 KiB granules once; {@link V86MmioWindows.attach} swaps devices
 * without touching v86 again (for example after `restore_state`). Accesses outside every window
 * read as 0 and are counted in {@link V86MmioWindows.strayAccesses}.
 */
export class V86MmioWindows {
  private readonly devices: MmioDevice[];
  /** Accesses that hit the mapped granules outside any window, or past a device's window. */
  strayAccesses = 0;

  /**
   * @throws VirtioError `BUS_INVALID_RANGE` when `base` is not 128 KiB aligned, the stride is not a
   *   power of two of at least 0x200, or the windows leave 32-bit space
   */
  constructor(
    cpu: V86Cpu,
    readonly base: number,
    readonly count: number,
    readonly stride = 0x200,
  ) {
    if (base % V86_MMIO_GRANULE !== 0 || base < 0 || !Number.isInteger(count) || count < 1) {
      throw new VirtioError(
        'BUS_INVALID_RANGE',
        `v86 mmio windows need a 128 KiB aligned base, got ${hex(base)}`,
      );
    }
    if (stride < 0x200 || (stride & (stride - 1)) !== 0) {
      throw new VirtioError('BUS_INVALID_RANGE', `invalid window stride ${hex(stride)}`);
    }
    const size = Math.ceil((count * stride) / V86_MMIO_GRANULE) * V86_MMIO_GRANULE;
    if (base + size > 0x1_0000_0000) {
      throw new VirtioError('BUS_INVALID_RANGE', `v86 mmio windows at ${hex(base)} leave 32-bit space`);
    }
    this.devices = Array.from({ length: count }, () => new EmptyMmioSlot(stride));
    cpu.io.mmap_register(
      base,
      size,
      (addr) => this.read(addr, 1),
      (addr, value) => this.write(addr, 1, value),
      (addr) => this.read(addr, 4),
      (addr, value) => this.write(addr, 4, value),
    );
  }

  /** Guest physical base of window `index`. */
  windowBase(index: number): number {
    return this.base + index * this.stride;
  }

  /**
   * Puts `device` (or an empty slot for null) behind window `index`.
   * @throws VirtioError `INVALID_ARGUMENT` for a bad index or a device larger than the stride
   */
  attach(index: number, device: MmioDevice | null): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new VirtioError('INVALID_ARGUMENT', `no v86 mmio window ${String(index)}`);
    }
    if (device !== null && device.windowSize > this.stride) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `device window ${hex(device.windowSize)} exceeds stride ${hex(this.stride)}`,
      );
    }
    this.devices[index] = device ?? new EmptyMmioSlot(this.stride);
  }

  /** The device behind window `index`. */
  device(index: number): MmioDevice {
    return this.devices[index];
  }

  private read(addr: number, width: AccessWidth): number {
    const rel = (addr >>> 0) - this.base;
    const index = Math.floor(rel / this.stride);
    const dev = this.devices[index];
    const offset = rel - index * this.stride;
    if (dev === undefined || offset + width > dev.windowSize) {
      this.strayAccesses++;
      return 0;
    }
    return dev.read(offset, width);
  }

  private write(addr: number, width: AccessWidth, value: number): void {
    const rel = (addr >>> 0) - this.base;
    const index = Math.floor(rel / this.stride);
    const dev = this.devices[index];
    const offset = rel - index * this.stride;
    if (dev === undefined || offset + width > dev.windowSize) {
      this.strayAccesses++;
      return;
    }
    dev.write(offset, width, width === 1 ? value & 0xff : value >>> 0);
  }
}
