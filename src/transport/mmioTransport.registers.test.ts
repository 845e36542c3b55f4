import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import {
  DeviceId,
  DeviceStatus,
  FeatureBit,
  hex,
  MMIO_DEFAULT_WINDOW_SIZE,
  MMIO_MAGIC_VALUE,
  MmioLegacyReg,
  MmioReg,
  VirtioError,
} from '../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  mmioRead32,
  mmioWrite32,
  readDeviceFeatures,
  type TransportHarness,
} from '../testing/index.js';
import { GUEST_ERROR_KINDS, MMIO_DEFAULT_VENDOR_ID, type MmioTransport } from './mmioTransport.js';
import { CONTROL_AREA_SIZE } from './registers.js';
import type { AccessWidth } from './types.js';

const VERSIONS = [2, 1] as const;

function harness(version: 1 | 2, extra: Parameters<typeof createTransportHarness>[0] = {}): TransportHarness {
  return createTransportHarness({ ...extra, transport: { ...extra.transport, version } });
}

/**
 * Everything a guest could observe, plus what the device saw: read through side-effect-free
 * registers and accessors. Two equal snapshots mean an access had no effect.
 */
function snapshot(h: TransportHarness): unknown {
  const t = h.t;
  const regs: Record<string, number> = {};
  const before = t.guestErrors;
  for (const row of t.registers) if (row.read !== undefined) regs[row.name] = row.read(t) >>> 0;
  expect(t.guestErrors).toBe(before);
  return {
    regs,
    status: t.status,
    isr: t.interruptStatus,
    generation: t.configGeneration,
    sel: t.queueSel,
    accepted: t.driverFeatures.toString(),
    queues: Array.from({ length: t.numQueues }, (_, i) => {
      const q = t.queue(i);
      return [q.ready, q.size, q.descTable, q.availRing, q.usedRing];
    }),
    config: Array.from(h.dev.config),
    dev: [h.dev.activations, h.dev.resets, h.dev.notifyLog.length, h.dev.queueResets.length],
    configWrites: h.dev.configWrites.length,
    irq: h.irq.calls.length,
  };
}

/** Puts a transport in a state where a stray write would show: ACK|DRIVER, a selector set. */
function busyState(h: TransportHarness): void {
  addStatus(h.t, DeviceStatus.ACKNOWLEDGE);
  addStatus(h.t, DeviceStatus.DRIVER);
  mmioWrite32(h.t, MmioReg.DeviceFeaturesSel, 1);
  mmioWrite32(h.t, MmioReg.QueueSel, 1);
}

function countsWith(kind: (typeof GUEST_ERROR_KINDS)[number], n: number): Record<string, number> {
  const c: Record<string, number> = {};
  for (const k of GUEST_ERROR_KINDS) c[k] = 0;
  c[kind] = n;
  return c;
}

describe('4.2.2 register reads at width 4', () => {
  for (const version of VERSIONS) {
    describe(`version ${version}`, () => {
      it('reads MagicValue, Version, DeviceID and VendorID', () => {
        const h = harness(version, { device: { deviceId: DeviceId.BLOCK } });
        expect(mmioRead32(h.t, MmioReg.MagicValue)).toBe(MMIO_MAGIC_VALUE);
        expect(mmioRead32(h.t, MmioReg.Version)).toBe(version);
        expect(mmioRead32(h.t, MmioReg.DeviceID)).toBe(DeviceId.BLOCK);
        expect(mmioRead32(h.t, MmioReg.VendorID)).toBe(MMIO_DEFAULT_VENDOR_ID);
        expect(h.t.guestErrors).toBe(0);
      });

      it('reads a custom VendorID', () => {
        const h = harness(version, { transport: { vendorId: 0xffff_fffe } });
        expect(mmioRead32(h.t, MmioReg.VendorID)).toBe(0xffff_fffe);
      });

      it('reads every feature word by DeviceFeaturesSel, and 0 past the last word', () => {
        const h = harness(version, { device: { features: [0, 5, 63, 64, 127] } });
        const expected = new Features([0, 5, 63, 64, 127, FeatureBit.EVENT_IDX, FeatureBit.INDIRECT_DESC]);
        if (version === 2) {
          expected.set(FeatureBit.VERSION_1).set(FeatureBit.RING_RESET).set(FeatureBit.NOTIFICATION_DATA);
        }
        for (let sel = 0; sel < 4; sel++) {
          mmioWrite32(h.t, MmioReg.DeviceFeaturesSel, sel);
          expect(mmioRead32(h.t, MmioReg.DeviceFeatures), `word ${sel}`).toBe(expected.word(sel));
        }
        for (const sel of [4, 5, 100, 0x7fff_ffff, 0xffff_ffff]) {
          mmioWrite32(h.t, MmioReg.DeviceFeaturesSel, sel);
          expect(mmioRead32(h.t, MmioReg.DeviceFeatures), `word ${hex(sel)}`).toBe(0);
        }
        expect(h.t.offeredFeatures.equals(expected)).toBe(true);
        expect(h.t.guestErrors).toBe(0);
      });

      it('offers only the ring and transport bits that are enabled', () => {
        const h = harness(version, {
          transport: { eventIdx: false, indirectDesc: false, ringReset: false, notificationData: false },
        });
        const offered = readDeviceFeatures(h.t);
        expect(offered.bits()).toEqual(version === 2 ? [0, 5, FeatureBit.VERSION_1] : [0, 5]);
      });

      it('reads QueueNumMax per queue and 0 for queues that do not exist', () => {
        const h = harness(version, { device: { queueMaxSizes: [256, 1, 32768] } });
        const expected = [256, 1, 32768, 0, 0];
        for (const [sel, max] of expected.entries()) {
          mmioWrite32(h.t, MmioReg.QueueSel, sel);
          expect(mmioRead32(h.t, MmioReg.QueueNumMax), `queue ${sel}`).toBe(max);
        }
        mmioWrite32(h.t, MmioReg.QueueSel, 0xffff_ffff);
        expect(mmioRead32(h.t, MmioReg.QueueNumMax)).toBe(0);
        expect(h.t.guestErrors).toBe(0);
      });

      it('reads 0 from Status, InterruptStatus and the queue state registers after construction', () => {
        const h = harness(version);
        expect(mmioRead32(h.t, MmioReg.Status)).toBe(0);
        expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
        if (version === 2) {
          expect(mmioRead32(h.t, MmioReg.QueueReady)).toBe(0);
          expect(mmioRead32(h.t, MmioReg.QueueReset)).toBe(0);
          expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(0);
        } else {
          expect(mmioRead32(h.t, MmioLegacyReg.QueuePFN)).toBe(0);
        }
        expect(h.t.guestErrors).toBe(0);
      });

      it('calls attach once with the host interface', () => {
        const h = harness(version);
        expect(h.dev.attaches).toBe(1);
        expect(h.dev.host).not.toBeNull();
      });
    });
  }

  it('uses the spec register names of each layout', () => {
    const names = (v: 1 | 2) => harness(v).t.registers.map((r) => r.name);
    expect(names(2)).toEqual([
      'MagicValue',
      'Version',
      'DeviceID',
      'VendorID',
      'DeviceFeatures',
      'DeviceFeaturesSel',
      'DriverFeatures',
      'DriverFeaturesSel',
      'QueueSel',
      'QueueNumMax',
      'QueueNum',
      'QueueReady',
      'QueueNotify',
      'InterruptStatus',
      'InterruptACK',
      'Status',
      'QueueDescLow',
      'QueueDescHigh',
      'QueueDriverLow',
      'QueueDriverHigh',
      'QueueDeviceLow',
      'QueueDeviceHigh',
      'SHMSel',
      'SHMLenLow',
      'SHMLenHigh',
      'SHMBaseLow',
      'SHMBaseHigh',
      'QueueReset',
      'ConfigGeneration',
    ]);
    expect(names(1)).toEqual([
      'MagicValue',
      'Version',
      'DeviceID',
      'VendorID',
      'HostFeatures',
      'HostFeaturesSel',
      'GuestFeatures',
      'GuestFeaturesSel',
      'GuestPageSize',
      'QueueSel',
      'QueueNumMax',
      'QueueNum',
      'QueueAlign',
      'QueuePFN',
      'QueueNotify',
      'InterruptStatus',
      'InterruptACK',
      'Status',
    ]);
  });
});

describe('4.2.2.2 control registers take 32-bit aligned accesses only', () => {
  for (const version of VERSIONS) {
    it(`version ${version}: every register at widths 1, 2 and 8 is a guest error with no effect`, () => {
      const h = harness(version);
      busyState(h);
      for (const row of h.t.registers) {
        for (const width of [1, 2, 8] as AccessWidth[]) {
          const before = snapshot(h);
          const errors = h.t.guestErrors;
          expect(h.t.read(row.offset, width), `${row.name} read width ${width}`).toBe(0);
          for (const value of [0, 0xffff_ffff, 1]) h.t.write(row.offset, width, value);
          expect(h.t.guestErrors - errors, `${row.name} width ${width}`).toBe(4);
          expect(snapshot(h), `${row.name} width ${width}`).toEqual(before);
        }
      }
      expect(h.t.guestErrorCounts).toEqual(countsWith('width', h.t.registers.length * 3 * 4));
    });

    it(`version ${version}: misaligned accesses of every width are guest errors with no effect`, () => {
      const h = harness(version);
      busyState(h);
      let expected = 0;
      for (const row of h.t.registers) {
        for (const delta of [1, 2, 3]) {
          for (const width of [1, 2, 4] as AccessWidth[]) {
            const offset = row.offset + delta;
            // A naturally aligned byte or halfword inside a register is still not a 32-bit access.
            const before = snapshot(h);
            expect(h.t.read(offset, width), `${hex(offset)} width ${width}`).toBe(0);
            h.t.write(offset, width, 0);
            h.t.write(offset, width, 0xffff_ffff);
            expected += 3;
            expect(snapshot(h), `${hex(offset)} width ${width}`).toEqual(before);
          }
        }
      }
      expect(h.t.guestErrorCounts).toEqual(countsWith('width', expected));
      expect(h.errors[0]).toMatch(/control registers are 32-bit/);
    });
  }
});

describe('4.2.2.2 read of a write-only register, write of a read-only register', () => {
  for (const version of VERSIONS) {
    it(`version ${version}: every write-only register reads 0 and counts a direction error`, () => {
      const h = harness(version);
      busyState(h);
      const writeOnly = h.t.registers.filter((r) => r.access === 'w');
      expect(writeOnly.length).toBeGreaterThan(5);
      for (const row of writeOnly) {
        const before = snapshot(h);
        expect(mmioRead32(h.t, row.offset), row.name).toBe(0);
        expect(snapshot(h), row.name).toEqual(before);
        expect(h.errors.at(-1)).toBe(`read of write-only register ${row.name} (${hex(row.offset)})`);
      }
      expect(h.t.guestErrorCounts).toEqual(countsWith('direction', writeOnly.length));
    });

    it(`version ${version}: every read-only register ignores writes and counts a direction error`, () => {
      const h = harness(version);
      busyState(h);
      const readOnly = h.t.registers.filter((r) => r.access === 'r');
      expect(readOnly.length).toBeGreaterThan(5);
      for (const row of readOnly) {
        const before = snapshot(h);
        mmioWrite32(h.t, row.offset, 0);
        mmioWrite32(h.t, row.offset, 0xffff_ffff);
        expect(snapshot(h), row.name).toEqual(before);
        expect(h.errors.at(-1)).toBe(`write of read-only register ${row.name} (${hex(row.offset)})`);
      }
      expect(h.t.guestErrorCounts).toEqual(countsWith('direction', 2 * readOnly.length));
    });
  }

  it('the modern layout has exactly the spec directions', () => {
    const h = harness(2);
    const rw = h.t.registers.filter((r) => r.access === 'rw').map((r) => r.name);
    expect(rw).toEqual(['QueueReady', 'Status', 'QueueReset']);
    const legacyRw = harness(1)
      .t.registers.filter((r) => r.access === 'rw')
      .map((r) => r.name);
    expect(legacyRw).toEqual(['QueuePFN', 'Status']);
  });
});

describe('4.2.2.2 undescribed offsets', () => {
  for (const version of VERSIONS) {
    it(`version ${version}: every undescribed control offset reads 0 and ignores writes`, () => {
      const h = harness(version);
      busyState(h);
      const described = new Set(h.t.registers.map((r) => r.offset));
      const holes: number[] = [];
      for (let offset = 0; offset < CONTROL_AREA_SIZE; offset += 4)
        if (!described.has(offset)) holes.push(offset);
      // Modern: the gaps of the 4.2.2 table; legacy: also every modern-only register.
      expect(holes.length).toBe(version === 2 ? 64 - 29 : 64 - 18);
      for (const offset of holes) {
        const before = snapshot(h);
        expect(mmioRead32(h.t, offset), hex(offset)).toBe(0);
        mmioWrite32(h.t, offset, 0xffff_ffff);
        mmioWrite32(h.t, offset, 0);
        expect(snapshot(h), hex(offset)).toEqual(before);
      }
      expect(h.t.guestErrorCounts).toEqual(countsWith('offset', 3 * holes.length));
      expect(h.errors[0]).toBe(`read of undescribed offset ${hex(holes[0])}`);
    });
  }

  it('the legacy layout has no QueueReady, queue addresses, SHM, QueueReset or ConfigGeneration', () => {
    const h = harness(1);
    for (const offset of [
      MmioReg.QueueReady,
      MmioReg.QueueDescLow,
      MmioReg.QueueDeviceHigh,
      MmioReg.SHMSel,
      MmioReg.SHMBaseHigh,
      MmioReg.QueueReset,
      MmioReg.ConfigGeneration,
    ]) {
      expect(mmioRead32(h.t, offset)).toBe(0);
    }
    expect(h.t.guestErrorCounts.offset).toBe(7);
  });

  it('the modern layout has no GuestPageSize, QueueAlign or QueuePFN', () => {
    const h = harness(2);
    for (const offset of [MmioLegacyReg.GuestPageSize, MmioLegacyReg.QueueAlign, MmioLegacyReg.QueuePFN]) {
      mmioWrite32(h.t, offset, 1);
      expect(mmioRead32(h.t, offset)).toBe(0);
    }
    expect(h.t.guestErrorCounts.offset).toBe(6);
  });

  it('accesses outside the window or at impossible offsets are offset errors', () => {
    const h = harness(2);
    const bad = [MMIO_DEFAULT_WINDOW_SIZE, MMIO_DEFAULT_WINDOW_SIZE + 4, -4, -1, 1.5, Number.NaN, 2 ** 32];
    for (const offset of bad) {
      expect(h.t.read(offset, 4), String(offset)).toBe(0);
      h.t.write(offset, 4, 0);
    }
    expect(h.t.guestErrorCounts).toEqual(countsWith('offset', 2 * bad.length));
  });

  it('never throws for any width, offset or value a bus could pass', () => {
    const h = harness(2);
    const widths = [0, 3, 5, 16, -1, Number.NaN] as unknown as AccessWidth[];
    for (const width of widths) {
      for (const offset of [0, MmioReg.Status, MmioReg.Config]) {
        expect(h.t.read(offset, width)).toBe(0);
        h.t.write(offset, width, 0);
      }
    }
    for (const value of [-1, 2 ** 40, Number.NaN, 1.5, Number.POSITIVE_INFINITY]) {
      mmioWrite32(h.t, MmioReg.QueueSel, value);
      mmioWrite32(h.t, MmioReg.Status, value);
    }
    expect(h.t.guestErrors).toBeGreaterThan(0);
  });
});

describe('4.2.2 device-specific configuration space', () => {
  function cfg(h: TransportHarness, rel: number, width: AccessWidth): number {
    return h.t.read(MmioReg.Config + rel, width);
  }

  for (const version of VERSIONS) {
    it(`version ${version}: reads 8, 16 and 32-bit naturally aligned fields little-endian`, () => {
      const h = harness(version, { device: { configSize: 8 } });
      expect(cfg(h, 0, 1)).toBe(0x00);
      expect(cfg(h, 7, 1)).toBe(0x07);
      expect(cfg(h, 2, 2)).toBe(0x0302);
      expect(cfg(h, 6, 2)).toBe(0x0706);
      expect(cfg(h, 4, 4)).toBe(0x07060504);
      expect(h.t.guestErrors).toBe(0);
    });
  }

  it('is readable and writable in any status, before FEATURES_OK too (2.5.1)', () => {
    const h = harness(2, { device: { configSize: 8 } });
    h.t.write(MmioReg.Config + 4, 4, 0xdead_beef);
    h.t.write(MmioReg.Config + 1, 1, 0x1ff);
    h.t.write(MmioReg.Config + 2, 2, 0x1_2345);
    expect(h.dev.configWrites).toEqual([
      { offset: 4, width: 4, value: 0xdead_beef },
      { offset: 1, width: 1, value: 0xff },
      { offset: 2, width: 2, value: 0x2345 },
    ]);
    expect(cfg(h, 4, 4)).toBe(0xdead_beef);
    expect(cfg(h, 0, 4)).toBe(0x2345_ff00);
    expect(h.t.guestErrors).toBe(0);
  });

  it('rejects 64-bit, misaligned and out-of-range accesses, reading 0 and writing nothing', () => {
    const h = harness(2, { device: { configSize: 8 } });
    const bad: Array<[number, AccessWidth]> = [
      [0, 8],
      [1, 2],
      [3, 2],
      [1, 4],
      [2, 4],
      [6, 4],
      [8, 1],
      [8, 4],
      [0x100 - 4, 4],
      [MMIO_DEFAULT_WINDOW_SIZE - MmioReg.Config - 1, 1],
    ];
    for (const [rel, width] of bad) {
      expect(cfg(h, rel, width), `${hex(rel)} width ${width}`).toBe(0);
      h.t.write(MmioReg.Config + rel, width, 0xffff_ffff);
    }
    expect(h.dev.configWrites).toEqual([]);
    expect(h.t.guestErrorCounts).toEqual(countsWith('config', 2 * bad.length));
    expect(Array.from(h.dev.config)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('counts a write the device refuses', () => {
    const h = harness(2, { device: { configSize: 4 } });
    h.dev.acceptConfigWrites = false;
    h.t.write(MmioReg.Config, 1, 9);
    expect(h.dev.configWrites).toEqual([{ offset: 0, width: 1, value: 9 }]);
    expect(h.t.guestErrorCounts).toEqual(countsWith('config', 1));
    expect(h.errors).toEqual(['config write at 0x0 refused by the device']);
  });

  it('a device without configuration space rejects every access', () => {
    const h = harness(2, { device: { configSize: 0 } });
    expect(cfg(h, 0, 1)).toBe(0);
    h.t.write(MmioReg.Config, 4, 0);
    expect(h.t.guestErrorCounts.config).toBe(2);
  });

  it('needs a window large enough for the configuration space', () => {
    const make = (configSize: number, windowSize?: number) => () =>
      createTransportHarness({ device: { configSize }, transport: { windowSize } });
    expect(make(0x100)).not.toThrow();
    expect(make(0x101)).toThrow(VirtioError);
    expect(make(0x101)).toThrow(/cannot hold/);
    expect(make(0x200, 0x300)).not.toThrow();
    expect(make(0x201, 0x300)).toThrow(/cannot hold/);
    expect(make(0, 0xff)).toThrow(/cannot hold/);
    for (const w of [0, -0x200, 1.5, 2 ** 33]) expect(make(0, w)).toThrow(/invalid window size/);
  });

  it('serves a larger window up to the end of the configuration space', () => {
    const h = createTransportHarness({ device: { configSize: 0x200 }, transport: { windowSize: 0x400 } });
    expect(h.t.windowSize).toBe(0x400);
    expect(cfg(h, 0x1fc, 4)).toBe(0xfffefdfc);
    expect(cfg(h, 0x200, 1)).toBe(0);
    expect(h.t.read(0x400, 1)).toBe(0);
    expect(h.t.guestErrorCounts).toMatchObject({ config: 1, offset: 1 });
  });
});

describe('4.2.2 shared memory regions (SHMSel, SHMLen, SHMBase)', () => {
  function readShm(t: MmioTransport, id: number): number[] {
    mmioWrite32(t, MmioReg.SHMSel, id);
    return [MmioReg.SHMLenLow, MmioReg.SHMLenHigh, MmioReg.SHMBaseLow, MmioReg.SHMBaseHigh].map((r) =>
      mmioRead32(t, r),
    );
  }

  it('reads all ones for a region that does not exist', () => {
    const h = harness(2);
    for (const id of [0, 1, 255, 0xffff_ffff]) {
      expect(readShm(h.t, id), `region ${id}`).toEqual([0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]);
    }
    expect(h.t.guestErrors).toBe(0);
  });

  it('reads the length and base of configured regions as 32-bit halves', () => {
    const h = harness(2, {
      transport: {
        shmRegions: [
          { id: 0, base: 0x1_2345_6000, length: 0x4000 },
          { id: 7, base: 0x8000_0000, length: 0x2_0000_0000 },
        ],
      },
    });
    expect(readShm(h.t, 0)).toEqual([0x4000, 0, 0x2345_6000, 1]);
    expect(readShm(h.t, 7)).toEqual([0, 2, 0x8000_0000, 0]);
    expect(readShm(h.t, 1)).toEqual([0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]);
  });

  it('resets SHMSel with the device', () => {
    const h = harness(2, { transport: { shmRegions: [{ id: 0, base: 0x1000, length: 0x1000 }] } });
    mmioWrite32(h.t, MmioReg.SHMSel, 3);
    expect(mmioRead32(h.t, MmioReg.SHMLenLow)).toBe(0xffff_ffff);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(mmioRead32(h.t, MmioReg.SHMLenLow)).toBe(0x1000);
  });

  it('rejects invalid region lists at construction', () => {
    const bad = [
      [{ id: -1, base: 0, length: 1 }],
      [{ id: 2 ** 32, base: 0, length: 1 }],
      [
        { id: 1, base: 0, length: 1 },
        { id: 1, base: 0x1000, length: 1 },
      ],
      [{ id: 0, base: -1, length: 1 }],
      [{ id: 0, base: 0, length: 2 ** 53 }],
      [{ id: 0, base: 2 ** 52, length: 2 ** 52 }],
      [{ id: 0, base: 0.5, length: 1 }],
    ];
    for (const shmRegions of bad) {
      expect(() => harness(2, { transport: { shmRegions } }), JSON.stringify(shmRegions)).toThrow(
        VirtioError,
      );
    }
    expect(() => harness(1, { transport: { shmRegions: [{ id: 0, base: 0, length: 1 }] } })).toThrow(
      /modern layout/,
    );
  });
});

describe('construction (host errors throw VirtioError)', () => {
  it('rejects invalid versions, vendor IDs and device IDs', () => {
    expect(() => createTransportHarness({ transport: { version: 3 as 2 } })).toThrow(
      /unsupported mmio version/,
    );
    expect(() => createTransportHarness({ transport: { vendorId: -1 } })).toThrow(/invalid vendor id/);
    expect(() => createTransportHarness({ transport: { vendorId: 2 ** 32 } })).toThrow(/invalid vendor id/);
    expect(() => createTransportHarness({ device: { deviceId: 1.5 } })).toThrow(/invalid device id/);
  });

  it('rejects a device that offers transport feature bits itself', () => {
    for (const bit of [24, FeatureBit.EVENT_IDX, FeatureBit.VERSION_1, FeatureBit.RING_PACKED, 40]) {
      expect(() => createTransportHarness({ device: { features: [bit] } }), `bit ${bit}`).toThrow(
        /transport feature bit/,
      );
    }
    expect(() => createTransportHarness({ device: { features: [23, 41, 63] } })).not.toThrow();
  });

  it('rejects queue maximums that are not powers of two', () => {
    expect(() => createTransportHarness({ device: { queueMaxSizes: [16, 12] } })).toThrow(VirtioError);
    expect(() => createTransportHarness({ device: { queueMaxSizes: [0] } })).toThrow(VirtioError);
  });

  it('queue() throws for queues the device does not have', () => {
    const h = createTransportHarness();
    expect(h.t.queue(1).maxSize).toBe(8);
    for (const i of [2, -1, 0.5]) expect(() => h.t.queue(i)).toThrow(/no queue/);
  });
});

describe('register profiles (composable table)', () => {
  it('adds rows at undescribed offsets and overrides standard rows', () => {
    let reserved = 0;
    const h = createTransportHarness({
      transport: {
        profile: {
          name: 'test',
          rows: [
            {
              offset: 0x0c4,
              name: 'Extra',
              access: 'rw',
              read: () => reserved,
              write: (_t, v) => {
                reserved = v;
              },
            },
            // A readable QueueNotify, as the seed profile has.
            {
              offset: MmioReg.QueueNotify,
              name: 'QueueNotify',
              access: 'rw',
              read: (t) => t.queueSel + 0x100,
              write: (t, v) => t.guestError('notify', `profile notify ${hex(v)}`),
            },
          ],
        },
      },
    });
    mmioWrite32(h.t, 0x0c4, 42);
    expect(mmioRead32(h.t, 0x0c4)).toBe(42);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    expect(mmioRead32(h.t, MmioReg.QueueNotify)).toBe(0x101);
    mmioWrite32(h.t, MmioReg.QueueNotify, 3);
    expect(h.errors).toEqual(['profile notify 0x3']);
    expect(h.t.registers.find((r) => r.offset === MmioReg.QueueNotify)?.access).toBe('rw');
    // The standard rows are untouched for transports without the profile.
    const plain = createTransportHarness();
    expect(mmioRead32(plain.t, 0x0c4)).toBe(0);
    expect(plain.t.guestErrorCounts.offset).toBe(1);
  });

  it('rejects malformed profile rows', () => {
    const make = (row: object) => () =>
      createTransportHarness({ transport: { profile: { name: 'bad', rows: [row as never] } } });
    expect(make({ offset: 0x0c6, name: 'X', access: 'r', read: () => 0 })).toThrow(/not 32-bit aligned/);
    expect(make({ offset: 0x100, name: 'X', access: 'r', read: () => 0 })).toThrow(
      /outside the control area/,
    );
    expect(make({ offset: 0x0c4, name: 'X', access: 'rw', read: () => 0 })).toThrow(/does not match/);
    expect(make({ offset: 0x0c4, name: 'X', access: 'w', read: () => 0 })).toThrow(/does not match/);
  });
});
