/**
 * A device-side rig over fuzzer-written rings: guest RAM behind a {@link CheckedMemory}, device
 * queues at fixed places, and ops (as data) that write descriptors, available entries and buffer
 * bytes exactly as a hostile driver could. No driver-side code: the bytes go straight into RAM.
 *
 * @packageDocumentation
 */

import type { DeviceContext, Features, VirtioDevice } from '../../src/device/index.js';
import { type GuestMemory, RamMemory } from '../../src/memory/index.js';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  BlkReqType,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  DescFlag,
  USED_IDX,
} from '../../src/spec/index.js';
import { DeviceQueue, type QueueError } from '../../src/virtqueue/index.js';
import { type ByteSource, check } from './bytes.js';
import { CheckedMemory } from './checkedMemory.js';

/** Guest RAM of a rig. */
export const RIG_RAM = 0x1_0000;
/** Each queue's rings sit in one 4 KiB page from here: desc, then avail at +0x400, used at +0x600. */
export const RING_BASE = 0x1000;
/** Buffers and indirect tables live from here to the end of RAM. */
export const DATA_BASE = 0x8000;
/** Largest queue a rig builds (its rings fit the 4 KiB page). */
export const RIG_MAX_QUEUE = 64;

/** Ring addresses of queue `i`. */
export function ringsOf(i: number): { descTable: number; availRing: number; usedRing: number } {
  const base = RING_BASE + 0x1000 * i;
  return { descTable: base, availRing: base + 0x400, usedRing: base + 0x600 };
}

/** A recording {@link DeviceContext} over a checked memory. */
export class RigContext implements DeviceContext {
  readonly failures: Array<{ index: number; error: QueueError }> = [];
  notifications = 0;
  constructor(
    readonly mem: CheckedMemory,
    readonly queues: DeviceQueue[],
    readonly features: Features,
  ) {}
  notifyUsed(index: number): boolean {
    const signal = this.queues[index]?.needsNotification(this.mem) ?? false;
    if (signal) this.notifications++;
    return signal;
  }
  queueFailed(index: number, error: QueueError): void {
    this.failures.push({ index, error });
  }
}

/** RAM and live queues for `device` (up to 7 queues placed; more are left not ready). */
export function makeRig(
  device: Pick<VirtioDevice, 'queueMaxSizes' | 'features'>,
  size: number,
  opts: { eventIdx?: boolean; indirect?: boolean; features?: Features } = {},
): RigContext {
  const mem = new CheckedMemory(new RamMemory(new ArrayBuffer(RIG_RAM)));
  const queues = device.queueMaxSizes.map((max, i) => {
    const q = new DeviceQueue(max);
    if (i < 7) {
      q.size = Math.min(size, max, RIG_MAX_QUEUE);
      Object.assign(q, ringsOf(i));
      q.eventIdx = opts.eventIdx ?? false;
      q.indirectDesc = opts.indirect ?? false;
      check(q.validate(mem) === null, 'rig queue must validate');
      q.ready = true;
    }
    return q;
  });
  return new RigContext(mem, queues, opts.features ?? device.features.clone());
}

/** Writes one descriptor. */
export function writeDesc(
  mem: GuestMemory,
  table: number,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
): void {
  const d = table + DESC_SIZE * i;
  mem.write64(d + DESC_ADDR, addr);
  mem.write32(d + DESC_LEN, len);
  mem.write16(d + DESC_FLAGS, flags);
  mem.write16(d + DESC_NEXT, next);
}

/** Publishes `head` in queue `q`'s available ring (next slot after avail.idx) and bumps avail.idx. */
export function pushAvail(mem: GuestMemory, q: DeviceQueue, head: number): void {
  const idx = mem.read16(q.availRing + AVAIL_IDX);
  mem.write16(q.availRing + AVAIL_RING + 2 * (idx & (q.size - 1)), head);
  mem.write16(q.availRing + AVAIL_IDX, (idx + 1) & 0xffff);
}

/** A guest address chosen by the fuzzer: mostly in the data area, sometimes anywhere. */
export function fuzzAddr(src: ByteSource): number {
  switch (src.u8() & 3) {
    case 0:
      return src.u32() + (src.bool() ? 0x1_0000_0000 * src.u16() : 0);
    case 1:
      return RIG_RAM - src.u8();
    default:
      return DATA_BASE + (src.u16() % (RIG_RAM - DATA_BASE));
  }
}

/** A buffer length chosen by the fuzzer. */
export function fuzzLen(src: ByteSource): number {
  switch (src.u8() & 3) {
    case 0:
      return src.value();
    case 1:
      return src.pick([0, 1, 15, 16, 17, 32, 512, 513, 528, 1024]);
    default:
      return 1 + (src.u16() & 0x7ff);
  }
}

/**
 * One ring-writing op, shared by the queue and device targets. Returns true when it consumed the
 * op (the caller handles op kinds from `firstOwn` on).
 */
export function ringOp(src: ByteSource, kind: number, mem: CheckedMemory, queues: DeviceQueue[]): boolean {
  const qi = src.below(Math.min(queues.length, 7));
  const q = queues[qi];
  const raw = mem.inner;
  switch (kind) {
    case 0: {
      // A descriptor in the queue's table, or in an indirect table in the data area.
      const inTable = src.u8() < 200;
      const table = inTable ? q.descTable : DATA_BASE + ((src.u16() << 4) % (RIG_RAM - DATA_BASE));
      const i = src.below(inTable ? q.size : 8);
      writeDescSafe(raw, table, i, fuzzAddr(src), fuzzLen(src), src.u8() & 7, src.below(q.size + 2));
      return true;
    }
    case 1: {
      // A whole well-formed chain of 1..4 descriptors starting at a fuzzer-chosen head.
      const n = 1 + src.below(4);
      const head = src.below(q.size);
      let i = head;
      let writable = false;
      for (let k = 0; k < n; k++) {
        const next = (i + 1) % q.size;
        writable = writable || src.u8() > 160;
        const flags = (k + 1 < n ? DescFlag.NEXT : 0) | (writable ? DescFlag.WRITE : 0);
        const addr = DATA_BASE + ((src.u16() << 4) % (RIG_RAM - DATA_BASE - 0x1000));
        writeDescSafe(raw, q.descTable, i, addr, 1 + (src.u16() % 0x1000), flags, next);
        i = next;
      }
      pushAvail(raw, q, head);
      return true;
    }
    case 2:
      pushAvail(raw, q, src.below(q.size + 1));
      return true;
    case 3:
      // avail.idx anywhere (runs ahead, behind, wraps).
      raw.write16(q.availRing + AVAIL_IDX, src.u16());
      return true;
    case 4:
      raw.write16(q.availRing + AVAIL_FLAGS, src.u16());
      // used_event, after the ring.
      raw.write16(q.availRing + AVAIL_RING + 2 * q.size, src.u16());
      return true;
    case 5: {
      // Buffer bytes: a blk-like header (type biased) or raw bytes.
      const at = DATA_BASE + ((src.u16() << 4) % (RIG_RAM - DATA_BASE - 64));
      if (src.bool()) {
        raw.write32(at, src.u8() < 200 ? src.pick(Object.values(BlkReqType)) : src.u32());
        raw.write32(at + 4, src.u32());
        raw.write32(at + 8, src.u8() & 0x7f);
        raw.write32(at + 12, src.u8() < 240 ? 0 : src.u32());
      } else {
        const b = src.bytes(48);
        raw.writeBytes(at, b);
      }
      return true;
    }
    case 6:
      // The used ring under the device's feet (a driver may scribble on it).
      raw.write16(q.usedRing + USED_IDX, src.u16());
      return true;
    default:
      return false;
  }
}

/** Writes a descriptor through the raw memory (the fuzzer plays the driver, outside the checks). */
function writeDescSafe(
  raw: CheckedMemory['inner'],
  table: number,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
): void {
  const d = table + DESC_SIZE * i;
  if (!raw.isValid(d, DESC_SIZE)) return;
  raw.write64(d + DESC_ADDR, Math.min(addr, 2 ** 53 - 1));
  raw.write32(d + DESC_LEN, len);
  raw.write16(d + DESC_FLAGS, flags);
  raw.write16(d + DESC_NEXT, next);
}

/** Number of ring ops {@link ringOp} understands. */
export const RING_OPS = 7;

/**
 * A request shaped as devices expect (blk: header, data, status; rng/console: plain buffers),
 * directly or through an indirect table, published in the available ring. Lengths, types and
 * sectors are biased to valid ones so inputs reach the request handlers, not just the ring checks.
 */
export function requestOp(src: ByteSource, mem: GuestMemory, q: DeviceQueue): void {
  const span = RIG_RAM - DATA_BASE - 0x4000;
  const base = DATA_BASE + ((src.u16() << 4) % span);
  const type = src.u8() < 230 ? src.pick(Object.values(BlkReqType)) : src.u32();
  mem.write32(base, type);
  mem.write32(base + 4, 0);
  mem.write32(base + 8, src.u8() < 200 ? src.below(8) : src.u32());
  mem.write32(base + 12, src.u8() < 240 ? 0 : src.u32());
  const segs: Array<[number, number, boolean]> = [];
  if (src.u8() < 220) segs.push([base, 16, false]);
  const dataWritable = type === BlkReqType.IN || type === BlkReqType.GET_ID ? src.u8() < 230 : src.u8() < 30;
  let at = base + 16;
  for (let n = src.below(4); n > 0; n--) {
    const len = src.u8() < 200 ? src.pick([512, 1024, 16, 32, 20, 4096]) : 1 + src.below(600);
    if (type === BlkReqType.DISCARD || type === BlkReqType.WRITE_ZEROES) {
      for (let k = 0; k + 16 <= len && k < 64; k += 16) {
        mem.write32(at + k, src.below(16));
        mem.write32(at + k + 4, 0);
        mem.write32(at + k + 8, src.u8() < 220 ? src.below(16) : src.u32());
        mem.write32(at + k + 12, src.u8() < 220 ? 0 : src.below(4));
      }
    }
    segs.push([at, len, dataWritable]);
    at += len;
  }
  if (src.u8() < 230) segs.push([at, 1, true]);
  if (segs.length === 0) segs.push([base, 1, true]);
  const head = src.below(q.size);
  if (q.indirectDesc && src.bool()) {
    const table = (at + 16 + 15) & ~15;
    segs.forEach(([a, l, w], i) => {
      writeDesc(
        mem,
        table,
        i,
        a,
        l,
        (w ? DescFlag.WRITE : 0) | (i + 1 < segs.length ? DescFlag.NEXT : 0),
        i + 1,
      );
    });
    writeDesc(mem, q.descTable, head, table, 16 * segs.length, DescFlag.INDIRECT, 0);
  } else {
    let i = head;
    segs.forEach(([a, l, w], k) => {
      const next = (i + 1) & (q.size - 1);
      writeDesc(
        mem,
        q.descTable,
        i,
        a,
        l,
        (w ? DescFlag.WRITE : 0) | (k + 1 < segs.length ? DescFlag.NEXT : 0),
        next,
      );
      i = next;
    });
  }
  pushAvail(mem, q, head);
}
