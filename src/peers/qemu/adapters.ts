/**
 * Adapters that let our unchanged guest drivers run over QEMU through qtest: a device window
 * ({@link QtestMmioAccess}), guest RAM ({@link QtestGuestMemory}: every access goes to QEMU's RAM,
 * so our ring writes are in QEMU's memory before a notify and QEMU's used-ring writes are what we
 * read) and the guest platform ({@link QtestIrqPlatform}: halt waits for an intercepted IOAPIC
 * input to rise). Plus {@link RecordingMmioAccess}, which logs every register access with the
 * interrupt line level after it, for the differential comparison.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import { hex, MemoryError, MmioReg, VirtioError } from '../../spec/index.js';
import type { GuestIrqPlatform, MmioAccess } from '../../transport/index.js';
import type { QtestClient } from './qtest.js';

/** 2^32. */
const TWO_POW_32 = 2 ** 32;

/** One device window of QEMU seen through qtest. */
export class QtestMmioAccess implements MmioAccess {
  constructor(
    private readonly qt: QtestClient,
    /** Guest physical base of the window. */
    readonly base: number,
  ) {}

  read32(offset: number): number {
    return this.qt.readl(this.base + offset);
  }
  write32(offset: number, value: number): void {
    this.qt.writel(this.base + offset, value);
  }
  read8(offset: number): number {
    return this.qt.readb(this.base + offset);
  }
  read16(offset: number): number {
    return this.qt.readw(this.base + offset);
  }
  write8(offset: number, value: number): void {
    this.qt.writeb(this.base + offset, value);
  }
  write16(offset: number, value: number): void {
    this.qt.writew(this.base + offset, value);
  }
}

/**
 * QEMU's guest RAM through qtest: each access is one qtest command (bulk copies use b64read /
 * b64write / memset). RAM is `[0, size)`; an access outside throws {@link MemoryError} like
 * {@link RamMemory}. No zero-copy views.
 */
export class QtestGuestMemory implements GuestMemory {
  constructor(
    private readonly qt: QtestClient,
    /** RAM size in bytes (RAM starts at guest physical 0 on microvm). */
    readonly size: number,
  ) {}

  isValid(gpa: number, length: number): boolean {
    return gpa >= 0 && length >= 0 && Number.isSafeInteger(gpa) && gpa + length <= this.size;
  }
  private check(gpa: number, length: number): void {
    if (!this.isValid(gpa, length)) throw new MemoryError(gpa, length);
  }
  read8(gpa: number): number {
    this.check(gpa, 1);
    return this.qt.readb(gpa);
  }
  read16(gpa: number): number {
    this.check(gpa, 2);
    return this.qt.readw(gpa);
  }
  read32(gpa: number): number {
    this.check(gpa, 4);
    return this.qt.readl(gpa);
  }
  read64(gpa: number): number {
    this.check(gpa, 8);
    return this.qt.readq(gpa);
  }
  write8(gpa: number, value: number): void {
    this.check(gpa, 1);
    this.qt.writeb(gpa, value);
  }
  write16(gpa: number, value: number): void {
    this.check(gpa, 2);
    this.qt.writew(gpa, value);
  }
  write32(gpa: number, value: number): void {
    this.check(gpa, 4);
    this.qt.writel(gpa, value);
  }
  write64(gpa: number, value: number): void {
    this.check(gpa, 8);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new VirtioError('INVALID_ARGUMENT', `write64 of ${String(value)} is not an integer in [0, 2^53)`);
    }
    // Two 32-bit halves: exact for every value in range, no BigInt.
    this.qt.writel(gpa, value % TWO_POW_32);
    this.qt.writel(gpa + 4, Math.floor(value / TWO_POW_32));
  }
  readBytes(gpa: number, dst: Uint8Array): void {
    this.check(gpa, dst.length);
    this.qt.readMem(gpa, dst);
  }
  writeBytes(gpa: number, src: Uint8Array): void {
    this.check(gpa, src.length);
    this.qt.writeMem(gpa, src);
  }
  fill(gpa: number, length: number, byte: number): void {
    this.check(gpa, length);
    this.qt.memset(gpa, length, byte);
  }
  view(): Uint8Array | null {
    return null;
  }
}

/** Default wait of one halt for an interrupt (milliseconds). */
export const QTEST_HALT_TIMEOUT_MS = 5000;

/** Handler runs per halt before the line is declared stuck (a level that never drops). */
const MAX_RUNS_PER_HALT = 64;

/**
 * The guest platform over qtest: wired lines are the IOAPIC inputs qtest intercepts, so the level
 * seen is the device's output. halt() waits for a line with a handler to be raised, runs the
 * handler while the line stays raised (level-triggered, as an IOAPIC re-delivers after EOI), and
 * returns. There is no EOI to send: no interrupt controller runs behind the intercepted inputs.
 */
export class QtestIrqPlatform implements GuestIrqPlatform {
  /** Wait of one halt (milliseconds). */
  timeoutMs: number;
  /** Handlers run so far. */
  handlerRuns = 0;
  private readonly handlers = new Map<number, () => void>();
  private halting = false;

  constructor(
    private readonly qt: QtestClient,
    /** The lines this machine has (intercepted IOAPIC inputs). */
    private readonly lines: readonly number[],
    timeoutMs = QTEST_HALT_TIMEOUT_MS,
  ) {
    this.timeoutMs = timeoutMs;
  }

  requestIrq(line: number, handler: () => void): void {
    if (!this.lines.includes(line)) {
      throw new VirtioError(
        'IRQ_INVALID_LINE',
        `line ${String(line)} is not a virtio-mmio line of this machine`,
      );
    }
    if (this.handlers.has(line)) throw new VirtioError('IRQ_INVALID_LINE', `line ${String(line)} is in use`);
    this.handlers.set(line, handler);
  }

  freeIrq(line: number): void {
    this.handlers.delete(line);
  }

  /** The first line with a handler that is raised, or -1. */
  private raised(): number {
    for (const line of this.handlers.keys()) if (this.qt.irqLevel(line)) return line;
    return -1;
  }

  /**
   * @throws VirtioError `TIMEOUT` when no line with a handler rises in time, or one stays raised
   *   through {@link MAX_RUNS_PER_HALT} handler runs
   * @throws VirtioError `INVALID_STATE` when called from a handler
   */
  halt(): void {
    if (this.halting) throw new VirtioError('INVALID_STATE', 'halt called from inside an interrupt handler');
    if (this.handlers.size === 0)
      throw new VirtioError('TIMEOUT', 'halt with no interrupt handler installed');
    const deadline = Date.now() + this.timeoutMs;
    let line = this.raised();
    while (line < 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new VirtioError(
          'TIMEOUT',
          `no interrupt on lines ${[...this.handlers.keys()].join(', ')} within ${String(this.timeoutMs)} ms`,
        );
      }
      this.qt.waitAnyEvent(left);
      line = this.raised();
    }
    this.halting = true;
    try {
      let runs = 0;
      while (line >= 0) {
        if (runs++ === MAX_RUNS_PER_HALT) {
          throw new VirtioError(
            'TIMEOUT',
            `line ${String(line)} still raised after ${String(MAX_RUNS_PER_HALT)} handler runs`,
          );
        }
        this.handlerRuns++;
        (this.handlers.get(line) as () => void)();
        line = this.raised();
      }
    } finally {
      this.halting = false;
    }
  }
}

/** One logged register access. */
export interface AccessRecord {
  /** `r` read, `w` write. */
  readonly op: 'r' | 'w';
  /** Width in bytes. */
  readonly width: 1 | 2 | 4;
  /** Offset in the window. */
  readonly offset: number;
  /** Value read or written. */
  readonly value: number;
  /** Interrupt line level right after the access. */
  readonly irq: boolean;
}

/** An {@link MmioAccess} that forwards to another and logs each access with the line level after it. */
export class RecordingMmioAccess implements MmioAccess {
  /** The log, in order. */
  readonly log: AccessRecord[] = [];

  constructor(
    private readonly inner: MmioAccess,
    /** Reads the device's interrupt line level. */
    private readonly level: () => boolean,
  ) {}

  private rec(op: 'r' | 'w', width: 1 | 2 | 4, offset: number, value: number): number {
    this.log.push({ op, width, offset, value, irq: this.level() });
    return value;
  }
  read32(offset: number): number {
    return this.rec('r', 4, offset, this.inner.read32(offset));
  }
  write32(offset: number, value: number): void {
    this.inner.write32(offset, value);
    this.rec('w', 4, offset, value >>> 0);
  }
  read8(offset: number): number {
    return this.rec('r', 1, offset, this.inner.read8(offset));
  }
  read16(offset: number): number {
    return this.rec('r', 2, offset, this.inner.read16(offset));
  }
  write8(offset: number, value: number): void {
    this.inner.write8(offset, value);
    this.rec('w', 1, offset, value & 0xff);
  }
  write16(offset: number, value: number): void {
    this.inner.write16(offset, value);
    this.rec('w', 2, offset, value & 0xffff);
  }
}

/**
 * Passes every access through except DriverFeatures writes with a DriverFeaturesSel of 2 or more,
 * which must be 0 (no feature bits there) and are dropped with their selector write: the driver
 * then writes words 0 and 1 only, as Linux does. For QEMU 7.2's modern transport, where any
 * non-zero DriverFeaturesSel selects word 1, so writing word 2 would erase VIRTIO_F_VERSION_1
 * (departure `driver-features-sel-high`, docs/qemu-departures.md).
 */
export class DriverFeaturesWordGuard implements MmioAccess {
  /** Writes dropped (selector writes and the zero words). */
  dropped = 0;
  private sel = 0;

  constructor(private readonly inner: MmioAccess) {}

  read32(offset: number): number {
    return this.inner.read32(offset);
  }
  /**
   * @throws VirtioError `INVALID_ARGUMENT` for a non-zero DriverFeatures word 2 or above (QEMU
   *   could not be told about it)
   */
  write32(offset: number, value: number): void {
    if (offset === MmioReg.DriverFeaturesSel) {
      this.sel = value >>> 0;
      if (this.sel >= 2) {
        this.dropped++;
        return;
      }
    } else if (offset === MmioReg.DriverFeatures && this.sel >= 2) {
      if (value !== 0) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `driver features word ${String(this.sel)} is ${hex(value >>> 0)}: qemu cannot take it`,
        );
      }
      this.dropped++;
      return;
    }
    this.inner.write32(offset, value);
  }
  read8(offset: number): number {
    return this.inner.read8(offset);
  }
  read16(offset: number): number {
    return this.inner.read16(offset);
  }
  write8(offset: number, value: number): void {
    this.inner.write8(offset, value);
  }
  write16(offset: number, value: number): void {
    this.inner.write16(offset, value);
  }
}
