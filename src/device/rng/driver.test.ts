import { describe, expect, it } from 'vitest';
import { GuestAllocator, RamMemory } from '../../memory/index.js';
import { InProcessCpu, InterruptController, MmioBus } from '../../platform/index.js';
import { DeviceId, DeviceStatus, FeatureBit, VirtioError } from '../../spec/index.js';
import { MmioDriver, MmioTransport, type MmioTransportOptions } from '../../transport/index.js';
import { DescriptorChain, MAX_INDIRECT_DESCRIPTORS } from '../../virtqueue/index.js';
import { Features } from '../features.js';
import type { DeviceContext, VirtioDevice } from '../virtioDevice.js';
import { RngDevice } from './device.js';
import { RNG_MAX_EMPTY_ANSWERS, RngDriver } from './driver.js';

const LINE = 3;

/** A machine with one device behind an MMIO transport, and the probed guest transport driver. */
function rig(device: VirtioDevice, options: Partial<Omit<MmioTransportOptions, 'mem' | 'irq'>> = {}) {
  const ram = 2 << 20;
  const mem = new RamMemory(new ArrayBuffer(ram));
  const dma = new GuestAllocator(1 << 20, ram - (1 << 20));
  const bus = new MmioBus();
  const irq = new InterruptController({ lines: 8 });
  const cpu = new InProcessCpu(irq);
  const transport = new MmioTransport(device, { mem, irq: irq.line(LINE), ...options });
  bus.map(0x1000_0000, transport, 'rng0');
  const t = MmioDriver.probe(bus.window('rng0'), { mem, dma, platform: cpu, irqLines: [LINE] }) as MmioDriver;
  return { mem, dma, cpu, irq, transport, t };
}

/** Entropy source giving 0, 1, 2, ... so every byte handed over is checkable. */
function counting() {
  let next = 0;
  return {
    fill(dst: Uint8Array): void {
      for (let i = 0; i < dst.length; i++) dst[i] = next++ & 0xff;
    },
  };
}

/** The bytes `counting()` produces from `from`, `n` of them. */
function pattern(from: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);
}

/** An entropy device that misbehaves on notification in the chosen way. */
class BrokenRng implements VirtioDevice {
  readonly deviceId = DeviceId.ENTROPY;
  readonly features = new Features();
  readonly configSize = 0;
  private ctx: DeviceContext | null = null;
  private readonly chain = new DescriptorChain(MAX_INDIRECT_DESCRIPTORS);

  constructor(
    private readonly mode: 'foreign-id' | 'too-long' | 'silent' | 'needs-reset',
    readonly queueMaxSizes: readonly number[] = [8],
  ) {}

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
    const ctx = this.ctx;
    if (ctx === null) return;
    const q = ctx.queues[index];
    if (!q.pop(ctx.mem, this.chain)) return;
    if (this.mode === 'silent') return;
    if (this.mode === 'needs-reset') {
      ctx.queueFailed(index, { reason: 'head-out-of-range', message: 'made up' });
      return;
    }
    // A used element naming a descriptor never made available, or claiming more than was offered.
    if (this.mode === 'foreign-id') q.addUsed(ctx.mem, (this.chain.head + 5) % q.size, 1);
    else q.addUsed(ctx.mem, this.chain.head, this.chain.writableBytes + 1);
    ctx.notifyUsed(index);
  }

  reset(): void {
    this.ctx = null;
  }
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

describe('RngDriver', () => {
  it('initializes a modern device and reads entropy', () => {
    const device = new RngDevice({ entropy: counting() });
    const r = rig(device);
    const base = r.dma.count;
    const rng = RngDriver.probe(r.t);
    expect(rng.features.has(FeatureBit.VERSION_1)).toBe(true);
    expect(rng.features.has(FeatureBit.EVENT_IDX)).toBe(true);
    expect(r.transport.status & DeviceStatus.DRIVER_OK).toBe(DeviceStatus.DRIVER_OK);
    expect(rng.read(100)).toEqual(pattern(0, 100));
    expect(rng.read(0)).toEqual(new Uint8Array(0));
    const dst = new Uint8Array(7);
    rng.fill(dst);
    expect(dst).toEqual(pattern(100, 7));
    rng.remove();
    expect(r.dma.count).toBe(base);
    expect(r.transport.status).toBe(0);
    expect(r.transport.guestErrors).toBe(0);
  });

  it('splits reads over the buffer and loops on short answers', () => {
    const device = new RngDevice({ entropy: counting(), maxBytesPerRequest: 10 });
    const r = rig(device);
    const rng = RngDriver.probe(r.t, { bufferSize: 64 });
    expect(rng.read(150)).toEqual(pattern(0, 150));
    expect(device.counters.requests).toBe(15);
    expect(r.transport.guestErrors).toBe(0);
    rng.remove();
  });

  it('drives a legacy device', () => {
    const r = rig(new RngDevice({ entropy: counting() }), { version: 1 });
    const rng = RngDriver.probe(r.t);
    expect(rng.features.has(FeatureBit.VERSION_1)).toBe(false);
    expect(rng.read(5000)).toEqual(pattern(0, 5000));
    rng.remove();
    expect(r.transport.guestErrors).toBe(0);
  });

  it('rejects a device that is not an entropy source and bad arguments', () => {
    const notRng = new BrokenRng('silent');
    (notRng as { deviceId: number }).deviceId = DeviceId.BLOCK;
    const r = rig(notRng);
    expectError(() => RngDriver.probe(r.t), 'DEVICE_REJECTED', /not an entropy device/);
    expect(r.transport.status).toBe(0);
    const r2 = rig(new RngDevice({ entropy: counting() }));
    for (const bufferSize of [0, 1.5, 2 ** 32]) {
      expectError(() => RngDriver.probe(r2.t, { bufferSize }), 'INVALID_ARGUMENT');
    }
    const rng = RngDriver.probe(r2.t);
    for (const n of [-1, 1.5, Number.NaN]) expectError(() => rng.read(n), 'INVALID_ARGUMENT');
  });

  it('unwinds a probe whose queue is missing and marks the device failed', () => {
    const r = rig(new BrokenRng('silent', []));
    const base = r.dma.count;
    expectError(() => RngDriver.probe(r.t), 'DEVICE_NOT_FOUND', /queue 0 not available/);
    expect(r.dma.count).toBe(base);
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    expect(r.irq.isMasked(LINE)).toBe(true);
  });

  it('is refused after remove, and remove twice does nothing', () => {
    const r = rig(new RngDevice({ entropy: counting() }));
    const rng = RngDriver.probe(r.t);
    rng.remove();
    rng.remove();
    expectError(() => rng.read(1), 'INVALID_STATE', /removed/);
  });

  for (const [mode, message] of [
    ['foreign-id', /device used descriptor 5 that was not available/],
    ['too-long', /device wrote 17 bytes into a buffer of 16/],
    ['needs-reset', /needs reset/],
  ] as const) {
    it(`fails cleanly when the device misbehaves (${mode})`, () => {
      const r = rig(new BrokenRng(mode));
      const base = r.dma.count;
      const rng = RngDriver.probe(r.t);
      expectError(() => rng.read(16), 'DEVICE_FAILED', message);
      expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
      // Given up on: no more requests reach the device.
      expectError(() => rng.read(16), 'DEVICE_FAILED', message);
      rng.remove();
      expect(r.dma.count).toBe(base);
    });
  }

  it('times out instead of hanging when the device never answers', () => {
    const r = rig(new BrokenRng('silent'));
    const base = r.dma.count;
    const rng = RngDriver.probe(r.t);
    expectError(() => rng.read(16), 'TIMEOUT');
    expect(r.transport.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
    expectError(() => rng.read(16), 'DEVICE_FAILED', /no answer/);
    rng.remove();
    expect(r.dma.count).toBe(base);
  });

  it('gives up after repeated empty answers', () => {
    const device = new RngDevice({
      entropy: {
        fill(): void {
          throw new Error('source unplugged');
        },
      },
    });
    const r = rig(device);
    const rng = RngDriver.probe(r.t);
    expectError(() => rng.read(4), 'BACKEND_IO', new RegExp(`no bytes ${RNG_MAX_EMPTY_ANSWERS} times`));
    expect(device.counters.sourceErrors).toBe(RNG_MAX_EMPTY_ANSWERS);
    // Not a broken device: the status is left alone.
    expect(r.transport.status & DeviceStatus.FAILED).toBe(0);
    rng.remove();
  });
});
