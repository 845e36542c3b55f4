import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import { DeviceStatus, FeatureBit, hex, InterruptBit, MmioReg } from '../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveLegacyToDriver,
  driveToFeaturesOk,
  mmioRead32,
  mmioWrite32,
  programQueue,
  readDeviceFeatures,
  type TransportHarness,
  writeDriverFeatures,
} from '../testing/index.js';

const ACK = DeviceStatus.ACKNOWLEDGE;
const DRIVER = DeviceStatus.DRIVER;
const FEATURES_OK = DeviceStatus.FEATURES_OK;
const DRIVER_OK = DeviceStatus.DRIVER_OK;
const FAILED = DeviceStatus.FAILED;
const NEEDS_RESET = DeviceStatus.DEVICE_NEEDS_RESET;

/** The initialization sequence each layout accepts, written out independently of the transport. */
const PATHS = {
  2: [0, ACK, ACK | DRIVER, ACK | DRIVER | FEATURES_OK, ACK | DRIVER | FEATURES_OK | DRIVER_OK],
  1: [0, ACK, ACK | DRIVER, ACK | DRIVER | DRIVER_OK],
} as const;

/** Every combination of the four driver-set bits, plus values with bits nobody defines. */
const TARGETS: number[] = [
  ...Array.from(
    { length: 16 },
    (_, i) => (i & 1 ? ACK : 0) | (i & 2 ? DRIVER : 0) | (i & 4 ? FEATURES_OK : 0) | (i & 8 ? DRIVER_OK : 0),
  ),
  0x10,
  0x20,
  ACK | 0x20,
  ACK | DRIVER | 0x100,
  FAILED,
  ACK | FAILED,
  ACK | DRIVER | FEATURES_OK | DRIVER_OK | FAILED,
  NEEDS_RESET,
  ACK | NEEDS_RESET,
  ACK | DRIVER | NEEDS_RESET,
  0xffff_ffff,
];

/** Drives a fresh transport to `from` through valid writes (features accepted as offered). */
function driveTo(h: TransportHarness, version: 1 | 2, from: number): void {
  const path = PATHS[version];
  const target = from & ~FAILED;
  for (const step of path.slice(1)) {
    if ((step & target) !== step) break;
    mmioWrite32(h.t, MmioReg.Status, step);
    if (step === (ACK | DRIVER)) writeDriverFeatures(h.t, readDeviceFeatures(h.t));
  }
  if (from & FAILED) mmioWrite32(h.t, MmioReg.Status, target | FAILED);
  expect(h.t.status, `setup of ${hex(from)}`).toBe(from);
  expect(h.t.guestErrors, `setup of ${hex(from)}`).toBe(0);
}

/** What Status reads after writing `to` in `from`, per 2.1, 3.1.1 / 3.1.2 and 4.2.2. */
function expectedStatus(version: 1 | 2, from: number, to: number): number {
  if (to === 0) return 0;
  if (to & FAILED) return from | FAILED;
  const path: readonly number[] = PATHS[version];
  const k = path.indexOf(from);
  const wanted = to & ~NEEDS_RESET;
  if (k >= 0 && k + 1 < path.length && path[k + 1] === wanted) return wanted;
  return from;
}

describe('2.1 / 3.1.1 / 3.1.2 device status transitions', () => {
  for (const version of [2, 1] as const) {
    const froms = [...PATHS[version], ACK | DRIVER | FAILED, FAILED];
    it(`version ${version}: every (from, to) pair is accepted or rejected as the spec says`, () => {
      let cases = 0;
      for (const from of froms) {
        for (const to of TARGETS) {
          const h = createTransportHarness({ transport: { version } });
          driveTo(h, version, from);
          const activationsBefore = h.dev.activations;
          const resetsBefore = h.dev.resets;
          mmioWrite32(h.t, MmioReg.Status, to);
          const want = expectedStatus(version, from, to);
          const what = `transition ${hex(from)} -> ${hex(to >>> 0)}`;
          const accepted = to === 0 || (to & FAILED) !== 0 || want !== from;
          expect(mmioRead32(h.t, MmioReg.Status), what).toBe(want);
          expect(h.t.guestErrors, `${what} should be ${accepted ? 'accepted' : 'rejected'}`).toBe(
            accepted ? 0 : 1,
          );
          if (!accepted) {
            expect(h.t.guestErrorCounts.status, what).toBe(1);
            expect(h.errors, what).toEqual([
              `invalid status transition ${hex(from)} -> ${hex((to & ~NEEDS_RESET) >>> 0)}`,
            ]);
          }
          const activates = (want & DRIVER_OK) !== 0 && (from & DRIVER_OK) === 0 && (want & FAILED) === 0;
          expect(h.dev.activations - activationsBefore, `${what} activation`).toBe(activates ? 1 : 0);
          expect(h.dev.resets - resetsBefore, `${what} reset`).toBe(to === 0 ? 1 : 0);
          cases++;
        }
      }
      expect(cases).toBe(froms.length * TARGETS.length);
    });
  }

  it('FEATURES_OK is not a legacy status bit', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    driveLegacyToDriver(h.t);
    addStatus(h.t, FEATURES_OK);
    expect(h.t.status).toBe(ACK | DRIVER);
    expect(h.errors).toEqual(['invalid status transition 0x3 -> 0xb']);
  });

  it('DEVICE_NEEDS_RESET is the device bit: ignored in written values, kept when the device set it', () => {
    const h = createTransportHarness();
    mmioWrite32(h.t, MmioReg.Status, ACK | NEEDS_RESET);
    expect(h.t.status).toBe(ACK);
    driveToFeaturesOk(h.t);
    addStatus(h.t, DRIVER_OK);
    h.dev.ctx?.queueFailed(0, { reason: 'head-out-of-range', message: 'bad head' });
    const live = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
    expect(h.t.status).toBe(live | NEEDS_RESET);
    // Writing back what was read, or without the bit, is not a transition; FAILED still is.
    mmioWrite32(h.t, MmioReg.Status, live);
    mmioWrite32(h.t, MmioReg.Status, live | NEEDS_RESET);
    expect(h.t.guestErrorCounts.status).toBe(2);
    expect(h.errors.slice(-2)).toEqual([
      'invalid status transition 0xf -> 0xf',
      'invalid status transition 0xf -> 0xf',
    ]);
    expect(h.t.status).toBe(live | NEEDS_RESET);
    addStatus(h.t, FAILED);
    expect(h.t.status).toBe(live | NEEDS_RESET | FAILED);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.t.status).toBe(0);
  });

  it('a FAILED device accepts nothing but reset', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    addStatus(h.t, FAILED);
    addStatus(h.t, DRIVER_OK);
    expect(h.t.status).toBe(ACK | DRIVER | FEATURES_OK | FAILED);
    expect(h.dev.activations).toBe(0);
    mmioWrite32(h.t, MmioReg.Status, 0);
    driveToFeaturesOk(h.t);
    addStatus(h.t, DRIVER_OK);
    expect(h.dev.activations).toBe(1);
  });
});

describe('2.2 feature negotiation and FEATURES_OK (2.2.2, 3.1.1 steps 4-6)', () => {
  function toDriver(h: TransportHarness): void {
    mmioWrite32(h.t, MmioReg.Status, 0);
    addStatus(h.t, ACK);
    addStatus(h.t, DRIVER);
  }

  it('accepts a subset of the offer with VERSION_1 and gives it to the device', () => {
    const h = createTransportHarness();
    const wanted = new Features([5, FeatureBit.VERSION_1, FeatureBit.EVENT_IDX]);
    expect(driveToFeaturesOk(h.t, wanted)).toBe(ACK | DRIVER | FEATURES_OK);
    expect(h.t.driverFeatures.equals(wanted)).toBe(true);
    expect(h.dev.validated.map((f) => f.toString())).toEqual([wanted.toString()]);
    addStatus(h.t, DRIVER_OK);
    expect(h.dev.ctx?.features.equals(wanted)).toBe(true);
    expect(h.dev.ctx?.mem).toBe(h.mem);
    expect(h.dev.ctx?.queues.length).toBe(2);
    expect(h.t.isActivated).toBe(true);
  });

  const refusals: Array<[string, (h: TransportHarness) => void, RegExp]> = [
    [
      'a device bit that was not offered (2.2.1)',
      (h) => writeDriverFeatures(h.t, new Features([1, FeatureBit.VERSION_1])),
      /features_ok refused: driver accepted 0x00000001_00000002, offered/,
    ],
    [
      'a ring bit the transport does not implement (RING_PACKED)',
      (h) => writeDriverFeatures(h.t, new Features([FeatureBit.VERSION_1, FeatureBit.RING_PACKED])),
      /driver accepted/,
    ],
    [
      'a non-zero word past bit 127',
      (h) => {
        writeDriverFeatures(h.t, new Features([FeatureBit.VERSION_1]));
        mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 4);
        mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
      },
      /past bit 127/,
    ],
    [
      'a non-zero word at selector 0xffffffff',
      (h) => {
        writeDriverFeatures(h.t, new Features([FeatureBit.VERSION_1]));
        mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 0xffff_ffff);
        mmioWrite32(h.t, MmioReg.DriverFeatures, 0x8000_0000);
      },
      /past bit 127/,
    ],
    [
      'VERSION_1 missing (non-transitional device, 6.1)',
      (h) => writeDriverFeatures(h.t, new Features([0, 5])),
      /did not accept version_1/,
    ],
    [
      'a device veto (validateFeatures returns false)',
      (h) => {
        h.dev.acceptFeatures = false;
        writeDriverFeatures(h.t, new Features([0, FeatureBit.VERSION_1]));
      },
      /device refused 0x00000001_00000001/,
    ],
  ];

  for (const [what, setup, message] of refusals) {
    it(`refuses FEATURES_OK for ${what}: the write is taken, the bit reads back clear`, () => {
      const h = createTransportHarness({ transport: { ringReset: true } });
      toDriver(h);
      setup(h);
      addStatus(h.t, FEATURES_OK);
      expect(mmioRead32(h.t, MmioReg.Status)).toBe(ACK | DRIVER);
      expect(h.t.guestErrorCounts.features).toBe(1);
      expect(h.t.guestErrors).toBe(1);
      expect(h.errors[0]).toMatch(message);
      // The queue registers stay closed: negotiation did not complete.
      mmioWrite32(h.t, MmioReg.QueueNum, 8);
      expect(h.t.guestErrorCounts.queue).toBe(1);
      // 3.1.1 step 6: the driver gives up with FAILED, then resets and starts over.
      addStatus(h.t, FAILED);
      expect(h.t.status).toBe(ACK | DRIVER | FAILED);
      h.dev.acceptFeatures = true;
      expect(driveToFeaturesOk(h.t)).toBe(ACK | DRIVER | FEATURES_OK);
    });
  }

  it('does not consult the device when the transport already refuses', () => {
    const h = createTransportHarness();
    toDriver(h);
    writeDriverFeatures(h.t, new Features([0]));
    addStatus(h.t, FEATURES_OK);
    expect(h.dev.validated).toEqual([]);
  });

  it('lets the driver write new features and retry after a refusal, without a reset', () => {
    const h = createTransportHarness();
    toDriver(h);
    writeDriverFeatures(h.t, new Features([1, FeatureBit.VERSION_1]));
    addStatus(h.t, FEATURES_OK);
    expect(h.t.status).toBe(ACK | DRIVER);
    writeDriverFeatures(h.t, new Features([0, FeatureBit.VERSION_1]));
    addStatus(h.t, FEATURES_OK);
    expect(h.t.status).toBe(ACK | DRIVER | FEATURES_OK);
  });

  it('zero words past bit 127 are harmless', () => {
    const h = createTransportHarness();
    toDriver(h);
    writeDriverFeatures(h.t, new Features([FeatureBit.VERSION_1]));
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 4);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 0);
    addStatus(h.t, FEATURES_OK);
    expect(h.t.status).toBe(ACK | DRIVER | FEATURES_OK);
  });

  it('writes the word DriverFeaturesSel selects', () => {
    const h = createTransportHarness({ device: { features: [0, 64, 127] } });
    toDriver(h);
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 3);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 0x8000_0000);
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 1);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 2);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    expect(h.t.driverFeatures.bits()).toEqual([FeatureBit.VERSION_1, 64, 127]);
  });

  const closedStates: Array<[string, (h: TransportHarness) => void]> = [
    ['after reset (status 0)', () => {}],
    ['in ACKNOWLEDGE', (h) => mmioWrite32(h.t, MmioReg.Status, ACK)],
    ['after FEATURES_OK (3.1.1 step 5)', (h) => driveToFeaturesOk(h.t)],
    [
      'after DRIVER_OK',
      (h) => {
        driveToFeaturesOk(h.t);
        addStatus(h.t, DRIVER_OK);
      },
    ],
    [
      'after FAILED',
      (h) => {
        toDriver(h);
        addStatus(h.t, FAILED);
      },
    ],
  ];

  for (const [when, setup] of closedStates) {
    it(`ignores DriverFeatures written ${when}`, () => {
      const h = createTransportHarness();
      setup(h);
      const before = h.t.driverFeatures;
      const status = h.t.status;
      for (let sel = 0; sel < 5; sel++) {
        mmioWrite32(h.t, MmioReg.DriverFeaturesSel, sel);
        mmioWrite32(h.t, MmioReg.DriverFeatures, 0xffff_ffff);
      }
      expect(h.t.driverFeatures.equals(before)).toBe(true);
      expect(h.t.status).toBe(status);
      expect(h.t.guestErrorCounts.features).toBe(5);
      expect(h.t.guestErrors).toBe(5);
      expect(h.errors[0]).toBe(`driver features written in status ${hex(status)}`);
    });
  }
});

describe('3.1.2 legacy feature negotiation', () => {
  it('takes the features as written at DRIVER_OK, without FEATURES_OK', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    const wanted = new Features([0, FeatureBit.EVENT_IDX]);
    driveLegacyToDriver(h.t, wanted);
    addStatus(h.t, DRIVER_OK);
    expect(h.t.status).toBe(ACK | DRIVER | DRIVER_OK);
    expect(h.dev.validated).toEqual([]);
    expect(h.dev.ctx?.features.equals(wanted)).toBe(true);
    expect(h.t.guestErrors).toBe(0);
  });

  it('drops bits that were not offered, as a guest error', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    driveLegacyToDriver(h.t, new Features([0, 1, FeatureBit.VERSION_1, FeatureBit.RING_RESET]));
    addStatus(h.t, DRIVER_OK);
    expect(h.dev.ctx?.features.bits()).toEqual([0]);
    expect(h.t.driverFeatures.bits()).toEqual([0]);
    expect(h.t.guestErrorCounts.features).toBe(1);
    expect(h.t.status).toBe(ACK | DRIVER | DRIVER_OK);
  });

  it('ignores GuestFeatures before DRIVER and after DRIVER_OK', () => {
    const h = createTransportHarness({ transport: { version: 1 } });
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    driveLegacyToDriver(h.t, new Features([5]));
    addStatus(h.t, DRIVER_OK);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    expect(h.t.driverFeatures.bits()).toEqual([5]);
    expect(h.t.guestErrorCounts.features).toBe(2);
  });
});

describe('2.4 / 4.2.2.1 device reset (Status = 0)', () => {
  /** A live device with queue 0 running, selectors moved, an interrupt pending, generation moved. */
  function busy(): TransportHarness {
    const h = createTransportHarness({ transport: { shmRegions: [{ id: 0, base: 0x8000, length: 0x100 }] } });
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, { size: 8, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 });
    addStatus(h.t, DRIVER_OK);
    h.dev.changeConfig(0, [0xaa]);
    h.dev.changeConfig(1, [0xbb]);
    mmioWrite32(h.t, MmioReg.DeviceFeaturesSel, 1);
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 1);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    mmioWrite32(h.t, MmioReg.SHMSel, 5);
    const q = h.t.queue(0);
    q.addUsed(h.mem, 0, 0);
    expect(h.dev.ctx?.notifyUsed(0)).toBe(true);
    expect(h.t.interruptStatus).toBe(InterruptBit.VRING | InterruptBit.CONFIG);
    expect(h.irq.level).toBe(true);
    return h;
  }

  it('resets the device, every queue, the selectors, the features and the interrupt status', () => {
    const h = busy();
    const resets = h.dev.resets;
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.dev.resets).toBe(resets + 1);
    expect(mmioRead32(h.t, MmioReg.Status)).toBe(0);
    expect(h.t.isActivated).toBe(false);
    for (let i = 0; i < h.t.numQueues; i++) {
      const q = h.t.queue(i);
      expect([q.ready, q.size, q.descTable, q.availRing, q.usedRing, q.nextUsed]).toEqual([
        false,
        q.maxSize,
        0,
        0,
        0,
        0,
      ]);
      mmioWrite32(h.t, MmioReg.QueueSel, i);
      expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
    }
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    // Selectors back to 0: DeviceFeatures shows word 0, SHM region 0 is selected, QueueSel 0.
    expect(h.t.queueSel).toBe(0);
    const fresh = createTransportHarness();
    expect(mmioRead32(h.t, MmioReg.DeviceFeatures)).toBe(mmioRead32(fresh.t, MmioReg.DeviceFeatures));
    expect(mmioRead32(h.t, MmioReg.SHMLenLow)).toBe(0x100);
    expect(h.t.driverFeatures.bits()).toEqual([]);
    // 4.2.2.1: InterruptStatus cleared, so the line drops.
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
    expect(h.irq.level).toBe(false);
    expect(h.irq.calls).toEqual([true, false]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('forgets the negotiated notification data format', () => {
    const h = busy();
    mmioWrite32(h.t, MmioReg.Status, 0);
    // Before DRIVER_OK every notify is refused; the message shows how the value was decoded.
    mmioWrite32(h.t, MmioReg.QueueNotify, 0x0001_0000);
    expect(h.errors).toEqual(['notify for queue 65536 before driver_ok']);
  });

  it('selects DriverFeatures word 0 again after reset', () => {
    const h = busy();
    mmioWrite32(h.t, MmioReg.Status, 0);
    addStatus(h.t, ACK);
    addStatus(h.t, DRIVER);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    expect(h.t.driverFeatures.bits()).toEqual([0]);
  });

  it('never moves ConfigGeneration backwards', () => {
    const h = busy();
    const generation = mmioRead32(h.t, MmioReg.ConfigGeneration);
    expect(generation).toBe(2);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(generation);
    h.dev.changeConfig(0, [1]);
    expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(generation + 1);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.t.configGeneration).toBe(generation + 1);
  });

  it('forgets unknown feature words written before the reset', () => {
    const h = createTransportHarness();
    addStatus(h.t, ACK);
    addStatus(h.t, DRIVER);
    mmioWrite32(h.t, MmioReg.DriverFeaturesSel, 9);
    mmioWrite32(h.t, MmioReg.DriverFeatures, 1);
    expect(driveToFeaturesOk(h.t)).toBe(ACK | DRIVER | FEATURES_OK);
  });

  it('makes the old device context inert', () => {
    const h = busy();
    const ctx = h.dev.ctx;
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.dev.ctx).toBeNull();
    driveToFeaturesOk(h.t);
    programQueue(h.t, 0, { size: 8, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 });
    addStatus(h.t, DRIVER_OK);
    h.t.queue(0).addUsed(h.mem, 0, 0);
    expect(ctx?.notifyUsed(0)).toBe(false);
    ctx?.queueFailed(0, { reason: 'head-out-of-range', message: 'stale' });
    expect(h.t.status & NEEDS_RESET).toBe(0);
    expect(h.t.interruptStatus).toBe(0);
    expect(h.dev.ctx?.notifyUsed(0)).toBe(true);
  });

  it('is accepted in every state, and a reset of a reset device is harmless', () => {
    const h = createTransportHarness();
    mmioWrite32(h.t, MmioReg.Status, 0);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.dev.resets).toBe(2);
    expect(h.irq.calls).toEqual([]);
    expect(h.t.guestErrors).toBe(0);
  });
});
