/**
 * The wired interrupt controller: N level-triggered lines, each routed to one CPU vector, with the
 * remote-IRR ("in service") bit of an IOAPIC redirection entry and resample on EOI.
 *
 * Per line, as KVM's IOAPIC and crosvm `devices/src/virtio/interrupt.rs` do it:
 *
 * ```
 *   line goes high, unmasked, not in service  -> deliver vector, mark in service
 *   line goes high while in service           -> nothing (the CPU has not EOI'd yet)
 *   line goes low                             -> nothing (never delivers; in service stays)
 *   EOI(vector)                               -> clear in service; if still high and unmasked,
 *                                                deliver again (crosvm do_interrupt_resample)
 *   unmask while high and not in service      -> deliver (the IOAPIC re-evaluates the pin)
 * ```
 *
 * State and counters live in typed arrays sized at construction, so a level change, a delivery and
 * an EOI allocate nothing. Counter layout (Float64, exact to 2^53):
 *
 * ```
 *   counters[line * LINE_FIELDS + field]   field = Raises | Lowers | Redundant | Deliveries
 *                                                  | Eois | Redeliveries | SpuriousEois
 * ```
 *
 * @packageDocumentation
 */

import { VirtioError } from '../spec/index.js';
import type { InterruptLine } from '../transport/index.js';

/**
 * What receives vectors: the CPU's local APIC. The wired controller delivers its line vectors here;
 * an MSI controller (address/data → vector) delivers to the same target through the same method,
 * so one CPU model serves both. `deliver` must only latch the vector (no handler runs inside it):
 * it is called from inside device MMIO handlers.
 */
export interface InterruptTarget {
  /** Latches `vector` (0..255) as pending. */
  deliver(vector: number): void;
}

/** Number of interrupt vectors of an x86 CPU. */
export const NUM_VECTORS = 256;

/** First vector available to devices: 0..31 are CPU exceptions. */
export const FIRST_DEVICE_VECTOR = 32;

/** Construction options of {@link InterruptController}. */
export interface InterruptControllerOptions {
  /** Number of lines (an IOAPIC has 24). */
  readonly lines: number;
  /** Vector of line 0; line n gets `vectorBase + n`. Default {@link FIRST_DEVICE_VECTOR}. */
  readonly vectorBase?: number;
  /** Where vectors go; may be connected later with {@link InterruptController.connect}. */
  readonly target?: InterruptTarget;
  /** Whether lines start masked (as a firmware leaves IOAPIC pins). Default false. */
  readonly startMasked?: boolean;
}

/** Counters of one line, or their sums. */
export interface IrqCounters {
  /** Low-to-high level changes. */
  readonly raises: number;
  /** High-to-low level changes. */
  readonly lowers: number;
  /**
   * `setLevel` calls that did not change the level (the {@link InterruptLine} contract says the
   * device calls it only on a change; a non-zero count points at a device that does not).
   */
  readonly redundantLevels: number;
  /** Vectors delivered to the target (first deliveries and re-deliveries). */
  readonly deliveries: number;
  /** EOIs received for the line's vector (each is a trapped LAPIC write), spurious ones included. */
  readonly eois: number;
  /** Deliveries caused by an EOI finding the line still high (resample). */
  readonly redeliveries: number;
  /** EOIs received while the line was not in service. */
  readonly spuriousEois: number;
}

/** A snapshot of one line: its state and counters. */
export interface IrqLineStats extends IrqCounters {
  /** Line number. */
  readonly line: number;
  /** Vector the line delivers. */
  readonly vector: number;
  /** Current level. */
  readonly asserted: boolean;
  /** Delivered and not yet EOI'd (remote IRR). */
  readonly inService: boolean;
  /** Masked at the controller. */
  readonly masked: boolean;
}

/** A snapshot of the controller. */
export interface InterruptControllerStats {
  /** Every line, by number. */
  readonly lines: readonly IrqLineStats[];
  /** Sums over all lines. */
  readonly totals: IrqCounters;
  /** EOIs for vectors no line owns (e.g. edge-triggered MSI vectors, or a confused CPU model). */
  readonly unownedEois: number;
}

/** Indices into a line's counter stride. */
enum Field {
  Raises = 0,
  Lowers = 1,
  Redundant = 2,
  Deliveries = 3,
  Eois = 4,
  Redeliveries = 5,
  SpuriousEois = 6,
}

/** Counter fields per line. */
const LINE_FIELDS = 7;

/** The device-facing handle of one line: a fixed object per line, so drivers can keep it. */
class ControllerLine implements InterruptLine {
  constructor(
    private readonly controller: InterruptController,
    private readonly index: number,
  ) {}

  setLevel(asserted: boolean): void {
    this.controller.setLevel(this.index, asserted);
  }
}

/**
 * N level-triggered interrupt lines routed to vectors of one {@link InterruptTarget}, with
 * remote-IRR and resample on EOI. Lines are handed to devices through {@link InterruptController.line}.
 */
export class InterruptController {
  /** Number of lines. */
  readonly lineCount: number;
  /** Vector of line 0. */
  readonly vectorBase: number;
  private target: InterruptTarget | null;
  private readonly level: Uint8Array;
  private readonly inService: Uint8Array;
  private readonly masked: Uint8Array;
  private readonly counters: Float64Array;
  /** [0] EOIs of vectors no line owns. */
  private readonly unowned = new Float64Array(1);
  private readonly handles: ControllerLine[];

  /**
   * @param options - see {@link InterruptControllerOptions}
   * @throws VirtioError `INVALID_ARGUMENT` when `lines` is not a positive integer, or the vectors
   *   `vectorBase .. vectorBase + lines - 1` do not fit in 32..255
   */
  constructor(options: InterruptControllerOptions) {
    const lines = options.lines;
    const base = options.vectorBase ?? FIRST_DEVICE_VECTOR;
    if (!Number.isInteger(lines) || lines < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `interrupt controller needs at least one line, got ${lines}`);
    }
    if (!Number.isInteger(base) || base < FIRST_DEVICE_VECTOR || base + lines > NUM_VECTORS) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `vectors ${base}..${base + lines - 1} do not fit in ${FIRST_DEVICE_VECTOR}..${NUM_VECTORS - 1}`,
      );
    }
    this.lineCount = lines;
    this.vectorBase = base;
    this.target = options.target ?? null;
    this.level = new Uint8Array(lines);
    this.inService = new Uint8Array(lines);
    this.masked = new Uint8Array(lines).fill(options.startMasked === true ? 1 : 0);
    this.counters = new Float64Array(lines * LINE_FIELDS);
    this.handles = [];
    for (let i = 0; i < lines; i++) this.handles.push(new ControllerLine(this, i));
  }

  /**
   * Connects the vector target (the CPU). A controller delivers to one target.
   * @throws VirtioError `INVALID_STATE` when a different target is already connected
   */
  connect(target: InterruptTarget): void {
    if (this.target !== null && this.target !== target) {
      throw new VirtioError('INVALID_STATE', 'interrupt controller already has a target');
    }
    this.target = target;
  }

  /**
   * The device-facing handle of line `n` (the same object on every call).
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  line(n: number): InterruptLine {
    return this.handles[this.checkLine(n)];
  }

  /**
   * The vector line `n` delivers.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  vectorOf(n: number): number {
    return this.vectorBase + this.checkLine(n);
  }

  /** The line that delivers `vector`, or -1 when no line owns it. */
  lineOf(vector: number): number {
    const i = vector - this.vectorBase;
    return Number.isInteger(i) && i >= 0 && i < this.lineCount ? i : -1;
  }

  /**
   * Sets the level of line `n` (what {@link InterruptLine.setLevel} calls). Raising delivers when the
   * line is unmasked and not in service; lowering never delivers. Allocation-free.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   * @throws VirtioError `INVALID_STATE` when a delivery is due and no target is connected
   */
  setLevel(n: number, asserted: boolean): void {
    const i = this.checkLine(n);
    const at = i * LINE_FIELDS;
    const high = asserted ? 1 : 0;
    if (this.level[i] === high) {
      this.counters[at + Field.Redundant]++;
      return;
    }
    this.level[i] = high;
    if (high === 0) {
      // Lowering never delivers. A vector already latched at the CPU stays pending there: the
      // handler will find nothing to do (Linux vm_interrupt returns IRQ_NONE).
      this.counters[at + Field.Lowers]++;
      return;
    }
    this.counters[at + Field.Raises]++;
    if (this.inService[i] === 0 && this.masked[i] === 0) this.fire(i);
  }

  /**
   * End of interrupt for `vector` (the CPU's LAPIC EOI, broadcast to the controller for a
   * level-triggered vector). Clears in-service and, if the line is still high and unmasked,
   * delivers again (resample). An EOI for a line not in service is counted as spurious; one for a
   * vector no line owns is counted as unowned. Never throws for the vector value.
   * @throws VirtioError `INVALID_STATE` when a re-delivery is due and no target is connected
   */
  eoi(vector: number): void {
    const i = this.lineOf(vector);
    if (i < 0) {
      this.unowned[0]++;
      return;
    }
    const at = i * LINE_FIELDS;
    this.counters[at + Field.Eois]++;
    if (this.inService[i] === 0) {
      this.counters[at + Field.SpuriousEois]++;
      return;
    }
    this.inService[i] = 0;
    if (this.level[i] === 1 && this.masked[i] === 0) {
      this.counters[at + Field.Redeliveries]++;
      this.fire(i);
    }
  }

  /**
   * Masks line `n`: a rising level is remembered but not delivered. The in-service bit is kept.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  mask(n: number): void {
    this.masked[this.checkLine(n)] = 1;
  }

  /**
   * Unmasks line `n`; delivers at once when the line is high and not in service (a level-triggered
   * pin is re-evaluated on unmask).
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  unmask(n: number): void {
    const i = this.checkLine(n);
    if (this.masked[i] === 0) return;
    this.masked[i] = 0;
    if (this.level[i] === 1 && this.inService[i] === 0) this.fire(i);
  }

  /**
   * Whether line `n` is high.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  isAsserted(n: number): boolean {
    return this.level[this.checkLine(n)] === 1;
  }

  /**
   * Whether line `n` was delivered and not yet EOI'd.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  isInService(n: number): boolean {
    return this.inService[this.checkLine(n)] === 1;
  }

  /**
   * Whether line `n` is masked.
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  isMasked(n: number): boolean {
    return this.masked[this.checkLine(n)] === 1;
  }

  /**
   * A snapshot of line `n` (allocates; not for the hot path).
   * @throws VirtioError `IRQ_INVALID_LINE` when `n` is not a line of this controller
   */
  lineStats(n: number): IrqLineStats {
    const i = this.checkLine(n);
    const c = this.counters;
    const at = i * LINE_FIELDS;
    return {
      line: i,
      vector: this.vectorBase + i,
      asserted: this.level[i] === 1,
      inService: this.inService[i] === 1,
      masked: this.masked[i] === 1,
      raises: c[at + Field.Raises],
      lowers: c[at + Field.Lowers],
      redundantLevels: c[at + Field.Redundant],
      deliveries: c[at + Field.Deliveries],
      eois: c[at + Field.Eois],
      redeliveries: c[at + Field.Redeliveries],
      spuriousEois: c[at + Field.SpuriousEois],
    };
  }

  /** A snapshot of every line and the totals (allocates; not for the hot path). */
  stats(): InterruptControllerStats {
    const lines: IrqLineStats[] = [];
    const t = new Float64Array(LINE_FIELDS);
    for (let i = 0; i < this.lineCount; i++) {
      lines.push(this.lineStats(i));
      for (let f = 0; f < LINE_FIELDS; f++) t[f] += this.counters[i * LINE_FIELDS + f];
    }
    return {
      lines,
      totals: {
        raises: t[Field.Raises],
        lowers: t[Field.Lowers],
        redundantLevels: t[Field.Redundant],
        deliveries: t[Field.Deliveries],
        eois: t[Field.Eois],
        redeliveries: t[Field.Redeliveries],
        spuriousEois: t[Field.SpuriousEois],
      },
      unownedEois: this.unowned[0],
    };
  }

  /** Zeroes every counter; levels, in-service and mask bits stay. */
  resetStats(): void {
    this.counters.fill(0);
    this.unowned.fill(0);
  }

  /** Marks line `i` in service, then delivers its vector (in that order: the target may EOI at once). */
  private fire(i: number): void {
    const target = this.target;
    if (target === null) {
      throw new VirtioError('INVALID_STATE', `line ${i} fired with no interrupt target connected`);
    }
    this.inService[i] = 1;
    this.counters[i * LINE_FIELDS + Field.Deliveries]++;
    target.deliver(this.vectorBase + i);
  }

  /** `n` as a line index. */
  private checkLine(n: number): number {
    if (!Number.isInteger(n) || n < 0 || n >= this.lineCount) {
      throw new VirtioError('IRQ_INVALID_LINE', `no interrupt line ${n} (controller has ${this.lineCount})`);
    }
    return n;
  }
}
