import { describe, expect, it } from 'vitest';
import { MMIO_DEFAULT_WINDOW_SIZE, MmioReg, VirtioError, type VirtioErrorCode } from '../spec/index.js';
import type { AccessWidth, MmioDevice } from '../transport/index.js';
import { MmioBus } from './bus.js';

/** A device that records every access and answers reads with `tag + offset`. */
class FakeDevice implements MmioDevice {
  readonly accesses: Array<{ op: 'r' | 'w'; offset: number; width: AccessWidth; value: number }> = [];

  constructor(
    readonly windowSize: number = MMIO_DEFAULT_WINDOW_SIZE,
    private readonly tag = 0,
  ) {}

  read(offset: number, width: AccessWidth): number {
    this.accesses.push({ op: 'r', offset, width, value: 0 });
    return this.tag + offset;
  }

  write(offset: number, width: AccessWidth, value: number): void {
    this.accesses.push({ op: 'w', offset, width, value });
  }
}

/** Runs `fn`, expects a VirtioError with `code`, returns it. */
function expectVirtioError(fn: () => unknown, code: VirtioErrorCode, what = ''): VirtioError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, what).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code, what).toBe(code);
  return err as VirtioError;
}

const BASE_A = 0x1000_0000;
const BASE_B = BASE_A + MMIO_DEFAULT_WINDOW_SIZE;

describe('MmioBus mapping', () => {
  it('dispatches reads and writes to the window with the offset relative to its base', () => {
    const bus = new MmioBus();
    const a = new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 0x100_0000);
    const b = new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 0x200_0000);
    bus.map(BASE_A, a, 'a');
    bus.map(BASE_B, b, 'b');
    expect(bus.read(BASE_A + MmioReg.MagicValue, 4)).toBe(0x100_0000 + MmioReg.MagicValue);
    expect(bus.read(BASE_B + MmioReg.Version, 4)).toBe(0x200_0000 + MmioReg.Version);
    bus.write(BASE_A + MmioReg.QueueNotify, 4, 3);
    bus.write(BASE_B + MmioReg.Config + 1, 1, 0xab);
    expect(a.accesses).toEqual([
      { op: 'r', offset: MmioReg.MagicValue, width: 4, value: 0 },
      { op: 'w', offset: MmioReg.QueueNotify, width: 4, value: 3 },
    ]);
    expect(b.accesses).toEqual([
      { op: 'r', offset: MmioReg.Version, width: 4, value: 0 },
      { op: 'w', offset: MmioReg.Config + 1, width: 1, value: 0xab },
    ]);
  });

  it('routes each address of adjacent windows to the right device, alternating and in any map order', () => {
    const bus = new MmioBus();
    const devices: FakeDevice[] = [];
    const order = [5, 2, 7, 0, 3, 6, 1, 4];
    for (const i of order) {
      const d = new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, (i + 1) * 0x100_0000);
      devices[i] = d;
      bus.map(BASE_A + i * MMIO_DEFAULT_WINDOW_SIZE, d, `dev${i}`);
    }
    for (let round = 0; round < 2; round++) {
      for (const i of [0, 7, 3, 3, 4, 1, 6, 2, 5]) {
        const base = BASE_A + i * MMIO_DEFAULT_WINDOW_SIZE;
        expect(bus.read(base, 4)).toBe((i + 1) * 0x100_0000);
        // Last byte of the window still belongs to it; the next byte belongs to the neighbour.
        expect(bus.read(base + MMIO_DEFAULT_WINDOW_SIZE - 1, 1)).toBe(
          (i + 1) * 0x100_0000 + MMIO_DEFAULT_WINDOW_SIZE - 1,
        );
        if (i < 7) expect(bus.read(base + MMIO_DEFAULT_WINDOW_SIZE, 4)).toBe((i + 2) * 0x100_0000);
      }
    }
    expect(bus.stats().devices.map((d) => d.name)).toEqual(
      order
        .slice()
        .sort()
        .map((i) => `dev${i}`),
    );
    expect(bus.stats().unmappedReads).toBe(0);
  });

  it('rejects zero-size, negative, unsafe and non-integer ranges', () => {
    const cases: Array<[string, number, number]> = [
      ['zero size', BASE_A, 0],
      ['negative size', BASE_A, -4],
      ['fractional size', BASE_A, 4.5],
      ['NaN size', BASE_A, Number.NaN],
      ['infinite size', BASE_A, Number.POSITIVE_INFINITY],
      ['negative base', -MMIO_DEFAULT_WINDOW_SIZE, MMIO_DEFAULT_WINDOW_SIZE],
      ['fractional base', BASE_A + 0.5, MMIO_DEFAULT_WINDOW_SIZE],
      ['NaN base', Number.NaN, MMIO_DEFAULT_WINDOW_SIZE],
      ['unsafe base', 2 ** 53, MMIO_DEFAULT_WINDOW_SIZE],
      ['window ending past the safe range', Number.MAX_SAFE_INTEGER - 4, MMIO_DEFAULT_WINDOW_SIZE],
    ];
    for (const [what, base, size] of cases) {
      const bus = new MmioBus();
      expectVirtioError(() => bus.map(base, new FakeDevice(size), 'x'), 'BUS_INVALID_RANGE', what);
      expect(bus.stats().devices, what).toEqual([]);
    }
    const err = expectVirtioError(
      () => new MmioBus().map(BASE_A, new FakeDevice(0), 'rng'),
      'BUS_INVALID_RANGE',
    );
    expect(err.message).toBe('cannot map rng at 0x10000000: window size 0 is not a positive integer');
  });

  it('rejects every kind of overlap, naming both devices and both ranges in hex', () => {
    const size = MMIO_DEFAULT_WINDOW_SIZE;
    const cases: Array<[string, number, number]> = [
      ['same base', BASE_A, size],
      ['starts inside', BASE_A + size / 2, size],
      ['ends inside', BASE_A - size / 2, size],
      ['contains', BASE_A - size, size * 3],
      ['contained', BASE_A + 4, 4],
      ['last byte', BASE_A + size - 1, size],
      ['first byte', BASE_A - size + 1, size],
    ];
    for (const [what, base, sz] of cases) {
      const bus = new MmioBus();
      bus.map(BASE_A, new FakeDevice(size), 'blk');
      const err = expectVirtioError(() => bus.map(base, new FakeDevice(sz), 'rng'), 'BUS_OVERLAP', what);
      expect(err.message, what).toContain('rng at 0x');
      expect(err.message, what).toContain('blk at 0x10000000..0x100001ff');
      expect(
        bus.stats().devices.map((d) => d.name),
        what,
      ).toEqual(['blk']);
    }
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(size), 'blk');
    const err = expectVirtioError(() => bus.map(BASE_A + 0x100, new FakeDevice(size), 'rng'), 'BUS_OVERLAP');
    expect(err.message).toBe(
      'cannot map rng at 0x10000100..0x100002ff: overlaps blk at 0x10000000..0x100001ff',
    );
  });

  it('accepts windows that touch without overlapping', () => {
    const bus = new MmioBus();
    bus.map(BASE_B, new FakeDevice(), 'b');
    bus.map(BASE_A, new FakeDevice(), 'a');
    bus.map(BASE_B + MMIO_DEFAULT_WINDOW_SIZE, new FakeDevice(), 'c');
    bus.map(0, new FakeDevice(4), 'zero');
    expect(bus.stats().devices.map((d) => [d.name, d.base, d.size])).toEqual([
      ['zero', 0, 4],
      ['a', BASE_A, MMIO_DEFAULT_WINDOW_SIZE],
      ['b', BASE_B, MMIO_DEFAULT_WINDOW_SIZE],
      ['c', BASE_B + MMIO_DEFAULT_WINDOW_SIZE, MMIO_DEFAULT_WINDOW_SIZE],
    ]);
  });

  it('rejects an empty or duplicate name', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(), 'rng');
    expectVirtioError(() => bus.map(BASE_B, new FakeDevice(), ''), 'INVALID_ARGUMENT', 'empty');
    const err = expectVirtioError(() => bus.map(BASE_B, new FakeDevice(), 'rng'), 'INVALID_ARGUMENT', 'dup');
    expect(err.message).toBe('a device named rng is already mapped');
    expect(bus.stats().devices.length).toBe(1);
  });
});

describe('MmioBus unmapped accesses', () => {
  it('reads all ones for the width, drops writes, counts both, and reports them', () => {
    const seen: Array<[string, number, number]> = [];
    const bus = new MmioBus({ onUnmapped: (kind, address, width) => seen.push([kind, address, width]) });
    const dev = new FakeDevice();
    bus.map(BASE_B, dev, 'b');
    expect(bus.read(BASE_A, 1)).toBe(0xff);
    expect(bus.read(BASE_A, 2)).toBe(0xffff);
    expect(bus.read(BASE_A, 4)).toBe(0xffff_ffff);
    // 2^64 - 1 is not a double: the same value GuestMemory.read64 gives for all-ones bytes.
    expect(bus.read(BASE_A, 8)).toBe(0xffff_ffff * 2 ** 32 + 0xffff_ffff);
    bus.write(BASE_A, 4, 1);
    bus.write(BASE_B + MMIO_DEFAULT_WINDOW_SIZE, 4, 1);
    expect(dev.accesses).toEqual([]);
    expect(seen).toEqual([
      ['read', BASE_A, 1],
      ['read', BASE_A, 2],
      ['read', BASE_A, 4],
      ['read', BASE_A, 8],
      ['write', BASE_A, 4],
      ['write', BASE_B + MMIO_DEFAULT_WINDOW_SIZE, 4],
    ]);
    const s = bus.stats();
    expect([s.unmappedReads, s.unmappedWrites, s.totalReads, s.totalWrites]).toEqual([4, 2, 4, 2]);
    expect(bus.deviceStats('b').reads).toBe(0);
  });

  it('never throws for hostile addresses, even right after a hit on a window', () => {
    const bus = new MmioBus();
    const dev = new FakeDevice();
    bus.map(BASE_A, dev, 'a');
    const hostile = [
      -1,
      -BASE_A,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      2 ** 64,
      BASE_B,
    ];
    for (const addr of hostile) {
      bus.read(BASE_A, 4); // warm the last-hit window
      expect(bus.read(addr, 4), String(addr)).toBe(0xffff_ffff);
      bus.read(BASE_A, 4);
      expect(() => bus.write(addr, 4, 7), String(addr)).not.toThrow();
    }
    expect(dev.accesses.filter((a) => a.op === 'w')).toEqual([]);
    expect(bus.stats().unmappedReads).toBe(hostile.length);
    expect(bus.stats().unmappedWrites).toBe(hostile.length);
  });

  it('treats an empty bus as all unmapped', () => {
    const bus = new MmioBus();
    expect(bus.read(0, 4)).toBe(0xffff_ffff);
    bus.write(0, 2, 0);
    expect(bus.stats()).toEqual({
      devices: [],
      unmappedReads: 1,
      unmappedWrites: 1,
      totalReads: 1,
      totalWrites: 1,
    });
  });
});

describe('MmioBus counters', () => {
  it('counts every access per device and per register slot, configuration space included', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(), 'rng');
    bus.map(BASE_B, new FakeDevice(), 'blk');
    bus.read(BASE_A + MmioReg.MagicValue, 4);
    bus.read(BASE_A + MmioReg.InterruptStatus, 4);
    bus.read(BASE_A + MmioReg.InterruptStatus, 4);
    bus.write(BASE_A + MmioReg.InterruptACK, 4, 1);
    bus.write(BASE_A + MmioReg.QueueNotify, 4, 0);
    bus.write(BASE_A + MmioReg.QueueNotify, 4, 0);
    bus.write(BASE_A + MmioReg.QueueNotify, 4, 0);
    // 8- and 16-bit configuration accesses count in the 32-bit slot that holds them.
    bus.read(BASE_B + MmioReg.Config, 1);
    bus.read(BASE_B + MmioReg.Config + 1, 1);
    bus.read(BASE_B + MmioReg.Config + 2, 2);
    bus.write(BASE_B + MmioReg.Config + 3, 1, 0);
    bus.read(BASE_B + MMIO_DEFAULT_WINDOW_SIZE - 1, 1);

    expect(bus.deviceStats('rng')).toEqual({
      name: 'rng',
      base: BASE_A,
      size: MMIO_DEFAULT_WINDOW_SIZE,
      reads: 3,
      writes: 4,
      registers: [
        { offset: MmioReg.MagicValue, reads: 1, writes: 0 },
        { offset: MmioReg.QueueNotify, reads: 0, writes: 3 },
        { offset: MmioReg.InterruptStatus, reads: 2, writes: 0 },
        { offset: MmioReg.InterruptACK, reads: 0, writes: 1 },
      ],
    });
    expect(bus.deviceStats(BASE_B).registers).toEqual([
      { offset: MmioReg.Config, reads: 3, writes: 1 },
      { offset: MMIO_DEFAULT_WINDOW_SIZE - 4, reads: 1, writes: 0 },
    ]);
    expect(bus.registerStats('rng', MmioReg.QueueNotify)).toEqual({
      offset: MmioReg.QueueNotify,
      reads: 0,
      writes: 3,
    });
    expect(bus.registerStats('blk', MmioReg.Config + 2)).toEqual({
      offset: MmioReg.Config,
      reads: 3,
      writes: 1,
    });
    expect(bus.registerStats('blk', MmioReg.Status)).toEqual({ offset: MmioReg.Status, reads: 0, writes: 0 });
    const s = bus.stats();
    expect([s.totalReads, s.totalWrites, s.unmappedReads, s.unmappedWrites]).toEqual([7, 5, 0, 0]);
  });

  it('sizes the slots of an odd-sized window so its last byte is counted', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(6), 'odd');
    bus.read(BASE_A + 5, 1);
    expect(bus.deviceStats('odd').registers).toEqual([{ offset: 4, reads: 1, writes: 0 }]);
    expect(bus.read(BASE_A + 6, 1)).toBe(0xff);
  });

  it('resets every counter and keeps the mappings', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 9), 'rng');
    bus.read(BASE_A, 4);
    bus.write(BASE_A + MmioReg.Status, 4, 1);
    bus.read(0, 4);
    bus.write(0, 4, 0);
    bus.resetStats();
    expect(bus.stats()).toEqual({
      devices: [
        { name: 'rng', base: BASE_A, size: MMIO_DEFAULT_WINDOW_SIZE, reads: 0, writes: 0, registers: [] },
      ],
      unmappedReads: 0,
      unmappedWrites: 0,
      totalReads: 0,
      totalWrites: 0,
    });
    expect(bus.read(BASE_A, 4)).toBe(9);
    expect(bus.deviceStats('rng').reads).toBe(1);
  });

  it('rejects stats queries for unknown devices and offsets outside the window', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(), 'rng');
    expect(expectVirtioError(() => bus.deviceStats('blk'), 'DEVICE_NOT_FOUND').message).toBe(
      'no device blk on the bus',
    );
    expect(expectVirtioError(() => bus.deviceStats(BASE_A + 4), 'DEVICE_NOT_FOUND').message).toBe(
      'no device at 0x10000004 on the bus',
    );
    expectVirtioError(() => bus.registerStats('blk', 0), 'DEVICE_NOT_FOUND');
    for (const off of [-1, MMIO_DEFAULT_WINDOW_SIZE, 1.5, Number.NaN]) {
      expectVirtioError(() => bus.registerStats('rng', off), 'INVALID_ARGUMENT', String(off));
    }
  });
});

describe('MmioBus window accessor', () => {
  it('maps each method to the matching width at window offsets, counted like trapped accesses', () => {
    const bus = new MmioBus();
    const dev = new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 0x1000);
    bus.map(BASE_A, new FakeDevice(), 'other');
    bus.map(BASE_B, dev, 'rng');
    const w = bus.window('rng');
    expect(w.read32(MmioReg.DeviceID)).toBe(0x1000 + MmioReg.DeviceID);
    expect(w.read16(MmioReg.Config + 2)).toBe(0x1000 + MmioReg.Config + 2);
    expect(w.read8(MmioReg.Config + 1)).toBe(0x1000 + MmioReg.Config + 1);
    w.write32(MmioReg.Status, 0xf);
    w.write16(MmioReg.Config, 0x1234);
    w.write8(MmioReg.Config + 3, 0x56);
    expect(dev.accesses).toEqual([
      { op: 'r', offset: MmioReg.DeviceID, width: 4, value: 0 },
      { op: 'r', offset: MmioReg.Config + 2, width: 2, value: 0 },
      { op: 'r', offset: MmioReg.Config + 1, width: 1, value: 0 },
      { op: 'w', offset: MmioReg.Status, width: 4, value: 0xf },
      { op: 'w', offset: MmioReg.Config, width: 2, value: 0x1234 },
      { op: 'w', offset: MmioReg.Config + 3, width: 1, value: 0x56 },
    ]);
    expect(bus.deviceStats('rng')).toMatchObject({ reads: 3, writes: 3 });
    expect(bus.deviceStats('other')).toMatchObject({ reads: 0, writes: 0 });
  });

  it('binds by exact base too, and reaches past the window like a stray pointer', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 0x1000), 'a');
    bus.map(BASE_B, new FakeDevice(MMIO_DEFAULT_WINDOW_SIZE, 0x2000), 'b');
    const w = bus.window(BASE_A);
    expect(w.read32(MmioReg.Version)).toBe(0x1000 + MmioReg.Version);
    expect(w.read32(MMIO_DEFAULT_WINDOW_SIZE)).toBe(0x2000);
    expect(w.read32(MMIO_DEFAULT_WINDOW_SIZE * 2)).toBe(0xffff_ffff);
    expect(bus.stats()).toMatchObject({ totalReads: 3, unmappedReads: 1 });
  });

  it('rejects unknown names and addresses that are not a window base', () => {
    const bus = new MmioBus();
    bus.map(BASE_A, new FakeDevice(), 'a');
    expectVirtioError(() => bus.window('b'), 'DEVICE_NOT_FOUND', 'name');
    expectVirtioError(() => bus.window(BASE_A + MmioReg.Version), 'DEVICE_NOT_FOUND', 'inside');
    expectVirtioError(() => bus.window(BASE_B), 'DEVICE_NOT_FOUND', 'unmapped');
  });
});
