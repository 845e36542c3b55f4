/**
 * Split ring layout arithmetic (virtio 1.2+, 2.7 "Split Virtqueues", and 2.7.2 legacy layout).
 *
 * @packageDocumentation
 */

import { AVAIL_ELEM_SIZE, DESC_SIZE, USED_ELEM_SIZE } from '../spec/index.js';

/** Bytes of the descriptor table for `size` entries (2.7: "16 * (Queue Size)"). */
export function descTableBytes(size: number): number {
  return DESC_SIZE * size;
}

/** Bytes of the available ring including used_event (2.7: "6 + 2 * (Queue Size)"). */
export function availRingBytes(size: number): number {
  return 6 + AVAIL_ELEM_SIZE * size;
}

/** Bytes of the used ring including avail_event (2.7: "6 + 8 * (Queue Size)"). */
export function usedRingBytes(size: number): number {
  return 6 + USED_ELEM_SIZE * size;
}

/** Rounds `value` up to a multiple of `align` (a power of two, or any positive integer). */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/** The three areas of a split ring. */
export interface RingAddresses {
  /** Guest physical address of the descriptor table. */
  descTable: number;
  /** Guest physical address of the available ring (Driver Area). */
  availRing: number;
  /** Guest physical address of the used ring (Device Area). */
  usedRing: number;
}

/**
 * The legacy contiguous layout (2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout"): the
 * descriptor table at `base`, the available ring right after it, and the used ring at the next
 * `align` boundary.
 */
export function legacyLayout(base: number, size: number, align: number): RingAddresses {
  const availRing = base + descTableBytes(size);
  const usedRing = alignUp(availRing + availRingBytes(size), align);
  return { descTable: base, availRing, usedRing };
}

/** Total bytes of a legacy contiguous ring (what QueuePFN points at). */
export function legacyRingBytes(size: number, align: number): number {
  return alignUp(descTableBytes(size) + availRingBytes(size), align) + alignUp(usedRingBytes(size), align);
}

/** True for 1, 2, 4, ... 2^31. */
export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && n <= 0x8000_0000 && (n & (n - 1)) === 0;
}
