/**
 * Target (c): each device's request parsing (blk, rng, console) over fuzzer-written rings and
 * buffers, through `notify` as the transport calls it.
 *
 * Invariants: `notify` never throws; no access outside RAM; bounded work per notification
 * (memory accesses and handled chains); a corrupt ring is reported once through queueFailed and
 * the queue stays stopped; after a device reset and re-activation a valid request completes.
 */

import { BlkDevice, MemoryBlockBackend } from '../../src/device/blk/index.js';
import { ConsoleDevice, MemoryConsoleBackend } from '../../src/device/console/index.js';
import { MAX_PASSES_PER_NOTIFY, type VirtioDevice } from '../../src/device/index.js';
import { createNetLink, NetDevice, type NetLink } from '../../src/device/net/index.js';
import { RngDevice } from '../../src/device/rng/index.js';
import { BlkReqType, BlkStatus, DescFlag, USED_IDX, USED_RING } from '../../src/spec/index.js';
import { MAX_INDIRECT_DESCRIPTORS } from '../../src/virtqueue/index.js';
import { ByteSource, check } from '../lib/bytes.js';
import {
  DATA_BASE,
  makeRig,
  pushAvail,
  RING_OPS,
  type RigContext,
  requestOp,
  ringOp,
  writeDesc,
} from '../lib/ringRig.js';
import { hit } from '../lib/stats.js';
import type { FuzzTarget } from './types.js';

/** How to build a device and check one valid request on a fresh activation. */
interface DeviceSpec {
  name: string;
  make(src: ByteSource): VirtioDevice;
  /** Writes one valid request on queue `q` of `ctx`, returns the queue to notify and a checker. */
  valid(ctx: RigContext): { queue: number; verify(): void };
  /** A host-side event the device must survive at any time (a frame arriving), if the device has one. */
  poke?(src: ByteSource): void;
}

/** Used element `k` of queue `q`: { id, len }. */
function usedElem(ctx: RigContext, q: number, k: number): { id: number; len: number } {
  const dq = ctx.queues[q];
  const e = dq.usedRing + USED_RING + 8 * (k & (dq.size - 1));
  return { id: ctx.mem.inner.read32(e), len: ctx.mem.inner.read32(e + 4) };
}

const blkSpec: DeviceSpec = {
  name: 'blk',
  make(src) {
    return new BlkDevice({
      backend: new MemoryBlockBackend(src.pick([0, 512, 4096, 64 * 1024])),
      readOnly: src.u8() > 230,
      queueCount: 1 + src.below(2),
      sizeMax: src.bool() ? 4096 : undefined,
      segMax: src.bool() ? 4 : undefined,
      discard: src.u8() > 200 ? false : { maxSegments: 1 + src.below(4) },
      writeZeroes: src.u8() > 200 ? false : { maxSegments: 1 + src.below(4) },
      writeback: src.bool(),
    });
  },
  valid(ctx) {
    // GET_ID: header, 20-byte id, status.
    const raw = ctx.mem.inner;
    const q = ctx.queues[0];
    const hdr = DATA_BASE;
    raw.fill(hdr, 64, 0);
    raw.write32(hdr, BlkReqType.GET_ID);
    writeDesc(raw, q.descTable, 0, hdr, 16, DescFlag.NEXT, 1);
    writeDesc(raw, q.descTable, 1, hdr + 16, 21, DescFlag.WRITE, 0);
    pushAvail(raw, q, 0);
    return {
      queue: 0,
      verify() {
        check(raw.read16(q.usedRing + USED_IDX) === 1, 'blk: valid request not completed after reset');
        check(raw.read8(hdr + 16 + 20) === BlkStatus.OK, 'blk: valid request failed after reset');
        check(usedElem(ctx, 0, 0).len === 21, 'blk: wrong used length after reset');
      },
    };
  },
};

const rngSpec: DeviceSpec = {
  name: 'rng',
  make(src) {
    const fail = src.u8() > 240;
    return new RngDevice({
      entropy: {
        fill(dst) {
          if (fail) throw new Error('source down');
          dst.fill(0xa5);
        },
      },
      maxBytesPerRequest: src.pick([1, 16, 4096, 65536]),
      queueSize: src.pick([1, 8, 64, 256]),
    });
  },
  valid(ctx) {
    const raw = ctx.mem.inner;
    const q = ctx.queues[0];
    writeDesc(raw, q.descTable, 0, DATA_BASE, 1, DescFlag.WRITE, 0);
    pushAvail(raw, q, 0);
    return {
      queue: 0,
      verify() {
        check(raw.read16(q.usedRing + USED_IDX) === 1, 'rng: valid request not completed after reset');
      },
    };
  },
};

const consoleSpec: DeviceSpec = {
  name: 'console',
  make(src) {
    const ports = 1 + src.below(3);
    return new ConsoleDevice({
      ports: Array.from({ length: ports }, () => ({ backend: new MemoryConsoleBackend() })),
      multiport: src.bool() || ports > 1,
      queueSize: src.pick([2, 8, 64]),
    });
  },
  valid(ctx) {
    // One byte on port 0's transmitq (queue 1).
    const raw = ctx.mem.inner;
    const q = ctx.queues[1];
    raw.write8(DATA_BASE, 0x41);
    writeDesc(raw, q.descTable, 0, DATA_BASE, 1, 0, 0);
    pushAvail(raw, q, 0);
    return {
      queue: 1,
      verify() {
        check(raw.read16(q.usedRing + USED_IDX) === 1, 'console: valid transmit not completed after reset');
      },
    };
  },
};

/** The host end of the NIC under test (one target run at a time). */
let netLink: NetLink | null = null;

const netSpec: DeviceSpec = {
  name: 'net',
  make(src) {
    netLink = createNetLink({ capacity: 64 });
    const pairs = 1 + src.below(2);
    return new NetDevice({
      backend: netLink.a,
      queuePairs: pairs,
      ctrlVq: pairs > 1 || src.bool(),
      mrgRxbuf: src.bool(),
      mtu: src.pick([68, 1500, 9000]),
      rxBacklog: src.pick([0, 1, 8]),
      queueSize: src.pick([2, 8, 64]),
    });
  },
  poke(src) {
    // A frame from the wire, of any length (runts and giants included), then delivery.
    const frame = new Uint8Array(src.pick([0, 13, 14, 60, 1514, 9018, 70000]));
    for (let i = 0; i < Math.min(frame.length, 64); i++) frame[i] = src.u8();
    netLink?.b.send(frame);
    netLink?.pump();
  },
  valid(ctx) {
    // One 60-byte frame behind a zeroed header on transmitq 0 (queue 1).
    const raw = ctx.mem.inner;
    const q = ctx.queues[1];
    raw.fill(DATA_BASE, 12 + 60, 0);
    writeDesc(raw, q.descTable, 0, DATA_BASE, 12 + 60, 0, 0);
    pushAvail(raw, q, 0);
    return {
      queue: 1,
      verify() {
        check(raw.read16(q.usedRing + USED_IDX) === 1, 'net: valid transmit not completed after reset');
      },
    };
  },
};

/** Bound on memory accesses one notify may make (generous, but finite and linear). */
function notifyBound(ctx: RigContext): number {
  let n = 0;
  for (const q of ctx.queues) n = Math.max(n, q.size);
  // Each chain: the walk (4 reads per descriptor over table + indirect) and per-segment copies.
  return (MAX_PASSES_PER_NOTIFY + 1) * n * (8 * (n + MAX_INDIRECT_DESCRIPTORS) + 64) + 64;
}

function deviceTarget(spec: DeviceSpec): FuzzTarget {
  return {
    name: `device-${spec.name}`,
    run(data: Uint8Array): void {
      const src = new ByteSource(data);
      const dev = spec.make(src);
      const size = src.pick([1, 2, 4, 8, 16, 64]);
      const rigOpts = { eventIdx: src.bool(), indirect: src.bool() };
      let ctx = makeRig(dev, size, rigOpts);
      dev.activate(ctx);
      for (let steps = 0; src.more && steps < 256; steps++) {
        const kind = src.below(16);
        if (kind < 5) {
          const q = ctx.queues[src.below(Math.min(ctx.queues.length, 7))];
          requestOp(src, ctx.mem.inner, q);
        } else if (kind >= 10) {
          ringOp(src, src.below(RING_OPS), ctx.mem, ctx.queues);
        } else if (kind < 9) {
          const qi = src.below(ctx.queues.length + 2) - (src.u8() === 0 ? 1 : 0);
          const failures = ctx.failures.length;
          const wasFailed = ctx.queues[qi]?.error != null;
          ctx.mem.resetCount();
          const usedBefore = ctx.queues[qi]?.nextUsed ?? 0;
          dev.notify(qi);
          const served = ((ctx.queues[qi]?.nextUsed ?? 0) - usedBefore) & 0xffff;
          // One notification serves at most MAX_PASSES_PER_NOTIFY queue sizes of chains.
          check(
            served <= MAX_PASSES_PER_NOTIFY * (ctx.queues[qi]?.size ?? 0),
            `one notify served ${served} chains`,
          );
          check(ctx.mem.accesses <= notifyBound(ctx), `notify made ${ctx.mem.accesses} accesses`);
          const q = ctx.queues[qi];
          if (q?.error != null && !wasFailed) {
            check(
              ctx.failures.length === failures + 1,
              'ring corruption not reported once through queueFailed',
            );
          }
          if (wasFailed) check(ctx.failures.length === failures, 'failed queue reported again');
        } else if (spec.poke !== undefined && src.bool()) {
          ctx.mem.resetCount();
          spec.poke(src);
          check(ctx.mem.accesses <= notifyBound(ctx), `host event made ${ctx.mem.accesses} accesses`);
        } else {
          // Config space reads and writes, as the transport forwards them (range checked there).
          const width = src.pick([1, 2, 4] as const);
          if (dev.configSize >= width) {
            const off = src.below(dev.configSize - width + 1);
            if (src.bool()) dev.readConfig(off, width);
            else dev.writeConfig(off, width, src.value());
          }
        }
      }
      for (const q of ctx.queues) if (q.ready && q.nextUsed > 0) hit('served');
      for (const f of ctx.failures) hit(`fail:${f.error.reason}`);
      check(ctx.mem.violations.length === 0, ctx.mem.violations[0] ?? '');
      // The driver resets the device: a valid request completes on the fresh activation.
      dev.reset();
      ctx = makeRig(dev, 8, {});
      dev.activate(ctx);
      const v = spec.valid(ctx);
      dev.notify(v.queue);
      v.verify();
      check(ctx.failures.length === 0, 'valid request after reset failed the queue');
      check(ctx.mem.violations.length === 0, ctx.mem.violations[0] ?? '');
    },
  };
}

/** The device targets. */
export const deviceTargets: FuzzTarget[] = [blkSpec, rngSpec, consoleSpec, netSpec].map(deviceTarget);
