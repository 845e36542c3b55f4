import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import { DeviceStatus, FeatureBit, hex, MmioLegacyReg, MmioReg } from '../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveLegacyToDriver,
  driveToFeaturesOk,
  mmioRead32,
  mmioWrite32,
  programLegacyQueue,
  programQueue,
  type QueueConfig,
  readDeviceFeatures,
  type TransportHarness,
} from '../testing/index.js';
import { legacyLayout } from '../virtqueue/index.js';
import type { MmioTransport } from './mmioTransport.js';

const ACK = DeviceStatus.ACKNOWLEDGE;
const DRIVER = DeviceStatus.DRIVER;
const FEATURES_OK = DeviceStatus.FEATURES_OK;
const DRIVER_OK = DeviceStatus.DRIVER_OK;

/** A valid configuration of queue 0 (QueueNumMax 16) in 64 KiB of RAM. */
const Q0: QueueConfig = { size: 16, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 };
/** A valid configuration of queue 1 (QueueNumMax 8). */
const Q1: QueueConfig = { size: 8, descTable: 0x4000, availRing: 0x4800, usedRing: 0x5000 };

function committed(t: MmioTransport, i: number): unknown {
  const q = t.queue(i);
  return {
    ready: q.ready,
    size: q.size,
    descTable: q.descTable,
    availRing: q.availRing,
    usedRing: q.usedRing,
  };
}

function live(h: TransportHarness, features?: Features): void {
  driveToFeaturesOk(h.t, features);
  expect(programQueue(h.t, 0, Q0)).toBe(1);
  expect(programQueue(h.t, 1, Q1)).toBe(1);
  addStatus(h.t, DRIVER_OK);
}

/** Every queue configuration write, as [register, value] pairs that differ from Q0. */
const POISON: Array<[string, number, number]> = [
  ['QueueNum', MmioReg.QueueNum, 4],
  ['QueueDescLow', MmioReg.QueueDescLow, 0x8000],
  ['QueueDescHigh', MmioReg.QueueDescHigh, 1],
  ['QueueDriverLow', MmioReg.QueueDriverLow, 0x8800],
  ['QueueDriverHigh', MmioReg.QueueDriverHigh, 1],
  ['QueueDeviceLow', MmioReg.QueueDeviceLow, 0x9000],
  ['QueueDeviceHigh', MmioReg.QueueDeviceHigh, 1],
  ['QueueReady', MmioReg.QueueReady, 1],
];

describe('4.2.3.2 virtqueue configuration: staged, committed at QueueReady = 1', () => {
  it('commits the staged size and addresses and reads QueueReady back as 1', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    expect(programQueue(h.t, 1, Q1)).toBe(1);
    expect(committed(h.t, 1)).toEqual({ ready: true, ...Q1 });
    expect(committed(h.t, 0)).toEqual({ ready: false, size: 16, descTable: 0, availRing: 0, usedRing: 0 });
    expect(h.t.guestErrors).toBe(0);
  });

  it('keeps writes staged: the queue sees nothing before QueueReady = 1', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueNum, 4);
    mmioWrite32(h.t, MmioReg.QueueDescLow, 0x1000);
    expect(committed(h.t, 0)).toEqual({ ready: false, size: 16, descTable: 0, availRing: 0, usedRing: 0 });
  });

  it('defaults QueueNum to QueueNumMax when the driver does not write it', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueDescLow, Q0.descTable);
    mmioWrite32(h.t, MmioReg.QueueDriverLow, Q0.availRing);
    mmioWrite32(h.t, MmioReg.QueueDeviceLow, Q0.usedRing);
    mmioWrite32(h.t, MmioReg.QueueReady, 1);
    expect(h.t.queue(0).size).toBe(16);
  });

  it('sets event_idx and indirect_desc on the queue from the negotiated features', () => {
    const all = createTransportHarness();
    live(all);
    expect([all.t.queue(0).eventIdx, all.t.queue(0).indirectDesc]).toEqual([true, true]);
    const none = createTransportHarness();
    live(none, new Features([FeatureBit.VERSION_1]));
    expect([none.t.queue(0).eventIdx, none.t.queue(0).indirectDesc]).toEqual([false, false]);
    const onlyIdx = createTransportHarness();
    live(onlyIdx, new Features([FeatureBit.VERSION_1, FeatureBit.EVENT_IDX]));
    expect([onlyIdx.t.queue(1).eventIdx, onlyIdx.t.queue(1).indirectDesc]).toEqual([true, false]);
  });

  const invalid: Array<[string, Partial<QueueConfig>, RegExp]> = [
    ['size 0', { size: 0 }, /invalid queue size 0/],
    ['size not a power of two', { size: 12 }, /invalid queue size 12/],
    ['size above QueueNumMax (4.2.2.2)', { size: 32 }, /invalid queue size 32/],
    ['size past 16 bits', { size: 0x1_0010 }, /invalid queue size/],
    ['descriptor table misaligned (16)', { descTable: 0x1008 }, /misaligned ring/],
    ['available ring misaligned (2)', { availRing: 0x2001 }, /misaligned ring/],
    ['used ring misaligned (4)', { usedRing: 0x3002 }, /misaligned ring/],
    ['descriptor table outside RAM', { descTable: 0xff80 }, /descriptor table 0xff80 outside ram/],
    ['available ring outside RAM', { availRing: 0x1_0000 }, /available ring 0x10000 outside ram/],
    ['used ring straddling the end of RAM', { usedRing: 0xfff0 }, /used ring 0xfff0 outside ram/],
    ['descriptor table above 4 GiB', { descTable: 0x1_0000_1000 }, /outside ram/],
    ['used ring at the top of the 64-bit space', { usedRing: 0xffff_ffff_ffff_f000 }, /outside ram/],
  ];

  for (const [what, patch, message] of invalid) {
    it(`refuses QueueReady = 1 for ${what}: guest error, QueueReady stays 0`, () => {
      const h = createTransportHarness();
      driveToFeaturesOk(h.t);
      expect(programQueue(h.t, 0, { ...Q0, ...patch })).toBe(0);
      expect(h.t.queue(0).ready).toBe(false);
      expect(h.t.guestErrorCounts.queue).toBe(1);
      expect(h.t.guestErrors).toBe(1);
      expect(h.errors[0]).toMatch(/^queue 0 not enabled: /);
      expect(h.errors[0]).toMatch(message);
      // The driver fixes the configuration and tries again.
      expect(programQueue(h.t, 0, Q0)).toBe(1);
      expect(committed(h.t, 0)).toEqual({ ready: true, ...Q0 });
    });
  }

  it('refuses QueueReady values other than 0 and 1', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, Q0);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    for (const v of [2, 3, 0xffff_ffff]) mmioWrite32(h.t, MmioReg.QueueReady, v);
    expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueReady, 2);
    expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(1);
    expect(h.t.guestErrorCounts.queue).toBe(4);
    expect(h.errors[0]).toBe('QueueReady write of 0x2, not 0 or 1');
  });

  const earlyStates: Array<[string, (h: TransportHarness) => void]> = [
    ['after reset', () => {}],
    ['in ACKNOWLEDGE', (h) => addStatus(h.t, ACK)],
    [
      'in DRIVER, before FEATURES_OK (3.1.1 step 7 comes after step 5)',
      (h) => {
        addStatus(h.t, ACK);
        addStatus(h.t, DRIVER);
      },
    ],
    [
      'after FAILED',
      (h) => {
        driveToFeaturesOk(h.t);
        addStatus(h.t, DeviceStatus.FAILED);
      },
    ],
  ];

  for (const [when, setup] of earlyStates) {
    it(`refuses every queue configuration write ${when}`, () => {
      const h = createTransportHarness();
      setup(h);
      mmioWrite32(h.t, MmioReg.QueueSel, 0);
      for (const [name, reg, value] of POISON) {
        mmioWrite32(h.t, reg, value);
        expect(h.errors.at(-1), name).toMatch(new RegExp(`^${name} write for queue 0 `));
      }
      expect(h.t.guestErrorCounts.queue).toBe(POISON.length);
      expect(committed(h.t, 0)).toEqual({ ready: false, size: 16, descTable: 0, availRing: 0, usedRing: 0 });
    });
  }

  it('refuses every queue configuration write after DRIVER_OK (the queue config is immutable)', () => {
    const h = createTransportHarness();
    live(h);
    for (const i of [0, 1]) {
      // Stop queue 1 first: a stopped queue is still not reprogrammable after DRIVER_OK.
      mmioWrite32(h.t, MmioReg.QueueSel, i);
      if (i === 1) mmioWrite32(h.t, MmioReg.QueueReady, 0);
      for (const [name, reg, value] of POISON) {
        mmioWrite32(h.t, reg, value);
        expect(h.errors.at(-1), `${name} queue ${i}`).toMatch(
          i === 0 ? /which is live$/ : /after driver_ok$/,
        );
      }
    }
    expect(h.t.guestErrorCounts.queue).toBe(2 * POISON.length);
    expect(committed(h.t, 0)).toEqual({ ready: true, ...Q0 });
    expect(committed(h.t, 1)).toEqual({ ready: false, ...Q1 });
  });

  it('refuses writes to a live queue before DRIVER_OK (4.2.2.2)', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, Q0);
    for (const [, reg, value] of POISON) mmioWrite32(h.t, reg, value);
    expect(h.t.guestErrorCounts.queue).toBe(POISON.length);
    expect(committed(h.t, 0)).toEqual({ ready: true, ...Q0 });
    // Stopping the queue reopens it before DRIVER_OK.
    mmioWrite32(h.t, MmioReg.QueueReady, 0);
    expect(programQueue(h.t, 0, { ...Q0, size: 4 })).toBe(1);
    expect(h.t.queue(0).size).toBe(4);
  });

  it('reads 0 from the registers of queues that do not exist and refuses writes to them', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    for (const sel of [2, 3, 0xffff, 0xffff_ffff]) {
      mmioWrite32(h.t, MmioReg.QueueSel, sel);
      expect(mmioRead32(h.t, MmioReg.QueueNumMax), hex(sel)).toBe(0);
      expect(mmioRead32(h.t, MmioReg.QueueReady), hex(sel)).toBe(0);
      expect(mmioRead32(h.t, MmioReg.QueueReset), hex(sel)).toBe(0);
      for (const [name, reg, value] of POISON) {
        mmioWrite32(h.t, reg, value);
        expect(h.errors.at(-1)).toBe(`${name} write for queue ${sel}, which does not exist`);
      }
      mmioWrite32(h.t, MmioReg.QueueReady, 0);
      expect(h.errors.at(-1)).toBe(`QueueReady write for queue ${sel}, which does not exist`);
    }
    expect(h.t.guestErrorCounts.queue).toBe(4 * (POISON.length + 1));
    expect(h.t.guestErrors).toBe(4 * (POISON.length + 1));
  });

  it('QueueReady = 0 stops a live queue after DRIVER_OK; the device no longer gets its notifications', () => {
    const h = createTransportHarness();
    live(h);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    mmioWrite32(h.t, MmioReg.QueueReady, 0);
    expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
    expect(h.t.queue(1).ready).toBe(false);
    expect(h.t.guestErrors).toBe(0);
    mmioWrite32(h.t, MmioReg.QueueNotify, 1);
    expect(h.dev.notifyLog).toEqual([]);
    expect(h.t.guestErrorCounts.notify).toBe(1);
  });

  it('accepts QueueReady = 0 for every queue after a reset, as Linux vm_del_vq writes it', () => {
    const h = createTransportHarness();
    live(h);
    mmioWrite32(h.t, MmioReg.Status, 0);
    for (const i of [0, 1]) {
      mmioWrite32(h.t, MmioReg.QueueSel, i);
      mmioWrite32(h.t, MmioReg.QueueReady, 0);
      expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
    }
    expect(h.t.guestErrors).toBe(0);
  });
});

describe('2.6.1 / 4.2.2 QueueReset (VIRTIO_F_RING_RESET)', () => {
  function busyQueue0(h: TransportHarness): void {
    live(h);
    h.t.queue(0).addUsed(h.mem, 3, 0);
    expect(h.t.queue(0).nextUsed).toBe(1);
  }

  it('resets the selected queue: device told, state back to default, QueueReset and QueueReady read 0', () => {
    const h = createTransportHarness();
    busyQueue0(h);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    expect(h.dev.queueResets).toEqual([0]);
    // 4.2.2.1: "The device MUST present 0 in both QueueReset and QueueReady when queue reset has
    // completed"; ours completes inside the write.
    expect(mmioRead32(h.t, MmioReg.QueueReset)).toBe(0);
    expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
    const q = h.t.queue(0);
    expect([q.ready, q.nextUsed, q.nextAvail, q.descTable, q.size]).toEqual([false, 0, 0, 0, 16]);
    // The other queue and the device keep running.
    expect(h.t.queue(1).ready).toBe(true);
    expect(h.t.status).toBe(ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    // driveToFeaturesOk began with one device reset; QueueReset adds none.
    expect(h.dev.resets).toBe(1);
    expect(h.t.guestErrors).toBe(0);
  });

  it('lets the driver reprogram and re-enable the reset queue after DRIVER_OK, with new parameters', () => {
    const h = createTransportHarness();
    busyQueue0(h);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    const moved = { size: 4, descTable: 0x8000, availRing: 0x8100, usedRing: 0x8200 };
    expect(programQueue(h.t, 0, moved)).toBe(1);
    expect(committed(h.t, 0)).toEqual({ ready: true, ...moved });
    expect(h.t.queue(0).eventIdx).toBe(true);
    expect(h.t.guestErrors).toBe(0);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0);
    expect(h.dev.notifyLog).toEqual([0]);
    // Once re-enabled, the queue is locked again; the other queue never opened.
    mmioWrite32(h.t, MmioReg.QueueReady, 0);
    mmioWrite32(h.t, MmioReg.QueueNum, 8);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    mmioWrite32(h.t, MmioReg.QueueReady, 0);
    mmioWrite32(h.t, MmioReg.QueueNum, 4);
    expect(h.errors).toEqual([
      'QueueNum write for queue 0 after driver_ok',
      'QueueNum write for queue 1 after driver_ok',
    ]);
  });

  it('refuses re-enabling a reset queue with an invalid configuration, and allows a retry', () => {
    const h = createTransportHarness();
    busyQueue0(h);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    expect(programQueue(h.t, 0, { ...Q0, descTable: 0x1001 })).toBe(0);
    expect(programQueue(h.t, 0, Q0)).toBe(1);
    expect(h.t.guestErrorCounts.queue).toBe(1);
  });

  it('before DRIVER_OK resets the queue without calling the device (nothing in flight)', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, Q0);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    expect(h.dev.queueResets).toEqual([]);
    expect(h.t.queue(0).ready).toBe(false);
    expect(programQueue(h.t, 0, Q0)).toBe(1);
  });

  it('refuses values other than 1 and queues that do not exist', () => {
    const h = createTransportHarness();
    live(h);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioReg.QueueReset, 0);
    mmioWrite32(h.t, MmioReg.QueueReset, 2);
    mmioWrite32(h.t, MmioReg.QueueSel, 2);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    expect(h.errors).toEqual([
      'QueueReset write of 0x0, not 1',
      'QueueReset write of 0x2, not 1',
      'QueueReset write for queue 2, which does not exist',
    ]);
    expect(h.dev.queueResets).toEqual([]);
    expect(h.t.queue(0).ready).toBe(true);
  });

  const without: Array<[string, Parameters<typeof createTransportHarness>[0], Features | undefined]> = [
    ['when the driver did not accept it', {}, new Features([FeatureBit.VERSION_1])],
    [
      'when the transport does not offer it (ringReset: false)',
      { transport: { ringReset: false } },
      undefined,
    ],
  ];
  for (const [when, options, features] of without) {
    it(`is a guest error ${when}`, () => {
      const h = createTransportHarness(options);
      live(h, features);
      expect(h.t.driverFeatures.has(FeatureBit.RING_RESET)).toBe(false);
      mmioWrite32(h.t, MmioReg.QueueSel, 0);
      mmioWrite32(h.t, MmioReg.QueueReset, 1);
      expect(h.errors).toEqual(['QueueReset write without virtio_f_ring_reset negotiated']);
      expect(h.t.queue(0).ready).toBe(true);
      expect(h.dev.queueResets).toEqual([]);
      // And QueueReady = 0 does not reopen the queue after DRIVER_OK.
      mmioWrite32(h.t, MmioReg.QueueReady, 0);
      expect(programQueue(h.t, 0, Q0)).toBe(0);
    });
  }

  it('is a guest error before FEATURES_OK, even though the bit is offered', () => {
    const h = createTransportHarness();
    addStatus(h.t, ACK);
    addStatus(h.t, DRIVER);
    mmioWrite32(h.t, MmioReg.QueueReset, 1);
    expect(h.t.guestErrorCounts.queue).toBe(1);
  });
});

describe('4.2.4 legacy queues: GuestPageSize, QueueAlign, QueuePFN', () => {
  function legacy(): TransportHarness {
    return createTransportHarness({ transport: { version: 1 } });
  }

  it('places the ring at QueuePFN * GuestPageSize with the legacy layout and enables it', () => {
    const h = legacy();
    driveLegacyToDriver(h.t);
    expect(programLegacyQueue(h.t, 0, { size: 16, pfn: 2, align: 4096 })).toBe(2);
    expect(committed(h.t, 0)).toEqual({ ready: true, size: 16, ...legacyLayout(0x2000, 16, 4096) });
    expect(h.t.queue(0).eventIdx).toBe(true);
    expect(h.t.queue(0).indirectDesc).toBe(true);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    expect(mmioRead32(h.t, MmioLegacyReg.QueuePFN)).toBe(0);
    addStatus(h.t, DRIVER_OK);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0);
    expect(h.dev.notifyLog).toEqual([0]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('uses the features written so far for event_idx and indirect_desc', () => {
    const h = legacy();
    driveLegacyToDriver(h.t, new Features([0]));
    programLegacyQueue(h.t, 0, { size: 16, pfn: 2 });
    expect([h.t.queue(0).eventIdx, h.t.queue(0).indirectDesc]).toEqual([false, false]);
  });

  it('honours GuestPageSize and QueueAlign', () => {
    const h = legacy();
    mmioWrite32(h.t, MmioLegacyReg.GuestPageSize, 1024);
    driveLegacyToDriver(h.t);
    programLegacyQueue(h.t, 1, { size: 8, pfn: 5, align: 64 });
    expect(committed(h.t, 1)).toEqual({ ready: true, size: 8, ...legacyLayout(5 * 1024, 8, 64) });
    expect(h.t.queue(1).usedRing).toBe(5 * 1024 + 192);
  });

  it('keeps GuestPageSize across a device reset, and resets QueueAlign to 4096', () => {
    const h = legacy();
    // Linux vm_probe writes GuestPageSize once, before the virtio core resets the device.
    mmioWrite32(h.t, MmioLegacyReg.GuestPageSize, 2048);
    driveLegacyToDriver(h.t);
    programLegacyQueue(h.t, 0, { size: 16, pfn: 3, align: 256 });
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(mmioRead32(h.t, MmioLegacyReg.QueuePFN)).toBe(0);
    expect(h.t.queue(0).ready).toBe(false);
    driveLegacyToDriver(h.t);
    programLegacyQueue(h.t, 0, { size: 16, pfn: 3 });
    expect(committed(h.t, 0)).toEqual({ ready: true, size: 16, ...legacyLayout(3 * 2048, 16, 4096) });
    expect(h.t.guestErrors).toBe(0);
  });

  it('QueuePFN = 0 stops and resets the queue, in any state', () => {
    const h = legacy();
    driveLegacyToDriver(h.t);
    programLegacyQueue(h.t, 0, { size: 16, pfn: 2 });
    addStatus(h.t, DRIVER_OK);
    h.t.queue(0).addUsed(h.mem, 0, 0);
    mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 0);
    expect(mmioRead32(h.t, MmioLegacyReg.QueuePFN)).toBe(0);
    expect(committed(h.t, 0)).toEqual({ ready: false, size: 16, descTable: 0, availRing: 0, usedRing: 0 });
    expect(h.t.queue(0).nextUsed).toBe(0);
    mmioWrite32(h.t, MmioReg.Status, 0);
    mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 0);
    expect(h.t.guestErrors).toBe(0);
    // Re-enabling after DRIVER_OK is refused: legacy has no queue reset.
    driveLegacyToDriver(h.t);
    addStatus(h.t, DRIVER_OK);
    expect(programLegacyQueue(h.t, 0, { size: 16, pfn: 2 })).toBe(0);
    expect(h.errors).toEqual([
      'QueueNum write for queue 0 after driver_ok',
      'QueuePFN write for queue 0 after driver_ok',
    ]);
  });

  const rejected: Array<[string, (h: TransportHarness) => void, string]> = [
    [
      'GuestPageSize that is not a power of two',
      (h) => mmioWrite32(h.t, MmioLegacyReg.GuestPageSize, 3000),
      'GuestPageSize 0xbb8 is not a power of two',
    ],
    [
      'GuestPageSize 0',
      (h) => mmioWrite32(h.t, MmioLegacyReg.GuestPageSize, 0),
      'GuestPageSize 0x0 is not a power of two',
    ],
    [
      'QueueAlign that is not a power of two',
      (h) => {
        driveLegacyToDriver(h.t);
        mmioWrite32(h.t, MmioLegacyReg.QueueAlign, 100);
      },
      'QueueAlign 0x64 is not a power of two',
    ],
    [
      'QueuePFN whose ring is outside RAM',
      (h) => {
        driveLegacyToDriver(h.t);
        programLegacyQueue(h.t, 0, { size: 16, pfn: 0x10 });
      },
      'queue 0 not enabled: descriptor table 0x10000 outside ram',
    ],
    [
      'QueuePFN with a size above QueueNumMax',
      (h) => {
        driveLegacyToDriver(h.t);
        programLegacyQueue(h.t, 0, { size: 32, pfn: 1 });
      },
      'queue 0 not enabled: invalid queue size 32',
    ],
    [
      'QueuePFN before DRIVER',
      (h) => {
        addStatus(h.t, ACK);
        mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 1);
      },
      'QueuePFN write for queue 0 in status 0x1, before setup',
    ],
    [
      'QueuePFN for a queue in use',
      (h) => {
        driveLegacyToDriver(h.t);
        programLegacyQueue(h.t, 0, { size: 16, pfn: 1 });
        mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 4);
      },
      'QueuePFN write for queue 0, which is live',
    ],
    [
      'QueueAlign for a queue in use',
      (h) => {
        driveLegacyToDriver(h.t);
        programLegacyQueue(h.t, 0, { size: 16, pfn: 1 });
        mmioWrite32(h.t, MmioLegacyReg.QueueAlign, 4096);
      },
      'QueueAlign write for queue 0, which is live',
    ],
    [
      'QueuePFN for a queue that does not exist',
      (h) => {
        driveLegacyToDriver(h.t);
        mmioWrite32(h.t, MmioReg.QueueSel, 2);
        mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 1);
      },
      'QueuePFN write for queue 2, which does not exist',
    ],
    [
      'QueuePFN = 0 for a queue that does not exist',
      (h) => {
        mmioWrite32(h.t, MmioReg.QueueSel, 7);
        mmioWrite32(h.t, MmioLegacyReg.QueuePFN, 0);
      },
      'QueuePFN write for queue 7, which does not exist',
    ],
  ];

  for (const [what, act, message] of rejected) {
    it(`refuses ${what}`, () => {
      const h = legacy();
      act(h);
      expect(h.errors).toEqual([message]);
      expect(h.t.guestErrorCounts.queue).toBe(1);
    });
  }

  it('keeps the previous value after a refused GuestPageSize or QueueAlign', () => {
    const h = legacy();
    mmioWrite32(h.t, MmioLegacyReg.GuestPageSize, 3000);
    driveLegacyToDriver(h.t);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    mmioWrite32(h.t, MmioLegacyReg.QueueAlign, 100);
    programLegacyQueue(h.t, 0, { size: 16, pfn: 1 });
    expect(committed(h.t, 0)).toEqual({ ready: true, size: 16, ...legacyLayout(4096, 16, 4096) });
  });
});

describe('4.2.3.3 available buffer notifications (QueueNotify)', () => {
  it('passes the queue index to the device', () => {
    const h = createTransportHarness();
    live(h);
    mmioWrite32(h.t, MmioReg.QueueNotify, 1);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0);
    expect(h.dev.notifyLog).toEqual([1, 0]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('with VIRTIO_F_NOTIFICATION_DATA takes the index from the low 16 bits', () => {
    const h = createTransportHarness();
    live(h);
    expect(h.t.driverFeatures.has(FeatureBit.NOTIFICATION_DATA)).toBe(true);
    // le32 { vq_index: 16; next_off: 15; next_wrap: 1 }
    mmioWrite32(h.t, MmioReg.QueueNotify, 0x8005_0001);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0x0001_0000);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0x0001_0002);
    expect(h.dev.notifyLog).toEqual([1, 0]);
    expect(h.errors).toEqual(['notify for queue 2, which does not exist']);
  });

  const plain: Array<[string, Parameters<typeof createTransportHarness>[0], Features | undefined]> = [
    [
      'not accepted by the driver',
      {},
      new Features([FeatureBit.VERSION_1, FeatureBit.EVENT_IDX, FeatureBit.RING_RESET]),
    ],
    ['not offered (notificationData: false)', { transport: { notificationData: false } }, undefined],
  ];
  for (const [when, options, features] of plain) {
    it(`without VIRTIO_F_NOTIFICATION_DATA (${when}) takes the whole value as the index`, () => {
      const h = createTransportHarness(options);
      live(h, features);
      mmioWrite32(h.t, MmioReg.QueueNotify, 0x0001_0000);
      mmioWrite32(h.t, MmioReg.QueueNotify, 0x8000_0001);
      mmioWrite32(h.t, MmioReg.QueueNotify, 1);
      expect(h.dev.notifyLog).toEqual([1]);
      expect(h.errors).toEqual([
        'notify for queue 65536, which does not exist',
        'notify for queue 2147483649, which does not exist',
      ]);
    });
  }

  it('refuses notifications before DRIVER_OK, for queues that do not exist, and for stopped queues', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, Q0);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0);
    addStatus(h.t, DRIVER_OK);
    mmioWrite32(h.t, MmioReg.QueueNotify, 1);
    mmioWrite32(h.t, MmioReg.QueueNotify, 2);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0xffff);
    expect(h.dev.notifyLog).toEqual([]);
    expect(h.errors).toEqual([
      'notify for queue 0 before driver_ok',
      'notify for queue 1, which is not ready',
      'notify for queue 2, which does not exist',
      'notify for queue 65535, which does not exist',
    ]);
    expect(h.t.guestErrorCounts.notify).toBe(4);
  });

  it('legacy: the value is the queue index', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    driveLegacyToDriver(h.t);
    programLegacyQueue(h.t, 1, { size: 8, pfn: 4 });
    addStatus(h.t, DRIVER_OK);
    mmioWrite32(h.t, MmioReg.QueueNotify, 1);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0x0001_0001);
    expect(h.dev.notifyLog).toEqual([1]);
    expect(h.t.guestErrorCounts.notify).toBe(1);
  });

  it('offers notification data only to modern drivers', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    expect(readDeviceFeatures(h.t).has(FeatureBit.NOTIFICATION_DATA)).toBe(false);
  });
});
