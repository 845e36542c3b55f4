/**
 * How the transport delivers device notifications to the driver. The transport talks only to
 * {@link InterruptDelivery}; the standard mechanism is {@link LineInterrupt}: the InterruptStatus
 * word and one level-triggered line (4.2.3.4: "a single, dedicated interrupt signal, which is
 * asserted when at least one of the bits described in the description of InterruptStatus is set").
 * Other mechanisms (MSI vectors, one wired line per queue) implement the same interface.
 *
 * Hot path: signalling and acknowledging allocate nothing.
 *
 * @packageDocumentation
 */

import { InterruptBit } from '../spec/index.js';
import type { InterruptLine } from './types.js';

/**
 * A device-to-driver notification mechanism as the transport drives it. The transport calls these
 * after it has decided a notification is due (the driver wants it and the device is live).
 */
export interface InterruptDelivery {
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
