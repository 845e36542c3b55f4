/**
 * The seed v2 profile as transport options and register rows: VIRTIO_F_MMIO_NOTIFICATION (bit 39,
 * a readable QueueNotify and one notification address per queue past the configuration space) and
 * VIRTIO_F_MMIO_MSI (bit 40, the Msi* registers at 0x0c0..0x0dc). Off by default, chosen per
 * device with `new MmioTransport(dev, { ..., seed: { msi, notification }, msiSink })`. Normative
 * text and the collisions with the standard: docs/profiles/seed-v2.md.
 *
 * ```
 * 0x050 QueueNotify  RW  read (after negotiation): notify_base | notify_multiplier << 16
 * 0x0c0 MsiVecNum    R   replaces QueueReset: RING_RESET is never offered with the profile
 * 0x0c4 MsiState     R   bit 31 enabled, bit 30 sharing
 * 0x0c8 MsiCommand   W   ENABLE .. MAP_QUEUE
 * 0x0d0 MsiVecSel    W
 * 0x0d4 MsiAddrLow   W   staged
 * 0x0d8 MsiAddrHigh  W   staged
 * 0x0dc MsiData      W   staged
 * notify_base + notify_multiplier * N: queue N's notification address (32-bit writes)
 * ```
 *
 * @packageDocumentation
 */

import { hex, MmioReg, SeedFeatureBit, SeedMmioReg, VirtioError } from '../../spec/index.js';
import type { MmioTransport } from '../mmioTransport.js';
import type { RegisterRow } from '../registers.js';
import type { MsiDelivery, SeedMsiOptions } from './msiDelivery.js';

/** Where the per-queue notification addresses go (`seed.notification`). */
export interface SeedNotificationOptions {
  /**
   * notify_base: offset of queue 0's address in the window, 4-byte aligned, at or past the end of
   * the configuration space, below 0x10000. Default: the end of the configuration space rounded up
   * to 0x100.
   */
  readonly base?: number;
  /**
   * notify_multiplier: distance between two queues' addresses, a multiple of 4 below 0x10000;
   * 0 puts every queue on one address (the written value then names the queue, as QueueNotify).
   * Default 4.
   */
  readonly multiplier?: number;
}

/** The seed v2 profile of one device: at least one of the two features. */
export interface SeedProfileOptions {
  /** Offer VIRTIO_F_MMIO_MSI with these vectors (needs the transport's `msiSink`). */
  readonly msi?: SeedMsiOptions;
  /** Offer VIRTIO_F_MMIO_NOTIFICATION; `true` takes the default layout. */
  readonly notification?: SeedNotificationOptions | true;
}

/** The resolved per-queue notification layout. */
export interface NotifyLayout {
  /** notify_base. */
  readonly base: number;
  /** notify_multiplier. */
  readonly multiplier: number;
  /** One past the last byte of the last queue's address. */
  readonly end: number;
}

/** Default notify_multiplier: one 32-bit register per queue. */
export const DEFAULT_NOTIFY_MULTIPLIER = 4;

/** Default alignment of notify_base past the configuration space. */
export const NOTIFY_BASE_ALIGN = 0x100;

/** notify_base and notify_multiplier are 16-bit fields of the QueueNotify read. */
const U16_LIMIT = 0x1_0000;

/**
 * Checks the notification options and computes the layout.
 * @throws VirtioError `INVALID_ARGUMENT` for a base inside the configuration space, misaligned or
 *   past 16 bits, or a multiplier that is not a multiple of 4 below 0x10000
 */
export function resolveNotifyLayout(
  options: SeedNotificationOptions | true,
  configSize: number,
  numQueues: number,
): NotifyLayout {
  const o: SeedNotificationOptions = options === true ? {} : options;
  const configEnd = MmioReg.Config + configSize;
  const base = o.base ?? Math.ceil(configEnd / NOTIFY_BASE_ALIGN) * NOTIFY_BASE_ALIGN;
  const multiplier = o.multiplier ?? DEFAULT_NOTIFY_MULTIPLIER;
  if (!Number.isInteger(base) || base < configEnd || (base & 3) !== 0 || base >= U16_LIMIT) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `notify base ${String(base)} must be 4-byte aligned, at or past ${hex(configEnd)} and below ${hex(U16_LIMIT)}`,
    );
  }
  if (!Number.isInteger(multiplier) || multiplier < 0 || (multiplier & 3) !== 0 || multiplier >= U16_LIMIT) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `notify multiplier ${String(multiplier)} must be a multiple of 4 below ${hex(U16_LIMIT)}`,
    );
  }
  const end = numQueues === 0 ? base : base + multiplier * (numQueues - 1) + 4;
  return { base, multiplier, end };
}

/** The QueueNotify read value of a layout: notify_base (low 16) | notify_multiplier (high 16). */
export function notifyRegisterValue(layout: NotifyLayout): number {
  return (layout.base | (layout.multiplier << 16)) >>> 0;
}

/**
 * The rows of the seed profile, layered over the modern table (from which QueueReset was removed).
 * @param standardQueueNotify - the standard QueueNotify row, whose write the readable one keeps
 * @param msi - the device's MSI state, or null when MSI is not offered
 * @param notify - the notification layout, or null when per-queue notification is not offered
 */
export function seedProfileRows(
  standardQueueNotify: RegisterRow<MmioTransport>,
  msi: MsiDelivery | null,
  notify: NotifyLayout | null,
): RegisterRow<MmioTransport>[] {
  const rows: RegisterRow<MmioTransport>[] = [];
  if (notify !== null) {
    const value = notifyRegisterValue(notify);
    const write = standardQueueNotify.write;
    if (write === undefined)
      throw new VirtioError('INVALID_ARGUMENT', 'standard QueueNotify row is not writable');
    rows.push({
      offset: MmioReg.QueueNotify,
      name: 'QueueNotify',
      access: 'rw',
      read: (t) => {
        if (!t.isNegotiated(SeedFeatureBit.MMIO_NOTIFICATION)) {
          // 4.2.2.2: the driver "MUST NOT read from the write-only registers"; the seed makes the
          // register readable only for a driver that negotiated VIRTIO_F_MMIO_NOTIFICATION.
          t.guestError(
            'direction',
            `read of write-only register QueueNotify (${hex(MmioReg.QueueNotify)}) without virtio_f_mmio_notification`,
          );
          return 0;
        }
        return value;
      },
      write,
    });
  }
  if (msi === null) return rows;

  /** True when VIRTIO_F_MMIO_MSI is negotiated, else counts a guest error. */
  const gate = (t: MmioTransport, what: string): boolean => {
    if (t.isNegotiated(SeedFeatureBit.MMIO_MSI)) return true;
    // Seed 4/5: the Msi* registers work "When VIRTIO_F_MMIO_MSI has been negotiated".
    t.guestError('msi', `${what} without virtio_f_mmio_msi negotiated`);
    return false;
  };
  rows.push(
    {
      offset: SeedMmioReg.MsiVecNum,
      name: 'MsiVecNum',
      access: 'r',
      read: (t) => (gate(t, 'MsiVecNum read') ? msi.vectorCount : 0),
    },
    {
      offset: SeedMmioReg.MsiState,
      name: 'MsiState',
      access: 'r',
      read: (t) => (gate(t, 'MsiState read') ? msi.state : 0),
    },
    {
      offset: SeedMmioReg.MsiCommand,
      name: 'MsiCommand',
      access: 'w',
      write: (t, v) => {
        if (gate(t, 'MsiCommand write')) msi.command(v, t.queueSel);
      },
    },
    {
      offset: SeedMmioReg.MsiVecSel,
      name: 'MsiVecSel',
      access: 'w',
      write: (t, v) => {
        if (gate(t, 'MsiVecSel write')) msi.selectVector(v);
      },
    },
    {
      offset: SeedMmioReg.MsiAddrLow,
      name: 'MsiAddrLow',
      access: 'w',
      write: (t, v) => {
        if (gate(t, 'MsiAddrLow write')) msi.stageAddressLow(v);
      },
    },
    {
      offset: SeedMmioReg.MsiAddrHigh,
      name: 'MsiAddrHigh',
      access: 'w',
      write: (t, v) => {
        if (gate(t, 'MsiAddrHigh write')) msi.stageAddressHigh(v);
      },
    },
    {
      offset: SeedMmioReg.MsiData,
      name: 'MsiData',
      access: 'w',
      write: (t, v) => {
        if (gate(t, 'MsiData write')) msi.stageData(v);
      },
    },
  );
  return rows;
}
