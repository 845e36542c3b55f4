/**
 * The driver side against a hostile device (issue 9, as Linux's virtio hardening): used ids never
 * given out, lengths past the buffer, used.idx running ahead, interrupt storms, registers changing
 * under the driver. The driver fails the device cleanly with a VirtioError, never hangs, and never
 * writes guest memory outside its DMA allocations.
 */

import { describe, expect, it } from 'vitest';
import { CheckedMemory } from '../../fuzz/lib/checkedMemory.js';
import { BlkDevice, BlkDriver, MemoryBlockBackend } from '../../src/device/blk/index.js';
import type { DeviceContext, VirtioDevice } from '../../src/device/index.js';
import { createNetLink, NetDevice, NetDriver } from '../../src/device/net/index.js';
import { RngDevice, RngDriver } from '../../src/device/rng/index.js';
import { GuestAllocator, RamMemory } from '../../src/memory/index.js';
import { InProcessCpu, InterruptController, Machine, MmioBus } from '../../src/platform/index.js';
import { MmioReg, NET_MIN_MTU, NetConfig, USED_IDX, USED_RING, VirtioError } from '../../src/spec/index.js';
import { type MmioAccess, MmioDriver, MmioTransport } from '../../src/transport/index.js';

const MiB = 1 << 20;
const LINE = 3;

/** Wraps a device; `after(ctx, index)` runs after each real notify (or instead, with `skip`). */
function hostile(
  inner: VirtioDevice,
  after: (ctx: DeviceContext, ram: RamMemory, index: number) => void,
  ram: RamMemory,
  skip = false,
) {
  let ctx: DeviceContext | null = null;
  const dev: VirtioDevice = {
    deviceId: inner.deviceId,
    queueMaxSizes: inner.queueMaxSizes,
    features: inner.features,
    configSize: inner.configSize,
    readConfig: (o, w) => inner.readConfig(o, w),
    writeConfig: (o, w, v) => inner.writeConfig(o, w, v),
    activate(c) {
      ctx = c;
      inner.activate(c);
    },
    reset() {
      ctx = null;
      inner.reset();
    },
    notify(i) {
      if (!skip) inner.notify(i);
      if (ctx !== null) after(ctx, ram, i);
    },
  };
  return dev;
}

function rig(dev: (ram: RamMemory) => VirtioDevice, access?: (inner: MmioAccess) => MmioAccess) {
  const ram = new RamMemory(new ArrayBuffer(4 * MiB));
  const mem = new CheckedMemory(ram);
  mem.writeWindows = [[MiB, 4 * MiB]];
  const dma = new GuestAllocator(MiB, 3 * MiB);
  const bus = new MmioBus();
  const irq = new InterruptController({ lines: 8 });
  const cpu = new InProcessCpu(irq, { maxHandlerRunsPerHalt: 64 });
  const transport = new MmioTransport(dev(ram), { mem: ram, irq: irq.line(LINE) });
  bus.map(0xd000_0000, transport, 'dev');
  const window = bus.window('dev');
  const t = MmioDriver.probe(access ? access(window) : window, { mem, dma, platform: cpu, irqLines: [LINE] });
  return { ram, mem, t: t as MmioDriver, transport };
}

/** Runs `f`, expects a VirtioError with one of `codes`, and returns it. */
function expectVirtioError(f: () => unknown, codes: string[]): VirtioError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(VirtioError);
    expect(codes).toContain((e as VirtioError).code);
    return e as VirtioError;
  }
  throw new Error('expected a VirtioError');
}

/** Rewrites the used element the device just published as { id, len } (the interrupt is real). */
function fakeUsed(id: (size: number) => number, len: number) {
  return (ctx: DeviceContext, ram: RamMemory, i: number) => {
    const q = ctx.queues[i];
    const idx = ram.read16(q.usedRing + USED_IDX);
    const e = q.usedRing + USED_RING + 8 * ((idx - 1) & (q.size - 1));
    ram.write32(e, id(q.size));
    ram.write32(e + 4, len);
  };
}

const rng = () => new RngDevice({ entropy: { fill: (d) => d.fill(3) }, queueSize: 16 });

describe('a hostile device fails cleanly', () => {
  it('a used id never given out: DEVICE_FAILED, no write outside the buffers', () => {
    const r = rig((ram) =>
      hostile(
        rng(),
        fakeUsed((s) => s - 1, 8),
        ram,
      ),
    );
    const d = RngDriver.probe(r.t, { bufferSize: 64 });
    expectVirtioError(() => d.read(8), ['DEVICE_FAILED']);
    expect(r.mem.violations).toEqual([]);
  });

  it('a used id past the queue size: DEVICE_FAILED', () => {
    const r = rig((ram) =>
      hostile(
        rng(),
        fakeUsed((s) => s + 5, 8),
        ram,
      ),
    );
    const d = RngDriver.probe(r.t, { bufferSize: 64 });
    expectVirtioError(() => d.read(8), ['DEVICE_FAILED']);
    expect(r.mem.violations).toEqual([]);
  });

  it('a used length past the buffer: DEVICE_FAILED, never a read past the buffer', () => {
    const r = rig((ram) =>
      hostile(
        rng(),
        fakeUsed(() => 0, 0xffff_ffff),
        ram,
      ),
    );
    const d = RngDriver.probe(r.t, { bufferSize: 64 });
    expectVirtioError(() => d.read(8), ['DEVICE_FAILED']);
    expect(r.mem.violations).toEqual([]);
  });

  it('used.idx running far ahead: DEVICE_FAILED', () => {
    const r = rig((ram) =>
      hostile(
        rng(),
        (ctx, raw, i) => {
          raw.write16(ctx.queues[i].usedRing + USED_IDX, 0x8000);
        },
        ram,
      ),
    );
    const d = RngDriver.probe(r.t, { bufferSize: 64 });
    expectVirtioError(() => d.read(8), ['DEVICE_FAILED']);
  });

  it('an interrupt storm without progress: TIMEOUT, not a hang', () => {
    const r = rig(
      (ram) => hostile(rng(), () => {}, ram, true),
      (inner) => ({
        ...inner,
        read32: (o: number) => (o === MmioReg.InterruptStatus ? 1 : inner.read32(o)),
        write32: (o: number, v: number) => inner.write32(o, v),
        read8: (o: number) => inner.read8(o),
        read16: (o: number) => inner.read16(o),
        write8: (o: number, v: number) => inner.write8(o, v),
        write16: (o: number, v: number) => inner.write16(o, v),
      }),
    );
    const d = RngDriver.probe(r.t, { bufferSize: 64 });
    expectVirtioError(() => d.read(8), ['TIMEOUT', 'DEVICE_FAILED']);
  });

  it('a wrong MagicValue: DEVICE_REJECTED at probe, after one read', () => {
    let n = 0;
    expectVirtioError(
      () =>
        rig(
          () => rng(),
          (inner) => ({
            ...inner,
            read32: (o: number) => (o === MmioReg.MagicValue && n++ >= 0 ? 0 : inner.read32(o)),
            write32: (o: number, v: number) => inner.write32(o, v),
            read8: (o: number) => inner.read8(o),
            read16: (o: number) => inner.read16(o),
            write8: (o: number, v: number) => inner.write8(o, v),
            write16: (o: number, v: number) => inner.write16(o, v),
          }),
        ),
      ['DEVICE_REJECTED'],
    );
    expect(n).toBe(1);
  });

  it('a status that never reads back 0 after reset: DEVICE_FAILED (bounded polling)', () => {
    let reads = 0;
    const r = rig(
      () => new BlkDevice({ backend: new MemoryBlockBackend(64 * 1024) }),
      (inner) => ({
        read32: (o: number) => {
          if (o === MmioReg.Status) {
            reads++;
            return 0x0f;
          }
          return inner.read32(o);
        },
        write32: (o: number, v: number) => inner.write32(o, v),
        read8: (o: number) => inner.read8(o),
        read16: (o: number) => inner.read16(o),
        write8: (o: number, v: number) => inner.write8(o, v),
        write16: (o: number, v: number) => inner.write16(o, v),
      }),
    );
    expectVirtioError(() => BlkDriver.probe(r.t), ['DEVICE_FAILED', 'TIMEOUT']);
    expect(reads).toBeLessThanOrEqual(2000);
  });
});

/** A NIC whose configuration says mtu 68 (max frame 86) while it passes whatever the wire sends. */
class LyingMtuNic extends NetDevice {
  override readConfig(offset: number, width: 1 | 2 | 4): number {
    return offset === NetConfig.mtu && width === 2 ? NET_MIN_MTU : super.readConfig(offset, width);
  }
}

/** A frame of `len` bytes, all `fill` after the addresses and EtherType. */
function netFrame(len: number, fill: number): Uint8Array {
  const f = new Uint8Array(len).fill(fill);
  f.set([0x52, 0x54, 0, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
  return f;
}

describe('NetDriver against a NIC passing frames longer than the mtu it reports (driver-net finding)', () => {
  function nic(driver: { rxBufferSize?: number }) {
    const link = createNetLink();
    const m = new Machine({ ramSize: 8 * MiB });
    m.addDevice(new LyingMtuNic({ backend: link.a, mtu: 1500, queueSize: 16 }), { name: 'net0' });
    const t = m.probe('net0');
    if (t === null) throw new Error('no device');
    const drv = NetDriver.probe(t, driver);
    return { link, drv };
  }

  it('a single-buffer frame over maxFrame is an rx error; the next frame is delivered', () => {
    const { link, drv } = nic({});
    expect(drv.maxFrame).toBe(NET_MIN_MTU + 18);
    link.b.send(netFrame(1514, 0x61));
    link.b.send(netFrame(60, 0x62));
    link.pump();
    const got = drv.receive();
    expect(got.map((f) => f.length)).toEqual([60]);
    expect(got[0].subarray(14).every((b) => b === 0x62)).toBe(true);
    expect(drv.stats.rxErrors).toBe(1);
  });

  it('a merged frame whose first buffer is already over maxFrame is dropped with all its buffers', () => {
    // 256-byte buffers: the 1514-byte frame spans 7 of them (num_buffers 7); none of the six later
    // ones may be taken for the start of a frame.
    const { link, drv } = nic({ rxBufferSize: 256 });
    link.b.send(netFrame(1514, 0x61));
    link.b.send(netFrame(60, 0x62));
    link.pump();
    const got = drv.receive();
    expect(got.map((f) => f.length)).toEqual([60]);
    expect(got[0].subarray(14).every((b) => b === 0x62)).toBe(true);
    expect(drv.stats.rxErrors).toBe(1);
  });
});
