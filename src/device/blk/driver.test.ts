import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileBlockBackend } from '../../backend/index.js';
import { GuestAllocator, RamMemory } from '../../memory/index.js';
import { InProcessCpu, InterruptController, MmioBus } from '../../platform/index.js';
import {
  BlkConfig,
  BlkFeature,
  BlkStatus,
  DeviceId,
  DeviceStatus,
  FeatureBit,
  VirtioError,
} from '../../spec/index.js';
import { MmioDriver, MmioTransport, type MmioTransportOptions } from '../../transport/index.js';
import { DescriptorChain, MAX_INDIRECT_DESCRIPTORS } from '../../virtqueue/index.js';
import { Features } from '../features.js';
import type { DeviceContext, DeviceHost, VirtioDevice } from '../virtioDevice.js';
import { type BlockBackend, MemoryBlockBackend } from './backend.js';
import { BlkDevice, type BlkDeviceOptions } from './device.js';
import { BlkDriver, type BlkDriverOptions } from './driver.js';

const LINE = 2;
const MiB = 1 << 20;

/** A machine with one device behind an MMIO transport, and the probed guest transport driver. */
function rig(device: VirtioDevice, options: Partial<Omit<MmioTransportOptions, 'mem' | 'irq'>> = {}) {
  const ram = 8 * MiB;
  const mem = new RamMemory(new ArrayBuffer(ram));
  const dma = new GuestAllocator(MiB, ram - MiB);
  const bus = new MmioBus();
  const irq = new InterruptController({ lines: 8 });
  const cpu = new InProcessCpu(irq);
  const errors: string[] = [];
  const transport = new MmioTransport(device, {
    mem,
    irq: irq.line(LINE),
    onGuestError: (m) => errors.push(m),
    ...options,
  });
  bus.map(0xd000_0000, transport, 'blk0');
  const t = MmioDriver.probe(bus.window('blk0'), { mem, dma, platform: cpu, irqLines: [LINE] }) as MmioDriver;
  return { mem, dma, cpu, irq, transport, t, errors };
}

/** A memory disk of `bytes` bytes, a BlkDevice over it, and the machine around it. */
function disk(
  bytes: number,
  device: Partial<BlkDeviceOptions> = {},
  transport: Parameters<typeof rig>[1] = {},
) {
  const backend = new MemoryBlockBackend(bytes);
  const dev = new BlkDevice({ backend, ...device });
  return { backend, dev, ...rig(dev, transport) };
}

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Byte-exact comparison (fast for large arrays, unlike a deep equality). */
function expectBytes(actual: Uint8Array | null, expected: Uint8Array): void {
  expect(actual).not.toBeNull();
  expect(actual?.length).toBe(expected.length);
  expect(Buffer.compare(Buffer.from(actual as Uint8Array), Buffer.from(expected))).toBe(0);
}

function expectError(fn: () => unknown, code: string, message?: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code).toBe(code);
  if (message !== undefined) expect((err as VirtioError).message).toMatch(message);
}

/** A BlkDevice whose capacity the host changes (a resize), announced through DeviceHost. */
class ResizableBlk implements VirtioDevice {
  readonly deviceId: number;
  readonly queueMaxSizes: readonly number[];
  readonly features: Features;
  readonly configSize: number;
  capacity: number;
  blkSize = 0;
  private host: DeviceHost | null = null;

  constructor(private readonly inner: BlkDevice) {
    this.deviceId = inner.deviceId;
    this.queueMaxSizes = inner.queueMaxSizes;
    this.features = inner.features;
    this.configSize = inner.configSize;
    this.capacity = inner.capacity;
  }

  attach(host: DeviceHost): void {
    this.host = host;
  }

  resize(sectors: number): void {
    this.capacity = sectors;
    this.host?.configChanged();
  }

  readConfig(offset: number, width: 1 | 2 | 4): number {
    if (offset === BlkConfig.capacity && width === 4) return this.capacity % 2 ** 32;
    if (offset === BlkConfig.capacity + 4 && width === 4) return Math.floor(this.capacity / 2 ** 32);
    if (offset === BlkConfig.blkSize && width === 4 && this.blkSize !== 0) return this.blkSize;
    return this.inner.readConfig(offset, width);
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean {
    return this.inner.writeConfig(offset, width, value);
  }

  validateFeatures(f: Features): boolean {
    return this.inner.validateFeatures(f);
  }

  activate(ctx: DeviceContext): void {
    this.inner.activate(ctx);
  }

  notify(index: number): void {
    this.inner.notify(index);
  }

  reset(): void {
    this.inner.reset();
  }
}

/** A block device that misbehaves on notification. Capacity 100 sectors. */
class BrokenBlk implements VirtioDevice {
  readonly deviceId = DeviceId.BLOCK;
  readonly queueMaxSizes = [8];
  readonly features = new Features([BlkFeature.FLUSH]);
  readonly configSize = BlkConfig.size;
  private ctx: DeviceContext | null = null;
  private readonly chain = new DescriptorChain(MAX_INDIRECT_DESCRIPTORS);

  constructor(private readonly mode: 'foreign-id' | 'silent' | 'needs-reset' | 'no-status') {}

  readConfig(offset: number): number {
    return offset === BlkConfig.capacity ? 100 : 0;
  }

  writeConfig(): boolean {
    return false;
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }

  notify(index: number): void {
    const ctx = this.ctx;
    if (ctx === null) return;
    const q = ctx.queues[index];
    if (!q.pop(ctx.mem, this.chain)) return;
    if (this.mode === 'silent') return;
    if (this.mode === 'needs-reset') {
      ctx.queueFailed(index, { reason: 'chain-too-long', message: 'made up' });
      return;
    }
    // foreign-id: a descriptor that was never made available; no-status: used without writing.
    q.addUsed(ctx.mem, this.mode === 'foreign-id' ? (this.chain.head + 3) % q.size : this.chain.head, 0);
    ctx.notifyUsed(index);
  }

  reset(): void {
    this.ctx = null;
  }
}

/** A backend whose reads fail (a host I/O error). */
class FailingReads extends MemoryBlockBackend {
  override read(): void {
    throw new Error('medium error');
  }
}

describe('BlkDriver probe and configuration', () => {
  it('negotiates the features and reads the configuration', () => {
    const d = disk(MiB, { serial: 'disk-1', blkSize: 4096, segMax: 5 });
    const base = d.dma.count;
    const blk = BlkDriver.probe(d.t);
    expect(blk.capacity).toBe(2048);
    expect(blk.blkSize).toBe(4096);
    expect(blk.segMax).toBe(5);
    expect(blk.maxSegmentSize).toBe(65536);
    expect(blk.maxRequestBytes).toBe(5 * 65536);
    expect(blk.numQueues).toBe(1);
    expect(blk.readOnly).toBe(false);
    expect(blk.writeback).toBe(true);
    for (const bit of [
      BlkFeature.SEG_MAX,
      BlkFeature.BLK_SIZE,
      BlkFeature.FLUSH,
      BlkFeature.CONFIG_WCE,
      BlkFeature.DISCARD,
      BlkFeature.WRITE_ZEROES,
      FeatureBit.VERSION_1,
      FeatureBit.EVENT_IDX,
      FeatureBit.INDIRECT_DESC,
    ]) {
      expect(blk.features.has(bit), `bit ${bit}`).toBe(true);
    }
    expect(blk.discardLimits).toEqual({ maxSectors: 65536, maxSegments: 1 });
    expect(blk.getId()).toBe('disk-1');
    expect(d.transport.status & DeviceStatus.DRIVER_OK).toBe(DeviceStatus.DRIVER_OK);
    blk.remove();
    expect(d.dma.count).toBe(base);
    expect(d.errors).toEqual([]);
  });

  it('rejects a device that is not a block device, and bad options before touching the device', () => {
    const notBlk = new BrokenBlk('silent');
    (notBlk as { deviceId: number }).deviceId = DeviceId.ENTROPY;
    const r = rig(notBlk);
    expectError(() => BlkDriver.probe(r.t), 'DEVICE_REJECTED', /not a block device/);
    const d = disk(MiB);
    const bad: BlkDriverOptions[] = [
      { queues: 0 },
      { queues: 1.5 },
      { maxSegmentSize: 100 },
      { maxRequestBytes: 1000 },
    ];
    for (const options of bad) expectError(() => BlkDriver.probe(d.t, options), 'INVALID_ARGUMENT');
    expect(d.transport.status).toBe(0);
  });

  it('refuses a device with an unusable blk_size, marks it failed and leaks nothing', () => {
    const backend = new MemoryBlockBackend(MiB);
    const dev = new ResizableBlk(new BlkDevice({ backend }));
    dev.blkSize = 1000;
    const r = rig(dev);
    const base = r.dma.count;
    expectError(() => BlkDriver.probe(r.t), 'DEVICE_REJECTED', /blk_size 1000/);
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    expect(r.dma.count).toBe(base);
  });

  it('drives a legacy device', () => {
    const d = disk(MiB, { serial: 'old' }, { version: 1 });
    const blk = BlkDriver.probe(d.t);
    expect(blk.features.has(FeatureBit.VERSION_1)).toBe(false);
    expect(blk.capacity).toBe(2048);
    const data = bytes(8192, 3);
    blk.write(100, data);
    blk.flush();
    expectBytes(blk.read(100, 16), data);
    expect(blk.getId()).toBe('old');
    blk.remove();
    expect(d.errors).toEqual([]);
  });

  it('follows a capacity change announced by the device', () => {
    const backend = new MemoryBlockBackend(2 * MiB);
    const dev = new ResizableBlk(new BlkDevice({ backend }));
    dev.capacity = 1024;
    const r = rig(dev);
    const blk = BlkDriver.probe(r.t);
    expect(blk.capacity).toBe(1024);
    expectError(() => blk.read(1024, 1), 'INVALID_ARGUMENT', /past capacity 1024/);
    const seen: number[] = [];
    blk.onCapacityChange((c) => seen.push(c));
    dev.resize(4096);
    r.cpu.halt();
    expect(blk.configChanges).toBe(1);
    expect(blk.capacity).toBe(4096);
    expect(seen).toEqual([4096]);
    expect(blk.read(1024, 1)).toEqual(new Uint8Array(512));
    blk.remove();
  });
});

describe('BlkDriver requests', () => {
  it('writes and reads back across segments and requests, honouring seg_max', () => {
    const d = disk(MiB, { segMax: 2 });
    const blk = BlkDriver.probe(d.t, { maxSegmentSize: 4096 });
    expect(blk.maxRequestBytes).toBe(8192);
    const data = bytes(40 * 1024, 7);
    blk.write(3, data);
    expectBytes(d.backend.bytes.subarray(3 * 512, 3 * 512 + data.length), data);
    expect(d.dev.counters.writeBytes).toBe(data.length);
    expect(d.dev.counters.requests).toBe(5);
    expectBytes(blk.read(3, data.length / 512), data);
    expect(d.dev.counters.guestErrors).toBe(0);
    expect(d.errors).toEqual([]);
    blk.remove();
  });

  it('keeps segments within size_max', () => {
    const d = disk(MiB, { sizeMax: 4096 });
    const blk = BlkDriver.probe(d.t);
    expect(blk.features.has(BlkFeature.SIZE_MAX)).toBe(true);
    expect(blk.maxSegmentSize).toBe(4096);
    const data = bytes(64 * 1024, 1);
    blk.write(0, data);
    expectBytes(blk.read(0, 128), data);
    expect(d.dev.counters.guestErrors).toBe(0);
    blk.remove();
  });

  it('caps seg_max by the ring without indirect descriptors', () => {
    const d = disk(MiB, { queueSize: 8, segMax: 100 }, { indirectDesc: false });
    const blk = BlkDriver.probe(d.t, { maxSegmentSize: 4096 });
    expect(blk.features.has(FeatureBit.INDIRECT_DESC)).toBe(false);
    expect(blk.segMax).toBe(6);
    expect(blk.maxRequestBytes).toBe(6 * 4096);
    const data = bytes(100 * 1024, 9);
    blk.write(10, data);
    expectBytes(blk.read(10, 200), data);
    expect(d.dev.counters.guestErrors).toBe(0);
    blk.remove();
  });

  it('flushes when the device has a cache, and sends nothing when it has none', () => {
    const d = disk(MiB);
    const blk = BlkDriver.probe(d.t);
    blk.flush();
    expect(d.backend.flushes).toBe(1);
    blk.remove();
    const w = disk(MiB, { flush: false });
    const wt = BlkDriver.probe(w.t);
    expect(wt.features.has(BlkFeature.FLUSH)).toBe(false);
    expect(wt.writeback).toBe(false);
    const before = w.dev.counters.requests;
    wt.flush();
    expect(w.dev.counters.requests).toBe(before);
    expectError(() => wt.submit({ op: 'flush' }), 'INVALID_STATE', /flush is not negotiated/);
    wt.remove();
  });

  it('discards and writes zeroes, split by the device limits', () => {
    const d = disk(MiB, {
      discard: { maxSectors: 8, maxSegments: 2 },
      writeZeroes: { maxSectors: 16, maxSegments: 1 },
    });
    d.backend.bytes.fill(0xaa);
    const blk = BlkDriver.probe(d.t);
    blk.discard(10, 37);
    expect(d.dev.counters.discards).toBe(3);
    expect(d.backend.bytes.subarray(10 * 512, 47 * 512).every((b) => b === 0)).toBe(true);
    expect(d.backend.bytes[10 * 512 - 1]).toBe(0xaa);
    expect(d.backend.bytes[47 * 512]).toBe(0xaa);
    blk.writeZeroes(100, 40, true);
    expect(d.dev.counters.writeZeroes).toBe(3);
    expect(d.backend.bytes.subarray(100 * 512, 140 * 512).every((b) => b === 0)).toBe(true);
    expect(d.backend.bytes[140 * 512]).toBe(0xaa);
    expect(d.dev.counters.guestErrors).toBe(0);
    blk.remove();
  });

  it('switches the cache mode through the writeback field', () => {
    const d = disk(MiB);
    const blk = BlkDriver.probe(d.t);
    blk.setWriteback(false);
    expect(d.dev.writeback).toBe(0);
    expect(blk.writeback).toBe(false);
    blk.setWriteback(true);
    expect(d.dev.writeback).toBe(1);
    blk.remove();
    const n = disk(MiB, { configWce: false });
    const nb = BlkDriver.probe(n.t);
    expectError(() => nb.setWriteback(false), 'INVALID_STATE', /config_wce/);
    nb.remove();
  });

  it('refuses requests the device cannot take before sending them', () => {
    const d = disk(64 * 1024, { discard: false });
    const blk = BlkDriver.probe(d.t);
    const before = d.dev.counters.requests;
    expectError(() => blk.read(127, 2), 'INVALID_ARGUMENT', /past capacity 128/);
    expectError(() => blk.read(0, 0), 'INVALID_ARGUMENT');
    expectError(() => blk.read(-1, 1), 'INVALID_ARGUMENT');
    expectError(() => blk.read(0.5, 1), 'INVALID_ARGUMENT');
    expectError(() => blk.write(0, new Uint8Array(100)), 'INVALID_ARGUMENT', /multiple of 512/);
    expectError(() => blk.write(0, new Uint8Array(0)), 'INVALID_ARGUMENT');
    expectError(() => blk.write(128, new Uint8Array(512)), 'INVALID_ARGUMENT', /past capacity/);
    expectError(() => blk.discard(0, 1), 'INVALID_STATE', /discard is not negotiated/);
    expectError(() => blk.writeZeroes(120, 9), 'INVALID_ARGUMENT', /past capacity/);
    expectError(
      () => blk.submit({ op: 'read', sector: 0, sectors: 1 }, 1),
      'INVALID_ARGUMENT',
      /no request queue 1/,
    );
    expectError(
      () => blk.submit({ op: 'read', sector: 0, sectors: 1, into: new Uint8Array(10) }),
      'INVALID_ARGUMENT',
      /destination/,
    );
    expectError(() => blk.submit({ op: 'writeZeroes', ranges: [] }), 'INVALID_ARGUMENT');
    expectError(
      () =>
        blk.submit({
          op: 'writeZeroes',
          ranges: [
            { sector: 0, sectors: 1 },
            { sector: 1, sectors: 1 },
          ],
        }),
      'INVALID_ARGUMENT',
      /2 ranges/,
    );
    expect(d.dev.counters.requests).toBe(before);
    blk.remove();
    const ro = disk(64 * 1024, { readOnly: true });
    const rob = BlkDriver.probe(ro.t);
    expect(rob.readOnly).toBe(true);
    expectError(() => rob.write(0, new Uint8Array(512)), 'INVALID_STATE', /read-only/);
    expectError(() => rob.writeZeroes(0, 1), 'INVALID_STATE', /read-only/);
    expect(rob.read(0, 1)).toEqual(new Uint8Array(512));
    rob.remove();
  });

  it('reports a failed request with the status name', () => {
    const backend = new FailingReads(MiB);
    const dev = new BlkDevice({ backend });
    const r = rig(dev);
    const blk = BlkDriver.probe(r.t);
    expectError(() => blk.read(0, 8), 'BACKEND_IO', /read of 8 sectors at 0 failed with status IOERR/);
    // An I/O error is not a broken device: later requests still work.
    blk.write(0, bytes(512, 0));
    expect(r.transport.status & DeviceStatus.FAILED).toBe(0);
    const id = blk.submit({ op: 'read', sector: 0, sectors: 1 }) as number;
    expect(blk.poll()).toEqual([{ id, op: 'read', status: BlkStatus.IOERR, data: new Uint8Array(512) }]);
    blk.remove();
  });

  it('keeps several requests in flight with submit, poll and wait', () => {
    const d = disk(MiB);
    d.backend.bytes.set(bytes(4 * 4096, 5));
    const blk = BlkDriver.probe(d.t);
    const ids: number[] = [];
    for (let i = 0; i < 4; i++) ids.push(blk.submit({ op: 'read', sector: i * 8, sectors: 8 }) as number);
    expect(new Set(ids).size).toBe(4);
    expect(blk.inFlight).toBe(4);
    const done = blk.poll();
    expect(done.map((c) => c.id)).toEqual(ids);
    for (let i = 0; i < 4; i++) {
      expect(done[i].status).toBe(BlkStatus.OK);
      expectBytes(done[i].data, d.backend.bytes.subarray(i * 4096, (i + 1) * 4096));
    }
    expect(blk.inFlight).toBe(0);
    expect(blk.poll()).toEqual([]);
    const into = new Uint8Array(512);
    const w = blk.submit({ op: 'write', sector: 5, data: bytes(512, 1) }) as number;
    const g = blk.submit({ op: 'getId' }) as number;
    const rd = blk.submit({ op: 'read', sector: 5, sectors: 1, into }) as number;
    const waited = blk.wait();
    expect(waited.map((c) => [c.id, c.op, c.status])).toEqual([
      [w, 'write', 0],
      [g, 'getId', 0],
      [rd, 'read', 0],
    ]);
    expect(waited[2].data).toBe(into);
    expectBytes(into, bytes(512, 1));
    expect(waited[1].data).toEqual(new Uint8Array(20));
    expect(blk.wait()).toEqual([]);
    blk.remove();
  });

  it('returns null when the ring is full; the synchronous path waits for room and leaves others to poll', () => {
    const d = disk(MiB, { queueSize: 4 });
    const blk = BlkDriver.probe(d.t);
    const ids: number[] = [];
    for (let i = 0; i < 4; i++) {
      const id = blk.submit({ op: 'write', sector: i, data: bytes(512, i) });
      expect(id).not.toBeNull();
      ids.push(id as number);
    }
    expect(blk.submit({ op: 'read', sector: 0, sectors: 1 })).toBeNull();
    expectBytes(blk.read(2, 1), bytes(512, 2));
    expect(blk.poll().map((c) => c.id)).toEqual(ids);
    blk.remove();
  });

  it('uses every request queue with VIRTIO_BLK_F_MQ', () => {
    const d = disk(MiB, { queueCount: 2 });
    const one = BlkDriver.probe(d.t);
    expect(one.numQueues).toBe(1);
    one.remove();
    const blk = BlkDriver.probe(d.t, { queues: 4 });
    expect(blk.features.has(BlkFeature.MQ)).toBe(true);
    expect(blk.numQueues).toBe(2);
    d.backend.bytes.set(bytes(512, 77), 512 * 9);
    const id = blk.submit({ op: 'read', sector: 9, sectors: 1 }, 1) as number;
    const [c] = blk.wait();
    expect(c.id).toBe(id);
    expectBytes(c.data, bytes(512, 77));
    expect(d.transport.queue(1).ready).toBe(true);
    blk.remove();
    expect(d.errors).toEqual([]);
  });

  it('writes through to a file backend', () => {
    const dir = mkdtempSync(join(tmpdir(), 'blk-driver-'));
    try {
      const path = join(dir, 'disk.img');
      const backend: BlockBackend & { close(): void } = FileBlockBackend.create(path, MiB);
      const r = rig(new BlkDevice({ backend, serial: 'file' }));
      const blk = BlkDriver.probe(r.t);
      const data = bytes(8192, 11);
      blk.write(16, data);
      blk.flush();
      expectBytes(readFileSync(path).subarray(16 * 512, 16 * 512 + 8192), data);
      expectBytes(blk.read(16, 16), data);
      blk.remove();
      backend.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('BlkDriver against a misbehaving device', () => {
  for (const [mode, message] of [
    ['foreign-id', /device used descriptor \d+ that was not available/],
    ['needs-reset', /device needs reset/],
  ] as const) {
    it(`fails cleanly and marks the device failed (${mode})`, () => {
      const r = rig(new BrokenBlk(mode));
      const base = r.dma.count;
      const blk = BlkDriver.probe(r.t);
      expectError(() => blk.read(0, 1), 'DEVICE_FAILED', message);
      expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
      expectError(() => blk.write(0, new Uint8Array(512)), 'DEVICE_FAILED', message);
      expectError(() => blk.submit({ op: 'flush' }), 'DEVICE_FAILED');
      blk.remove();
      expect(r.dma.count).toBe(base);
    });
  }

  it('times out instead of hanging when the device never completes', () => {
    const r = rig(new BrokenBlk('silent'));
    const base = r.dma.count;
    const blk = BlkDriver.probe(r.t);
    expectError(() => blk.flush(), 'TIMEOUT');
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    expectError(() => blk.read(0, 1), 'DEVICE_FAILED', /no completion/);
    // The request never came back; remove still releases its slot and the rings.
    blk.remove();
    expect(r.dma.count).toBe(base);
  });

  it('reports a status byte the device never wrote', () => {
    const r = rig(new BrokenBlk('no-status'));
    const blk = BlkDriver.probe(r.t);
    expectError(() => blk.read(0, 1), 'BACKEND_IO', /status 0xff/);
    blk.remove();
  });

  it('frees every DMA allocation on remove, requests in flight included', () => {
    const d = disk(MiB);
    const base = d.dma.count;
    const blk = BlkDriver.probe(d.t);
    blk.read(0, 2048);
    blk.submit({ op: 'read', sector: 0, sectors: 8 });
    blk.submit({ op: 'write', sector: 0, data: bytes(4096, 0) });
    blk.getId();
    expect(d.dma.count).toBeGreaterThan(base);
    blk.remove();
    blk.remove();
    expect(d.dma.count).toBe(base);
    expect(d.transport.status).toBe(0);
    expectError(() => blk.read(0, 1), 'INVALID_STATE', /removed/);
    expectError(() => blk.poll(), 'INVALID_STATE', /removed/);
  });
});
