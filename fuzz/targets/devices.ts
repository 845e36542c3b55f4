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
import {
  BlkReqType,
  BlkStatus,
  ConsoleControlEvent,
  DescFlag,
  USED_IDX,
  USED_RING,
} from '../../src/spec/index.js';
import { MAX_INDIRECT_DESCRIPTORS } from '../../src/virtqueue/index.js';
import { ByteSource, check } from '../lib/bytes.js';
import {
  DATA_BASE,
  makeRig,
  pushAvail,
  RIG_RAM,
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
  /**
   * A host-side event or a device-specific request the device must survive at any time (a frame
   * arriving, a console control message), if the device has one.
   */
  poke?(src: ByteSource, ctx: RigContext): void;
  /** Share of steps given to {@link DeviceSpec.poke}: 3 of 16 when true, else 1 of 32. */
  pokeOften?: boolean;
  /** Depth keys the last run reached beyond the ring ones (control messages handled, ...). */
  depth?(): string[];
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

/** The console under test and its port backends (one target run at a time). */
let consoleUnder: { dev: ConsoleDevice; backends: MemoryConsoleBackend[]; sized: boolean } | null = null;

/** A port id as a hostile driver picks it: real ports, one past, far past. */
function portId(src: ByteSource, ports: number): number {
  return src.u8() < 200 ? src.below(ports + 1) : src.pick([ports + 1, 0x7fff, 0xffff, 0xffff_ffff]);
}

/** Writes `msg` as one chain on queue `qi` (split in two descriptors sometimes) and publishes it. */
function controlChain(
  src: ByteSource,
  ctx: RigContext,
  qi: number,
  msg: Uint8Array,
  writable: boolean,
): void {
  const raw = ctx.mem.inner;
  const q = ctx.queues[qi];
  if (q === undefined || !q.ready) return;
  const at = DATA_BASE + ((src.u16() << 6) % (RIG_RAM - DATA_BASE - 0x100));
  raw.writeBytes(at, msg);
  const head = src.below(q.size);
  const flags = writable ? DescFlag.WRITE : 0;
  if (msg.length >= 2 && q.size >= 2 && src.u8() < 40) {
    const cut = 1 + src.below(msg.length - 1);
    writeDesc(raw, q.descTable, head, at, cut, flags | DescFlag.NEXT, (head + 1) % q.size);
    writeDesc(raw, q.descTable, (head + 1) % q.size, at + cut, msg.length - cut, flags, 0);
  } else {
    writeDesc(raw, q.descTable, head, at, Math.max(msg.length, 1), flags, 0);
  }
  pushAvail(raw, q, head);
}

/** A control message from the driver: id, event, value, and sometimes short or with extra bytes. */
function controlMessage(
  src: ByteSource,
  ports: number,
  event?: number,
  id?: number,
  value?: number,
): Uint8Array {
  const len = event !== undefined ? 8 : src.u8() < 200 ? 8 : src.pick([1, 4, 7, 9, 12, 64]);
  const msg = new Uint8Array(len);
  const v = new DataView(msg.buffer);
  const ev =
    event ??
    (src.u8() < 220
      ? src.pick([
          ConsoleControlEvent.DEVICE_READY,
          ConsoleControlEvent.PORT_READY,
          ConsoleControlEvent.PORT_READY,
          ConsoleControlEvent.PORT_OPEN,
          ConsoleControlEvent.PORT_OPEN,
          ConsoleControlEvent.DEVICE_ADD,
          ConsoleControlEvent.RESIZE,
          ConsoleControlEvent.PORT_NAME,
        ])
      : src.u16());
  const val = value ?? (src.u8() < 200 ? 1 : src.pick([0, 2, 0xffff]));
  if (len >= 4) v.setUint32(0, id ?? portId(src, ports), true);
  if (len >= 6) v.setUint16(4, ev, true);
  if (len >= 8) v.setUint16(6, val, true);
  return msg;
}

const consoleSpec: DeviceSpec = {
  name: 'console',
  make(src) {
    const ports = 1 + src.below(3);
    const backends = Array.from({ length: ports }, () => new MemoryConsoleBackend());
    const sized = src.u8() < 100;
    const dev = new ConsoleDevice({
      ports: backends.map((backend, i) => ({
        backend,
        name: src.u8() < 128 ? `port${i}` : undefined,
        console: i === 0 ? src.u8() < 200 : src.u8() < 40,
      })),
      multiport: src.bool() || ports > 1,
      queueSize: src.pick([2, 8, 64]),
      size: sized ? { cols: 80, rows: 25 } : undefined,
      inputBufferBytes: src.pick([1, 16, 4096]),
    });
    consoleUnder = { dev, backends, sized };
    return dev;
  },
  pokeOften: true,
  depth() {
    const u = consoleUnder;
    if (u === null) return [];
    const c = u.dev.counters;
    const out: string[] = [];
    if (c.controlIn > 0) out.push('control-in');
    if (c.controlOut > 0) out.push('control-out');
    if (c.controlDropped > 0) out.push('control-dropped');
    if (c.driverFailures > 0) out.push('driver-failure');
    if (c.inputDropped > 0) out.push('input-dropped');
    if (c.blocked > 0) out.push('tx-blocked');
    for (let id = 0; id < u.backends.length; id++) {
      const st = u.dev.isActivated ? u.dev.port(id) : null;
      if (st?.guestReady) out.push('port-ready');
      if (st?.guestOpen) out.push('port-open');
    }
    return out;
  },
  poke(src, ctx) {
    // The MULTIPORT control protocol (5.3.6.2) as a hostile driver speaks it, host input and
    // resizes. Queues: 2 control receiveq, 3 control transmitq, port n on 2 + 2n / 3 + 2n.
    const u = consoleUnder;
    if (u === null) return;
    const ports = u.backends.length;
    const dev = u.dev;
    switch (src.below(8)) {
      case 0:
      case 1: {
        // One control message (biased to the ones a driver sends), then the notification.
        controlChain(src, ctx, 3, controlMessage(src, ports), src.u8() < 8);
        if (src.u8() < 220) dev.notify(3);
        break;
      }
      case 2: {
        // The whole handshake: DEVICE_READY, PORT_READY for every port, PORT_OPEN for some.
        controlChain(src, ctx, 3, controlMessage(src, ports, ConsoleControlEvent.DEVICE_READY, 0, 1), false);
        for (let id = 0; id < ports; id++) {
          controlChain(src, ctx, 3, controlMessage(src, ports, ConsoleControlEvent.PORT_READY, id, 1), false);
          if (src.bool()) {
            controlChain(
              src,
              ctx,
              3,
              controlMessage(src, ports, ConsoleControlEvent.PORT_OPEN, id, 1),
              false,
            );
          }
        }
        dev.notify(3);
        break;
      }
      case 3: {
        // Control receive buffers, some too short for a message or a port name.
        for (let n = 1 + src.below(4); n > 0; n--) {
          const len = src.pick([8, 8, 16, 64, 4, 1]);
          controlChain(src, ctx, 2, new Uint8Array(len), src.u8() < 240);
        }
        dev.notify(2);
        break;
      }
      case 4: {
        // Receive buffers on a port's receiveq, then host input on that port.
        const id = src.below(ports);
        const qi = id === 0 ? 0 : 2 + 2 * id;
        for (let n = src.below(3); n > 0; n--) {
          controlChain(src, ctx, qi, new Uint8Array(src.pick([1, 8, 64])), src.u8() < 240);
        }
        if (src.bool()) dev.notify(qi);
        u.backends[id].push(new Uint8Array(src.pick([1, 7, 100, 5000])).fill(0x61));
        break;
      }
      case 5:
        // Transmit on a port (port 0 through queue 1, others through 3 + 2n).
        {
          const id = src.below(ports);
          const qi = id === 0 ? 1 : 3 + 2 * id;
          u.backends[id].setWritable(src.u8() < 220);
          controlChain(src, ctx, qi, new Uint8Array(1 + src.below(32)).fill(0x62), src.u8() < 10);
          dev.notify(qi);
        }
        break;
      case 6:
        if (u.sized) dev.resize(1 + src.below(300), 1 + src.below(100));
        break;
      default:
        // Port state as the embedder reads it: consistent whatever the guest sent.
        for (let id = 0; id < ports; id++) {
          const st = dev.port(id);
          check(!st.guestReady || st.added, `console: port ${id} ready but never added`);
          check(st.pendingInput >= 0, 'console: negative pending input');
        }
        break;
    }
  },
  valid(ctx) {
    // One byte on port 0's transmitq (queue 1), its backend no longer congested.
    for (const b of consoleUnder?.backends ?? []) b.setWritable(true);
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
        let kind = src.below(16);
        // Specs with frequent pokes take kinds 3 and 4 for them too (routed to the poke branch).
        if (spec.pokeOften === true && (kind === 3 || kind === 4)) kind = 9;
        if (kind < 5) {
          const q = ctx.queues[src.below(Math.min(ctx.queues.length, 7))];
          requestOp(src, ctx.mem.inner, q);
        } else if (kind >= 10) {
          ringOp(src, src.below(RING_OPS), ctx.mem, ctx.queues);
        } else if (kind < 9) {
          const qi = src.below(ctx.queues.length + 2) - (src.u8() === 0 ? 1 : 0);
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
        } else if (spec.poke !== undefined && (spec.pokeOften === true || src.bool())) {
          ctx.mem.resetCount();
          spec.poke(src, ctx);
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
        // 2.1.2: each corrupted queue is reported through queueFailed once, and stays stopped.
        for (let i = 0; i < ctx.queues.length; i++) {
          let reports = 0;
          for (const f of ctx.failures) if (f.index === i) reports++;
          check(
            reports === (ctx.queues[i].error === null ? 0 : 1),
            `queue ${i} failed ${ctx.queues[i].error === null ? 'without' : 'with'} ${reports} reports`,
          );
        }
      }
      for (const q of ctx.queues) if (q.ready && q.nextUsed > 0) hit('served');
      for (const x of spec.depth?.() ?? []) hit(x);
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
