/**
 * The platform's message-signalled interrupt controller, x86 style: a device "writes" (address,
 * data), the controller decodes the write as the local APICs would and delivers a vector to the
 * target CPU's {@link InterruptTarget}.
 *
 * ```
 * address  63..32  0                       (a non-zero high half is not an interrupt address)
 *          31..20  0xfee                   (the interrupt address range 0xfee00000..0xfeefffff)
 *          19..12  destination APIC ID     (physical destination; bits 11..0 are not decoded)
 * data      7..0   vector                  (16..255; 0..15 are illegal APIC vectors)
 *          15..8   delivery / trigger mode (not decoded: every message is a fixed, edge interrupt)
 * ```
 *
 * A message whose address is outside the range, whose destination no CPU has, or whose vector is
 * illegal, is counted as dropped (a posted write nobody claims). MSI vectors are edge-triggered:
 * the controller keeps no in-service state and takes no EOI (the CPU's EOI for an MSI vector stays
 * at its local APIC). Sending, decoding and counting allocate nothing.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../spec/index.js';
import type { MsiMessage, MsiSink } from '../transport/index.js';
import { type InterruptTarget, NUM_VECTORS } from './irq.js';

/** Base of the x86 interrupt address range. */
export const MSI_ADDRESS_BASE = 0xfee0_0000;

/** Bits of the address that select the interrupt range (31..20). */
export const MSI_ADDRESS_MASK = 0xfff0_0000;

/** Shift of the destination APIC ID in the address (bits 19..12). */
export const MSI_DEST_SHIFT = 12;

/** Number of APIC IDs the 8-bit destination field names. */
export const MSI_MAX_DESTINATIONS = 256;

/** Lowest vector a message may carry: 0..15 are illegal as APIC vectors. */
export const MSI_MIN_VECTOR = 16;

/** Why a message was dropped. */
export type MsiDropReason = 'address' | 'destination' | 'vector';

/** Counters of an {@link MsiController}. */
export interface MsiControllerStats {
  /** Messages received (delivered plus dropped). */
  readonly messages: number;
  /** Messages delivered to a CPU. */
  readonly delivered: number;
  /** Delivered messages by vector, for every vector with at least one. */
  readonly deliveredByVector: ReadonlyArray<{ readonly vector: number; readonly count: number }>;
  /** Messages nobody decodes. */
  readonly dropped: number;
  /** Dropped messages by reason. */
  readonly droppedBy: Readonly<Record<MsiDropReason, number>>;
}

/**
 * The (address, data) that delivers `vector` to the CPU with APIC ID `apicId`: what the guest's
 * interrupt allocator writes into a device (Linux `irq_msi_compose_msg`).
 * @throws VirtioError `INVALID_ARGUMENT` for an APIC ID outside 0..255 or a vector outside 16..255
 */
export function composeMsiMessage(apicId: number, vector: number): MsiMessage {
  if (!Number.isInteger(apicId) || apicId < 0 || apicId >= MSI_MAX_DESTINATIONS) {
    throw new VirtioError('INVALID_ARGUMENT', `apic id ${String(apicId)} outside 0..255`);
  }
  if (!Number.isInteger(vector) || vector < MSI_MIN_VECTOR || vector >= NUM_VECTORS) {
    throw new VirtioError('INVALID_ARGUMENT', `msi vector ${String(vector)} outside 16..255`);
  }
  return { addressLow: (MSI_ADDRESS_BASE | (apicId << MSI_DEST_SHIFT)) >>> 0, addressHigh: 0, data: vector };
}

/** Counter slots. */
enum Count {
  Messages = 0,
  Delivered = 1,
  DroppedAddress = 2,
  DroppedDestination = 3,
  DroppedVector = 4,
}

/**
 * Decodes x86 MSI writes and delivers their vectors to CPUs by APIC ID. It is the {@link MsiSink}
 * every MSI-capable device of a machine sends to.
 */
export class MsiController implements MsiSink {
  private readonly targets: Array<InterruptTarget | null> = new Array(MSI_MAX_DESTINATIONS).fill(null);
  private readonly perVector = new Float64Array(NUM_VECTORS);
  private readonly counts = new Float64Array(5);

  /** @param targets - initial CPUs by APIC ID (see {@link MsiController.addTarget}) */
  constructor(targets: Iterable<readonly [number, InterruptTarget]> = []) {
    for (const [id, target] of targets) this.addTarget(id, target);
  }

  /**
   * Makes `target` the CPU with APIC ID `apicId`.
   * @throws VirtioError `INVALID_ARGUMENT` for an ID outside 0..255
   * @throws VirtioError `INVALID_STATE` when the ID already has a CPU
   */
  addTarget(apicId: number, target: InterruptTarget): void {
    if (!Number.isInteger(apicId) || apicId < 0 || apicId >= MSI_MAX_DESTINATIONS) {
      throw new VirtioError('INVALID_ARGUMENT', `apic id ${String(apicId)} outside 0..255`);
    }
    if (this.targets[apicId] !== null) {
      throw new VirtioError('INVALID_STATE', `apic id ${String(apicId)} already has a cpu`);
    }
    this.targets[apicId] = target;
  }

  /** Whether APIC ID `apicId` has a CPU. */
  hasTarget(apicId: number): boolean {
    return (
      Number.isInteger(apicId) &&
      apicId >= 0 &&
      apicId < MSI_MAX_DESTINATIONS &&
      this.targets[apicId] !== null
    );
  }

  /**
   * A device's message: decodes it and delivers the vector, or counts it as dropped. Never throws
   * for the values (a guest programs them); allocation-free.
   */
  send(addressLow: number, addressHigh: number, data: number): void {
    this.counts[Count.Messages]++;
    const low = addressLow >>> 0;
    if (addressHigh >>> 0 !== 0 || (low & MSI_ADDRESS_MASK) >>> 0 !== MSI_ADDRESS_BASE) {
      this.counts[Count.DroppedAddress]++;
      return;
    }
    const target = this.targets[(low >>> MSI_DEST_SHIFT) & 0xff];
    if (target === null) {
      this.counts[Count.DroppedDestination]++;
      return;
    }
    const vector = data & 0xff;
    if (vector < MSI_MIN_VECTOR) {
      this.counts[Count.DroppedVector]++;
      return;
    }
    this.counts[Count.Delivered]++;
    this.perVector[vector]++;
    target.deliver(vector);
  }

  /** Messages delivered with `vector`. */
  deliveredCount(vector: number): number {
    return Number.isInteger(vector) && vector >= 0 && vector < NUM_VECTORS ? this.perVector[vector] : 0;
  }

  /** A snapshot of the counters (allocates; not for the hot path). */
  stats(): MsiControllerStats {
    const deliveredByVector: Array<{ vector: number; count: number }> = [];
    for (let v = 0; v < NUM_VECTORS; v++) {
      if (this.perVector[v] !== 0) deliveredByVector.push({ vector: v, count: this.perVector[v] });
    }
    const c = this.counts;
    return {
      messages: c[Count.Messages],
      delivered: c[Count.Delivered],
      deliveredByVector,
      dropped: c[Count.DroppedAddress] + c[Count.DroppedDestination] + c[Count.DroppedVector],
      droppedBy: {
        address: c[Count.DroppedAddress],
        destination: c[Count.DroppedDestination],
        vector: c[Count.DroppedVector],
      },
    };
  }

  /** Zeroes every counter; targets stay. */
  resetStats(): void {
    this.perVector.fill(0);
    this.counts.fill(0);
  }
}
