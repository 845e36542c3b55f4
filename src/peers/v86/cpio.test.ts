import { describe, expect, it } from 'vitest';
import { CPIO_HEADER_SIZE, CpioMode, parseCpio, writeCpio } from './cpio.js';

describe('newc cpio', () => {
  it('round-trips directories, files, symlinks and character devices', () => {
    const data = Uint8Array.from({ length: 1001 }, (_, i) => i & 0xff);
    const a = writeCpio([
      { type: 'dir', path: 'bin' },
      { type: 'file', path: 'bin/tool', data, mode: 0o755 },
      { type: 'file', path: 'init', data: '#!/bin/sh\n' },
      { type: 'symlink', path: 'sbin', target: 'bin' },
      { type: 'chardev', path: 'console', major: 5, minor: 1 },
    ]);
    expect(a.length % 4).toBe(0);
    expect(new TextDecoder().decode(a.subarray(0, 6))).toBe('070701');
    const m = parseCpio(a);
    expect(m.map((x) => x.path)).toEqual(['bin', 'bin/tool', 'init', 'sbin', 'console']);
    expect(m[0].mode).toBe(CpioMode.Dir | 0o755);
    expect(m[1].mode).toBe(CpioMode.File | 0o755);
    expect(m[1].data).toEqual(data);
    expect(new TextDecoder().decode(m[2].data)).toBe('#!/bin/sh\n');
    expect(m[3].mode & CpioMode.TypeMask).toBe(CpioMode.Symlink);
    expect(new TextDecoder().decode(m[3].data)).toBe('bin');
    expect(m[4].mode).toBe(CpioMode.CharDev | 0o600);
    expect([m[4].rdevMajor, m[4].rdevMinor]).toEqual([5, 1]);
    // The trailer is the last member.
    expect(Buffer.from(a).toString('latin1')).toMatch(/TRAILER!!!\0*$/);
  });

  it('aligns names and data to 4 bytes', () => {
    const a = writeCpio([{ type: 'file', path: 'ab', data: 'x' }]);
    // header 110 + "ab\0" = 113 -> 116, then 1 data byte -> 120
    expect(new TextDecoder().decode(a.subarray(116, 117))).toBe('x');
    expect(new TextDecoder().decode(a.subarray(120, 126))).toBe('070701');
    expect(CPIO_HEADER_SIZE).toBe(110);
  });

  it('reads concatenated archives with padding between them, as the kernel does', () => {
    const one = writeCpio([{ type: 'file', path: 'a', data: 'A' }]);
    const two = writeCpio([{ type: 'file', path: 'b', data: 'B' }]);
    const both = new Uint8Array(one.length + 512 + two.length);
    both.set(one, 0);
    both.set(two, one.length + 512);
    expect(parseCpio(both).map((x) => x.path)).toEqual(['a', 'b']);
  });

  it('rejects invalid paths and corrupt archives', () => {
    expect(() => writeCpio([{ type: 'dir', path: '' }])).toThrow(/invalid cpio path/);
    expect(() => writeCpio([{ type: 'dir', path: '/abs' }])).toThrow(/invalid cpio path/);
    expect(() => writeCpio([{ type: 'dir', path: 'TRAILER!!!' }])).toThrow(/invalid cpio path/);
    expect(() =>
      writeCpio([
        { type: 'dir', path: 'x' },
        { type: 'dir', path: 'x' },
      ]),
    ).toThrow(/duplicate/);
    const a = writeCpio([{ type: 'file', path: 'f', data: 'hello' }]);
    const badMagic = a.slice();
    badMagic[5] = 0x32;
    expect(() => parseCpio(badMagic)).toThrow(/bad cpio magic/);
    const badField = a.slice();
    badField[20] = 0x5a; // 'Z' in the mode field
    expect(() => parseCpio(badField)).toThrow(/bad cpio header field/);
    expect(() => parseCpio(a.subarray(0, 50))).toThrow(/truncated cpio header/);
    expect(() => parseCpio(a.subarray(0, 115))).toThrow(/truncated cpio member/);
  });
});
