import { describe, expect, it } from 'vitest';
import { Features } from '../../device/index.js';
import {
  DeviceStatus,
  FeatureBit,
  MMIO_DEFAULT_WINDOW_SIZE,
  MmioReg,
  SeedFeatureBit,
  SeedMmioReg,
} from '../../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveToFeaturesOk,
  mmioRead32,
  mmioWrite32,
  programQueue,
  readDeviceFeatures,
  type TransportHarness,
} from '../../testing/index.js';
import {
  DEFAULT_NOTIFY_MULTIPLIER,
  notifyRegisterValue,
  resolveNotifyLayout,
  type SeedNotificationOptions,
} from './profile.js';

const NOTIFY_FEATURES = new Features([FeatureBit.VERSION_1, SeedFeatureBit.MMIO_NOTIFICATION]);

interface Setup {
  notification?: SeedNotificationOptions | true;
  queues?: number[];
  configSize?: number;
  windowSize?: number;
}

function device(s: Setup = {}): TransportHarness {
  return createTransportHarness({
    device: { queueMaxSizes: s.queues ?? [8, 8, 8], configSize: s.configSize ?? 16 },
    transport: { seed: { notification: s.notification ?? true }, windowSize: s.windowSize },
  });
}

/** Negotiated with `features`, every queue ready, DRIVER_OK. */
function live(s: Setup = {}, features = NOTIFY_FEATURES): TransportHarness {
  const h = device(s);
  driveToFeaturesOk(h.t, features);
  for (let i = 0; i < h.t.numQueues; i++) {
    const at = 0x1000 + i * 0x1000;
    programQueue(h.t, i, { size: 8, descTable: at, availRing: at + 0x400, usedRing: at + 0x800 });
  }
  addStatus(h.t, DeviceStatus.DRIVER_OK);
  return h;
}

/** What the seed driver computes once per queue (J1: cached, not per kick). */
function notifyAddress(h: TransportHarness, index: number): number {
  const v = mmioRead32(h.t, MmioReg.QueueNotify);
  return (v & 0xffff) + (v >>> 16) * index;
}

describe('seed per-queue notification: QueueNotify read and the layout', () => {
  it('offers VIRTIO_F_MMIO_NOTIFICATION only, without RING_RESET, and no Msi registers', () => {
    const h = device();
    const offered = readDeviceFeatures(h.t);
    expect(offered.has(SeedFeatureBit.MMIO_NOTIFICATION)).toBe(true);
    expect(offered.has(SeedFeatureBit.MMIO_MSI)).toBe(false);
    // 0x0c0 exists neither as QueueReset nor as MsiVecNum.
    mmioRead32(h.t, SeedMmioReg.MsiVecNum);
    expect(h.t.guestErrorCounts.offset).toBe(1);
    expect(h.t.msi).toBeNull();
  });

  it('reading QueueNotify before negotiation is a guest error (standard behaviour), after it base | multiplier << 16', () => {
    const h = device();
    expect(mmioRead32(h.t, MmioReg.QueueNotify)).toBe(0);
    driveToFeaturesOk(h.t, new Features([FeatureBit.VERSION_1]));
    expect(mmioRead32(h.t, MmioReg.QueueNotify)).toBe(0);
    expect(h.t.guestErrorCounts.direction).toBe(2);
    driveToFeaturesOk(h.t, NOTIFY_FEATURES);
    // config 16 bytes ends at 0x110: base rounds up to 0x200; multiplier 4.
    expect(mmioRead32(h.t, MmioReg.QueueNotify)).toBe(0x200 | (DEFAULT_NOTIFY_MULTIPLIER << 16));
    expect(h.t.notifyLayout).toEqual({ base: 0x200, multiplier: 4, end: 0x20c });
    // The window grew to hold the addresses (rounded to the default window size).
    expect(h.t.windowSize).toBe(2 * MMIO_DEFAULT_WINDOW_SIZE);
    expect(h.t.guestErrorCounts.direction).toBe(2);
  });

  it('computes layouts: defaults, explicit base and multiplier, multiplier 0', () => {
    expect(resolveNotifyLayout(true, 0, 2)).toEqual({ base: 0x100, multiplier: 4, end: 0x108 });
    expect(resolveNotifyLayout({ base: 0x1000, multiplier: 0x10 }, 0x40, 4)).toEqual({
      base: 0x1000,
      multiplier: 0x10,
      end: 0x1034,
    });
    expect(resolveNotifyLayout({ multiplier: 0 }, 0x100, 9)).toEqual({
      base: 0x200,
      multiplier: 0,
      end: 0x204,
    });
    expect(resolveNotifyLayout(true, 16, 0)).toEqual({ base: 0x200, multiplier: 4, end: 0x200 });
    expect(notifyRegisterValue({ base: 0x1000, multiplier: 0x1000, end: 0 })).toBe(0x1000_1000);
  });

  it('refuses layouts inside the configuration space, misaligned, or past 16 bits; and a window too small', () => {
    const bad: SeedNotificationOptions[] = [
      { base: 0x10c },
      { base: 0x202 },
      { base: 0x1_0000 },
      { base: -4 },
      { multiplier: 2 },
      { multiplier: 0x1_0000 },
      { multiplier: -4 },
    ];
    for (const notification of bad) {
      expect(() => device({ notification })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(() => device({ notification: { base: 0x400 }, windowSize: 0x400 })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    // An explicit window that holds the addresses is kept as given.
    expect(device({ notification: { base: 0x400 }, windowSize: 0x1000 }).t.windowSize).toBe(0x1000);
  });
});

describe('seed per-queue notification: writes', () => {
  it.each([4, 0x10, 0x1000])(
    'multiplier %i: a write of any value at queue N address notifies queue N',
    (multiplier) => {
      const h = live({ notification: { multiplier } });
      const addresses = [0, 1, 2].map((i) => notifyAddress(h, i));
      expect(addresses).toEqual([0x200, 0x200 + multiplier, 0x200 + 2 * multiplier]);
      mmioWrite32(h.t, addresses[2], 0xdead_beef);
      mmioWrite32(h.t, addresses[0], 0);
      mmioWrite32(h.t, addresses[1], 7);
      expect(h.dev.notifyLog).toEqual([2, 0, 1]);
      // QueueNotify keeps working next to the addresses.
      mmioWrite32(h.t, MmioReg.QueueNotify, 1);
      expect(h.dev.notifyLog).toEqual([2, 0, 1, 1]);
      expect(h.t.guestErrors).toBe(0);
    },
  );

  it('multiplier 0: every queue shares one address and the value names the queue', () => {
    const h = live({ notification: { multiplier: 0 } });
    expect([0, 1, 2].map((i) => notifyAddress(h, i))).toEqual([0x200, 0x200, 0x200]);
    mmioWrite32(h.t, 0x200, 2);
    mmioWrite32(h.t, 0x200, 0);
    mmioWrite32(h.t, 0x200, 3);
    expect(h.dev.notifyLog).toEqual([2, 0]);
    expect(h.errors).toEqual(['notify for queue 3, which does not exist']);
  });

  it('with VIRTIO_F_NOTIFICATION_DATA the value is the notification data and must name the same queue', () => {
    const h = live(
      { notification: { multiplier: 8 } },
      new Features([FeatureBit.VERSION_1, FeatureBit.NOTIFICATION_DATA, SeedFeatureBit.MMIO_NOTIFICATION]),
    );
    mmioWrite32(h.t, notifyAddress(h, 1), 0x8005_0001); // vq 1, next_off 5, wrap 1
    mmioWrite32(h.t, notifyAddress(h, 2), 0x0000_0001); // names queue 1 at queue 2's address
    expect(h.dev.notifyLog).toEqual([1]);
    expect(h.errors).toEqual(["notification data for queue 1 at queue 2's address"]);
  });

  it('refuses reads, narrow or misaligned writes, writes between addresses, and writes before negotiation', () => {
    const h = live({ notification: { multiplier: 0x10 } });
    expect(mmioRead32(h.t, 0x210)).toBe(0);
    expect(h.t.guestErrorCounts.direction).toBe(1);
    h.t.write(0x210, 2, 1);
    h.t.write(0x212, 4, 1);
    expect(h.t.guestErrorCounts.width).toBe(2);
    mmioWrite32(h.t, 0x214, 1);
    expect(h.t.guestErrorCounts.offset).toBe(1);
    // Past the last queue's address: the rest of the window is undescribed configuration space.
    mmioWrite32(h.t, 0x230, 1);
    expect(h.t.guestErrorCounts.config).toBe(1);
    expect(h.dev.notifyLog).toEqual([]);

    const n = live({}, new Features([FeatureBit.VERSION_1]));
    mmioWrite32(n.t, 0x200, 0);
    expect(n.errors).toEqual(['queue notification address written without virtio_f_mmio_notification']);
    expect(n.t.guestErrorCounts.notify).toBe(1);
    expect(n.dev.notifyLog).toEqual([]);
  });

  it('a queue that is not ready, or a write before DRIVER_OK, is refused as for QueueNotify', () => {
    const h = device();
    driveToFeaturesOk(h.t, NOTIFY_FEATURES);
    mmioWrite32(h.t, 0x200, 0);
    programQueue(h.t, 0, { size: 8, descTable: 0x1000, availRing: 0x1400, usedRing: 0x1800 });
    addStatus(h.t, DeviceStatus.DRIVER_OK);
    mmioWrite32(h.t, 0x204, 0);
    expect(h.errors).toEqual([
      'notify for queue 0 before driver_ok',
      'notify for queue 1, which is not ready',
    ]);
    mmioWrite32(h.t, 0x200, 0);
    expect(h.dev.notifyLog).toEqual([0]);
  });
});
