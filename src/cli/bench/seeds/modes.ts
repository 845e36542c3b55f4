/**
 * The modes the seeds' benchmark compares: how the device's interrupts reach the guest (standard
 * single line in Version 2 and Version 1, wired lines per queue or config + shared, seed MSI
 * non-sharing and sharing, seed MSI with the per-queue notification addresses), how notifications
 * travel (trapped exit or posted doorbell) and whether VIRTIO_F_EVENT_IDX is offered.
 *
 * @packageDocumentation
 */

import type { InterruptMode } from '../../../transport/index.js';
import type { NetRrSetupArgs } from '../../../vmm/benchPrograms.js';
import type { NotifyMode } from '../../../vmm/index.js';

/** The interrupt layouts compared. */
export type IrqLayout =
  | 'line-v2'
  | 'line-v1'
  | 'lines-per-queue'
  | 'lines-shared'
  | 'msi'
  | 'msi-shared'
  | 'msi-notify';

/** Every {@link IrqLayout}, in table order. */
export const IRQ_LAYOUTS: readonly IrqLayout[] = [
  'line-v2',
  'line-v1',
  'lines-per-queue',
  'lines-shared',
  'msi',
  'msi-shared',
  'msi-notify',
];

/** One mode of the request/response workload. */
export interface RrMode {
  /** Stable name used in the JSON (`<layout> <notify>[ no-event-idx]`), e.g. `msi posted`. */
  readonly name: string;
  /** Interrupt layout. */
  readonly layout: IrqLayout;
  /** Notification writes trapped (an exit each) or posted (a doorbell, ioeventfd). */
  readonly notify: NotifyMode;
  /** VIRTIO_F_EVENT_IDX offered by the device. */
  readonly eventIdx: boolean;
  /** The VMM setup's arguments. */
  readonly setup: NetRrSetupArgs;
  /** Interrupt modes the guest driver's cascade may use (forces the mode). */
  readonly allow: readonly InterruptMode[];
  /** The interrupt mode the cascade must end up in. */
  readonly expect: InterruptMode;
}

/** What each layout means for the device (setup) and the guest (cascade restriction). */
const LAYOUTS: Record<
  IrqLayout,
  { setup: NetRrSetupArgs; allow: readonly InterruptMode[]; expect: InterruptMode }
> = {
  'line-v2': { setup: { version: 2 }, allow: ['line'], expect: 'line' },
  'line-v1': { setup: { version: 1 }, allow: ['line'], expect: 'line' },
  'lines-per-queue': { setup: { lines: 'per-queue' }, allow: ['lines-per-queue'], expect: 'lines-per-queue' },
  'lines-shared': { setup: { lines: 'shared' }, allow: ['lines-shared'], expect: 'lines-shared' },
  msi: { setup: { msi: 'non-sharing' }, allow: ['msi-per-queue'], expect: 'msi-per-queue' },
  'msi-shared': { setup: { msi: 'sharing' }, allow: ['msi-shared'], expect: 'msi-shared' },
  'msi-notify': {
    setup: { msi: 'non-sharing', notification: true },
    allow: ['msi-per-queue'],
    expect: 'msi-per-queue',
  },
};

/** Builds one mode. */
export function rrMode(layout: IrqLayout, notify: NotifyMode, eventIdx = true): RrMode {
  const l = LAYOUTS[layout];
  return {
    name: `${layout} ${notify}${eventIdx ? '' : ' no-event-idx'}`,
    layout,
    notify,
    eventIdx,
    setup: { ...l.setup, eventIdx },
    allow: l.allow,
    expect: l.expect,
  };
}

/** The layouts the quick run measures with posted notifications too (the others: trapped only). */
const QUICK_POSTED: readonly IrqLayout[] = ['line-v2', 'msi', 'msi-shared'];

/**
 * The modes of one run. Full: every layout x {trapped, posted} x EVENT_IDX {on, off}. Quick (the
 * sub-minute headline): EVENT_IDX on, every layout but `msi-notify` trapped, and posted for the
 * standard line and seed MSI (shared or not).
 */
export function rrModes(quick: boolean): RrMode[] {
  const out: RrMode[] = [];
  for (const eventIdx of quick ? [true] : [true, false]) {
    for (const layout of IRQ_LAYOUTS) {
      if (quick && layout === 'msi-notify') continue;
      for (const notify of ['trapped', 'posted'] as const) {
        if (quick && notify === 'posted' && !QUICK_POSTED.includes(layout)) continue;
        out.push(rrMode(layout, notify, eventIdx));
      }
    }
  }
  return out;
}

/** Queue depths of the block workload (fio `iodepth`). */
export const BLK_QUEUE_DEPTHS: readonly number[] = [1, 32];

/**
 * The modes of the block and bulk workloads: the standard line and seed MSI (the Kata comparison,
 * MMIO's single line against MSI-X), each with trapped and posted notifications, EVENT_IDX on;
 * quick, posted only (the pair the block ratios compare).
 */
export function blkModes(quick = false): RrMode[] {
  const out: RrMode[] = [];
  for (const layout of ['line-v2', 'msi'] as const) {
    for (const notify of ['trapped', 'posted'] as const) {
      if (quick && notify === 'trapped') continue;
      out.push(rrMode(layout, notify, true));
    }
  }
  return out;
}
