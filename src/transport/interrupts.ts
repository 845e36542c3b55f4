/**
 * How the transport delivers device notifications to the driver. The transport talks only to
 * {@link InterruptDelivery}; the standard mechanism is {@link LineInterrupt}: the InterruptStatus
 * word and one level-triggered line (4.2.3.4: "a single, dedicated interrupt signal, which is
 * asserted when at least one of the bits described in the description of InterruptStatus is set").
 * Other mechanisms implement the same interface: {@link MultiLineInterrupt} (a line for configuration
 * changes and one per queue or one for all queues, the 2014 multi-IRQ RFC; docs/profiles/multi-line.md)
 * and the seed profile's MSI delivery (`seed/msiDelivery.ts`, docs/profiles/seed-v2.md).
 *
 * Hot path: signalling and acknowledging allocate nothing.
 *
 * @packageDocumentation
 */

import { InterruptBit, VirtioError } from '../spec/index.js';
import type { InterruptLine } from './types.js';

/**
 * A device-to-driver notification mechanism as the transport drives it. The transport calls these
 * after it has decided a notification is due (the driver wants it and the device is live).
 */
export interface InterruptDelivery {
  /**
   * The InterruptStatus / InterruptACK bits this mechanism defines; an InterruptACK with any other
   * bit is a guest error (4.2.2.2: the driver "MUST NOT set any of the undefined bits").
   */
  readonly definedBits: number;
  /** A used buffer notification for queue `index`. */
  signalQueue(index: number): void;
  /** A configuration change notification (also used for DEVICE_NEEDS_RESET, 2.1.2). */
  signalConfig(): void;
  /** The value the InterruptStatus register reads. */
  readStatus(): number;
  /** InterruptACK: the driver handled the events in `bits` (only defined bits are passed). */
  ack(bits: number): void;
  /** Device reset: forget pending events and lower every line (4.2.2.1). */
  reset(): void;
}

/**
 * InterruptStatus plus one level-triggered line. The line is asserted when the first bit is set and
 * deasserted exactly when InterruptStatus becomes 0; {@link InterruptLine.setLevel} is called only
 * when the level changes.
 */
export class LineInterrupt implements InterruptDelivery {
  readonly definedBits = InterruptBit.VRING | InterruptBit.CONFIG;
  private isr = 0;
  private asserted = false;

  /** @param line - the wired line this device drives */
  constructor(private readonly line: InterruptLine) {}

  /** Whether the line is currently asserted. */
  get level(): boolean {
    return this.asserted;
  }

  signalQueue(_index: number): void {
    // 4.2.2 InterruptStatus bit 0: "the device has used a buffer in at least one of the active
    // virtual queues"; the driver treats it as a notification for each active queue (4.2.3.4).
    this.raise(InterruptBit.VRING);
  }

  signalConfig(): void {
    this.raise(InterruptBit.CONFIG);
  }

  readStatus(): number {
    return this.isr;
  }

  ack(bits: number): void {
    // 4.2.2.1: "The device MUST present each event by setting the corresponding bit in
    // InterruptStatus from the moment it takes place, until the driver acknowledges the interrupt".
    this.isr &= ~bits;
    this.update();
  }

  reset(): void {
    // 4.2.2.1: "Upon reset, the device MUST clear all bits in InterruptStatus".
    this.isr = 0;
    this.update();
  }

  private raise(bit: number): void {
    this.isr |= bit;
    this.update();
  }

  private update(): void {
    const level = this.isr !== 0;
    if (level === this.asserted) return;
    // Record the level first: the line may run the guest's handler synchronously, which reads and
    // acknowledges InterruptStatus and so re-enters update().
    this.asserted = level;
    this.line.setLevel(level);
  }
}

/**
 * Extra wired lines of a device (the 2014 multi-IRQ RFC): a line for configuration changes, plus
 * either one line per queue (`queues[i]` for queue i) or one line for every queue. The standard
 * line given as `irq` stays: it is the combined output (docs/profiles/multi-line.md).
 */
export type MultiLineOptions =
  | {
      /** Configuration change line. */
      readonly config: InterruptLine;
      /** One line per queue, by queue index: as many as the device has queues, at most 30. */
      readonly queues: readonly InterruptLine[];
    }
  | {
      /** Configuration change line. */
      readonly config: InterruptLine;
      /** One line for every queue. */
      readonly sharedQueues: InterruptLine;
    };

/** InterruptStatus bit of queue 0 in the multi-line layout; queue i is bit `2 + i` (Pawel Moll, 2014). */
export const QUEUE_INTERRUPT_SHIFT = 2;

/** Queues that have their own InterruptStatus bit (bits 2..31), hence the most per-queue lines. */
export const MAX_QUEUE_INTERRUPT_BITS = 32 - QUEUE_INTERRUPT_SHIFT;

/** The InterruptStatus / InterruptACK bit of queue `index` in the multi-line layout, or 0 past bit 31. */
export function queueInterruptBit(index: number): number {
  return index >= 0 && index < MAX_QUEUE_INTERRUPT_BITS ? (1 << (QUEUE_INTERRUPT_SHIFT + index)) >>> 0 : 0;
}

/**
 * Several level-triggered lines with per-line pending state (docs/profiles/multi-line.md).
 *
 * ```
 * pending state : config bit, one bit per queue
 * line level    : standard (`irq`) = any bit          (the combined output, Pawel Moll's "logical or")
 *                 config          = config bit
 *                 queue line i    = queue i's bit      (per-queue layout)
 *                 shared line     = any queue bit      (shared layout)
 * InterruptStatus: bit 0 = any queue, bit 1 = config, bit 2+i = queue i (i < 30)
 * InterruptACK   : bit 1 clears config, bit 2+i clears queue i, bit 0 clears every queue
 * ```
 *
 * Every line is the OR of pending bits that exactly one handler acknowledges, so a line is never
 * left asserted once its handler ran, and an event raised after an acknowledgement raises the line
 * again (resample on EOI re-delivers it when the line is still in service): nothing is lost. A
 * driver that knows nothing of the extra lines uses the standard line and acknowledges what it read,
 * which clears every bit. Levels are recorded before {@link InterruptLine.setLevel} is called, and
 * `setLevel` is called only on a change. Allocation-free.
 */
export class MultiLineInterrupt implements InterruptDelivery {
  readonly definedBits: number;
  private readonly standard: InterruptLine;
  private readonly configLine: InterruptLine;
  private readonly queueLines: readonly InterruptLine[] | null;
  private readonly sharedLine: InterruptLine | null;
  private configPending = 0;
  private readonly queuePending: Uint8Array;
  private pendingQueues = 0;
  /** InterruptStatus bits 2..31 of pending queues. */
  private queueBits = 0;
  /** Levels: [0] standard, [1] config, [2] shared, [3 + i] queue line i. */
  private readonly levels: Uint8Array;

  /**
   * @param standard - the device's standard line (`irq`), the combined output
   * @param lines - the extra lines
   * @param numQueues - the device's number of queues
   * @throws VirtioError `INVALID_ARGUMENT` when `queues` does not have one line per queue, there
   *   are more than 30 per-queue lines, or one line object is given twice
   */
  constructor(standard: InterruptLine, lines: MultiLineOptions, numQueues: number) {
    this.standard = standard;
    this.configLine = lines.config;
    const all: InterruptLine[] = [standard, lines.config];
    if ('queues' in lines) {
      if (lines.queues.length !== numQueues) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `per-queue lines: ${String(lines.queues.length)} lines for ${String(numQueues)} queues`,
        );
      }
      if (numQueues > MAX_QUEUE_INTERRUPT_BITS) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `per-queue lines: ${String(numQueues)} queues, at most ${String(MAX_QUEUE_INTERRUPT_BITS)} have a status bit`,
        );
      }
      this.queueLines = lines.queues;
      this.sharedLine = null;
      all.push(...lines.queues);
    } else {
      this.queueLines = null;
      this.sharedLine = lines.sharedQueues;
      all.push(lines.sharedQueues);
    }
    if (new Set(all).size !== all.length) {
      throw new VirtioError('INVALID_ARGUMENT', 'the same interrupt line is given twice');
    }
    this.queuePending = new Uint8Array(numQueues);
    this.levels = new Uint8Array(3 + numQueues);
    let bits = InterruptBit.VRING | InterruptBit.CONFIG;
    for (let i = 0; i < numQueues; i++) bits |= queueInterruptBit(i);
    this.definedBits = bits >>> 0;
  }

  /** Whether the standard (combined) line is asserted. */
  get standardLevel(): boolean {
    return this.levels[0] === 1;
  }

  /** Whether the configuration line is asserted. */
  get configLevel(): boolean {
    return this.levels[1] === 1;
  }

  /** Whether the line of queue `index` (its own, or the shared one) is asserted. */
  queueLevel(index: number): boolean {
    if (this.queueLines === null) return this.levels[2] === 1;
    return this.levels[3 + index] === 1;
  }

  signalQueue(index: number): void {
    if (this.queuePending[index] === 0) {
      this.queuePending[index] = 1;
      this.pendingQueues++;
      this.queueBits = (this.queueBits | queueInterruptBit(index)) >>> 0;
    }
    this.update();
  }

  signalConfig(): void {
    this.configPending = 1;
    this.update();
  }

  readStatus(): number {
    return (
      ((this.pendingQueues > 0 ? InterruptBit.VRING : 0) |
        (this.configPending === 1 ? InterruptBit.CONFIG : 0) |
        this.queueBits) >>>
      0
    );
  }

  ack(bits: number): void {
    if ((bits & InterruptBit.CONFIG) !== 0) this.configPending = 0;
    const p = this.queuePending;
    if ((bits & InterruptBit.VRING) !== 0) {
      // Bit 0 is the combined bit: acknowledging it acknowledges every queue (what a driver using
      // the standard line, or the shared queue line, handles at once).
      p.fill(0);
      this.pendingQueues = 0;
      this.queueBits = 0;
    } else if ((bits & this.queueBits) !== 0) {
      for (let i = 0; i < p.length && i < MAX_QUEUE_INTERRUPT_BITS; i++) {
        if (p[i] === 1 && (bits & queueInterruptBit(i)) !== 0) {
          p[i] = 0;
          this.pendingQueues--;
        }
      }
      this.queueBits = (this.queueBits & ~bits) >>> 0;
    }
    this.update();
  }

  reset(): void {
    this.configPending = 0;
    this.queuePending.fill(0);
    this.pendingQueues = 0;
    this.queueBits = 0;
    this.update();
  }

  /** Brings every line to the level its pending bits give, calling setLevel only on a change. */
  private update(): void {
    const anyQueue = this.pendingQueues > 0 ? 1 : 0;
    this.drive(0, this.standard, anyQueue | this.configPending);
    this.drive(1, this.configLine, this.configPending);
    if (this.sharedLine !== null) this.drive(2, this.sharedLine, this.pendingQueues > 0 ? 1 : 0);
    const lines = this.queueLines;
    if (lines !== null) {
      for (let i = 0; i < lines.length; i++) this.drive(3 + i, lines[i], this.queuePending[i]);
    }
  }

  private drive(slot: number, line: InterruptLine, level: number): void {
    if (this.levels[slot] === level) return;
    // Record first: setLevel may re-enter through a synchronous handler that acknowledges.
    this.levels[slot] = level;
    line.setLevel(level === 1);
  }
}
