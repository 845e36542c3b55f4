/**
 * Target (e): our MmioDriver and guest drivers (rng, blk) against a hostile device. The device is
 * real, but every register read may be replaced by a fuzzer value, and after each notification the
 * fuzzer may scribble on the used ring (ids never given out, lengths past the buffer, used.idx
 * running ahead) and raise interrupt storms.
 *
 * Invariants: whatever the device answers, the driver either works or fails with a VirtioError;
 * it never hangs (register accesses per input are bounded) and never writes guest memory outside
 * its DMA allocations.
 */

import { BlkDevice, BlkDriver, MemoryBlockBackend } from '../../src/device/blk/index.js';
import { ConsoleDevice, ConsoleDriver, MemoryConsoleBackend } from '../../src/device/console/index.js';
import type { DeviceContext, DeviceHost, Features, VirtioDevice } from '../../src/device/index.js';
import { RngDevice, RngDriver } from '../../src/device/rng/index.js';
import type { RamMemory } from '../../src/memory/index.js';
import { Machine } from '../../src/platform/index.js';
import { USED_IDX, USED_RING, VirtioError } from '../../src/spec/index.js';
import { type MmioAccess, MmioDriver } from '../../src/transport/index.js';
import { ByteSource, check, InvariantViolation } from '../lib/bytes.js';
import { CheckedMemory } from '../lib/checkedMemory.js';
import { hit } from '../lib/stats.js';
import type { FuzzTarget } from './types.js';

const MiB = 1 << 20;
/** Register accesses one input may make before we call it a hang. */
export const DRIVER_ACCESS_BOUND = 200_000;

/** Thrown from the hostile access when the driver made too many accesses (a hang). */
class Hang extends InvariantViolation {}

/** Register reads, each possibly replaced by a fuzzer value. */
export class HostileAccess implements MmioAccess {
  accesses = 0;
  /** Reads whose answer was replaced. */
  lies = 0;
  constructor(
    private readonly inner: MmioAccess,
    private readonly src: ByteSource,
    private readonly rate: number,
    /** Register accesses allowed before the input counts as a hang. */
    readonly bound = DRIVER_ACCESS_BOUND,
  ) {}
  private tick(): void {
    if (++this.accesses > this.bound) throw new Hang(`driver made over ${this.bound} accesses`);
  }
  private lie(v: number, mask: number): number {
    if (this.src.more && this.src.u8() < this.rate) {
      this.lies++;
      return this.src.value() & mask;
    }
    return v;
  }
  read32(o: number): number {
    this.tick();
    return this.lie(this.inner.read32(o), 0xffff_ffff) >>> 0;
  }
  write32(o: number, v: number): void {
    this.tick();
    this.inner.write32(o, v);
  }
  read8(o: number): number {
    this.tick();
    return this.lie(this.inner.read8(o), 0xff);
  }
  read16(o: number): number {
    this.tick();
    return this.lie(this.inner.read16(o), 0xffff);
  }
  write8(o: number, v: number): void {
    this.tick();
    this.inner.write8(o, v);
  }
  write16(o: number, v: number): void {
    this.tick();
    this.inner.write16(o, v);
  }
}

/** Hooks a target adds to {@link HostileDevice}. */
export interface HostileHooks {
  /** Replaces a configuration read (`v` is the real device's answer). */
  config?(offset: number, width: 1 | 2 | 4, v: number): number;
  /**
   * Called for each used element the fuzzer scribbles (before it is published): lets the target
   * write the bytes the element claims, as a device that lies consistently would.
   */
  scribbled?(queue: number, id: number, len: number): void;
  /** Sees the transport's host interface (to raise configuration interrupts). */
  attached?(host: DeviceHost): void;
}

/** A device that, after serving, lets the fuzzer corrupt its used ring and storm interrupts. */
export class HostileDevice implements VirtioDevice {
  ctx: DeviceContext | null = null;
  constructor(
    private readonly inner: VirtioDevice,
    private readonly src: ByteSource,
    private readonly ram: RamMemory,
    private readonly hooks: HostileHooks = {},
  ) {}
  get deviceId() {
    return this.inner.deviceId;
  }
  get queueMaxSizes() {
    return this.inner.queueMaxSizes;
  }
  get features() {
    return this.inner.features;
  }
  get configSize() {
    return this.inner.configSize;
  }
  readConfig(o: number, w: 1 | 2 | 4): number {
    const v = this.inner.readConfig(o, w);
    return this.hooks.config === undefined ? v : this.hooks.config(o, w, v);
  }
  writeConfig(o: number, w: 1 | 2 | 4, v: number): boolean {
    return this.inner.writeConfig(o, w, v);
  }
  attach(host: DeviceHost): void {
    this.hooks.attached?.(host);
    this.inner.attach?.(host);
  }
  validateFeatures(accepted: Features): boolean {
    return this.inner.validateFeatures?.(accepted) ?? true;
  }
  resetQueue(index: number): void {
    this.inner.resetQueue?.(index);
  }
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.inner.activate(ctx);
  }
  reset(): void {
    this.ctx = null;
    this.inner.reset();
  }
  notify(i: number): void {
    const src = this.src;
    const mode = src.u8();
    if (mode >= 64) this.inner.notify(i);
    const ctx = this.ctx;
    const q = ctx?.queues[i];
    if (ctx === null || q === undefined || !q.ready) return;
    const n = src.below(4);
    for (let k = 0; k < n; k++) {
      const slot = src.u16() & (q.size - 1);
      const e = q.usedRing + USED_RING + 8 * slot;
      const id = src.u8() < 128 ? src.below(q.size) : src.u32();
      const len = src.value();
      this.hooks.scribbled?.(i, id, len);
      this.ram.write32(e, id);
      this.ram.write32(e + 4, len);
      if (src.bool())
        this.ram.write16(q.usedRing + USED_IDX, (this.ram.read16(q.usedRing + USED_IDX) + 1) & 0xffff);
      else if (src.u8() < 16) this.ram.write16(q.usedRing + USED_IDX, src.u16());
    }
    if (src.u8() < 32 || mode < 64) {
      // An interrupt, wanted or not (storms come from repeated notifies).
      for (let k = src.below(3); k >= 0; k--)
        (ctx as unknown as { notifyUsed(i: number): boolean }).notifyUsed(i);
    }
  }
}

function driverTarget(kind: 'rng' | 'blk' | 'console'): FuzzTarget {
  return {
    name: `driver-${kind}`,
    run(data: Uint8Array): void {
      const src = new ByteSource(data);
      // The standard line, the multi-line layouts, or the seed profile's MSI (the driver's cascade).
      const layout = src.pick(['single', 'single', 'per-queue', 'shared', 'seed'] as const);
      const m = new Machine({ ramSize: 4 * MiB, reservedLow: MiB, cpu: { maxHandlerRunsPerHalt: 64 } });
      const ram = m.mem;
      const guestMem = new CheckedMemory(ram);
      guestMem.writeWindows = [[MiB, 4 * MiB]];
      const host = new MemoryConsoleBackend();
      const inner =
        kind === 'rng'
          ? new RngDevice({ entropy: { fill: (d) => d.fill(1) }, queueSize: 16 })
          : kind === 'blk'
            ? new BlkDevice({
                backend: new MemoryBlockBackend(64 * 1024),
                queueSize: 16,
                writeback: src.bool(),
              })
            : new ConsoleDevice({ backend: host, queueSize: 16 });
      const dev = new HostileDevice(inner, src, ram);
      const seed = layout === 'seed';
      const slot = m.addDevice(dev, {
        name: 'dev',
        lines: seed ? 'single' : layout,
        seed: seed
          ? { msi: { vectors: 1 + src.below(4), sharing: src.bool() }, notification: src.bool() || undefined }
          : undefined,
      });
      const access = new HostileAccess(m.bus.window('dev'), src, src.u8() >> 2);
      try {
        const t = MmioDriver.probe(access, {
          mem: guestMem,
          dma: m.dma,
          platform: m.cpu,
          irqLines: slot.irqLines,
          seed,
        });
        if (t === null) return;
        hit(`layout:${layout}`);
        if (kind === 'rng') {
          const d = RngDriver.probe(t, { bufferSize: 64 });
          hit(`mode:${t.interruptMode}`);
          for (let k = 0; k < 4 && src.more; k++) {
            const n = 1 + src.below(200);
            const out = d.read(n);
            check(out.length === n, `rng read returned ${out.length} of ${n}`);
          }
          d.remove();
        } else if (kind === 'console') {
          const d = ConsoleDriver.probe(t, { bufferSize: 64, receiveBuffers: 4, transmitBuffers: 4 });
          hit(`mode:${t.interruptMode}`);
          for (let k = 0; k < 6 && src.more; k++) {
            const op = src.below(3);
            if (op === 0) d.write(new Uint8Array(1 + src.below(300)).fill(0x41));
            else if (op === 1) {
              const n = 1 + src.below(100);
              host.push(new Uint8Array(n).fill(0x42));
              const got = d.readExactly(n);
              check(got.length === n, `console read ${got.length} of ${n}`);
            } else d.read();
          }
          d.remove();
        } else {
          const d = BlkDriver.probe(t);
          hit(`mode:${t.interruptMode}`);
          for (let k = 0; k < 4 && src.more; k++) {
            const op = src.below(4);
            const sector = src.below(8);
            if (op === 0) d.write(sector, new Uint8Array(512 * (1 + src.below(3))).fill(k));
            else if (op === 1) check(d.read(sector, 1).length === 512, 'blk read of wrong length');
            else if (op === 2) d.flush();
            else d.getId();
          }
          d.remove();
        }
        hit('completed');
      } catch (e) {
        if (e instanceof InvariantViolation) throw e;
        // A clean failure: a VirtioError (DEVICE_FAILED, TIMEOUT, BACKEND_IO, ...), but never a
        // MemoryError from the driver's own accesses (those are recorded as violations below).
        if (!(e instanceof VirtioError)) {
          throw new InvariantViolation(
            `driver threw a non-virtio error: ${String((e as Error)?.stack ?? e)}`,
          );
        }
        hit(`error:${e.code}`);
      }
      check(guestMem.violations.length === 0, guestMem.violations[0] ?? '');
    },
  };
}

/** The driver-side targets. */
export const driverTargets: FuzzTarget[] = [
  driverTarget('rng'),
  driverTarget('blk'),
  driverTarget('console'),
];
