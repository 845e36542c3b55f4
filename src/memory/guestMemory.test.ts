import { describe, expect, it } from 'vitest';
import { MemoryError, VirtioError } from '../spec/index.js';
import { RamMemory } from './guestMemory.js';

describe('RamMemory', () => {
  it('reads and writes little-endian values of every width', () => {
    const m = new RamMemory(new ArrayBuffer(64));
    m.write64(8, 0x0012_3456_789a_bcde);
    expect(m.read8(8)).toBe(0xde);
    expect(m.read16(8)).toBe(0xbcde);
    expect(m.read32(8)).toBe(0x789abcde);
    expect(m.read32(12)).toBe(0x00123456);
    expect(m.read64(8)).toBe(0x0012_3456_789a_bcde);
    m.write32(0, 0xffff_ffff);
    expect(m.read32(0)).toBe(0xffff_ffff);
    m.write16(4, 0x1_2345);
    expect(m.read16(4)).toBe(0x2345);
  });

  it('rejects every access that is not entirely inside RAM with the address', () => {
    const m = new RamMemory(new ArrayBuffer(16));
    const cases: Array<[string, () => unknown, number]> = [
      ['read8 past end', () => m.read8(16), 16],
      ['read16 straddling end', () => m.read16(15), 15],
      ['read32 straddling end', () => m.read32(13), 13],
      ['read64 straddling end', () => m.read64(9), 9],
      ['negative address', () => m.read8(-1), -1],
      ['write32 past end', () => m.write32(16, 1), 16],
      ['bulk read past end', () => m.readBytes(10, new Uint8Array(7)), 10],
      ['bulk write past end', () => m.writeBytes(12, new Uint8Array(5)), 12],
      ['fill past end', () => m.fill(0, 17, 0), 0],
      ['huge address', () => m.read8(2 ** 60), 2 ** 60],
      ['NaN address', () => m.read8(Number.NaN), Number.NaN],
    ];
    for (const [what, fn, gpa] of cases) {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(err, what).toBeInstanceOf(MemoryError);
      expect((err as MemoryError).code, what).toBe('MEMORY_OUT_OF_BOUNDS');
      expect((err as MemoryError).gpa, what).toBe(gpa);
    }
  });

  it('serves several regions and refuses accesses spanning two of them', () => {
    const m = new RamMemory([
      { gpa: 0x1000, buffer: new ArrayBuffer(0x100) },
      { gpa: 0x1100, buffer: new SharedArrayBuffer(0x100) },
    ]);
    m.write32(0x10fc, 0x11223344);
    m.write32(0x1100, 0x55667788);
    expect(m.read32(0x10fc)).toBe(0x11223344);
    expect(m.read32(0x1100)).toBe(0x55667788);
    expect(m.isValid(0x10fe, 4)).toBe(false);
    expect(() => m.read32(0x10fe)).toThrow(MemoryError);
    expect(m.isValid(0x0fff, 1)).toBe(false);
    expect(m.isValid(0x11ff, 1)).toBe(true);
    expect(m.isValid(0x1200, 1)).toBe(false);
    expect(m.totalSize).toBe(0x200);
  });

  it('rejects overlapping and empty regions at construction', () => {
    expect(
      () =>
        new RamMemory([
          { gpa: 0, buffer: new ArrayBuffer(0x100) },
          { gpa: 0x80, buffer: new ArrayBuffer(0x100) },
        ]),
    ).toThrow(expect.objectContaining({ code: 'MEMORY_OVERLAP' }));
    expect(() => new RamMemory([{ gpa: 0, buffer: new ArrayBuffer(0) }])).toThrow(VirtioError);
    expect(() => new RamMemory([])).toThrow(expect.objectContaining({ code: 'MEMORY_INVALID_REGION' }));
    expect(() => new RamMemory([{ gpa: -4096, buffer: new ArrayBuffer(16) }])).toThrow(
      expect.objectContaining({ code: 'MEMORY_INVALID_REGION' }),
    );
  });

  it('copies in bulk, fills, and gives live views only inside one region', () => {
    const m = new RamMemory(new ArrayBuffer(32));
    m.writeBytes(4, new Uint8Array([1, 2, 3, 4]));
    const dst = new Uint8Array(4);
    m.readBytes(4, dst);
    expect([...dst]).toEqual([1, 2, 3, 4]);
    m.fill(5, 2, 0xaa);
    expect(m.read32(4)).toBe(0x04aaaa01);
    const v = m.view(4, 4);
    expect(v).not.toBeNull();
    v![0] = 9;
    expect(m.read8(4)).toBe(9);
    expect(m.view(30, 4)).toBeNull();
  });
});

describe('RamMemory.fence', () => {
  it('is a no-op on private memory and leaves shared memory contents alone', () => {
    for (const buf of [new ArrayBuffer(64), new SharedArrayBuffer(64)]) {
      const m = new RamMemory(buf);
      m.write32(8, 0x12345678);
      m.fence();
      expect(m.read32(8)).toBe(0x12345678);
      expect(new Uint8Array(buf).reduce((a, b) => a + b, 0)).toBe(0x12 + 0x34 + 0x56 + 0x78);
    }
  });
});
