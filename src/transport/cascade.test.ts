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
import {
  InProcessCpu,
  type InProcessCpuOptions,
  InterruptController,
  Machine,
  MmioBus,
} from '../platform/index.js';
import { MsiController } from '../platform/msi.js';
import {
  FeatureBit,
  InterruptBit,
  MmioReg,
  MSI_NO_VECTOR,
  MsiCmd,
  SeedFeatureBit,
  SeedMmioReg,
  VirtioError,
} from '../spec/index.js';
import { DescriptorChain, type DriverQueue, MAX_INDIRECT_DESCRIPTORS } from '../virtqueue/index.js';
import {
  type InterruptMode,
  MmioDriver,
  MmioTransport,
  type MultiLineOptions,
  queueInterruptBit,
  type SeedProfileOptions,
} from './index.js';
import type { MmioAccess } from './types.js';

const WINDOW = 0xfeb0_0000;
const FIRST_LINE = 5;
const DMA_BASE = 1 << 20;

/** A device with `n` queues of 8 that uses every available buffer at once on notification. */
class CompletingDevice implements VirtioDevice {
  readonly deviceId = 0x1f;
  readonly features = new Features([0]);
  readonly configSize = 4;
  readonly queueMaxSizes: readonly number[];
  host: DeviceHost | null = null;
  ctx: DeviceContext | null = null;
  readonly notified: number[] = [];
  private readonly chain = new DescriptorChain(MAX_INDIRECT_DESCRIPTORS);

  constructor(queues: number) {
    this.queueMaxSizes = new Array(queues).fill(8);
  }

  attach(host: DeviceHost): void {
    this.host = host;
  }

  readConfig(): number {
    return 0;
  }

  writeConfig(): boolean {
    return false;
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }

  notify(index: number): void {
    this.notified.push(index);
    const ctx = this.ctx;
    if (ctx === null) return;
    const q = ctx.queues[index];
    while (q.pop(ctx.mem, this.chain)) q.addUsed(ctx.mem, this.chain.head, 0);
    ctx.notifyUsed(index);
  }

  reset(): void {
    this.ctx = null;
  }
}

/** Passes accesses through, optionally dropping some writes (a device that ignores a command). */
class FilterAccess implements MmioAccess {
  drop: ((offset: number, value: number) => boolean) | null = null;
  constructor(private readonly inner: MmioAccess) {}
  read32(offset: number): number {
    return this.inner.read32(offset);
  }
  write32(offset: number, value: number): void {
    if (this.drop?.(offset, value) === true) return;
    this.inner.write32(offset, value);
  }
  read8(offset: number): number {
    return this.inner.read8(offset);
  }
  read16(offset: number): number {
    return this.inner.read16(offset);
  }
  write8(offset: number, value: number): void {
    this.inner.write8(offset, value);
  }
  write16(offset: number, value: number): void {
    this.inner.write16(offset, value);
  }
}

interface RigOptions {
  /** Device queues (default 3). */
  queues?: number;
  /** Seed profile of the device (default none: a standard device). */
  seed?: SeedProfileOptions;
  /** Wired line layout of the machine description (default single). */
  lines?: 'single' | 'per-queue' | 'shared';
  /** Guest CPU options (MSI cap, no MSI). */
  cpu?: InProcessCpuOptions;
  /** Standard device: offer RING_RESET (default true). */
  ringReset?: boolean;
}

/** RAM, DMA allocator, bus, wired controller, CPU (APIC 0), MSI controller and one device. */
function rig(o: RigOptions = {}) {
  const ram = 4 << 20;
  const mem = new RamMemory(new ArrayBuffer(ram));
  const dma = new GuestAllocator(DMA_BASE, ram - DMA_BASE);
  const bus = new MmioBus();
  const irq = new InterruptController({ lines: 24 });
  const cpu = new InProcessCpu(irq, o.cpu);
  const msi = new MsiController([[0, cpu]]);
  const queues = o.queues ?? 3;
  const device = new CompletingDevice(queues);
  const layout = o.lines ?? 'single';
  const count = layout === 'single' ? 1 : layout === 'shared' ? 3 : 2 + queues;
  const irqLines = Array.from({ length: count }, (_, i) => FIRST_LINE + i);
  let lines: MultiLineOptions | undefined;
  if (layout === 'per-queue') {
    lines = { config: irq.line(irqLines[1]), queues: irqLines.slice(2).map((l) => irq.line(l)) };
  } else if (layout === 'shared') {
    lines = { config: irq.line(irqLines[1]), sharedQueues: irq.line(irqLines[2]) };
  }
  const errors: string[] = [];
  const transport = new MmioTransport(device, {
    mem,
    irq: irq.line(FIRST_LINE),
    lines,
    seed: o.seed,
    msiSink: o.seed?.msi === undefined ? undefined : msi,
    ringReset: o.ringReset,
    onGuestError: (m) => errors.push(m),
  });
  bus.map(WINDOW, transport, 'dev0');
  const access = new FilterAccess(bus.window('dev0'));
  const probe = (seed: boolean, allow?: readonly InterruptMode[]): MmioDriver => {
    const d = MmioDriver.probe(access, {
      mem,
      dma,
      platform: cpu,
      irqLines,
      name: 'dev0',
      seed,
      interrupts: allow === undefined ? undefined : { allow },
    });
    if (d === null) throw new Error('no device');
    return d;
  };
  /** Accesses to register `offset` so far. */
  const reg = (offset: number) => bus.registerStats('dev0', offset);
  return { mem, dma, bus, irq, cpu, msi, device, transport, errors, access, probe, reg, irqLines };
}

type Rig = ReturnType<typeof rig>;

/** Every transport bit either profile may use, plus the device's bit 0. */
const WANTED = new Features([
  0,
  FeatureBit.VERSION_1,
  FeatureBit.EVENT_IDX,
  FeatureBit.RING_RESET,
  SeedFeatureBit.MMIO_MSI,
  SeedFeatureBit.MMIO_NOTIFICATION,
]);

/** Probes, negotiates, sets up queues 0..n-1 (callbacks record the queue), DRIVER_OK. */
function bringUp(
  r: Rig,
  opts: { seed?: boolean; allow?: readonly InterruptMode[]; callbacks?: readonly boolean[] } = {},
) {
  const d = r.probe(opts.seed ?? true, opts.allow);
  beginInit(d, WANTED);
  const calls: number[] = [];
  const cbs = opts.callbacks ?? new Array(r.device.queueMaxSizes.length).fill(true);
  const queues = d.setupQueues(
    cbs.map((cb, index) => ({ index, callback: cb ? () => calls.push(index) : null })),
  );
  let configChanges = 0;
  d.onConfigChange(() => configChanges++);
  finishInit(d);
  return { d, queues, calls, configs: () => configChanges };
}

/** Puts one buffer in `q`, notifies, and returns the trapped accesses the interrupt then costs. */
function roundTrip(r: Rig, d: MmioDriver, q: DriverQueue) {
  const buf = r.dma.alloc(16);
  expect(q.add([], [{ addr: buf, len: 16 }], 'x')).toBe(true);
  d.notify(q);
  const before = r.bus.deviceStats('dev0');
  const isr = r.reg(MmioReg.InterruptStatus).reads;
  const ack = r.reg(MmioReg.InterruptACK).writes;
  r.cpu.resetStats();
  r.cpu.halt();
  const after = r.bus.deviceStats('dev0');
  const cpu = r.cpu.stats();
  expect(q.getUsed()).toEqual({ token: 'x', len: 0 });
  r.dma.release(buf);
  return {
    registerAccesses: after.reads + after.writes - before.reads - before.writes,
    statusReads: r.reg(MmioReg.InterruptStatus).reads - isr,
    ackWrites: r.reg(MmioReg.InterruptACK).writes - ack,
    levelEois: cpu.levelEois,
    edgeEois: cpu.edgeEois,
  };
}

function expectError(fn: () => unknown, code: string, message?: RegExp): VirtioError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code).toBe(code);
  if (message !== undefined) expect((err as VirtioError).message).toMatch(message);
  return err as VirtioError;
}

/** Asserts nothing of the interrupt routing is held after a teardown, and DMA is back to `dma`. */
function expectReleased(r: Rig, d: MmioDriver, dma: number): void {
  d.teardown();
  expect(d.interruptMode).toBe('none');
  expect(d.heldMsiVectors).toEqual([]);
  expect(d.heldIrqLines).toEqual([]);
  expect(r.cpu.msiVectorsAllocated).toBe(0);
  expect(r.cpu.stats().msiHandlers).toBe(0);
  for (const l of r.irqLines) expect(r.irq.isMasked(l)).toBe(true);
  expect(r.transport.msi?.isEnabled ?? false).toBe(false);
  expect(r.dma.count).toBe(dma);
  // The teardown after a reset touches no gated seed register.
  expect(r.errors).toEqual([]);
}

const NON_SHARING: SeedProfileOptions = { msi: { vectors: 8, sharing: false } };
const SHARING: SeedProfileOptions = { msi: { vectors: 4, sharing: true } };

describe('cascade step 1: msi-per-queue', () => {
  it('gives config and each queue its own vector, and a queue vector runs only that queue', () => {
    const r = rig({ seed: NON_SHARING });
    const dma = r.dma.count;
    const { d, queues, calls } = bringUp(r);
    expect(d.interruptMode).toBe('msi-per-queue');
    expect(d.interruptFallbacks).toEqual([]);
    const vectors = d.heldMsiVectors;
    expect(vectors.length).toBe(4);
    expect(r.cpu.stats().msiHandlers).toBe(4);
    const msi = r.transport.msi;
    expect(msi?.isEnabled).toBe(true);
    // Vector 0 = config, vector N+1 = queue N, each with the CPU's message for its vector.
    for (let v = 0; v < 4; v++) {
      expect(msi?.message(v)).toEqual(r.cpu.msiMessage(vectors[v]));
      expect(msi?.isMasked(v)).toBe(false);
    }
    roundTrip(r, d, queues[1]);
    expect(calls).toEqual([1]);
    expect(r.msi.deliveredCount(vectors[2])).toBe(1);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('runs the configuration handler from vector 0 with no register access', () => {
    const r = rig({ seed: NON_SHARING });
    const { d, configs } = bringUp(r);
    const before = r.bus.deviceStats('dev0');
    r.device.host?.configChanged();
    r.cpu.halt();
    expect(configs()).toBe(1);
    const after = r.bus.deviceStats('dev0');
    expect(after.reads + after.writes).toBe(before.reads + before.writes);
    expect(d.interruptMode).toBe('msi-per-queue');
  });

  it('masks the fixed vector of a queue without a callback and allocates no CPU vector for it', () => {
    const r = rig({ seed: NON_SHARING });
    const { d, queues, calls } = bringUp(r, { callbacks: [true, false, true] });
    expect(d.interruptMode).toBe('msi-per-queue');
    expect(d.heldMsiVectors.length).toBe(3);
    expect(r.transport.msi?.isMasked(2)).toBe(true);
    expect(r.transport.msi?.message(2)).toBeNull();
    roundTrip(r, d, queues[2]);
    expect(calls).toEqual([2]);
    // Queue 1's event stays pending in the device: never sent.
    const buf = r.dma.alloc(16);
    queues[1].add([], [{ addr: buf, len: 16 }], 'y');
    d.notify(queues[1]);
    expect(r.transport.msi?.isPending(2)).toBe(true);
    expectError(() => r.cpu.halt(), 'TIMEOUT');
    expect(queues[1].getUsed()).toEqual({ token: 'y', len: 0 });
  });
  it('follows the fixed mapping for sparse queue numbers: queue N is vector N+1', () => {
    const r = rig({ seed: NON_SHARING });
    const d = r.probe(true);
    beginInit(d, WANTED);
    const calls: number[] = [];
    const [, q2] = d.setupQueues([
      { index: 0, callback: () => calls.push(0) },
      { index: 2, callback: () => calls.push(2) },
    ]);
    finishInit(d);
    expect(d.interruptMode).toBe('msi-per-queue');
    const [config, v0, v2] = d.heldMsiVectors;
    expect(r.transport.msi?.message(0)).toEqual(r.cpu.msiMessage(config));
    expect(r.transport.msi?.message(1)).toEqual(r.cpu.msiMessage(v0));
    expect(r.transport.msi?.message(2)).toBeNull(); // queue 1 was not asked for
    expect(r.transport.msi?.message(3)).toEqual(r.cpu.msiMessage(v2));
    roundTrip(r, d, q2);
    expect(calls).toEqual([2]);
    expect(r.errors).toEqual([]);
  });
});

describe('cascade step 2: msi-shared', () => {
  it('maps config to vector 0 and every queue to vector 1 on a sharing device; no callback = NO_VECTOR', () => {
    const r = rig({ seed: SHARING });
    const dma = r.dma.count;
    const { d, queues, calls } = bringUp(r, { callbacks: [true, true, false] });
    expect(d.interruptMode).toBe('msi-shared');
    expect(d.interruptFallbacks).toEqual([{ mode: 'msi-per-queue', reason: 'device uses msi sharing mode' }]);
    const msi = r.transport.msi;
    expect(msi?.configEventVector).toBe(0);
    expect([0, 1, 2].map((i) => msi?.queueEventVector(i))).toEqual([1, 1, MSI_NO_VECTOR]);
    expect(d.heldMsiVectors.length).toBe(2);
    roundTrip(r, d, queues[0]);
    roundTrip(r, d, queues[1]);
    expect(calls).toEqual([0, 1]);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('allocates only the config vector when no queue has a callback', () => {
    const r = rig({ seed: SHARING });
    const { d } = bringUp(r, { callbacks: [false, false, false] });
    expect(d.interruptMode).toBe('msi-shared');
    expect(d.heldMsiVectors.length).toBe(1);
    expect([0, 1, 2].map((i) => r.transport.msi?.queueEventVector(i))).toEqual([
      MSI_NO_VECTOR,
      MSI_NO_VECTOR,
      MSI_NO_VECTOR,
    ]);
    expect(r.errors).toEqual([]);
  });

  it('falls back from per-queue when the vector allocation runs out half-way, leaking nothing', () => {
    // 3 queues with callbacks need 4 vectors; the platform has 2: the allocator takes 2, runs out,
    // gives them back; msi-shared then programs the same message into vectors 1..3.
    const r = rig({ seed: NON_SHARING, cpu: { maxMsiVectors: 2 } });
    const dma = r.dma.count;
    const { d, queues, calls } = bringUp(r);
    expect(d.interruptMode).toBe('msi-shared');
    expect(d.interruptFallbacks).toEqual([
      { mode: 'msi-per-queue', reason: 'the platform could not allocate 4 msi vectors' },
    ]);
    const s = r.cpu.stats();
    expect([s.msiAllocFailures, s.msiVectorsAllocated, s.msiHandlers]).toEqual([1, 2, 2]);
    const [, shared] = d.heldMsiVectors;
    for (let v = 1; v <= 3; v++) expect(r.transport.msi?.message(v)).toEqual(r.cpu.msiMessage(shared));
    roundTrip(r, d, queues[2]);
    expect(calls).toEqual([2]);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });
});

describe('cascade steps 3 to 5: wired lines', () => {
  it('uses a config line and one line per queue: acknowledge the queue bit, no status read', () => {
    const r = rig({ lines: 'per-queue' });
    const dma = r.dma.count;
    const { d, queues, calls, configs } = bringUp(r, { seed: false });
    expect(d.interruptMode).toBe('lines-per-queue');
    expect(d.interruptFallbacks.map((f) => f.reason)).toEqual([
      'seed profile not enabled',
      'seed profile not enabled',
    ]);
    expect(d.heldIrqLines).toEqual(r.irqLines.slice(1));
    expect(r.irq.isMasked(r.irqLines[0])).toBe(true);
    roundTrip(r, d, queues[1]);
    expect(calls).toEqual([1]);
    expect(r.reg(MmioReg.InterruptACK).writes).toBe(1);
    expect(r.transport.interruptStatus).toBe(0);
    r.device.host?.configChanged();
    r.cpu.halt();
    expect(configs()).toBe(1);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('skips lines for queues without a callback', () => {
    const r = rig({ lines: 'per-queue' });
    const { d } = bringUp(r, { seed: false, callbacks: [false, true, false] });
    expect(d.interruptMode).toBe('lines-per-queue');
    expect(d.heldIrqLines).toEqual([r.irqLines[1], r.irqLines[3]]);
  });

  it('uses a config line and one shared queue line', () => {
    const r = rig({ lines: 'shared' });
    const dma = r.dma.count;
    const { d, queues, calls } = bringUp(r, { seed: false });
    expect(d.interruptMode).toBe('lines-shared');
    expect(d.interruptFallbacks.map((f) => f.mode)).toEqual([
      'msi-per-queue',
      'msi-shared',
      'lines-per-queue',
    ]);
    expect(d.heldIrqLines).toEqual([r.irqLines[1], r.irqLines[2]]);
    roundTrip(r, d, queues[2]);
    expect(calls).toEqual([2]);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('falls back to the single line when a per-queue line is busy half-way, unwinding queues and lines', () => {
    const r = rig({ lines: 'per-queue' });
    const dma = r.dma.count;
    // Something else holds queue 2's line.
    r.cpu.requestIrq(r.irqLines[4], () => {});
    const { d, queues, calls } = bringUp(r, { seed: false });
    expect(d.interruptMode).toBe('line');
    const reasons = d.interruptFallbacks.map((f) => `${f.mode}: ${f.reason}`);
    expect(reasons[2]).toMatch(/^lines-per-queue: line 9: .*already has a handler/);
    expect(reasons[3]).toMatch(/^lines-shared: 5 interrupt lines/);
    expect(d.heldIrqLines).toEqual([r.irqLines[0]]);
    for (const l of r.irqLines.slice(1, 4)) expect(r.irq.isMasked(l)).toBe(true);
    roundTrip(r, d, queues[0]);
    expect(calls).toEqual([0]);
    expect(r.errors).toEqual([]);
    r.cpu.freeIrq(r.irqLines[4]);
    expectReleased(r, d, dma);
  });

  it('reports every step when no mode works, with nothing held', () => {
    const r = rig();
    r.cpu.requestIrq(FIRST_LINE, () => {});
    const d = r.probe(true);
    beginInit(d, WANTED);
    const dma = r.dma.count;
    expectError(
      () => d.setupQueues([{ index: 0, callback: () => {} }]),
      'IRQ_INVALID_LINE',
      /no interrupt mode works .*lines-per-queue: 1 interrupt lines.*line: line 5/,
    );
    expect(d.interruptMode).toBe('none');
    expect(d.heldIrqLines).toEqual([]);
    expect(r.dma.count).toBe(dma);
    expect(r.transport.queue(0).ready).toBe(false);
  });
});

describe('cascade failures of the MSI steps', () => {
  it('skips MSI when the device does not offer VIRTIO_F_MMIO_MSI', () => {
    const r = rig({ seed: { notification: true } });
    const { d } = bringUp(r);
    expect(d.interruptMode).toBe('line');
    expect(d.interruptFallbacks.slice(0, 2)).toEqual([
      { mode: 'msi-per-queue', reason: 'virtio_f_mmio_msi not negotiated' },
      { mode: 'msi-shared', reason: 'virtio_f_mmio_msi not negotiated' },
    ]);
    expect(r.reg(SeedMmioReg.MsiVecNum).reads).toBe(0);
  });

  it('skips MSI on a platform without it', () => {
    const r = rig({ seed: NON_SHARING, cpu: { msi: false } });
    const { d } = bringUp(r);
    expect(d.interruptMode).toBe('line');
    expect(d.interruptFallbacks[0]).toEqual({ mode: 'msi-per-queue', reason: 'the platform has no msi' });
  });

  it('skips both MSI steps when MsiVecNum has no vector for the last queue (non-sharing)', () => {
    const r = rig({ seed: { msi: { vectors: 3, sharing: false } }, lines: 'shared' });
    const { d } = bringUp(r);
    expect(d.interruptMode).toBe('lines-shared');
    expect(d.interruptFallbacks.slice(0, 2).map((f) => f.reason)).toEqual([
      'msivecnum 3 has no vector for queue 2',
      'msivecnum 3 has no vector for queue 2',
    ]);
    expect(r.cpu.stats().msiAllocFailures).toBe(0);
    expect(r.reg(SeedMmioReg.MsiCommand).writes).toBe(0);
  });

  it('skips a sharing device with a single vector', () => {
    const r = rig({ seed: { msi: { vectors: 1, sharing: true } } });
    const { d } = bringUp(r);
    expect(d.interruptMode).toBe('line');
    expect(d.interruptFallbacks[1]).toEqual({ mode: 'msi-shared', reason: 'device reports 1 msi vectors' });
  });

  it('falls to the lines when the platform cannot give even two vectors', () => {
    const r = rig({ seed: NON_SHARING, cpu: { maxMsiVectors: 1 }, lines: 'per-queue' });
    const dma = r.dma.count;
    const { d } = bringUp(r);
    expect(d.interruptMode).toBe('lines-per-queue');
    expect(d.interruptFallbacks.map((f) => f.reason)).toEqual([
      'the platform could not allocate 4 msi vectors',
      'the platform could not allocate 2 msi vectors',
    ]);
    expect(r.cpu.msiVectorsAllocated).toBe(0);
    expect(r.transport.msi?.isEnabled).toBe(false);
    expectReleased(r, d, dma);
  });

  it('unwinds when the platform refuses a vector handler half-way (request_irq failing)', () => {
    const r = rig({ seed: NON_SHARING });
    const cpu = r.cpu;
    let attached = 0;
    // A platform whose third handler attachment fails, and only on the first attempt.
    const platform = {
      halt: () => cpu.halt(),
      requestIrq: (line: number, h: () => void) => cpu.requestIrq(line, h),
      freeIrq: (line: number) => cpu.freeIrq(line),
      msi: {
        allocMsiVectors: (n: number) => cpu.allocMsiVectors(n),
        msiMessage: (v: number) => cpu.msiMessage(v),
        freeMsiVectors: (vs: readonly number[]) => cpu.freeMsiVectors(vs),
        setMsiHandler: (v: number, h: (() => void) | null) => {
          if (h !== null && ++attached === 3) throw new VirtioError('INVALID_STATE', 'vector busy');
          cpu.setMsiHandler(v, h);
        },
      },
    };
    const d = MmioDriver.probe(r.access, {
      mem: r.mem,
      dma: r.dma,
      platform,
      irqLines: r.irqLines,
      seed: true,
    });
    if (d === null) throw new Error('no device');
    beginInit(d, WANTED);
    const dma = r.dma.count;
    const calls: number[] = [];
    const queues = d.setupQueues([0, 1, 2].map((index) => ({ index, callback: () => calls.push(index) })));
    finishInit(d);
    expect(d.interruptMode).toBe('msi-shared');
    expect(d.interruptFallbacks).toEqual([{ mode: 'msi-per-queue', reason: 'msi vectors: vector busy' }]);
    expect(cpu.msiVectorsAllocated).toBe(2);
    expect(cpu.stats().msiHandlers).toBe(2);
    roundTrip(r, d, queues[1]);
    expect(calls).toEqual([1]);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('unwinds programmed vectors and handlers when the device does not enable MSI', () => {
    const r = rig({ seed: NON_SHARING });
    r.access.drop = (offset, value) => offset === SeedMmioReg.MsiCommand && value === MsiCmd.ENABLE;
    const dma = r.dma.count;
    const { d, queues, calls } = bringUp(r);
    expect(d.interruptMode).toBe('line');
    expect(d.interruptFallbacks.slice(0, 2)).toEqual([
      { mode: 'msi-per-queue', reason: 'device did not enable msi' },
      { mode: 'msi-shared', reason: 'device did not enable msi' },
    ]);
    expect(r.cpu.msiVectorsAllocated).toBe(0);
    expect(r.cpu.stats().msiHandlers).toBe(0);
    roundTrip(r, d, queues[0]);
    expect(calls).toEqual([0]);
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });

  it('unwinds MSI and throws, without trying other modes, when a queue fails after MSI is on', () => {
    const r = rig({ seed: NON_SHARING, queues: 2 });
    const d = r.probe(true);
    beginInit(d, WANTED);
    const dma = r.dma.count;
    // Queue 2 does not exist: QueueNumMax reads 0.
    expectError(
      () =>
        d.setupQueues([
          { index: 0, callback: () => {} },
          { index: 2, callback: () => {} },
        ]),
      'DEVICE_NOT_FOUND',
    );
    expect(d.interruptMode).toBe('none');
    expect(r.reg(SeedMmioReg.MsiCommand).writes).toBeGreaterThan(0);
    expect(r.transport.msi?.isEnabled).toBe(false);
    expect(r.cpu.msiVectorsAllocated).toBe(0);
    expect(r.irq.isMasked(FIRST_LINE)).toBe(true);
    expect(r.dma.count).toBe(dma);
    expect(r.transport.queue(0).ready).toBe(false);
    expect(r.errors).toEqual([]);
  });
});

describe('interoperation across profiles', () => {
  it('a driver with the extensions disabled works on a seed device with extra lines, on the standard line', () => {
    const r = rig({ seed: { msi: { vectors: 8, sharing: false }, notification: true }, lines: 'per-queue' });
    const { d, queues, calls } = bringUp(r, { seed: false, allow: ['line'] });
    expect(d.interruptMode).toBe('line');
    expect(d.interruptFallbacks.map((f) => f.reason)).toEqual([
      'not allowed',
      'not allowed',
      'not allowed',
      'not allowed',
    ]);
    // Bit 40 on a seed device is MMIO_MSI; a standard driver reads it as RING_RESET, and never
    // touches the MSI registers.
    expect(r.reg(SeedMmioReg.MsiVecNum).reads).toBe(0);
    expect(r.reg(MmioReg.QueueNotify).reads).toBe(0);
    roundTrip(r, d, queues[2]);
    expect(calls).toEqual([2]);
    expect(r.transport.msi?.isEnabled).toBe(false);
    expect(r.errors).toEqual([]);
  });

  it('a seed driver on a standard device that offers RING_RESET (bit 40) falls back cleanly', () => {
    const r = rig({ ringReset: true });
    const d = r.probe(true);
    const offered = d.getFeatures();
    expect(offered.has(FeatureBit.RING_RESET)).toBe(true);
    beginInit(d, WANTED);
    const queues = d.setupQueues([{ index: 0, callback: () => {} }]);
    finishInit(d);
    expect(d.interruptMode).toBe('line');
    // 0x0c0 is QueueReset here and reads 0: not two vectors. MsiState (undefined) is never read and
    // no MSI command is written.
    expect(d.interruptFallbacks[0]).toEqual({
      mode: 'msi-per-queue',
      reason: 'device reports 0 msi vectors',
    });
    expect(r.reg(SeedMmioReg.MsiState).reads).toBe(0);
    expect(r.reg(SeedMmioReg.MsiCommand).writes).toBe(0);
    // With the seed profile the driver never treats bit 40 as RING_RESET.
    expectError(() => d.resetQueue(queues[0]), 'INVALID_STATE');
    expect(r.errors).toEqual([]);
  });

  it('a seed driver on a standard device without RING_RESET negotiates neither seed bit', () => {
    const r = rig({ ringReset: false });
    const { d } = bringUp(r);
    expect(d.features.has(SeedFeatureBit.MMIO_MSI)).toBe(false);
    expect(d.features.has(SeedFeatureBit.MMIO_NOTIFICATION)).toBe(false);
    expect(d.interruptFallbacks[0].reason).toBe('virtio_f_mmio_msi not negotiated');
    expect(r.errors).toEqual([]);
  });
});

describe('features by profile', () => {
  it('keeps bits 39/40 as the seed bits only with the seed profile, and RING_RESET only without', () => {
    const seedDev = rig({ seed: { msi: { vectors: 8, sharing: false }, notification: true } });
    const withSeed = seedDev.probe(true);
    beginInit(withSeed, WANTED);
    expect(withSeed.features.has(SeedFeatureBit.MMIO_MSI)).toBe(true);
    expect(withSeed.features.has(SeedFeatureBit.MMIO_NOTIFICATION)).toBe(true);
    const seedOff = seedDev.probe(false);
    beginInit(seedOff, WANTED);
    // Bit 40 kept with its standard meaning (RING_RESET), bit 39 (NOTIF_CONFIG_DATA) never.
    expect(seedOff.features.has(FeatureBit.RING_RESET)).toBe(true);
    expect(seedOff.features.has(FeatureBit.NOTIF_CONFIG_DATA)).toBe(false);
  });

  it('rejects empty or unknown interrupt mode lists', () => {
    const r = rig();
    expectError(() => r.probe(false, []), 'INVALID_ARGUMENT');
    expectError(() => r.probe(false, ['msi' as InterruptMode]), 'INVALID_ARGUMENT');
  });
});

describe('per-queue notification (VIRTIO_F_MMIO_NOTIFICATION)', () => {
  it('reads QueueNotify once and writes each queue at base + multiplier * index', () => {
    const r = rig({ seed: { notification: { base: 0x200, multiplier: 8 } } });
    const { d, queues } = bringUp(r);
    expect(r.reg(MmioReg.QueueNotify).reads).toBe(1);
    for (const q of [queues[2], queues[0], queues[2]]) {
      const buf = r.dma.alloc(16);
      q.add([], [{ addr: buf, len: 16 }], 'n');
      d.notify(q);
    }
    expect(r.reg(0x200 + 8 * 2).writes).toBe(2);
    expect(r.reg(0x200).writes).toBe(1);
    expect(r.reg(MmioReg.QueueNotify).writes).toBe(0);
    expect(r.reg(MmioReg.QueueNotify).reads).toBe(1);
    expect(r.device.notified).toEqual([2, 0, 2]);
    expect(r.errors).toEqual([]);
  });

  it('writes every queue to one address with multiplier 0, the value naming the queue', () => {
    const r = rig({ seed: { notification: { base: 0x200, multiplier: 0 } } });
    const { d, queues } = bringUp(r);
    for (const q of [queues[1], queues[0]]) {
      q.add([], [{ addr: r.dma.alloc(16), len: 16 }], 'n');
      d.notify(q);
    }
    expect(r.reg(0x200).writes).toBe(2);
    expect(r.device.notified).toEqual([1, 0]);
  });

  it('writes the notification data word to the queue address under VIRTIO_F_NOTIFICATION_DATA', () => {
    const r = rig({ seed: { notification: { base: 0x200, multiplier: 4 } } });
    const d = r.probe(true);
    beginInit(d, new Features([...WANTED.bits(), FeatureBit.NOTIFICATION_DATA]));
    expect(d.features.has(FeatureBit.NOTIFICATION_DATA)).toBe(true);
    const [, q1] = d.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    finishInit(d);
    const written: number[] = [];
    r.access.drop = (offset, value) => {
      if (offset === 0x204) written.push(value);
      return false;
    };
    for (let i = 0; i < 2; i++) {
      q1.add([], [{ addr: r.dma.alloc(16), len: 16 }], 'n');
      d.notify(q1);
    }
    // vqn 1 in bits 0..15, the next available index in bits 16..31.
    expect(written).toEqual([1 | (1 << 16), 1 | (2 << 16)]);
    expect(r.device.notified).toEqual([1, 1]);
    expect(r.errors).toEqual([]);
  });

  it('keeps QueueNotify without the seed profile', () => {
    const r = rig({ seed: { notification: true } });
    const { d, queues } = bringUp(r, { seed: false });
    queues[1].add([], [{ addr: r.dma.alloc(16), len: 16 }], 'n');
    d.notify(queues[1]);
    expect(r.reg(MmioReg.QueueNotify).reads).toBe(0);
    expect(r.reg(MmioReg.QueueNotify).writes).toBe(1);
    expect(r.device.notified).toEqual([1]);
  });
});

describe('the guest cost of one used-buffer notification, per mode (trapped accesses)', () => {
  const cases: Array<[InterruptMode, RigOptions, number, number, number, number, number]> = [
    // mode, device, register accesses, InterruptStatus reads, InterruptACK writes, level EOIs, edge EOIs
    ['line', {}, 2, 1, 1, 1, 0],
    ['lines-per-queue', { lines: 'per-queue' }, 1, 0, 1, 1, 0],
    ['lines-shared', { lines: 'shared' }, 1, 0, 1, 1, 0],
    ['msi-per-queue', { seed: NON_SHARING }, 0, 0, 0, 0, 1],
    ['msi-shared', { seed: SHARING }, 0, 0, 0, 0, 1],
  ];
  for (const [mode, device, accesses, reads, acks, level, edge] of cases) {
    it(`${mode}: ${accesses} register accesses, ${level} trapped EOI`, () => {
      const r = rig(device);
      const { d, queues } = bringUp(r);
      expect(d.interruptMode).toBe(mode);
      const cost = roundTrip(r, d, queues[0]);
      expect(cost).toEqual({
        registerAccesses: accesses,
        statusReads: reads,
        ackWrites: acks,
        levelEois: level,
        edgeEois: edge,
      });
    });
  }

  it('a per-queue line acknowledges exactly its queue bit', () => {
    const r = rig({ lines: 'per-queue' });
    const { d, queues } = bringUp(r);
    const log: number[] = [];
    r.access.drop = (offset, value) => {
      if (offset === MmioReg.InterruptACK) log.push(value);
      return false;
    };
    roundTrip(r, d, queues[2]);
    expect(log).toEqual([queueInterruptBit(2)]);
    expect(queueInterruptBit(2)).toBe(1 << 4);
    expect(InterruptBit.VRING).toBe(1);
  });
});

describe('teardown', () => {
  it('deleteQueues without a reset disables MSI, frees vectors, and the device can be set up again', () => {
    const r = rig({ seed: NON_SHARING });
    const dma = r.dma.count;
    const { d } = bringUp(r);
    d.deleteQueues();
    expect(r.transport.msi?.isEnabled).toBe(false);
    expect(r.cpu.msiVectorsAllocated).toBe(0);
    expect(d.interruptMode).toBe('none');
    expect(r.dma.count).toBe(dma);
    beginInit(d, WANTED);
    d.setupQueues([{ index: 0, callback: () => {} }]);
    expect(d.interruptMode).toBe('msi-per-queue');
    expect(r.errors).toEqual([]);
    expectReleased(r, d, dma);
  });
});

describe('the per-mode cost on a Machine, from its bus, controller and CPU counters', () => {
  // Each mode forced through `interrupts.allow` on a machine device that supports all of them.
  const modes: Array<[InterruptMode, 'per-queue' | 'shared', boolean]> = [
    ['line', 'per-queue', false],
    ['lines-per-queue', 'per-queue', false],
    ['lines-shared', 'shared', false],
    ['msi-per-queue', 'per-queue', false],
    ['msi-shared', 'shared', true],
  ];
  for (const [mode, lines, sharing] of modes) {
    it(`${mode}`, () => {
      const m = new Machine();
      const device = new CompletingDevice(2);
      const slot = m.addDevice(device, { name: 'd', lines, seed: { msi: { vectors: 8, sharing } } });
      const d = MmioDriver.probe(m.bus.window('d'), {
        mem: m.mem,
        dma: m.dma,
        platform: m.cpu,
        irqLines: slot.irqLines,
        seed: true,
        interrupts: { allow: [mode] },
      }) as MmioDriver;
      beginInit(d, WANTED);
      let calls = 0;
      const [q0] = d.setupQueues([
        { index: 0, callback: () => calls++ },
        { index: 1, callback: () => calls++ },
      ]);
      finishInit(d);
      expect(d.interruptMode).toBe(mode);
      q0.add([], [{ addr: m.dma.alloc(16), len: 16 }], 't');
      d.notify(q0);
      const before = m.bus.deviceStats('d');
      m.cpu.resetStats();
      m.irq.resetStats();
      m.cpu.halt();
      const after = m.bus.deviceStats('d');
      expect(calls).toBe(1);
      const cpu = m.cpu.stats();
      const lineEois = slot.irqLines.reduce((n, l) => n + m.irq.lineStats(l).eois, 0);
      const msi = mode.startsWith('msi');
      expect({
        reads: after.reads - before.reads,
        writes: after.writes - before.writes,
        controllerEois: lineEois,
        levelEois: cpu.levelEois,
        edgeEois: cpu.edgeEois,
      }).toEqual({
        reads: mode === 'line' ? 1 : 0,
        writes: msi ? 0 : 1,
        controllerEois: msi ? 0 : 1,
        levelEois: msi ? 0 : 1,
        edgeEois: msi ? 1 : 0,
      });
      if (msi) expect(m.msi.stats().delivered).toBe(1);
      d.teardown();
      expect(m.cpu.msiVectorsAllocated).toBe(0);
    });
  }
});
