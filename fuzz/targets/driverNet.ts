/**
 * Target `driver-net`: our {@link NetDriver} (over our MmioDriver, every interrupt mode) against a
 * hostile network device. The device is a real {@link NetDevice}, but the fuzzer may replace any
 * register read, lie about the configuration space (mac, status, max_virtqueue_pairs including 0
 * and more than 0x8000, mtu including below 68), scribble used elements (ids never given out,
 * lengths past the buffer, num_buffers of any value with MRG_RXBUF, merged frames that never
 * finish), flip the link with configuration interrupts, and storm interrupts; frames of any size
 * arrive from the wire between the driver's calls.
 *
 * Invariants: only a VirtioError escapes; no hang (register accesses per input are bounded); no
 * write outside the driver's live DMA allocations (tracked allocation by allocation, so a write
 * after release is caught too); a DEVICE_FAILED stays (every later call fails too) and, when no
 * register read was replaced, the device's status has FAILED; every frame delivered is 14..maxFrame
 * bytes and, when the used ring was not scribbled, holds only bytes the device wrote (the receive
 * buffers are poisoned after probe with a byte no device write produces).
 */

import type { DeviceHost } from '../../src/device/index.js';
import { createNetLink, NetDevice, NetDriver } from '../../src/device/net/index.js';
import { GuestAllocator } from '../../src/memory/index.js';
import { Machine } from '../../src/platform/index.js';
import {
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_SIZE,
  DescFlag,
  DeviceStatus,
  NET_CTRL_MQ_VQ_PAIRS_MAX,
  NetConfig,
  NetCtrlClass,
  NetHdr,
  NetStatus,
  VirtioError,
} from '../../src/spec/index.js';
import { MmioDriver } from '../../src/transport/index.js';
import { ByteSource, check, InvariantViolation } from '../lib/bytes.js';
import { CheckedMemory } from '../lib/checkedMemory.js';
import { hit } from '../lib/stats.js';
import { DRIVER_ACCESS_BOUND, HostileAccess, HostileDevice } from './driver.js';
import type { FuzzTarget } from './types.js';

const MiB = 1 << 20;
/** A byte no device write in this target produces: receive buffers start filled with it. */
export const NET_POISON = 0xee;
/**
 * Register accesses one input may make before it counts as a hang. max_virtqueue_pairs may
 * legally be 0x8000 (5.1.4.1), and the driver then asks for 2 * 0x8000 + 1 queues: with MSI it
 * programs a vector per queue (6 writes each) before any queue turns out absent, about 360 000
 * accesses (found by this target: fuzz/corpus/driver-net/finding-max-pairs-msi-setup). The bound
 * allows the other driver targets' bound plus 32 accesses per queue the device may claim.
 */
export const NET_DRIVER_ACCESS_BOUND = DRIVER_ACCESS_BOUND + 32 * (2 * NET_CTRL_MQ_VQ_PAIRS_MAX + 1);
/** Driver calls one input makes after probe. */
const NET_OPS = 24;

/** A {@link GuestAllocator} whose live allocations are the only windows the driver may write. */
class TrackedAllocator extends GuestAllocator {
  readonly windows: Array<[number, number]> = [];
  override alloc(size: number, align = 16): number {
    const at = super.alloc(size, align);
    this.windows.push([at, at + size]);
    return at;
  }
  override release(gpa: number): void {
    super.release(gpa);
    const i = this.windows.findIndex(([s]) => s === gpa);
    if (i >= 0) this.windows.splice(i, 1);
  }
}

/** A lie rate (out of 256) from one input byte: 0 for half the values, else up to 63. */
function rate(b: number): number {
  return b < 128 ? 0 : (b - 128) >> 1;
}

/** A byte the device writes: anything but the poison. */
function devByte(b: number): number {
  return b === NET_POISON ? NET_POISON - 1 : b;
}

/** The driver-net target. */
export const netDriverTarget: FuzzTarget = {
  name: 'driver-net',
  run(data: Uint8Array): void {
    const src = new ByteSource(data);
    const layout = src.pick(['single', 'single', 'per-queue', 'shared', 'seed'] as const);
    const m = new Machine({ ramSize: 4 * MiB, reservedLow: MiB, cpu: { maxHandlerRunsPerHalt: 64 } });
    const ram = m.mem;
    const dma = new TrackedAllocator(MiB, 3 * MiB);
    const guestMem = new CheckedMemory(ram);
    guestMem.writeWindows = dma.windows;
    const link = createNetLink({ capacity: 64 });
    const pairs = 1 + src.below(3);
    const inner = new NetDevice({
      backend: link.a,
      queuePairs: pairs,
      ctrlVq: pairs > 1 || src.u8() < 200,
      mrgRxbuf: src.bool(),
      status: src.u8() < 220,
      mtu: src.pick([68, 576, 1500, 9000]),
      rxBacklog: src.pick([0, 4, 16]),
      queueSize: src.pick([2, 4, 8, 16]),
    });
    // Configuration lies: a field read may be replaced by a value chosen for that field.
    // Half the inputs never lie (so they get deep), the others up to 1 read in 4.
    const lieRate = rate(src.u8());
    let statusFlip = 0;
    let host: DeviceHost | null = null;
    let rxScribbles = 0;
    const config = (o: number, w: 1 | 2 | 4, v: number): number => {
      if (o === NetConfig.status && w === 2) v ^= statusFlip;
      if (lieRate === 0 || !src.more || src.u8() >= lieRate) return v;
      hit('config-lie');
      if (o === NetConfig.maxVirtqueuePairs && w === 2) return src.pick([0, 1, 2, 3, 0x8000, 0x8001, 0xffff]);
      if (o === NetConfig.mtu && w === 2) return src.pick([0, 14, 67, 68, 1500, 65535]);
      if (o === NetConfig.status && w === 2) return src.u16();
      return src.value() & (w === 4 ? 0xffff_ffff : (1 << (8 * w)) - 1);
    };
    let dev: HostileDevice;
    const scribbled = (q: number, id: number, len: number): void => {
      // Receive queues: write the bytes the element claims, as a consistent liar would (the
      // header's num_buffers included), so that what the driver delivers is still device data.
      const ctx = dev.ctx;
      const dq = ctx?.queues[q];
      if (dq === undefined || q % 2 !== 0 || q >= 2 * pairs || id >= dq.size) return;
      rxScribbles++;
      const d = dq.descTable + DESC_SIZE * id;
      const addr = ram.read64(d + DESC_ADDR);
      const n = Math.min(ram.read32(d + DESC_LEN), len >>> 0);
      if ((ram.read16(d + DESC_FLAGS) & DescFlag.WRITE) === 0) return;
      if (addr < MiB || addr + n > 4 * MiB || n === 0) return;
      ram.fill(addr, n, devByte(src.u8()));
      if (n >= NetHdr.numBuffers + 2) {
        ram.write16(addr + NetHdr.numBuffers, src.pick([0, 1, 2, 3, dq.size, dq.size + 1, 0xffff]));
      }
    };
    dev = new HostileDevice(inner, src, ram, {
      config,
      scribbled,
      attached: (h) => {
        host = h;
      },
    });
    const seed = layout === 'seed';
    const slot = m.addDevice(dev, {
      name: 'dev',
      lines: seed ? 'single' : layout,
      seed: seed
        ? { msi: { vectors: 1 + src.below(4), sharing: src.bool() }, notification: src.bool() || undefined }
        : undefined,
    });
    const access = new HostileAccess(m.bus.window('dev'), src, rate(src.u8()), NET_DRIVER_ACCESS_BOUND);
    let failed = false;
    let removed = false;
    const takeInterrupts = (): void => {
      try {
        m.cpu.halt();
      } catch (e) {
        if (!(e instanceof VirtioError && e.code === 'TIMEOUT')) throw e;
      }
    };
    let d: NetDriver | null = null;
    try {
      const t = MmioDriver.probe(access, {
        mem: guestMem,
        dma,
        platform: m.cpu,
        irqLines: slot.irqLines,
        seed,
      });
      if (t === null) return;
      hit(`layout:${layout}`);
      d = NetDriver.probe(t, {
        queuePairs: 1 + src.below(3),
        maxQueuePairs: src.u8() < 200 ? undefined : 1 + src.below(3),
        queueSize: src.u8() < 128 ? undefined : src.pick([1, 2, 4, 8]),
      });
      hit(`mode:${t.interruptMode}`);
      hit(`pairs:${d.queuePairs}`);
      d.onLinkChange((up) => hit(up ? 'link-up' : 'link-down'));
      poisonRx(dev, ram, d.queuePairs);
    } catch (e) {
      settle(e);
    }
    const driver = d;
    if (driver !== null) {
      for (let k = 0; k < NET_OPS && src.more; k++) {
        const op = src.below(10);
        try {
          switch (op) {
            case 0:
            case 1: {
              // A frame of any valid length on a pair in use (or not), kicked or flushed later.
              const len = src.pick([14, 15, 60, 64, 128, driver.maxFrame]);
              const frame = new Uint8Array(len).fill(0x5a);
              const pair = src.u8() < 230 ? src.below(driver.queuePairsInUse) : src.below(4);
              const kick = src.bool();
              if (driver.send(frame, pair, kick)) hit('sent');
              if (!kick) driver.flush(pair);
              break;
            }
            case 2: {
              // Frames from the wire, runts and giants included, then delivery.
              for (let n = 1 + src.below(4); n > 0; n--) {
                const frame = new Uint8Array(src.pick([0, 13, 14, 60, 1514, 1518, 9018, 9019]));
                const b = devByte(src.u8() | 1);
                frame.fill(b);
                for (let i = 0; i < Math.min(frame.length, 16); i++) frame[i] = devByte(src.u8()) || 1;
                link.b.send(frame);
              }
              link.pump();
              break;
            }
            case 3: {
              const frames = driver.receive();
              for (const f of frames) {
                check(
                  f.length >= 14 && f.length <= driver.maxFrame,
                  `delivered a frame of ${f.length} bytes (max ${driver.maxFrame})`,
                );
                if (rxScribbles === 0) {
                  check(!f.includes(NET_POISON), 'delivered a frame with bytes the device never wrote');
                }
                hit('received');
              }
              break;
            }
            case 4:
              driver.setQueuePairs(src.u8() < 220 ? 1 + src.below(driver.queuePairs) : src.below(5));
              hit('pairs-set');
              break;
            case 5: {
              const cls = src.u8() < 200 ? src.pick(Object.values(NetCtrlClass)) : src.u8();
              const ack = driver.command(cls, src.u8(), new Uint8Array(src.pick([0, 1, 6, 60, 61])));
              check(ack >= 0 && ack <= 0xff, `control ack ${ack}`);
              hit('command');
              break;
            }
            case 6:
              // The host flips the link: STATUS changes and a configuration interrupt.
              inner.setLink(!inner.linkUp);
              takeInterrupts();
              break;
            case 7:
              // The device lies about STATUS and raises a configuration interrupt.
              statusFlip ^= NetStatus.LINK_UP;
              (host as DeviceHost | null)?.configChanged();
              takeInterrupts();
              break;
            case 8: {
              // An interrupt storm on any queue.
              const ctx = dev.ctx;
              if (ctx !== null) {
                for (let n = src.below(200); n > 0; n--)
                  ctx.notifyUsed(src.below(ctx.queues.length + 1) % Math.max(ctx.queues.length, 1));
              }
              takeInterrupts();
              break;
            }
            default:
              driver.poll();
              break;
          }
          // Every op but 2, 6, 7 and 8 calls a driver method that checks the device first.
          if (failed && op !== 2 && (op < 6 || op === 9)) {
            throw new InvariantViolation(`a call succeeded after DEVICE_FAILED (op ${op})`);
          }
        } catch (e) {
          settle(e);
        }
      }
      if (!failed) hit('survived');
      try {
        removed = true;
        driver.remove();
      } catch (e) {
        settle(e);
      }
    }
    check(guestMem.violations.length === 0, guestMem.violations[0] ?? '');

    /** Classifies one error: a finding unless a VirtioError; DEVICE_FAILED is sticky. */
    function settle(e: unknown): void {
      if (e instanceof InvariantViolation) throw e;
      if (!(e instanceof VirtioError)) {
        throw new InvariantViolation(
          `net driver threw a non-virtio error: ${String((e as Error)?.stack ?? e)}`,
        );
      }
      hit(`error:${e.code}`);
      if (e.code === 'DEVICE_FAILED' && !removed) {
        failed = true;
        if (access.lies === 0) {
          check(
            (slot.transport.status & DeviceStatus.FAILED) !== 0,
            'driver reported DEVICE_FAILED without setting FAILED',
          );
        }
      }
    }
  },
};

/** Fills every device-writable buffer on the receive queues with {@link NET_POISON}. */
function poisonRx(dev: HostileDevice, ram: Machine['mem'], pairs: number): void {
  const ctx = dev.ctx;
  if (ctx === null) return;
  for (let p = 0; p < pairs; p++) {
    const q = ctx.queues[2 * p];
    if (q === undefined || !q.ready) continue;
    for (let i = 0; i < q.size; i++) {
      const d = q.descTable + DESC_SIZE * i;
      const addr = ram.read64(d + DESC_ADDR);
      const len = ram.read32(d + DESC_LEN);
      if ((ram.read16(d + DESC_FLAGS) & DescFlag.WRITE) !== 0 && addr >= MiB && addr + len <= 4 * MiB) {
        ram.fill(addr, len, NET_POISON);
      }
    }
  }
}
