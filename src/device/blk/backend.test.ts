import { describe, expect, it } from 'vitest';
import { VirtioError } from '../../spec/index.js';
import { checkBackendRange, MemoryBlockBackend } from './backend.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof VirtioError ? e.code : 'not a VirtioError';
  }
  return undefined;
}

describe('MemoryBlockBackend', () => {
  it('reads, writes, discards and zeroes byte ranges', () => {
    const b = new MemoryBlockBackend(1024);
    expect(b.size).toBe(1024);
    expect(b.readOnly).toBe(false);
    b.write(100, new Uint8Array([1, 2, 3, 4]));
    const dst = new Uint8Array(6);
    b.read(99, dst);
    expect(dst).toEqual(new Uint8Array([0, 1, 2, 3, 4, 0]));
    b.bytes.fill(7);
    b.discard(10, 5);
    b.writeZeroes(1020, 4);
    expect(b.bytes.subarray(9, 16)).toEqual(new Uint8Array([7, 0, 0, 0, 0, 0, 7]));
    expect(b.bytes.subarray(1019)).toEqual(new Uint8Array([7, 0, 0, 0, 0]));
    b.flush();
    b.flush();
    expect(b.flushes).toBe(2);
  });

  it('uses given bytes without copying', () => {
    const bytes = new Uint8Array([9, 8, 7]);
    const b = new MemoryBlockBackend(bytes);
    b.write(0, new Uint8Array([1]));
    expect(bytes[0]).toBe(1);
    expect(b.size).toBe(3);
  });

  it('rejects every access outside the disk with BACKEND_IO and changes nothing', () => {
    const b = new MemoryBlockBackend(16);
    const cases: Array<[string, () => unknown]> = [
      ['read past end', () => b.read(10, new Uint8Array(7))],
      ['read at negative offset', () => b.read(-1, new Uint8Array(1))],
      ['read at fractional offset', () => b.read(0.5, new Uint8Array(1))],
      ['write past end', () => b.write(16, new Uint8Array(1))],
      ['discard past end', () => b.discard(8, 9)],
      ['discard negative length', () => b.discard(0, -1)],
      ['write zeroes past end', () => b.writeZeroes(2 ** 60, 1)],
      ['write zeroes NaN', () => b.writeZeroes(Number.NaN, 1)],
    ];
    for (const [what, fn] of cases) expect(codeOf(fn), what).toBe('BACKEND_IO');
    expect(b.bytes).toEqual(new Uint8Array(16));
    expect(b.size).toBe(16);
  });

  it('refuses writes, discards and write zeroes when read-only', () => {
    const b = new MemoryBlockBackend(16, { readOnly: true });
    expect(b.readOnly).toBe(true);
    expect(codeOf(() => b.write(0, new Uint8Array(1)))).toBe('BACKEND_IO');
    expect(codeOf(() => b.discard(0, 1))).toBe('BACKEND_IO');
    expect(codeOf(() => b.writeZeroes(0, 1))).toBe('BACKEND_IO');
    b.read(0, new Uint8Array(16));
    b.flush();
  });

  it('rejects an invalid size', () => {
    expect(codeOf(() => new MemoryBlockBackend(-1))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => new MemoryBlockBackend(1.5))).toBe('INVALID_ARGUMENT');
  });
});

describe('checkBackendRange', () => {
  it('accepts ranges inside the backend, including empty ones at the end', () => {
    expect(() => checkBackendRange('read', 10, 0, 10)).not.toThrow();
    expect(() => checkBackendRange('read', 10, 10, 0)).not.toThrow();
  });

  it('names the operation, offset and size in the message', () => {
    expect(() => checkBackendRange('write', 0x100, 0xf0, 0x20)).toThrow(
      'write of 32 bytes at 0xf0 outside backend of 0x100 bytes',
    );
  });
});
