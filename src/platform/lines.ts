/**
 * Wired-line allocation for a device (the 2014 multi-IRQ RFC): how many lines a layout needs, in
 * which order the machine describes them to the guest, and the transport's `lines` option for them.
 * One place for the in-process Machine and the threaded VMM, so both describe devices alike.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../spec/index.js';
import type { InterruptLine, MultiLineOptions } from '../transport/index.js';
import type { InterruptController } from './irq.js';

/**
 * Wired lines of a device: 'single' (the standard line only), 'per-queue' (plus a configuration
 * line and one line per queue) or 'shared' (plus a configuration line and one line for all queues).
 */
export type LineLayout = 'single' | 'per-queue' | 'shared';

/** Lines allocated for one device. */
export interface DeviceLines {
  /** Line numbers in the machine-description order: standard, config, queue 0.. (or shared). */
  readonly irqLines: number[];
  /** The standard line (`irqLines[0]`): asserted for every event (the combined output). */
  readonly standard: InterruptLine;
  /** The transport's extra lines, or undefined for 'single'. */
  readonly lines: MultiLineOptions | undefined;
}

/**
 * Allocates the lines of `layout` for a device with `numQueues` queues, starting at `first`.
 * @throws VirtioError `INVALID_ARGUMENT` for an unknown layout, `IRQ_INVALID_LINE` when the
 *   controller runs out of lines (nothing is allocated then)
 */
export function allocateDeviceLines(
  irq: InterruptController,
  first: number,
  layout: LineLayout,
  numQueues: number,
): DeviceLines {
  let count: number;
  if (layout === 'single') count = 1;
  else if (layout === 'per-queue') count = 2 + numQueues;
  else if (layout === 'shared') count = 3;
  else throw new VirtioError('INVALID_ARGUMENT', `unknown line layout ${String(layout)}`);
  const irqLines: number[] = [];
  const handles: InterruptLine[] = [];
  for (let i = 0; i < count; i++) {
    handles.push(irq.line(first + i));
    irqLines.push(first + i);
  }
  let lines: MultiLineOptions | undefined;
  if (layout === 'per-queue') lines = { config: handles[1], queues: handles.slice(2) };
  else if (layout === 'shared') lines = { config: handles[1], sharedQueues: handles[2] };
  return { irqLines, standard: handles[0], lines };
}
