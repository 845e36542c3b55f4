import fsDefault, * as fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BlkDevice } from '../device/index.js';
import { BlkFeature, BlkReqType, BlkStatus, VirtioError } from '../spec/index.js';
import { activateWithFakeContext } from '../testing/index.js';
import { FileBlockBackend } from './fileBlockBackend.js';

let dir: string;
const opened: FileBlockBackend[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-blk-'));
});

afterEach(() => {
  for (const b of opened.splice(0)) b.close();
  vi.restoreAllMocks();
  syncBuiltinESMExports();
  fs.rmSync(dir, { recursive: true, force: true });
});

function open(name: string, options?: ConstructorParameters<typeof FileBlockBackend>[1]): FileBlockBackend {
  const b = new FileBlockBackend(path.join(dir, name), options);
  opened.push(b);
  return b;
}

/** Writes a file of `size` bytes where byte i is `i & 0xff`. */
function makeImage(name: string, size: number): string {
  const p = path.join(dir, name);
  fs.writeFileSync(
    p,
    Uint8Array.from({ length: size }, (_, i) => i & 0xff),
  );
  return p;
}

function errorOf(fn: () => unknown): VirtioError {
  try {
    fn();
  } catch (e) {
    if (e instanceof VirtioError) return e;
    throw e;
  }
  throw new Error('expected a VirtioError');
}

describe('FileBlockBackend opening', () => {
  it('opens an existing image with its own size', () => {
    makeImage('a.img', 4096);
    const b = open('a.img');
    expect(b.size).toBe(4096);
    expect(b.readOnly).toBe(false);
    expect(b.isOpen).toBe(true);
  });

  it('creates a missing image with createSize, and keeps an existing image as it is', () => {
    const b = open('new.img', { createSize: 1 << 20 });
    expect(b.size).toBe(1 << 20);
    expect(fs.statSync(path.join(dir, 'new.img')).size).toBe(1 << 20);
    makeImage('old.img', 1024);
    const c = open('old.img', { createSize: 1 << 20 });
    expect(c.size).toBe(1024);
    expect(fs.statSync(path.join(dir, 'old.img')).size).toBe(1024);
  });

  it('create makes a new image and refuses an existing one', () => {
    const p = path.join(dir, 'c.img');
    const b = FileBlockBackend.create(p, 4096);
    opened.push(b);
    expect(b.size).toBe(4096);
    expect(fs.statSync(p).size).toBe(4096);
    const e = errorOf(() => FileBlockBackend.create(p, 512));
    expect(e.code).toBe('BACKEND_IO');
    expect(e.message).toContain(p);
    expect(e.message).toContain('EEXIST');
    expect(fs.statSync(p).size).toBe(4096);
  });

  it('fails with BACKEND_IO naming the path when the image cannot be opened', () => {
    const missing = path.join(dir, 'missing.img');
    const e = errorOf(() => new FileBlockBackend(missing));
    expect(e.code).toBe('BACKEND_IO');
    expect(e.message).toContain(missing);
    expect(e.message).toContain('ENOENT');
    const ro = errorOf(() => new FileBlockBackend(missing, { readOnly: true }));
    expect(ro.code).toBe('BACKEND_IO');
    expect(ro.message).toContain(missing);
    const inMissingDir = path.join(dir, 'no', 'such', 'dir.img');
    const c = errorOf(() => new FileBlockBackend(inMissingDir, { createSize: 512 }));
    expect(c.code).toBe('BACKEND_IO');
    expect(c.message).toContain(inMissingDir);
    expect(fs.existsSync(missing)).toBe(false);
  });

  it('refuses a directory with BACKEND_IO', () => {
    const e = errorOf(() => new FileBlockBackend(dir, { readOnly: true }));
    expect(e.code).toBe('BACKEND_IO');
    expect(e.message).toContain(dir);
  });

  it('rejects invalid creation options with INVALID_ARGUMENT', () => {
    const p = path.join(dir, 'x.img');
    expect(errorOf(() => new FileBlockBackend(p, { createSize: -1 })).code).toBe('INVALID_ARGUMENT');
    expect(errorOf(() => new FileBlockBackend(p, { createSize: 1.5 })).code).toBe('INVALID_ARGUMENT');
    expect(errorOf(() => new FileBlockBackend(p, { createSize: 512, readOnly: true })).code).toBe(
      'INVALID_ARGUMENT',
    );
    expect(fs.existsSync(p)).toBe(false);
  });
});

describe('FileBlockBackend I/O', () => {
  it('writes land in the file and read back, from the backend and from disk', () => {
    const p = makeImage('d.img', 8192);
    const b = open('d.img');
    b.write(1000, new Uint8Array([0xaa, 0xbb, 0xcc]));
    const onDisk = fs.readFileSync(p);
    expect([...onDisk.subarray(999, 1004)]).toEqual([999 & 0xff, 0xaa, 0xbb, 0xcc, 1003 & 0xff]);
    const dst = new Uint8Array(5);
    b.read(999, dst);
    expect([...dst]).toEqual([999 & 0xff, 0xaa, 0xbb, 0xcc, 1003 & 0xff]);
  });

  it('reads what another writer put in the file', () => {
    const p = makeImage('r.img', 2048);
    const b = open('r.img');
    const fd = fs.openSync(p, 'r+');
    fs.writeSync(fd, new Uint8Array([1, 2, 3]), 0, 3, 512);
    fs.closeSync(fd);
    const dst = new Uint8Array(3);
    b.read(512, dst);
    expect([...dst]).toEqual([1, 2, 3]);
  });

  it('reads into and writes from views over a SharedArrayBuffer (guest RAM)', () => {
    makeImage('s.img', 1024);
    const b = open('s.img');
    const ram = new Uint8Array(new SharedArrayBuffer(64));
    b.read(10, ram.subarray(4, 14));
    expect([...ram.subarray(4, 14)]).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    ram.fill(0x77, 20, 30);
    b.write(100, ram.subarray(20, 30));
    const dst = new Uint8Array(10);
    b.read(100, dst);
    expect(dst).toEqual(new Uint8Array(10).fill(0x77));
  });

  it('discard and write zeroes zero-fill the range, also across the fill chunk', () => {
    const size = 200 * 1024;
    const p = makeImage('z.img', size);
    const b = open('z.img');
    b.discard(10, 5);
    b.writeZeroes(1000, 150 * 1024);
    const d = fs.readFileSync(p);
    expect(d.length).toBe(size);
    expect([...d.subarray(9, 16)]).toEqual([9, 0, 0, 0, 0, 0, 15]);
    expect(d.subarray(1000, 1000 + 150 * 1024).every((v) => v === 0)).toBe(true);
    expect(d[999]).toBe(999 & 0xff);
    expect(d[1000 + 150 * 1024]).toBe((1000 + 150 * 1024) & 0xff);
  });

  it('flush calls fsync on the image', () => {
    makeImage('f.img', 512);
    const b = open('f.img');
    const spy = vi.spyOn(fsDefault, 'fsyncSync');
    syncBuiltinESMExports();
    b.flush();
    expect(spy).toHaveBeenCalledTimes(1);
  });

  it('never writes past the size fixed at open: the file does not grow', () => {
    const p = makeImage('e.img', 1024);
    const b = open('e.img');
    const cases: Array<[string, () => unknown]> = [
      ['write straddling the end', () => b.write(1020, new Uint8Array(8))],
      ['write at the end', () => b.write(1024, new Uint8Array(1))],
      ['discard past the end', () => b.discard(1000, 100)],
      ['write zeroes past the end', () => b.writeZeroes(2048, 1)],
      ['read past the end', () => b.read(1023, new Uint8Array(2))],
    ];
    for (const [what, fn] of cases) expect(errorOf(fn).code, what).toBe('BACKEND_IO');
    const d = fs.readFileSync(p);
    expect(d.length).toBe(1024);
    expect(d.every((v, i) => v === (i & 0xff))).toBe(true);
  });

  it('reports a file shrunk behind its back instead of returning stale bytes', () => {
    const p = makeImage('t.img', 1024);
    const b = open('t.img');
    fs.truncateSync(p, 100);
    const e = errorOf(() => b.read(0, new Uint8Array(512)));
    expect(e.code).toBe('BACKEND_IO');
    expect(e.message).toContain(p);
  });

  it('read-only images refuse writes, discards and write zeroes, and keep their bytes', () => {
    const p = makeImage('ro.img', 1024);
    const b = open('ro.img', { readOnly: true });
    expect(b.readOnly).toBe(true);
    for (const fn of [
      () => b.write(0, new Uint8Array(4)),
      () => b.discard(0, 4),
      () => b.writeZeroes(0, 4),
    ]) {
      const e = errorOf(fn);
      expect(e.code).toBe('BACKEND_IO');
      expect(e.message).toContain(p);
    }
    const dst = new Uint8Array(4);
    b.read(4, dst);
    expect([...dst]).toEqual([4, 5, 6, 7]);
    b.flush();
    expect(fs.readFileSync(p).every((v, i) => v === (i & 0xff))).toBe(true);
  });

  it('throws INVALID_STATE after close, and closing twice is harmless', () => {
    makeImage('c.img', 512);
    const b = new FileBlockBackend(path.join(dir, 'c.img'));
    b.close();
    b.close();
    expect(b.isOpen).toBe(false);
    expect(errorOf(() => b.read(0, new Uint8Array(1))).code).toBe('INVALID_STATE');
    expect(errorOf(() => b.write(0, new Uint8Array(1))).code).toBe('INVALID_STATE');
    expect(errorOf(() => b.flush()).code).toBe('INVALID_STATE');
  });
});

describe('BlkDevice over FileBlockBackend', () => {
  function header(type: number, sector: number): Uint8Array {
    const h = new Uint8Array(16);
    const v = new DataView(h.buffer);
    v.setUint32(0, type, true);
    v.setUint32(8, sector, true);
    return h;
  }

  it('guest writes reach the file, guest reads see the file, flush succeeds', () => {
    const p = makeImage('g.img', 64 * 512 + 100);
    const backend = open('g.img');
    const dev = new BlkDevice({ backend, queueSize: 16 });
    expect(dev.capacity).toBe(64);
    const ctx = activateWithFakeContext(dev);
    const drv = ctx.drivers[0];
    const data = new Uint8Array(1024).fill(0x5c);
    const status = ctx.alloc(1, 0xee);
    drv.add(
      [
        { addr: ctx.allocBytes(header(BlkReqType.OUT, 2)), len: 16 },
        { addr: ctx.allocBytes(data), len: 1024 },
      ],
      [{ addr: status, len: 1 }],
      1,
    );
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 1 }]);
    expect(ctx.mem.read8(status)).toBe(BlkStatus.OK);
    const onDisk = fs.readFileSync(p);
    expect(onDisk.subarray(1024, 2048).every((v) => v === 0x5c)).toBe(true);
    expect(onDisk[2048]).toBe(2048 & 0xff);

    const buf = ctx.alloc(513, 0xee);
    drv.add([{ addr: ctx.allocBytes(header(BlkReqType.IN, 5)), len: 16 }], [{ addr: buf, len: 513 }], 2);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 2, len: 513 }]);
    expect(ctx.bytes(buf, 512).every((v, i) => v === ((5 * 512 + i) & 0xff))).toBe(true);
    expect(ctx.mem.read8(buf + 512)).toBe(BlkStatus.OK);

    drv.add([{ addr: ctx.allocBytes(header(BlkReqType.FLUSH, 0)), len: 16 }], [{ addr: status, len: 1 }], 3);
    ctx.kick(dev, 0);
    expect(ctx.mem.read8(status)).toBe(BlkStatus.OK);
    expect(dev.counters.backendErrors).toBe(0);
  });

  it('a read-only image gives a read-only device whose writes fail with IOERR', () => {
    const p = makeImage('gro.img', 8 * 512);
    const dev = new BlkDevice({ backend: open('gro.img', { readOnly: true }), queueSize: 16 });
    expect(dev.features.has(BlkFeature.RO)).toBe(true);
    const ctx = activateWithFakeContext(dev);
    const status = ctx.alloc(1, 0xee);
    ctx.drivers[0].add(
      [
        { addr: ctx.allocBytes(header(BlkReqType.OUT, 0)), len: 16 },
        { addr: ctx.alloc(512, 0x11), len: 512 },
      ],
      [{ addr: status, len: 1 }],
      1,
    );
    ctx.kick(dev, 0);
    expect(ctx.mem.read8(status)).toBe(BlkStatus.IOERR);
    expect(fs.readFileSync(p).every((v, i) => v === (i & 0xff))).toBe(true);
  });

  it('a guest write past the end fails with IOERR and never extends the file', () => {
    const p = makeImage('gend.img', 8 * 512);
    const dev = new BlkDevice({ backend: open('gend.img'), queueSize: 16 });
    const ctx = activateWithFakeContext(dev);
    const status = ctx.alloc(1, 0xee);
    ctx.drivers[0].add(
      [
        { addr: ctx.allocBytes(header(BlkReqType.OUT, 7)), len: 16 },
        { addr: ctx.alloc(1024, 0x11), len: 1024 },
      ],
      [{ addr: status, len: 1 }],
      1,
    );
    ctx.kick(dev, 0);
    expect(ctx.mem.read8(status)).toBe(BlkStatus.IOERR);
    expect(fs.statSync(p).size).toBe(8 * 512);
    expect(fs.readFileSync(p).every((v, i) => v === (i & 0xff))).toBe(true);
  });
});
