import { describe, expect, it } from 'vitest';
import {
  beginInit,
  type DeviceContext,
  type DeviceHost,
  Features,
  finishInit,
  type VirtioDevice,
} from '../device/index.js';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { InProcessCpu, InterruptController, MmioBus } from '../platform/index.js';
import {
  DeviceStatus,
  FeatureBit,
  InterruptBit,
  MMIO_MAGIC_VALUE,
  MmioLegacyReg,
  MmioReg,
  VirtioError,
} from '../spec/index.js';
import { DescriptorChain, DriverQueue, legacyLayout, MAX_INDIRECT_DESCRIPTORS } from '../virtqueue/index.js';
import {
  MMIO_DEFAULT_VENDOR_ID,
  MMIO_QUEUE_RESET_POLL_LIMIT,
  MMIO_RESET_POLL_LIMIT,
  MmioDriver,
  MmioTransport,
  type MmioTransportOptions,
} from './index.js';
import type { MmioAccess } from './types.js';

const WINDOW = 0xfeb0_0000;
const LINE = 5;
const DMA_BASE = 1 << 20;

/**
 * A small device: two queues (8 and 16), an 8-byte configuration space (le32 at 0, le16 at 4, u8 at
 * 6 read-only, u8 at 7 writable), device bits 0, 5 and 60. When `complete` is set it uses every
 * available buffer with length 0 on notification and signals.
 */
class TestDevice implements VirtioDevice {
  readonly deviceId = 0x1f;
  readonly features = new Features([0, 5, 60]);
  readonly configSize = 8;
  readonly config = Uint8Array.of(0x78, 0x56, 0x34, 0x12, 0xcd, 0xab, 0x42, 0x07);
  host: DeviceHost | null = null;
  ctx: DeviceContext | null = null;
  complete = true;
  refuseFeatures = false;
  readonly notified: number[] = [];
  readonly queueResets: number[] = [];
  private readonly chain = new DescriptorChain(MAX_INDIRECT_DESCRIPTORS);

  constructor(readonly queueMaxSizes: readonly number[] = [8, 16]) {}

  attach(host: DeviceHost): void {
    this.host = host;
  }

  validateFeatures(): boolean {
    return !this.refuseFeatures;
  }

  readConfig(offset: number, width: 1 | 2 | 4): number {
    let v = 0;
    for (let i = 0; i < width; i++) v += this.config[offset + i] * 2 ** (8 * i);
    return v;
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean {
    if (offset !== 7 || width !== 1) return false;
    this.config[7] = value;
    return true;
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }

  notify(index: number): void {
    this.notified.push(index);
    const ctx = this.ctx;
    if (ctx === null || !this.complete) return;
    const q = ctx.queues[index];
    while (q.pop(ctx.mem, this.chain)) q.addUsed(ctx.mem, this.chain.head, 0);
    q.enableNotification(ctx.mem);
    ctx.notifyUsed(index);
  }

  resetQueue(index: number): void {
    this.queueResets.push(index);
  }

  reset(): void {
    this.ctx = null;
  }
}

/** Records every access and can fake register values or drop writes (a misbehaving window). */
class SpyAccess implements MmioAccess {
  readonly log: Array<{ op: 'r' | 'w'; width: number; offset: number; value: number }> = [];
  /** Returns a value to fake a 32-bit read, or undefined to pass it through. */
  fakeRead: ((offset: number) => number | undefined) | null = null;
  /** Returns false to drop a 32-bit write. */
  passWrite: ((offset: number, value: number) => boolean) | null = null;
  /** Last value written to QueueSel. */
  sel = 0;

  constructor(private readonly inner: MmioAccess) {}

  read32(offset: number): number {
    const v = this.fakeRead?.(offset) ?? this.inner.read32(offset);
    this.log.push({ op: 'r', width: 4, offset, value: v });
    return v;
  }

  write32(offset: number, value: number): void {
    this.log.push({ op: 'w', width: 4, offset, value });
    if (offset === MmioReg.QueueSel) this.sel = value;
    if (this.passWrite?.(offset, value) === false) return;
    this.inner.write32(offset, value);
  }

  read8(offset: number): number {
    const v = this.inner.read8(offset);
    this.log.push({ op: 'r', width: 1, offset, value: v });
    return v;
  }

  read16(offset: number): number {
    const v = this.inner.read16(offset);
    this.log.push({ op: 'r', width: 2, offset, value: v });
    return v;
  }

  write8(offset: number, value: number): void {
    this.log.push({ op: 'w', width: 1, offset, value });
    this.inner.write8(offset, value);
  }

  write16(offset: number, value: number): void {
    this.log.push({ op: 'w', width: 2, offset, value });
    this.inner.write16(offset, value);
  }

  writes(offset: number): number[] {
    return this.log.filter((e) => e.op === 'w' && e.offset === offset).map((e) => e.value);
  }

  reads(offset: number): number {
    return this.log.filter((e) => e.op === 'r' && e.offset === offset).length;
  }
}

/** A window answering fixed register values, counting accesses (for probes of broken devices). */
function fixedWindow(values: Record<number, number>): MmioAccess & { reads: number[]; writes: number } {
  const w = {
    reads: [] as number[],
    writes: 0,
    read32(offset: number): number {
      w.reads.push(offset);
      return values[offset] ?? 0;
    },
    write32(): void {
      w.writes++;
    },
    read8: () => 0,
    read16: () => 0,
    write8(): void {
      w.writes++;
    },
    write16(): void {
      w.writes++;
    },
  };
  return w;
}

type RigOptions = Partial<Omit<MmioTransportOptions, 'mem' | 'irq'>>;

/** A machine with one device: RAM, DMA allocator, bus, interrupt controller, CPU, transport. */
function rig(device: VirtioDevice = new TestDevice(), options: RigOptions = {}) {
  const ram = 4 << 20;
  const mem = new RamMemory(new ArrayBuffer(ram));
  const dma = new GuestAllocator(DMA_BASE, ram - DMA_BASE);
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
  bus.map(WINDOW, transport, 'dev0');
  const spy = new SpyAccess(bus.window('dev0'));
  const probe = (pageSize?: number): MmioDriver => {
    const d = MmioDriver.probe(spy, { mem, dma, platform: cpu, irqLines: [LINE], name: 'dev0', pageSize });
    if (d === null) throw new Error('no device');
    return d;
  };
  return { mem, dma, bus, irq, cpu, transport, spy, errors, probe };
}

/** Ring and version bits most tests negotiate, plus the test device's bits. */
function wanted(...extra: number[]): Features {
  return new Features([
    0,
    5,
    60,
    FeatureBit.VERSION_1,
    FeatureBit.EVENT_IDX,
    FeatureBit.INDIRECT_DESC,
    ...extra,
  ]);
}

/** Expects `fn` to throw a VirtioError with `code` and a message matching `message`. */
function expectError(fn: () => unknown, code: string, message?: RegExp): VirtioError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  const v = err as VirtioError;
  expect(v.code).toBe(code);
  if (message !== undefined) expect(v.message).toMatch(message);
  return v;
}

describe('MmioDriver.probe', () => {
  it('identifies a modern device from the four identification registers only', () => {
    const r = rig();
    const d = r.probe();
    expect(d.version).toBe(2);
    expect(d.deviceId).toBe(0x1f);
    expect(d.vendorId).toBe(MMIO_DEFAULT_VENDOR_ID);
    expect(d.interruptMode).toBe('none');
    expect(r.spy.log.map((e) => `${e.op}${e.offset}`)).toEqual([
      `r${MmioReg.MagicValue}`,
      `r${MmioReg.Version}`,
      `r${MmioReg.DeviceID}`,
      `r${MmioReg.VendorID}`,
    ]);
    expect(r.errors).toEqual([]);
  });

  it('writes GuestPageSize once at probe of a legacy device', () => {
    const r = rig(new TestDevice(), { version: 1 });
    const d = r.probe();
    expect(d.version).toBe(1);
    expect(r.spy.writes(MmioLegacyReg.GuestPageSize)).toEqual([4096]);
    r.probe(16384);
    expect(r.spy.writes(MmioLegacyReg.GuestPageSize)).toEqual([4096, 16384]);
    // A modern device has no GuestPageSize.
    const m = rig();
    m.probe();
    expect(m.spy.writes(MmioLegacyReg.GuestPageSize)).toEqual([]);
    expect(r.errors).toEqual([]);
  });

  it('rejects a wrong magic value', () => {
    const w = fixedWindow({ [MmioReg.MagicValue]: 0x1234_5678, [MmioReg.Version]: 2, [MmioReg.DeviceID]: 4 });
    const r = rig();
    expectError(
      () => MmioDriver.probe(w, { mem: r.mem, dma: r.dma, platform: r.cpu, irqLines: [LINE] }),
      'DEVICE_REJECTED',
      /wrong magic value 0x12345678/,
    );
    expect(w.reads).toEqual([MmioReg.MagicValue]);
  });

  it('rejects every version other than 1 and 2', () => {
    const r = rig();
    for (const version of [0, 3, 0xffff_ffff]) {
      const w = fixedWindow({
        [MmioReg.MagicValue]: MMIO_MAGIC_VALUE,
        [MmioReg.Version]: version,
        [MmioReg.DeviceID]: 4,
      });
      expectError(
        () => MmioDriver.probe(w, { mem: r.mem, dma: r.dma, platform: r.cpu, irqLines: [LINE] }),
        'DEVICE_REJECTED',
        new RegExp(`version ${version} not supported`),
      );
      expect(w.writes).toBe(0);
    }
  });

  it('ignores DeviceID 0 silently and accesses no other register', () => {
    const r = rig();
    for (const version of [1, 2]) {
      const w = fixedWindow({
        [MmioReg.MagicValue]: MMIO_MAGIC_VALUE,
        [MmioReg.Version]: version,
        [MmioReg.DeviceID]: 0,
      });
      expect(MmioDriver.probe(w, { mem: r.mem, dma: r.dma, platform: r.cpu, irqLines: [LINE] })).toBeNull();
      expect(w.reads).toEqual([MmioReg.MagicValue, MmioReg.Version, MmioReg.DeviceID]);
      expect(w.writes).toBe(0);
    }
  });

  it('rejects a page size that is not a power of two from 4096', () => {
    const r = rig(new TestDevice(), { version: 1 });
    for (const pageSize of [0, 1000, 2048, 6144, Number.NaN]) {
      expectError(() => r.probe(pageSize), 'INVALID_ARGUMENT', /page size/);
    }
    expect(r.spy.log).toEqual([]);
  });
});

describe('MmioDriver status and features', () => {
  it('resets the device and waits for the status to read 0', () => {
    const r = rig();
    const d = r.probe();
    d.setStatus(DeviceStatus.ACKNOWLEDGE);
    expect(d.getStatus()).toBe(DeviceStatus.ACKNOWLEDGE);
    d.reset();
    expect(r.transport.status).toBe(0);
    expect(r.spy.writes(MmioReg.Status)).toEqual([DeviceStatus.ACKNOWLEDGE, 0]);
  });

  it('gives up on a device whose status never reads 0 after a reset', () => {
    const r = rig();
    const d = r.probe();
    r.spy.fakeRead = (o) => (o === MmioReg.Status ? DeviceStatus.ACKNOWLEDGE : undefined);
    const before = r.spy.reads(MmioReg.Status);
    expectError(() => d.reset(), 'DEVICE_FAILED', /status still not 0/);
    expect(r.spy.reads(MmioReg.Status) - before).toBe(MMIO_RESET_POLL_LIMIT);
  });

  it('refuses status values that are not 1..255', () => {
    const r = rig();
    const d = r.probe();
    for (const s of [0, -1, 256, 1.5, Number.NaN]) expectError(() => d.setStatus(s), 'INVALID_ARGUMENT');
    expect(r.spy.writes(MmioReg.Status)).toEqual([]);
  });

  it('reads all four feature words through DeviceFeaturesSel', () => {
    const r = rig();
    const d = r.probe();
    const f = d.getFeatures();
    expect(f.equals(r.transport.offeredFeatures)).toBe(true);
    expect(f.has(60)).toBe(true);
    expect(r.spy.writes(MmioReg.DeviceFeaturesSel)).toEqual([0, 1, 2, 3]);
  });

  it('keeps device bits and only the transport bits it implements', () => {
    const r = rig();
    const d = r.probe();
    d.reset();
    d.setStatus(DeviceStatus.ACKNOWLEDGE);
    d.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    const accepted = new Features([
      0,
      5,
      23,
      FeatureBit.NOTIFY_ON_EMPTY,
      FeatureBit.ANY_LAYOUT,
      FeatureBit.INDIRECT_DESC,
      FeatureBit.EVENT_IDX,
      FeatureBit.VERSION_1,
      FeatureBit.ACCESS_PLATFORM,
      FeatureBit.RING_PACKED,
      FeatureBit.IN_ORDER,
      FeatureBit.SR_IOV,
      FeatureBit.NOTIFICATION_DATA,
      FeatureBit.NOTIF_CONFIG_DATA,
      FeatureBit.RING_RESET,
      FeatureBit.ADMIN_VQ,
      49,
      50,
      127,
    ]);
    const kept = d.finalizeFeatures(accepted);
    expect(kept.bits()).toEqual([
      0,
      5,
      23,
      FeatureBit.INDIRECT_DESC,
      FeatureBit.EVENT_IDX,
      FeatureBit.VERSION_1,
      FeatureBit.NOTIFICATION_DATA,
      FeatureBit.RING_RESET,
      50,
      127,
    ]);
    expect(d.features.equals(kept)).toBe(true);
    expect(r.transport.driverFeatures.equals(kept)).toBe(true);
    expect(r.spy.writes(MmioReg.DriverFeaturesSel)).toEqual([0, 1, 2, 3]);
    // The returned set and the property are copies.
    kept.clear(0);
    d.features.clear(5);
    expect(d.features.has(0) && d.features.has(5)).toBe(true);
  });

  it('keeps only the ring transport bits over the legacy layout', () => {
    const r = rig(new TestDevice(), { version: 1 });
    const d = r.probe();
    const got = beginInit(d, wanted(FeatureBit.RING_RESET, FeatureBit.NOTIFICATION_DATA));
    expect(got.bits()).toEqual([0, 5, FeatureBit.INDIRECT_DESC, FeatureBit.EVENT_IDX, 60]);
    expect(r.transport.driverFeatures.equals(got)).toBe(true);
    expect(r.errors).toEqual([]);
  });

  it('refuses a version 2 device that does not offer VERSION_1 and marks it failed', () => {
    const r = rig();
    const d = r.probe();
    // The device hides VERSION_1 (bit 0 of word 1).
    let featSel = 0;
    r.spy.passWrite = (o, v) => {
      if (o === MmioReg.DeviceFeaturesSel) featSel = v;
      return true;
    };
    r.spy.fakeRead = (o) =>
      o === MmioReg.DeviceFeatures && featSel === 1 ? r.transport.offeredFeatures.word(1) & ~1 : undefined;
    expectError(
      () => beginInit(d, wanted()),
      'FEATURES_REJECTED',
      /version 2 device without virtio_f_version_1/,
    );
    expect(r.spy.writes(MmioReg.DriverFeatures)).toEqual([]);
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });

  it('refuses a modern device when the driver drops VERSION_1', () => {
    const r = rig();
    const d = r.probe();
    expectError(() => beginInit(d, new Features([0])), 'FEATURES_REJECTED');
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });

  it('reports a device that refuses FEATURES_OK', () => {
    const dev = new TestDevice();
    dev.refuseFeatures = true;
    const r = rig(dev);
    const d = r.probe();
    expectError(() => beginInit(d, wanted()), 'FEATURES_REJECTED');
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });
});

/** Probes and negotiates up to FEATURES_OK. */
function negotiated(r: ReturnType<typeof rig>, f: Features = wanted()): MmioDriver {
  const d = r.probe();
  beginInit(d, f);
  return d;
}

describe('MmioDriver queue setup', () => {
  it('sets up modern queues with three aligned, zeroed areas and enables them', () => {
    const r = rig();
    const d = negotiated(r);
    const base = r.dma.count;
    const calls: number[] = [];
    const [q0, q1] = d.setupQueues([
      { index: 0, callback: () => calls.push(0), size: 4 },
      { index: 1, callback: null },
    ]);
    expect(q0.size).toBe(4);
    expect(q1.size).toBe(16);
    for (const q of [q0, q1]) {
      const dq = r.transport.queue(q.index);
      expect(dq.ready).toBe(true);
      expect(dq.size).toBe(q.size);
      expect(dq.descTable).toBe(q.rings.descTable);
      expect(dq.availRing).toBe(q.rings.availRing);
      expect(dq.usedRing).toBe(q.rings.usedRing);
      expect(q.rings.descTable % 16).toBe(0);
      expect(q.rings.availRing % 2).toBe(0);
      expect(q.rings.usedRing % 4).toBe(0);
    }
    expect(r.dma.count).toBe(base + 6);
    expect(r.irq.isMasked(LINE)).toBe(false);
    finishInit(d);
    expect(r.transport.isActivated).toBe(true);
    expect(r.errors).toEqual([]);
  });

  it('caps the size at QueueNumMax, rounded down to a power of two', () => {
    const r = rig();
    const d = negotiated(r);
    r.spy.fakeRead = (o) => (o === MmioReg.QueueNumMax && r.spy.sel === 1 ? 12 : undefined);
    const [q0, q1] = d.setupQueues([
      { index: 0, callback: null, size: 64 },
      { index: 1, callback: null },
    ]);
    expect(q0.size).toBe(8);
    expect(q1.size).toBe(8);
    expect(r.transport.queue(1).size).toBe(8);
  });

  it('sets up legacy queues in one page-aligned block addressed by QueuePFN', () => {
    const r = rig(new TestDevice(), { version: 1 });
    const d = negotiated(r, wanted());
    const base = r.dma.count;
    const [q0, q1] = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null, size: 4 },
    ]);
    expect(r.dma.count).toBe(base + 2);
    for (const q of [q0, q1]) {
      const start = q.rings.descTable;
      expect(start % 4096).toBe(0);
      expect(q.rings).toEqual(legacyLayout(start, q.size, 4096));
      const dq = r.transport.queue(q.index);
      expect(dq.ready).toBe(true);
      expect(dq.usedRing).toBe(q.rings.usedRing);
      expect(
        r.spy.log.some(
          (e) => e.op === 'w' && e.offset === MmioLegacyReg.QueuePFN && e.value === start / 4096,
        ),
      ).toBe(true);
    }
    expect(r.spy.writes(MmioLegacyReg.QueueAlign)).toEqual([4096, 4096]);
    finishInit(d);
    expect(r.transport.isActivated).toBe(true);
    expect(r.errors).toEqual([]);
  });

  it('unwinds everything when a queue is not available half-way', () => {
    const r = rig();
    const d = negotiated(r);
    const base = r.dma.count;
    expectError(
      () =>
        d.setupQueues([
          { index: 0, callback: null },
          { index: 1, callback: null },
          { index: 2, callback: null },
        ]),
      'DEVICE_NOT_FOUND',
      /queue 2 not available/,
    );
    expect(r.dma.count).toBe(base);
    expect(r.transport.queue(0).ready).toBe(false);
    expect(r.transport.queue(1).ready).toBe(false);
    expect(r.irq.isMasked(LINE)).toBe(true);
    // Nothing is left behind: the same driver can set the queues up again.
    const qs = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    expect(qs).toHaveLength(2);
    expect(r.errors).toEqual([]);
  });

  it('refuses a queue that is already live before setup', () => {
    const r = rig();
    const d = negotiated(r);
    const base = r.dma.count;
    r.spy.fakeRead = (o) => (o === MmioReg.QueueReady && r.spy.sel === 1 ? 1 : undefined);
    expectError(
      () =>
        d.setupQueues([
          { index: 0, callback: null },
          { index: 1, callback: null },
        ]),
      'DEVICE_FAILED',
      /queue 1 is already in use/,
    );
    expect(r.dma.count).toBe(base);
    expect(r.transport.queue(0).ready).toBe(false);
    expect(r.irq.isMasked(LINE)).toBe(true);
  });

  it('fails and unwinds when the device does not enable a queue', () => {
    const r = rig();
    const d = negotiated(r);
    const base = r.dma.count;
    r.spy.passWrite = (o, v) => !(o === MmioReg.QueueReady && v === 1 && r.spy.sel === 1);
    expectError(
      () =>
        d.setupQueues([
          { index: 0, callback: null },
          { index: 1, callback: null },
        ]),
      'DEVICE_FAILED',
      /did not enable queue 1/,
    );
    expect(r.dma.count).toBe(base);
    expect(r.transport.queue(0).ready).toBe(false);
  });

  it('rejects invalid requests before touching the device', () => {
    const r = rig();
    const d = negotiated(r);
    const base = r.dma.count;
    const before = r.spy.log.length;
    const bad = [
      [
        { index: 0, callback: null },
        { index: 0, callback: null },
      ],
      [{ index: -1, callback: null }],
      [{ index: 0x10000, callback: null }],
      [{ index: 1.5, callback: null }],
      [{ index: 0, callback: null, size: 3 }],
      [{ index: 0, callback: null, size: 65536 }],
      [{ index: 0, callback: null, size: 0 }],
    ];
    for (const requests of bad) expectError(() => d.setupQueues(requests), 'INVALID_ARGUMENT');
    expect(r.spy.log.length).toBe(before);
    expect(r.dma.count).toBe(base);
    expect(r.irq.isMasked(LINE)).toBe(true);
  });

  it('needs an interrupt line, and sets queues up only once', () => {
    const r = rig();
    const d0 = MmioDriver.probe(r.spy, {
      mem: r.mem,
      dma: r.dma,
      platform: r.cpu,
      irqLines: [],
    }) as MmioDriver;
    beginInit(d0, wanted());
    expectError(
      () => d0.setupQueues([{ index: 0, callback: null }]),
      'IRQ_INVALID_LINE',
      /no interrupt line/,
    );
    const d = negotiated(r);
    d.setupQueues([{ index: 0, callback: null }]);
    expectError(() => d.setupQueues([{ index: 1, callback: null }]), 'INVALID_STATE');
  });

  it('refuses legacy rings that a 32-bit QueuePFN cannot address, and frees them', () => {
    const high = 2 ** 45;
    const mem = new RamMemory([
      { gpa: 0, buffer: new ArrayBuffer(1 << 20) },
      { gpa: high, buffer: new ArrayBuffer(1 << 20) },
    ]);
    const dma = new GuestAllocator(high, 1 << 20);
    const bus = new MmioBus();
    const irq = new InterruptController({ lines: 8 });
    const cpu = new InProcessCpu(irq);
    const transport = new MmioTransport(new TestDevice(), { mem, irq: irq.line(LINE), version: 1 });
    bus.map(WINDOW, transport, 'dev0');
    const d = MmioDriver.probe(bus.window('dev0'), {
      mem,
      dma,
      platform: cpu,
      irqLines: [LINE],
    }) as MmioDriver;
    beginInit(d, wanted());
    expectError(() => d.setupQueues([{ index: 0, callback: null }]), 'ALLOC_FAILED', /32-bit QueuePFN/);
    expect(dma.count).toBe(0);
    expect(irq.isMasked(LINE)).toBe(true);
  });
});

describe('MmioDriver interrupts and notifications', () => {
  it('acknowledges the interrupt and runs the callbacks of queues with used buffers', () => {
    const r = rig();
    const d = negotiated(r);
    const calls: number[] = [];
    const [q0] = d.setupQueues([
      { index: 0, callback: () => calls.push(0) },
      { index: 1, callback: () => calls.push(1) },
    ]);
    finishInit(d);
    const buf = r.dma.alloc(64);
    expect(q0.add([], [{ addr: buf, len: 64 }], 'a')).toBe(true);
    expect(q0.kickPrepare()).toBe(true);
    d.notify(q0);
    expect(r.transport.interruptStatus).toBe(InterruptBit.VRING);
    r.cpu.halt();
    // Queue 1 has nothing used: its callback does not run.
    expect(calls).toEqual([0]);
    expect(q0.getUsed()).toEqual({ token: 'a', len: 0 });
    expect(r.transport.interruptStatus).toBe(0);
    expect(r.spy.writes(MmioReg.InterruptACK)).toEqual([InterruptBit.VRING]);
    expect(r.errors).toEqual([]);
  });

  it('runs the configuration change handler for the config bit', () => {
    const dev = new TestDevice();
    const r = rig(dev);
    const d = negotiated(r);
    d.setupQueues([{ index: 0, callback: null }]);
    let changes = 0;
    d.onConfigChange(() => changes++);
    finishInit(d);
    const gen = d.configGeneration();
    dev.config[0] = 0x99;
    dev.host?.configChanged();
    r.cpu.halt();
    expect(changes).toBe(1);
    expect(d.configGeneration()).not.toBe(gen);
    expect(d.readConfig(0, 1)).toBe(0x99);
    expect(r.spy.writes(MmioReg.InterruptACK)).toEqual([InterruptBit.CONFIG]);
    expect(r.transport.interruptStatus).toBe(0);
  });

  it('writes no acknowledgement for an interrupt with an empty status', () => {
    const r = rig();
    const d = negotiated(r);
    let calls = 0;
    d.setupQueues([{ index: 0, callback: () => calls++ }]);
    // Another device on a shared line raises it.
    r.irq.setLevel(LINE, true);
    r.irq.setLevel(LINE, false);
    r.cpu.halt();
    expect(r.spy.reads(MmioReg.InterruptStatus)).toBe(1);
    expect(r.spy.writes(MmioReg.InterruptACK)).toEqual([]);
    expect(calls).toBe(0);
  });

  it('notifies with the queue index without VIRTIO_F_NOTIFICATION_DATA', () => {
    const dev = new TestDevice();
    const r = rig(dev);
    const d = negotiated(r);
    const [, q1] = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    finishInit(d);
    d.notify(q1);
    expect(r.spy.writes(MmioReg.QueueNotify)).toEqual([1]);
    expect(dev.notified).toEqual([1]);
  });

  it('notifies with vqn and the next available index under VIRTIO_F_NOTIFICATION_DATA', () => {
    const dev = new TestDevice();
    dev.complete = false;
    const r = rig(dev);
    const d = negotiated(r, wanted(FeatureBit.NOTIFICATION_DATA));
    expect(d.features.has(FeatureBit.NOTIFICATION_DATA)).toBe(true);
    const [, q1] = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    finishInit(d);
    const buf = r.dma.alloc(64);
    for (let i = 0; i < 3; i++) q1.add([], [{ addr: buf, len: 8 }], i);
    d.notify(q1);
    // le32 { vqn : 16; next_off : 15; next_wrap : 1 }: split ring, next_off|next_wrap = avail idx.
    expect(r.spy.writes(MmioReg.QueueNotify)).toEqual([(3 << 16) | 1]);
    expect(dev.notified).toEqual([1]);
    expect(r.errors).toEqual([]);
  });

  it('sets next_wrap from bit 15 of the available index', () => {
    const dev = new TestDevice();
    const r = rig(dev);
    // No EVENT_IDX: every notification is taken, and used buffers are harvested directly.
    const d = negotiated(r, new Features([FeatureBit.VERSION_1, FeatureBit.NOTIFICATION_DATA]));
    const [q0] = d.setupQueues([{ index: 0, callback: null }]);
    finishInit(d);
    const buf = r.dma.alloc(16);
    let harvested = 0;
    for (let i = 0; i < 0x8001; i++) {
      q0.add([], [{ addr: buf, len: 16 }], i);
      if (i === 0x7fff || i === 0x8000) d.notify(q0);
      else {
        // Complete without a notification write, so the log stays short.
        dev.notify(0);
        dev.notified.pop();
      }
      if (q0.getUsed() !== null) harvested++;
    }
    expect(harvested).toBe(0x8001);
    expect(r.spy.writes(MmioReg.QueueNotify)).toEqual([0x8000_0000, 0x8001_0000]);
    expect(q0.availIndex).toBe(0x8001);
  });

  it('refuses to notify a queue it did not set up', () => {
    const r = rig();
    const d = negotiated(r);
    d.setupQueues([{ index: 0, callback: null }]);
    const foreign = new DriverQueue(r.mem, 0, 8, { descTable: 0, availRing: 0x100, usedRing: 0x200 });
    expectError(() => d.notify(foreign), 'INVALID_ARGUMENT', /not set up here/);
    expect(r.spy.writes(MmioReg.QueueNotify)).toEqual([]);
  });
});

describe('MmioDriver configuration space', () => {
  it('uses one access of the field width on a modern device', () => {
    const dev = new TestDevice();
    const r = rig(dev);
    const d = r.probe();
    const before = r.spy.log.length;
    expect(d.readConfig(0, 4)).toBe(0x1234_5678);
    expect(d.readConfig(4, 2)).toBe(0xabcd);
    expect(d.readConfig(6, 1)).toBe(0x42);
    d.writeConfig(7, 1, 0x1ee);
    expect(dev.config[7]).toBe(0xee);
    expect(r.spy.log.slice(before).map((e) => `${e.op}${e.width}@${e.offset - MmioReg.Config}`)).toEqual([
      'r4@0',
      'r2@4',
      'r1@6',
      'w1@7',
    ]);
    expect(d.configGeneration()).toBe(r.transport.configGeneration);
    expect(r.errors).toEqual([]);
  });

  it('goes byte by byte on a legacy device, which has no generation', () => {
    const dev = new TestDevice();
    const r = rig(dev, { version: 1 });
    const d = r.probe();
    const before = r.spy.log.length;
    expect(d.readConfig(0, 4)).toBe(0x1234_5678);
    expect(d.readConfig(4, 2)).toBe(0xabcd);
    expect(r.spy.log.slice(before).every((e) => e.width === 1)).toBe(true);
    expect(r.spy.log.length - before).toBe(6);
    d.writeConfig(7, 1, 0x33);
    expect(dev.config[7]).toBe(0x33);
    const n = r.spy.log.length;
    expect(d.configGeneration()).toBe(0);
    expect(r.spy.log.length).toBe(n);
    expect(r.errors).toEqual([]);
  });

  it('rejects bad widths and misaligned offsets', () => {
    const r = rig();
    const d = r.probe();
    const before = r.spy.log.length;
    expectError(() => d.readConfig(0, 3 as 1), 'INVALID_ARGUMENT');
    expectError(() => d.readConfig(1, 2), 'INVALID_ARGUMENT');
    expectError(() => d.readConfig(2, 4), 'INVALID_ARGUMENT');
    expectError(() => d.readConfig(-1, 1), 'INVALID_ARGUMENT');
    expectError(() => d.writeConfig(6, 4, 0), 'INVALID_ARGUMENT');
    expect(r.spy.log.length).toBe(before);
  });
});

describe('MmioDriver queue reset', () => {
  it('resets a queue and brings it back on zeroed rings', () => {
    const dev = new TestDevice();
    dev.complete = false;
    const r = rig(dev);
    const d = negotiated(r, wanted(FeatureBit.RING_RESET));
    let calls = 0;
    const [q0] = d.setupQueues([{ index: 0, callback: () => calls++ }]);
    finishInit(d);
    const buf = r.dma.alloc(64);
    const allocations = r.dma.count;
    q0.add(
      [],
      [
        { addr: buf, len: 8 },
        { addr: buf + 8, len: 8 },
      ],
      'lost',
    );
    d.notify(q0);
    const q = d.resetQueue(q0);
    expect(q).not.toBe(q0);
    expect(q0.broken).toBe('queue was reset');
    expectError(() => q0.add([], [{ addr: buf, len: 8 }], 'x'), 'INVALID_STATE');
    expect(dev.queueResets).toEqual([0]);
    expect(r.dma.count).toBe(allocations);
    expect(q.rings).toEqual(q0.rings);
    expect(r.mem.read16(q.rings.availRing + 2)).toBe(0);
    const dq = r.transport.queue(0);
    expect(dq.ready).toBe(true);
    dev.complete = true;
    q.add([], [{ addr: buf, len: 8 }], 'fresh');
    expect(q.kickPrepare()).toBe(true);
    d.notify(q);
    r.cpu.halt();
    expect(calls).toBe(1);
    expect(q.getUsed()).toEqual({ token: 'fresh', len: 0 });
    expectError(() => d.notify(q0), 'INVALID_ARGUMENT');
    expect(r.errors).toEqual([]);
  });

  it('refuses without VIRTIO_F_RING_RESET, and for queues it did not set up', () => {
    const r = rig();
    const d = negotiated(r);
    const [q0] = d.setupQueues([{ index: 0, callback: null }]);
    expectError(() => d.resetQueue(q0), 'INVALID_STATE', /ring_reset/);
    const r2 = rig();
    const d2 = negotiated(r2, wanted(FeatureBit.RING_RESET));
    d2.setupQueues([{ index: 0, callback: null }]);
    expectError(() => d2.resetQueue(q0), 'INVALID_ARGUMENT');
    expect(r2.spy.writes(MmioReg.QueueReset)).toEqual([]);
  });

  it('gives up when the device never completes the queue reset', () => {
    const r = rig();
    const d = negotiated(r, wanted(FeatureBit.RING_RESET));
    const [q0] = d.setupQueues([{ index: 0, callback: null }]);
    finishInit(d);
    r.spy.fakeRead = (o) => (o === MmioReg.QueueReset ? 1 : undefined);
    expectError(() => d.resetQueue(q0), 'DEVICE_FAILED', /reset did not complete/);
    expect(r.spy.reads(MmioReg.QueueReset)).toBe(MMIO_QUEUE_RESET_POLL_LIMIT);
  });
});

describe('MmioDriver teardown', () => {
  it('resets the device and frees every DMA allocation, indirect tables included', () => {
    const dev = new TestDevice();
    dev.complete = false;
    const r = rig(dev);
    const base = r.dma.count;
    const d = negotiated(r);
    const [q0] = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    finishInit(d);
    const buf = r.dma.alloc(64);
    const withBuffer = r.dma.count;
    q0.add(
      [{ addr: buf, len: 8 }],
      [
        { addr: buf + 8, len: 8 },
        { addr: buf + 16, len: 8 },
      ],
      'pending',
    );
    expect(r.dma.count).toBe(withBuffer + 1); // the indirect table
    d.notify(q0);
    d.teardown();
    r.dma.release(buf);
    expect(r.dma.count).toBe(base);
    expect(r.transport.status).toBe(0);
    expect(r.transport.queue(0).ready).toBe(false);
    expect(r.irq.isMasked(LINE)).toBe(true);
    expect(q0.broken).toBe('queue deleted');
    // The device can be brought up again.
    beginInit(d, wanted());
    d.setupQueues([{ index: 0, callback: null }]);
    finishInit(d);
    expect(r.transport.isActivated).toBe(true);
    expect(r.errors).toEqual([]);
  });

  it('stops legacy queues with QueuePFN 0', () => {
    const r = rig(new TestDevice(), { version: 1 });
    const base = r.dma.count;
    const d = negotiated(r);
    d.setupQueues([{ index: 0, callback: null }]);
    finishInit(d);
    d.teardown();
    expect(r.spy.writes(MmioLegacyReg.QueuePFN).at(-1)).toBe(0);
    expect(r.transport.queue(0).ready).toBe(false);
    expect(r.dma.count).toBe(base);
    expect(r.errors).toEqual([]);
  });

  it('releases everything even when a queue stays live, then reports it', () => {
    const r = rig();
    const base = r.dma.count;
    const d = negotiated(r);
    d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    r.spy.passWrite = (o, v) => !(o === MmioReg.QueueReady && v === 0 && r.spy.sel === 1);
    expectError(() => d.deleteQueues(), 'DEVICE_FAILED', /queues 1 still live/);
    expect(r.dma.count).toBe(base);
    expect(r.irq.isMasked(LINE)).toBe(true);
    expect(r.transport.queue(0).ready).toBe(false);
  });

  it('still releases the queues when the reset fails', () => {
    const r = rig();
    const base = r.dma.count;
    const d = negotiated(r);
    d.setupQueues([{ index: 0, callback: null }]);
    r.spy.fakeRead = (o) => (o === MmioReg.Status ? DeviceStatus.FAILED : undefined);
    expectError(() => d.teardown(), 'DEVICE_FAILED', /status still not 0/);
    expect(r.dma.count).toBe(base);
    expect(r.irq.isMasked(LINE)).toBe(true);
  });
});
