import { describe, expect, it } from 'vitest';
import {
  BLK_ID_BYTES,
  BLK_SECTOR_SIZE,
  BLK_WRITE_ZEROES_FLAG_UNMAP,
  BlkConfig,
  BlkFeature,
  BlkReqType,
  BlkStatus,
  DESC_LEN,
  DESC_SIZE,
  DeviceId,
  VirtioError,
} from '../../spec/index.js';
import { activateWithFakeContext, type FakeContext } from '../../testing/index.js';
import { Features } from '../features.js';
import { type BlockBackend, MemoryBlockBackend } from './backend.js';
import {
  BLK_DEFAULT_MAX_DISCARD_SECTORS,
  BLK_DEFAULT_QUEUE_SIZE,
  BlkDevice,
  type BlkDeviceOptions,
} from './device.js';

/** Disk used by most tests: 64 sectors. */
const DISK_SECTORS = 64;

/** Byte `i` of the reference disk pattern. */
const pattern = (i: number): number => (i * 7 + 3) & 0xff;

function patternedDisk(bytes = DISK_SECTORS * BLK_SECTOR_SIZE): MemoryBlockBackend {
  const b = new MemoryBlockBackend(bytes);
  for (let i = 0; i < bytes; i++) b.bytes[i] = pattern(i);
  return b;
}

interface Setup {
  dev: BlkDevice;
  ctx: FakeContext;
  backend: MemoryBlockBackend;
  logs: string[];
}

function setup(
  options: Partial<BlkDeviceOptions> = {},
  ctxOptions: { features?: Features; indirect?: boolean } = {},
): Setup {
  const backend = (options.backend as MemoryBlockBackend | undefined) ?? patternedDisk();
  const logs: string[] = [];
  const dev = new BlkDevice({ queueSize: 16, ...options, backend, log: (m) => logs.push(m) });
  const ctx = activateWithFakeContext(dev, ctxOptions);
  return { dev, ctx, backend, logs };
}

/** A request header: le32 type, le32 reserved, le64 sector (given as two 32-bit halves). */
function header(type: number, sector: number, sectorHi = Math.floor(sector / 2 ** 32)): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setUint32(4, 0xdead, true); // reserved: ignored
  v.setUint32(8, sector % 2 ** 32, true);
  v.setUint32(12, sectorHi, true);
  return h;
}

/** A discard / write-zeroes segment. */
function segment(
  sector: number,
  sectors: number,
  flags = 0,
  sectorHi = Math.floor(sector / 2 ** 32),
): Uint8Array {
  const s = new Uint8Array(16);
  const v = new DataView(s.buffer);
  v.setUint32(0, sector % 2 ** 32, true);
  v.setUint32(4, sectorHi, true);
  v.setUint32(8, sectors, true);
  v.setUint32(12, flags, true);
  return s;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Splits `bytes` into descriptors of the given lengths (the rest goes into a last one). */
function split(bytes: Uint8Array, lens: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let o = 0;
  for (const l of lens) {
    out.push(bytes.subarray(o, o + l));
    o += l;
  }
  if (o < bytes.length) out.push(bytes.subarray(o));
  return out;
}

interface Result {
  /** Used length. */
  len: number;
  /** Last byte of the writable part (0xee when untouched), or -1 without a writable part. */
  status: number;
  /** The writable part before the status byte. */
  data: Uint8Array;
}

/**
 * Submits one chain on queue `q`: `readable` descriptors with the given contents, writable
 * descriptors of the given lengths (pre-filled with 0xee). Kicks and harvests it.
 */
function submit(t: Setup, readable: Uint8Array[], writableLens: number[], q = 0): Result {
  const { ctx, dev } = t;
  const out = readable.map((b) => ({ addr: ctx.allocBytes(b), len: b.length }));
  const ins = writableLens.map((len) => ({ addr: ctx.alloc(len, 0xee), len }));
  expect(ctx.drivers[q].add(out, ins, 42)).toBe(true);
  ctx.kick(dev, q);
  const used = ctx.harvest(q);
  expect(used).toHaveLength(1);
  const writable = concat(...ins.map((s) => ctx.bytes(s.addr, s.len)));
  return {
    len: used[0].len,
    status: writable.length === 0 ? -1 : writable[writable.length - 1],
    data: writable.subarray(0, Math.max(0, writable.length - 1)),
  };
}

/** A read of `sectors` sectors into one data buffer plus a separate status byte. */
function read(t: Setup, sector: number, sectors: number): Result {
  return submit(t, [header(BlkReqType.IN, sector)], [sectors * BLK_SECTOR_SIZE, 1]);
}

/** A write of `data` (one descriptor) plus a separate status byte. */
function write(t: Setup, sector: number, data: Uint8Array): Result {
  return submit(t, [header(BlkReqType.OUT, sector), data], [1]);
}

function patternAt(offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = pattern(offset + i);
  return out;
}

/** True when the disk still holds the reference pattern everywhere (cheaper than a deep toEqual). */
function untouched(b: MemoryBlockBackend): boolean {
  const ref = patternedDisk(b.size).bytes;
  return b.bytes.every((v, i) => v === ref[i]);
}

function fillBytes(len: number, byte: number): Uint8Array {
  return new Uint8Array(len).fill(byte);
}

describe('BlkDevice identity and features (5.2.1-5.2.3)', () => {
  it('is device 2 with queueCount queues of queueSize', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    expect(dev.deviceId).toBe(DeviceId.BLOCK);
    expect(dev.queueMaxSizes).toEqual([BLK_DEFAULT_QUEUE_SIZE]);
    expect(dev.configSize).toBe(BlkConfig.size);
    expect(dev.capacity).toBe(8);
    const mq = new BlkDevice({ backend: new MemoryBlockBackend(4096), queueCount: 3, queueSize: 64 });
    expect(mq.queueMaxSizes).toEqual([64, 64, 64]);
  });

  it('offers SEG_MAX, BLK_SIZE, FLUSH, CONFIG_WCE, DISCARD and WRITE_ZEROES by default', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    expect(dev.features.bits()).toEqual(
      [
        BlkFeature.SEG_MAX,
        BlkFeature.BLK_SIZE,
        BlkFeature.FLUSH,
        BlkFeature.CONFIG_WCE,
        BlkFeature.DISCARD,
        BlkFeature.WRITE_ZEROES,
      ].sort((a, b) => a - b),
    );
  });

  it('offers each optional feature exactly when configured', () => {
    const backend = new MemoryBlockBackend(4096);
    const has = (o: Partial<BlkDeviceOptions>, bit: number) =>
      new BlkDevice({ backend, ...o }).features.has(bit);
    expect(has({ sizeMax: 4096 }, BlkFeature.SIZE_MAX)).toBe(true);
    expect(has({}, BlkFeature.SIZE_MAX)).toBe(false);
    expect(has({ queueCount: 2 }, BlkFeature.MQ)).toBe(true);
    expect(has({ queueCount: 1 }, BlkFeature.MQ)).toBe(false);
    expect(has({ readOnly: true }, BlkFeature.RO)).toBe(true);
    expect(has({}, BlkFeature.RO)).toBe(false);
    expect(has({ flush: false }, BlkFeature.FLUSH)).toBe(false);
    expect(has({ flush: false }, BlkFeature.CONFIG_WCE)).toBe(false);
    expect(has({ configWce: false }, BlkFeature.CONFIG_WCE)).toBe(false);
    expect(has({ configWce: false }, BlkFeature.FLUSH)).toBe(true);
    expect(has({ discard: false }, BlkFeature.DISCARD)).toBe(false);
    expect(has({ writeZeroes: false }, BlkFeature.WRITE_ZEROES)).toBe(false);
    expect(has({}, BlkFeature.GEOMETRY)).toBe(false);
    expect(has({}, BlkFeature.TOPOLOGY)).toBe(false);
  });

  it('offers RO for a read-only backend, and neither DISCARD nor WRITE_ZEROES when read-only', () => {
    for (const dev of [
      new BlkDevice({ backend: new MemoryBlockBackend(4096, { readOnly: true }) }),
      new BlkDevice({ backend: new MemoryBlockBackend(4096), readOnly: true }),
    ]) {
      expect(dev.readOnly).toBe(true);
      expect(dev.features.has(BlkFeature.RO)).toBe(true);
      expect(dev.features.has(BlkFeature.DISCARD)).toBe(false);
      expect(dev.features.has(BlkFeature.WRITE_ZEROES)).toBe(false);
    }
  });

  it('rejects every invalid construction option with INVALID_ARGUMENT', () => {
    const backend = new MemoryBlockBackend(4096);
    const cases: Array<[string, Partial<BlkDeviceOptions>]> = [
      ['queue count 0', { queueCount: 0 }],
      ['queue count 65536', { queueCount: 65536 }],
      ['fractional queue count', { queueCount: 1.5 }],
      ['queue size 0', { queueSize: 0 }],
      ['queue size not a power of two', { queueSize: 100 }],
      ['queue size 65536', { queueSize: 65536 }],
      ['block size 256', { blkSize: 256 }],
      ['block size not a power of two', { blkSize: 1000 }],
      ['serial of 21 bytes', { serial: 'x'.repeat(21) }],
      ['serial with a control character', { serial: 'a\nb' }],
      ['serial with non-ascii', { serial: 'disk\u00e9' }],
      ['seg_max 0', { segMax: 0 }],
      ['seg_max above 2^32', { segMax: 2 ** 32 }],
      ['size_max below 512', { sizeMax: 100 }],
      ['config_wce without flush', { flush: false, configWce: true }],
      ['writeback without flush', { flush: false, writeback: true }],
      ['max discard sectors 0', { discard: { maxSectors: 0 } }],
      ['max discard segments 0', { discard: { maxSegments: 0 } }],
      ['discard alignment 0', { discard: { sectorAlignment: 0 } }],
      ['max write zeroes sectors above 2^32', { writeZeroes: { maxSectors: 2 ** 32 } }],
      ['max write zeroes segments 0', { writeZeroes: { maxSegments: 0 } }],
    ];
    for (const [what, o] of cases) {
      let err: unknown;
      try {
        new BlkDevice({ backend, ...o });
      } catch (e) {
        err = e;
      }
      expect(err, what).toBeInstanceOf(VirtioError);
      expect((err as VirtioError).code, what).toBe('INVALID_ARGUMENT');
    }
    const bad: BlockBackend = { ...backend, size: -1, readOnly: false } as unknown as BlockBackend;
    expect(() => new BlkDevice({ backend: bad })).toThrow(VirtioError);
  });
});

describe('BlkDevice configuration space (5.2.4)', () => {
  /** The expected config bytes, built field by field. */
  function expectedConfig(fields: Record<keyof typeof BlkConfig, number>): Uint8Array {
    const b = new Uint8Array(BlkConfig.size);
    const v = new DataView(b.buffer);
    v.setUint32(BlkConfig.capacity, fields.capacity % 2 ** 32, true);
    v.setUint32(BlkConfig.capacity + 4, Math.floor(fields.capacity / 2 ** 32), true);
    v.setUint32(BlkConfig.sizeMax, fields.sizeMax, true);
    v.setUint32(BlkConfig.segMax, fields.segMax, true);
    v.setUint16(BlkConfig.geometryCylinders, fields.geometryCylinders, true);
    v.setUint8(BlkConfig.geometryHeads, fields.geometryHeads);
    v.setUint8(BlkConfig.geometrySectors, fields.geometrySectors);
    v.setUint32(BlkConfig.blkSize, fields.blkSize, true);
    v.setUint8(BlkConfig.physicalBlockExp, fields.physicalBlockExp);
    v.setUint8(BlkConfig.alignmentOffset, fields.alignmentOffset);
    v.setUint16(BlkConfig.minIoSize, fields.minIoSize, true);
    v.setUint32(BlkConfig.optIoSize, fields.optIoSize, true);
    v.setUint8(BlkConfig.writeback, fields.writeback);
    v.setUint8(BlkConfig.unused0, fields.unused0);
    v.setUint16(BlkConfig.numQueues, fields.numQueues, true);
    v.setUint32(BlkConfig.maxDiscardSectors, fields.maxDiscardSectors, true);
    v.setUint32(BlkConfig.maxDiscardSeg, fields.maxDiscardSeg, true);
    v.setUint32(BlkConfig.discardSectorAlignment, fields.discardSectorAlignment, true);
    v.setUint32(BlkConfig.maxWriteZeroesSectors, fields.maxWriteZeroesSectors, true);
    v.setUint32(BlkConfig.maxWriteZeroesSeg, fields.maxWriteZeroesSeg, true);
    v.setUint8(BlkConfig.writeZeroesMayUnmap, fields.writeZeroesMayUnmap);
    return b;
  }

  /** Checks readConfig at every offset and every width against the expected bytes. */
  function checkEveryWidth(dev: BlkDevice, bytes: Uint8Array): void {
    const v = new DataView(bytes.buffer);
    for (let off = 0; off < BlkConfig.size; off++) {
      expect(dev.readConfig(off, 1), `u8 at ${off}`).toBe(v.getUint8(off));
      if (off + 2 <= BlkConfig.size)
        expect(dev.readConfig(off, 2), `le16 at ${off}`).toBe(v.getUint16(off, true));
      if (off + 4 <= BlkConfig.size)
        expect(dev.readConfig(off, 4), `le32 at ${off}`).toBe(v.getUint32(off, true));
    }
  }

  const zero: Record<keyof typeof BlkConfig, number> = {
    capacity: 0,
    sizeMax: 0,
    segMax: 0,
    geometryCylinders: 0,
    geometryHeads: 0,
    geometrySectors: 0,
    blkSize: 0,
    physicalBlockExp: 0,
    alignmentOffset: 0,
    minIoSize: 0,
    optIoSize: 0,
    writeback: 0,
    unused0: 0,
    numQueues: 0,
    maxDiscardSectors: 0,
    maxDiscardSeg: 0,
    discardSectorAlignment: 0,
    maxWriteZeroesSectors: 0,
    maxWriteZeroesSeg: 0,
    writeZeroesMayUnmap: 0,
    size: 0,
  };

  it('exposes every field of a default device at every offset and width', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(1 << 20) });
    checkEveryWidth(
      dev,
      expectedConfig({
        ...zero,
        capacity: 2048,
        segMax: BLK_DEFAULT_QUEUE_SIZE - 2,
        blkSize: 512,
        writeback: 1,
        numQueues: 1,
        maxDiscardSectors: BLK_DEFAULT_MAX_DISCARD_SECTORS,
        maxDiscardSeg: 1,
        discardSectorAlignment: 1,
        maxWriteZeroesSectors: BLK_DEFAULT_MAX_DISCARD_SECTORS,
        maxWriteZeroesSeg: 1,
        writeZeroesMayUnmap: 0,
      }),
    );
  });

  it('exposes every configured field at every offset and width', () => {
    // 2^33 + 3 sectors: the capacity needs both halves of the le64.
    const bigDisk = { size: (2 ** 33 + 3) * 512 + 100, readOnly: false } as BlockBackend;
    const dev = new BlkDevice({
      backend: bigDisk,
      queueCount: 5,
      queueSize: 128,
      segMax: 77,
      sizeMax: 0x1_2345,
      blkSize: 4096,
      writeback: false,
      discard: { maxSectors: 0xabcdef, maxSegments: 9, sectorAlignment: 16 },
      writeZeroes: { maxSectors: 0x123456, maxSegments: 3, mayUnmap: true },
    });
    expect(dev.capacity).toBe(2 ** 33 + 3);
    checkEveryWidth(
      dev,
      expectedConfig({
        ...zero,
        capacity: 2 ** 33 + 3,
        sizeMax: 0x1_2345,
        segMax: 77,
        blkSize: 4096,
        writeback: 0,
        numQueues: 5,
        maxDiscardSectors: 0xabcdef,
        maxDiscardSeg: 9,
        discardSectorAlignment: 16,
        maxWriteZeroesSectors: 0x123456,
        maxWriteZeroesSeg: 3,
        writeZeroesMayUnmap: 1,
      }),
    );
  });

  it('defaults discard_sector_alignment to blk_size in sectors, and leaves disabled limits at 0', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(8192), blkSize: 4096, writeZeroes: false });
    expect(dev.readConfig(BlkConfig.discardSectorAlignment, 4)).toBe(8);
    expect(dev.readConfig(BlkConfig.maxWriteZeroesSectors, 4)).toBe(0);
    expect(dev.readConfig(BlkConfig.maxWriteZeroesSeg, 4)).toBe(0);
    const ro = new BlkDevice({ backend: new MemoryBlockBackend(8192), readOnly: true });
    for (const off of [
      BlkConfig.maxDiscardSectors,
      BlkConfig.maxDiscardSeg,
      BlkConfig.maxWriteZeroesSectors,
    ]) {
      expect(ro.readConfig(off, 4), `offset ${off}`).toBe(0);
    }
  });

  it('reads 0 outside the configuration space', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    expect(dev.readConfig(BlkConfig.size, 1)).toBe(0);
    expect(dev.readConfig(BlkConfig.size - 2, 4)).toBe(0);
    expect(dev.readConfig(-1, 1)).toBe(0);
    expect(dev.readConfig(0.5, 1)).toBe(0);
  });

  it('lets the driver toggle writeback with one-byte writes of 0 or 1 (CONFIG_WCE)', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    expect(dev.writeback).toBe(1);
    expect(dev.writeConfig(BlkConfig.writeback, 1, 0)).toBe(true);
    expect(dev.readConfig(BlkConfig.writeback, 1)).toBe(0);
    expect(dev.writeback).toBe(0);
    expect(dev.writeConfig(BlkConfig.writeback, 1, 1)).toBe(true);
    expect(dev.readConfig(BlkConfig.writeback, 1)).toBe(1);
  });

  it('refuses every other configuration write and leaves the bytes unchanged', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096), queueCount: 2 });
    const before = Array.from({ length: BlkConfig.size }, (_, i) => dev.readConfig(i, 1));
    expect(dev.writeConfig(BlkConfig.writeback, 1, 2), 'writeback value 2').toBe(false);
    expect(dev.writeConfig(BlkConfig.writeback, 1, 0x100), 'writeback value 0x100').toBe(false);
    expect(dev.writeConfig(BlkConfig.writeback, 2, 0), 'writeback at width 2').toBe(false);
    expect(dev.writeConfig(BlkConfig.writeback, 4, 0), 'writeback at width 4').toBe(false);
    for (let off = 0; off < BlkConfig.size; off++) {
      for (const w of [1, 2, 4] as const) {
        if (off === BlkConfig.writeback || off + w > BlkConfig.size) continue;
        expect(dev.writeConfig(off, w, 0x5a), `offset ${off} width ${w}`).toBe(false);
      }
    }
    const after = Array.from({ length: BlkConfig.size }, (_, i) => dev.readConfig(i, 1));
    expect(after).toEqual(before);
  });

  it('refuses writeback writes when CONFIG_WCE is not offered', () => {
    for (const o of [{ flush: false }, { configWce: false }]) {
      const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096), ...o });
      expect(dev.writeConfig(BlkConfig.writeback, 1, 1)).toBe(false);
      expect(dev.writeConfig(BlkConfig.writeback, 1, 0)).toBe(false);
    }
  });

  it('initialises writeback to 0 when CONFIG_WCE is accepted without FLUSH (5.2.5.2)', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    expect(dev.validateFeatures(new Features([BlkFeature.CONFIG_WCE, BlkFeature.FLUSH]))).toBe(true);
    expect(dev.writeback).toBe(1);
    expect(dev.validateFeatures(new Features([BlkFeature.CONFIG_WCE]))).toBe(true);
    expect(dev.writeback).toBe(0);
  });

  it('restores the configured cache mode on reset', () => {
    const dev = new BlkDevice({ backend: new MemoryBlockBackend(4096) });
    dev.writeConfig(BlkConfig.writeback, 1, 0);
    dev.reset();
    expect(dev.writeback).toBe(1);
    const wt = new BlkDevice({ backend: new MemoryBlockBackend(4096), writeback: false });
    wt.writeConfig(BlkConfig.writeback, 1, 1);
    wt.reset();
    expect(wt.writeback).toBe(0);
  });
});

describe('BlkDevice requests (5.2.6)', () => {
  it('IN reads sectors into the writable part and reports data + status bytes', () => {
    const t = setup();
    const r = read(t, 2, 3);
    expect(r.status).toBe(BlkStatus.OK);
    expect(r.len).toBe(3 * 512 + 1);
    expect(r.data).toEqual(patternAt(2 * 512, 3 * 512));
    expect(t.dev.counters).toMatchObject({ requests: 1, readBytes: 1536, guestErrors: 0 });
    expect(t.ctx.interrupts).toEqual([0]);
  });

  for (const indirect of [false, true]) {
    it(`IN streams across data descriptors, with the status sharing the last one (${indirect ? 'indirect' : 'direct'})`, () => {
      const t = setup({}, { indirect });
      const r = submit(t, [header(BlkReqType.IN, 5)], [100, 700, 224 + 1]);
      expect(r.status).toBe(BlkStatus.OK);
      expect(r.len).toBe(1025);
      expect(r.data).toEqual(patternAt(5 * 512, 1024));
    });
  }

  it('IN with no data reads nothing and succeeds', () => {
    const t = setup();
    const r = submit(t, [header(BlkReqType.IN, 0)], [1]);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
  });

  it('IN up to the last sector succeeds; zero-length IN at the capacity succeeds', () => {
    const t = setup();
    expect(read(t, DISK_SECTORS - 2, 2).status).toBe(BlkStatus.OK);
    expect(submit(t, [header(BlkReqType.IN, DISK_SECTORS)], [1]).status).toBe(BlkStatus.OK);
  });

  it('OUT writes the readable data after the header to the sectors', () => {
    const t = setup();
    const data = fillBytes(1024, 0x11);
    const r = write(t, 3, data);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
    expect(t.backend.bytes.subarray(3 * 512, 5 * 512)).toEqual(data);
    expect(t.backend.bytes.subarray(5 * 512, 6 * 512)).toEqual(patternAt(5 * 512, 512));
    expect(t.backend.bytes.subarray(2 * 512, 3 * 512)).toEqual(patternAt(2 * 512, 512));
    expect(t.dev.counters.writeBytes).toBe(1024);
  });

  it('OUT accepts any framing: header spanning descriptors and sharing one with data (2.6.4)', () => {
    const t = setup();
    const data = new Uint8Array(1536);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
    const whole = concat(header(BlkReqType.OUT, 10), data);
    const r = submit(t, split(whole, [5, 11 + 300, 1, 700]), [1]);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
    expect(t.backend.bytes.subarray(10 * 512, 13 * 512)).toEqual(data);
  });

  it('a written range reads back', () => {
    const t = setup();
    const data = new Uint8Array(512).map((_, i) => 255 - (i & 0xff));
    expect(write(t, 7, data).status).toBe(BlkStatus.OK);
    expect(read(t, 7, 1).data).toEqual(data);
  });

  it('FLUSH flushes the backend', () => {
    const t = setup();
    const r = submit(t, [header(BlkReqType.FLUSH, 0)], [1]);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
    expect(t.backend.flushes).toBe(1);
    expect(t.dev.counters.flushes).toBe(1);
  });

  it('GET_ID returns the NUL-padded serial, truncated to the buffer', () => {
    const t = setup({ serial: 'disk-1' });
    const r = submit(t, [header(BlkReqType.GET_ID, 0)], [BLK_ID_BYTES, 1]);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: BLK_ID_BYTES + 1 });
    const expected = new Uint8Array(BLK_ID_BYTES);
    expected.set([...'disk-1'].map((c) => c.charCodeAt(0)));
    expect(r.data).toEqual(expected);
    const short = submit(t, [header(BlkReqType.GET_ID, 0)], [4, 1]);
    expect(short).toMatchObject({ status: BlkStatus.OK, len: 5 });
    expect(short.data).toEqual(expected.subarray(0, 4));
    const long = submit(t, [header(BlkReqType.GET_ID, 0)], [64 + 1]);
    expect(long).toMatchObject({ status: BlkStatus.OK, len: BLK_ID_BYTES + 1 });
    expect(long.data.subarray(0, BLK_ID_BYTES)).toEqual(expected);
    expect(long.data.subarray(BLK_ID_BYTES)).toEqual(fillBytes(64 - BLK_ID_BYTES, 0xee));
  });

  it('GET_ID with a 20-byte serial has no terminator, and no serial reads as zeroes', () => {
    const full = setup({ serial: 'ABCDEFGHIJKLMNOPQRST' });
    const r = submit(full, [header(BlkReqType.GET_ID, 0)], [BLK_ID_BYTES + 1]);
    expect(String.fromCharCode(...r.data)).toBe('ABCDEFGHIJKLMNOPQRST');
    const none = setup();
    expect(submit(none, [header(BlkReqType.GET_ID, 0)], [BLK_ID_BYTES + 1]).data).toEqual(new Uint8Array(20));
  });

  it('DISCARD over several segments clears the ranges', () => {
    const t = setup({ discard: { maxSegments: 2 } });
    const r = submit(t, [header(BlkReqType.DISCARD, 0), concat(segment(1, 2), segment(10, 1))], [1]);
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
    expect(t.backend.bytes.subarray(512, 3 * 512)).toEqual(new Uint8Array(1024));
    expect(t.backend.bytes.subarray(10 * 512, 11 * 512)).toEqual(new Uint8Array(512));
    expect(t.backend.bytes.subarray(3 * 512, 4 * 512)).toEqual(patternAt(3 * 512, 512));
    expect(t.dev.counters.discards).toBe(1);
  });

  it('WRITE_ZEROES zeroes the ranges, with or without the unmap flag', () => {
    const t = setup({ writeZeroes: { maxSegments: 2 } });
    const r = submit(
      t,
      [header(BlkReqType.WRITE_ZEROES, 0), segment(4, 1), segment(20, 3, BLK_WRITE_ZEROES_FLAG_UNMAP)],
      [1],
    );
    expect(r).toMatchObject({ status: BlkStatus.OK, len: 1 });
    expect(t.backend.bytes.subarray(4 * 512, 5 * 512)).toEqual(new Uint8Array(512));
    expect(t.backend.bytes.subarray(20 * 512, 23 * 512)).toEqual(new Uint8Array(1536));
    expect(t.backend.bytes.subarray(5 * 512, 6 * 512)).toEqual(patternAt(5 * 512, 512));
    expect(t.dev.counters.writeZeroes).toBe(1);
  });

  it('serves every queue of a multiqueue device and notifies per queue', () => {
    const t = setup({ queueCount: 3 });
    expect(t.ctx.queues).toHaveLength(3);
    expect(read(t, 1, 1).status).toBe(BlkStatus.OK);
    const r = submit(t, [header(BlkReqType.IN, 4)], [512, 1], 2);
    expect(r.status).toBe(BlkStatus.OK);
    expect(r.data).toEqual(patternAt(4 * 512, 512));
    expect(t.ctx.interrupts).toEqual([0, 2]);
  });
});

describe('BlkDevice rejected requests (5.2.6.1, 5.2.6.2)', () => {
  /** Submits, checks status and used length, and that one guest error was counted and logged. */
  function expectRejected(t: Setup, r: Result, status: number, what: string): void {
    expect(r.status, what).toBe(status);
    expect(r.len, what).toBe(1);
    expect(t.dev.counters.guestErrors, what).toBe(1);
    expect(t.logs, what).toHaveLength(1);
  }

  const sizeBytes = DISK_SECTORS * BLK_SECTOR_SIZE;

  it('IN starting at or past the capacity fails with IOERR and writes no data', () => {
    for (const [what, sector, hi] of [
      ['at capacity', DISK_SECTORS, 0],
      ['far past', 1_000_000, 0],
      ['2^32 + 1 (high half only)', 1, 1],
      ['2^64 - 1', 0xffff_ffff, 0xffff_ffff],
      ['2^53 + 1', 1, 0x20_0000],
    ] as const) {
      const t = setup();
      const r = submit(t, [header(BlkReqType.IN, sector, hi)], [512, 1]);
      expectRejected(t, r, BlkStatus.IOERR, what);
      expect(r.data, what).toEqual(fillBytes(512, 0xee));
    }
  });

  it('IN running past the end fails with IOERR', () => {
    const t = setup();
    expectRejected(t, read(t, DISK_SECTORS - 1, 2), BlkStatus.IOERR, 'past end');
    expect(t.dev.counters.readBytes).toBe(0);
  });

  it('IN and OUT whose data is not a multiple of 512 bytes fail with IOERR', () => {
    const t1 = setup();
    expectRejected(t1, submit(t1, [header(BlkReqType.IN, 0)], [513, 1]), BlkStatus.IOERR, 'IN 513');
    const t2 = setup();
    const r = submit(t2, [header(BlkReqType.OUT, 0), fillBytes(100, 1)], [1]);
    expectRejected(t2, r, BlkStatus.IOERR, 'OUT 100');
    expect(t2.backend.bytes.subarray(0, 512)).toEqual(patternAt(0, 512));
  });

  it('OUT past the end fails with IOERR and writes nothing', () => {
    const t = setup();
    const r = write(t, DISK_SECTORS - 1, fillBytes(1024, 9));
    expectRejected(t, r, BlkStatus.IOERR, 'past end');
    expect(untouched(t.backend)).toBe(true);
    expect(t.backend.size).toBe(sizeBytes);
  });

  it('OUT on a read-only device fails with IOERR and writes nothing', () => {
    for (const o of [
      { readOnly: true },
      { backend: new MemoryBlockBackend(sizeBytes, { readOnly: true }) },
    ]) {
      const t = setup(o);
      const before = t.backend.bytes.slice();
      expectRejected(t, write(t, 0, fillBytes(512, 9)), BlkStatus.IOERR, 'read-only');
      expect(Buffer.from(t.backend.bytes).equals(Buffer.from(before))).toBe(true);
    }
  });

  it('reads and flushes still work on a read-only device', () => {
    const t = setup({ readOnly: true });
    expect(read(t, 0, 1).data).toEqual(patternAt(0, 512));
    expect(submit(t, [header(BlkReqType.FLUSH, 0)], [1]).status).toBe(BlkStatus.OK);
  });

  it('unknown request types fail with UNSUPP and are counted', () => {
    const t = setup();
    // 2/3 legacy SCSI, 5 legacy FLUSH_OUT, 10 GET_LIFETIME, 14 SECURE_ERASE, 16 ZONE_REPORT, barrier bit.
    for (const type of [2, 3, 5, 10, 14, 16, 0x8000_0000, 0x8000_0001, 0xffff_ffff]) {
      const r = submit(t, [header(type, 0)], [512, 1]);
      expect(r.status, `type ${type}`).toBe(BlkStatus.UNSUPP);
      expect(r.len, `type ${type}`).toBe(1);
    }
    expect(t.dev.counters.unsupported).toBe(9);
  });

  it('a header shorter than 16 bytes fails with IOERR', () => {
    const t = setup();
    expectRejected(
      t,
      submit(t, [header(BlkReqType.IN, 0).subarray(0, 15)], [512, 1]),
      BlkStatus.IOERR,
      'short',
    );
    const t2 = setup();
    expectRejected(t2, submit(t2, [], [512, 1]), BlkStatus.IOERR, 'no readable part');
  });

  it('a chain with no writable byte completes with used length 0 and changes nothing', () => {
    const t = setup();
    const r = submit(t, [header(BlkReqType.OUT, 0), fillBytes(512, 9)], []);
    expect(r.len).toBe(0);
    expect(r.status).toBe(-1);
    expect(untouched(t.backend)).toBe(true);
    expect(t.dev.counters.guestErrors).toBe(1);
    expect(t.logs).toEqual(['blk: request 0 has no writable status byte']);
  });

  it('more data segments than seg_max fail with IOERR', () => {
    const t = setup({ segMax: 2 });
    expectRejected(
      t,
      submit(t, [header(BlkReqType.IN, 0)], [512, 512, 512, 1]),
      BlkStatus.IOERR,
      'IN 3 segments',
    );
    const ok = setup({ segMax: 2 });
    // The status byte sharing a data descriptor does not count as an extra segment.
    expect(submit(ok, [header(BlkReqType.IN, 0)], [512, 512 + 1]).status).toBe(BlkStatus.OK);
    const w = setup({ segMax: 2 });
    const r = submit(
      w,
      [header(BlkReqType.OUT, 0), fillBytes(512, 1), fillBytes(512, 2), fillBytes(512, 3)],
      [1],
    );
    expectRejected(w, r, BlkStatus.IOERR, 'OUT 3 segments');
  });

  it('a data segment longer than size_max fails with IOERR', () => {
    const t = setup({ sizeMax: 1024 });
    expectRejected(t, submit(t, [header(BlkReqType.IN, 0)], [2048, 1]), BlkStatus.IOERR, 'IN 2048');
    const ok = setup({ sizeMax: 1024 });
    expect(submit(ok, [header(BlkReqType.IN, 0)], [1024, 1024, 1]).status).toBe(BlkStatus.OK);
    const w = setup({ sizeMax: 1024 });
    expectRejected(w, write(w, 0, fillBytes(2048, 1)), BlkStatus.IOERR, 'OUT 2048');
  });

  it('DISCARD and WRITE_ZEROES over the limits, out of range or malformed fail with IOERR', () => {
    const cases: Array<[string, number, Uint8Array]> = [
      ['discard: too many segments', BlkReqType.DISCARD, concat(segment(0, 1), segment(2, 1), segment(4, 1))],
      ['discard: too many sectors', BlkReqType.DISCARD, segment(0, 9)],
      ['discard: past the end', BlkReqType.DISCARD, segment(DISK_SECTORS - 1, 2)],
      ['discard: start past the end', BlkReqType.DISCARD, segment(DISK_SECTORS + 1, 0)],
      ['discard: sector 2^64 - 1', BlkReqType.DISCARD, segment(0xffff_ffff, 1, 0, 0xffff_ffff)],
      ['discard: sector 2^32 (high half only)', BlkReqType.DISCARD, segment(0, 1, 0, 1)],
      ['discard: partial segment', BlkReqType.DISCARD, segment(0, 1).subarray(0, 12)],
      ['discard: no segment', BlkReqType.DISCARD, new Uint8Array(0)],
      [
        'write zeroes: too many segments',
        BlkReqType.WRITE_ZEROES,
        concat(segment(0, 1), segment(2, 1), segment(4, 1)),
      ],
      ['write zeroes: too many sectors', BlkReqType.WRITE_ZEROES, segment(0, 9)],
      ['write zeroes: past the end', BlkReqType.WRITE_ZEROES, segment(DISK_SECTORS - 4, 5)],
      [
        'write zeroes: 17 bytes of segments',
        BlkReqType.WRITE_ZEROES,
        concat(segment(0, 1), new Uint8Array(1)),
      ],
    ];
    for (const [what, type, data] of cases) {
      const t = setup({
        discard: { maxSectors: 8, maxSegments: 2 },
        writeZeroes: { maxSectors: 8, maxSegments: 2 },
      });
      const readable = data.length > 0 ? [header(type, 0), data] : [header(type, 0)];
      expectRejected(t, submit(t, readable, [1]), BlkStatus.IOERR, what);
      expect(untouched(t.backend), what).toBe(true);
    }
  });

  it('DISCARD with any flag and WRITE_ZEROES with unknown flags fail with UNSUPP before anything else', () => {
    const cases: Array<[string, number, Uint8Array]> = [
      ['discard with unmap', BlkReqType.DISCARD, segment(0, 1, BLK_WRITE_ZEROES_FLAG_UNMAP)],
      ['discard with reserved flag', BlkReqType.DISCARD, segment(0, 1, 2)],
      ['discard: valid then flagged', BlkReqType.DISCARD, concat(segment(0, 1), segment(2, 1, 0x8000_0000))],
      ['write zeroes with reserved flag', BlkReqType.WRITE_ZEROES, segment(0, 1, 2)],
      ['write zeroes with unmap and reserved', BlkReqType.WRITE_ZEROES, segment(0, 1, 3)],
      // A flag error wins over a range error in an earlier segment (5.2.6.2 "MUST ... UNSUPP").
      [
        'write zeroes: bad range then bad flag',
        BlkReqType.WRITE_ZEROES,
        concat(segment(1000, 1), segment(0, 1, 4)),
      ],
    ];
    for (const [what, type, data] of cases) {
      const t = setup({ discard: { maxSegments: 2 }, writeZeroes: { maxSegments: 2 } });
      const r = submit(t, [header(type, 0), data], [1]);
      expect(r.status, what).toBe(BlkStatus.UNSUPP);
      expect(r.len, what).toBe(1);
      expect(t.dev.counters.unsupported, what).toBe(1);
      expect(untouched(t.backend), what).toBe(true);
    }
  });

  it('DISCARD and WRITE_ZEROES fail with UNSUPP when not negotiated', () => {
    const t = setup({}, { features: new Features([BlkFeature.FLUSH]) });
    expect(submit(t, [header(BlkReqType.DISCARD, 0), segment(0, 1)], [1]).status).toBe(BlkStatus.UNSUPP);
    expect(submit(t, [header(BlkReqType.WRITE_ZEROES, 0), segment(0, 1)], [1]).status).toBe(BlkStatus.UNSUPP);
    const off = setup({ discard: false, writeZeroes: false });
    expect(submit(off, [header(BlkReqType.DISCARD, 0), segment(0, 1)], [1]).status).toBe(BlkStatus.UNSUPP);
    expect(submit(off, [header(BlkReqType.WRITE_ZEROES, 0), segment(0, 1)], [1]).status).toBe(
      BlkStatus.UNSUPP,
    );
    expect(untouched(t.backend)).toBe(true);
    expect(untouched(off.backend)).toBe(true);
  });
});

/** A memory backend whose operations can be made to fail. */
class FlakyBackend extends MemoryBlockBackend {
  failRead = false;
  failWrite = false;
  failFlush = false;
  failDiscard = false;
  /** Fail reads at or after this byte offset. */
  failReadFrom = Number.POSITIVE_INFINITY;
  override read(offset: number, dst: Uint8Array): void {
    if (this.failRead || offset >= this.failReadFrom) throw new Error('EIO: i/o error');
    super.read(offset, dst);
  }
  override write(offset: number, src: Uint8Array): void {
    if (this.failWrite) throw new Error('ENOSPC: no space left on device');
    super.write(offset, src);
  }
  override flush(): void {
    if (this.failFlush) throw new Error('EIO: fsync failed');
    super.flush();
  }
  override discard(offset: number, length: number): void {
    if (this.failDiscard) throw new Error('EOPNOTSUPP');
    super.discard(offset, length);
  }
  override writeZeroes(offset: number, length: number): void {
    if (this.failDiscard) throw new Error('EOPNOTSUPP');
    super.writeZeroes(offset, length);
  }
}

describe('BlkDevice backend failures', () => {
  it('turns every backend failure into IOERR, counts and logs it, and never throws', () => {
    const backend = new FlakyBackend(DISK_SECTORS * 512);
    const t = setup({ backend });
    backend.failRead = true;
    expect(read(t, 0, 1).status).toBe(BlkStatus.IOERR);
    backend.failRead = false;
    backend.failWrite = true;
    expect(write(t, 0, fillBytes(512, 1)).status).toBe(BlkStatus.IOERR);
    backend.failWrite = false;
    backend.failFlush = true;
    expect(submit(t, [header(BlkReqType.FLUSH, 0)], [1]).status).toBe(BlkStatus.IOERR);
    backend.failFlush = false;
    backend.failDiscard = true;
    expect(submit(t, [header(BlkReqType.DISCARD, 0), segment(0, 1)], [1]).status).toBe(BlkStatus.IOERR);
    expect(submit(t, [header(BlkReqType.WRITE_ZEROES, 0), segment(0, 1)], [1]).status).toBe(BlkStatus.IOERR);
    expect(t.dev.counters.backendErrors).toBe(5);
    expect(t.dev.counters.guestErrors).toBe(0);
    expect(t.logs).toEqual([
      'blk: backend read failed: EIO: i/o error',
      'blk: backend write failed: ENOSPC: no space left on device',
      'blk: backend flush failed: EIO: fsync failed',
      'blk: backend discard failed: EOPNOTSUPP',
      'blk: backend write zeroes failed: EOPNOTSUPP',
    ]);
    backend.failDiscard = false;
    expect(read(t, 0, 1).status).toBe(BlkStatus.OK);
  });

  it('a read failing mid-request reports only the data already delivered in the used length', () => {
    const backend = new FlakyBackend(DISK_SECTORS * 512);
    backend.failReadFrom = 1024;
    const t = setup({ backend });
    const r = submit(t, [header(BlkReqType.IN, 0)], [512, 512, 512, 1]);
    expect(r.status).toBe(BlkStatus.IOERR);
    expect(r.len).toBe(1024 + 1);
  });

  it('a failing flush in writethrough mode fails the write', () => {
    const backend = new FlakyBackend(DISK_SECTORS * 512);
    backend.failFlush = true;
    const t = setup({ backend, writeback: false });
    expect(write(t, 0, fillBytes(512, 1)).status).toBe(BlkStatus.IOERR);
    expect(t.dev.counters.backendErrors).toBe(1);
  });
});

describe('BlkDevice cache mode (5.2.6.2 stable writes)', () => {
  function writesFlush(options: Partial<BlkDeviceOptions>, negotiated: number[], writeback?: 0 | 1): number {
    const t = setup(options, { features: new Features(negotiated) });
    if (writeback !== undefined) expect(t.dev.writeConfig(BlkConfig.writeback, 1, writeback)).toBe(true);
    write(t, 0, fillBytes(512, 1));
    submit(t, [header(BlkReqType.WRITE_ZEROES, 0), segment(1, 1)], [1]);
    return t.backend.flushes;
  }
  const F = BlkFeature;

  it('makes every write durable when FLUSH is offered but neither FLUSH nor CONFIG_WCE negotiated', () => {
    expect(writesFlush({}, [F.WRITE_ZEROES])).toBe(2);
  });

  it('leaves writes volatile when FLUSH is negotiated without CONFIG_WCE', () => {
    expect(writesFlush({}, [F.FLUSH, F.WRITE_ZEROES])).toBe(0);
  });

  it('follows the writeback field when CONFIG_WCE is negotiated', () => {
    expect(writesFlush({}, [F.FLUSH, F.CONFIG_WCE, F.WRITE_ZEROES], 1)).toBe(0);
    expect(writesFlush({}, [F.FLUSH, F.CONFIG_WCE, F.WRITE_ZEROES], 0)).toBe(2);
    expect(writesFlush({ writeback: false }, [F.FLUSH, F.CONFIG_WCE, F.WRITE_ZEROES])).toBe(2);
  });

  it('never syncs writes when FLUSH is not offered', () => {
    expect(writesFlush({ flush: false }, [F.WRITE_ZEROES])).toBe(0);
  });
});

describe('BlkDevice queue handling', () => {
  it('serves a batch with one notification per queue', () => {
    const t = setup();
    for (let i = 0; i < 4; i++) {
      t.ctx.drivers[0].add(
        [{ addr: t.ctx.allocBytes(header(BlkReqType.IN, i)), len: 16 }],
        [{ addr: t.ctx.alloc(513), len: 513 }],
        i,
      );
    }
    t.ctx.kick(t.dev, 0);
    expect(t.ctx.harvest(0)).toEqual([0, 1, 2, 3].map((token) => ({ token, len: 513 })));
    expect(t.ctx.notifyCalls).toEqual([0]);
  });

  it('reports a corrupt ring once through queueFailed and stops processing that queue', () => {
    const t = setup({ queueCount: 2 });
    const drv = t.ctx.drivers[0];
    drv.add(
      [{ addr: t.ctx.allocBytes(header(BlkReqType.IN, 0)), len: 16 }],
      [{ addr: t.ctx.alloc(513), len: 513 }],
      1,
    );
    drv.add(
      [{ addr: t.ctx.allocBytes(header(BlkReqType.IN, 1)), len: 16 }],
      [{ addr: t.ctx.alloc(513), len: 513 }],
      2,
    );
    // Second chain's head descriptor (index 2) now has length 0.
    t.ctx.mem.write32(drv.rings.descTable + 2 * DESC_SIZE + DESC_LEN, 0);
    expect(() => t.ctx.kick(t.dev, 0)).not.toThrow();
    expect(t.ctx.failures).toHaveLength(1);
    expect(t.ctx.failures[0]).toMatchObject({ index: 0, error: { reason: 'zero-length-desc' } });
    expect(t.ctx.harvest(0)).toEqual([{ token: 1, len: 513 }]);
    t.dev.notify(0);
    t.dev.notify(0);
    expect(t.ctx.failures).toHaveLength(1);
    expect(t.dev.counters.requests).toBe(1);
    // The other queue keeps working.
    expect(submit(t, [header(BlkReqType.IN, 0)], [512, 1], 1).status).toBe(BlkStatus.OK);
  });

  it('counts notifications before activation, for absent and idle queues, and after reset', () => {
    const backend = patternedDisk();
    const logs: string[] = [];
    const dev = new BlkDevice({ backend, queueCount: 2, queueSize: 16, log: (m) => logs.push(m) });
    dev.notify(0);
    const ctx = activateWithFakeContext(dev);
    expect(dev.isActivated).toBe(true);
    dev.notify(2);
    dev.notify(-1);
    dev.notify(0.5);
    ctx.queues[1].ready = false;
    dev.notify(1);
    dev.reset();
    expect(dev.isActivated).toBe(false);
    dev.notify(0);
    expect(dev.counters.guestErrors).toBe(6);
    expect(dev.counters.requests).toBe(0);
    expect(logs).toEqual([
      'blk: notification for queue 0 before activation',
      'blk: notification for queue 2 that does not exist',
      'blk: notification for queue -1 that does not exist',
      'blk: notification for queue 0.5 that does not exist',
      'blk: notification for queue 1 that is not ready',
      'blk: notification for queue 0 before activation',
    ]);
  });
});
