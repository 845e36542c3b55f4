/**
 * The queue-serving loop every device model shares: pop available chains, hand each to the device,
 * return it in the used ring, and send one used buffer notification per batch. The work a single
 * available buffer notification can cause is bounded, whatever the driver keeps adding.
 *
 * @packageDocumentation
 */

import type { DescriptorChain } from '../virtqueue/index.js';
import type { DeviceContext } from './virtioDevice.js';

/**
 * Passes of at most one queue size of chains that one notification may run. Each pass ends by
 * re-enabling notifications (2.7.10) and looking again for buffers that raced the re-enable.
 */
export const MAX_PASSES_PER_NOTIFY = 4;

/** Outcome of {@link serveQueue}. */
export const ServeOutcome = {
  /** Everything available was served. */
  DONE: 0,
  /** The work bound was reached with chains still available; they wait for the next notification. */
  DEFERRED: 1,
  /** The ring is corrupt: the transport was told (DEVICE_NEEDS_RESET) and the queue is stopped. */
  FAILED: 2,
  /** The queue is not live (not ready, or already failed): nothing was done. */
  IDLE: 3,
} as const;

/** Values of {@link ServeOutcome}. */
export type ServeOutcome = (typeof ServeOutcome)[keyof typeof ServeOutcome];

/**
 * Serves queue `index` of `ctx`: for each available chain calls `handle(chain)`, which returns the
 * number of bytes written into the chain's writable part (the used length), then puts it in the
 * used ring. At most {@link MAX_PASSES_PER_NOTIFY} passes of the queue size. Sends one used buffer
 * notification for the whole batch (subject to the driver's suppression), before reporting a
 * corrupt ring through `ctx.queueFailed`. `chain` is the device's reusable chain object.
 */
export function serveQueue(
  ctx: DeviceContext,
  index: number,
  chain: DescriptorChain,
  handle: (chain: DescriptorChain) => number,
): ServeOutcome {
  const q = ctx.queues[index];
  // A failed queue was already reported through queueFailed and stays stopped until reset (2.1.2).
  if (q === undefined || !q.ready || q.error !== null) return ServeOutcome.IDLE;
  const mem = ctx.mem;
  let used = false;
  let outcome: ServeOutcome = ServeOutcome.DONE;
  for (let pass = 0; ; pass++) {
    q.disableNotification(mem);
    for (let budget = q.size; budget > 0 && q.pop(mem, chain); budget--) {
      q.addUsed(mem, chain.head, handle(chain));
      used = true;
    }
    if (q.error !== null) {
      if (used) ctx.notifyUsed(index);
      ctx.queueFailed(index, q.error);
      return ServeOutcome.FAILED;
    }
    // 2.7.10: re-enable, then look again for buffers that raced the re-enable.
    const more = q.enableNotification(mem);
    if (q.error !== null) {
      // The look found avail.idx corrupt (another vCPU rewrote it meanwhile): a ring failure like
      // any other (2.1.2), reported once, not left for a notification that never comes.
      if (used) ctx.notifyUsed(index);
      ctx.queueFailed(index, q.error);
      return ServeOutcome.FAILED;
    }
    if (!more) break;
    if (pass + 1 >= MAX_PASSES_PER_NOTIFY) {
      outcome = ServeOutcome.DEFERRED;
      break;
    }
  }
  if (used) ctx.notifyUsed(index);
  // Buffers left: ask the host for another pass later rather than strand them.
  if (outcome === ServeOutcome.DEFERRED) ctx.defer?.(index);
  return outcome;
}
