import { describe, expect, it } from 'vitest';
import { RamMemory } from '../memory/index.js';
import { AvailFlag, DescFlag, MAX_QUEUE_SIZE, UsedFlag, VirtioError } from '../spec/index.js';
import { type ChainSegment, RingWriter } from '../testing/index.js';
import {
  DescriptorChain,
  DeviceQueue,
  MAX_INDIRECT_DESCRIPTORS,
  type QueueErrorReason,
} from './deviceQueue.js';

/** Guest RAM size of the default fixture; rings at RING_BASE, buffers from DATA up. */
const RAM = 0x2_0000;
const RING_BASE = 0x1000;
const DATA = 0x1_0000;

interface Fixture {
  mem: RamMemory;
  ring: RingWriter;
  q: DeviceQueue;
  chain: DescriptorChain;
}

function setup(
  options: { size?: number; maxSize?: number; eventIdx?: boolean; indirect?: boolean; ram?: number } = {},
): Fixture {
  const size = options.size ?? 8;
  const mem = new RamMemory(new ArrayBuffer(options.ram ?? RAM));
  const ring = RingWriter.at(mem, size, RING_BASE);
  const q = new DeviceQueue(options.maxSize ?? size);
  ring.configure(q, { eventIdx: options.eventIdx, indirectDesc: options.indirect });
  expect(q.validate(mem)).toBeNull();
  return { mem, ring, q, chain: q.newChain() };
}

/** The chain's segments as plain data, for comparisons. */
function segments(chain: DescriptorChain): Array<{ addr: number; len: number; write: boolean }> {
  const out = [];
  for (let i = 0; i < chain.count; i++) {
    out.push({ addr: chain.addr[i], len: chain.len[i], write: chain.isWritable(i) });
  }
  return out;
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectVirtioError(fn: () => unknown, code: string): void {
  const e = thrown(fn);
  expect(e).toBeInstanceOf(VirtioError);
  expect((e as VirtioError).code).toBe(code);
}

/** Asserts that the queue stopped with `reason` (tier 2: recorded, never thrown). */
function expectStopped(f: Fixture, reason: QueueErrorReason): void {
  let popped: boolean | undefined;
  expect(() => {
    popped = f.q.pop(f.mem, f.chain);
  }).not.toThrow();
  expect(popped).toBe(false);
  expect(f.q.error?.reason).toBe(reason);
  const message = f.q.error?.message ?? '';
  expect(message.length).toBeGreaterThan(0);
  expect(message).toBe(message.toLowerCase());
  expect(message.endsWith('.')).toBe(false);
}

describe('DeviceQueue construction and reset', () => {
  it('rejects a max size that is not a power of two up to 32768', () => {
    for (const bad of [0, 3, 100, MAX_QUEUE_SIZE * 2, -4, 1.5, Number.NaN]) {
      expectVirtioError(() => new DeviceQueue(bad), 'QUEUE_INVALID_SIZE');
    }
    expect(new DeviceQueue(1).size).toBe(1);
    expect(new DeviceQueue(MAX_QUEUE_SIZE).size).toBe(MAX_QUEUE_SIZE);
  });

  it('sizes the chain limit as the larger of the max size and MAX_INDIRECT_DESCRIPTORS', () => {
    expect(new DeviceQueue(4).chainLimit).toBe(MAX_INDIRECT_DESCRIPTORS);
    expect(new DeviceQueue(4096).chainLimit).toBe(4096);
    expect(new DeviceQueue(4).newChain().capacity).toBe(MAX_INDIRECT_DESCRIPTORS);
  });

  it('reset() returns to the reset state (4.2.2)', () => {
    const f = setup({ size: 4, maxSize: 8, eventIdx: true, indirect: true });
    f.ring.addChain(0, [{ addr: DATA, len: 4 }]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    f.q.addUsed(f.mem, 0, 0);
    f.ring.publish(9);
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.error).not.toBeNull();
    f.q.reset();
    expect(f.q.size).toBe(8);
    expect(f.q.ready).toBe(false);
    expect([f.q.descTable, f.q.availRing, f.q.usedRing]).toEqual([0, 0, 0]);
    expect([f.q.eventIdx, f.q.indirectDesc]).toEqual([false, false]);
    expect([f.q.nextAvail, f.q.nextUsed]).toEqual([0, 0]);
    expect(f.q.error).toBeNull();
  });
});

describe('2.7.5 descriptor chain walking', () => {
  it('pops a single readable descriptor', () => {
    const f = setup();
    f.ring.addChain(3, [{ addr: DATA, len: 100 }]);
    expect(f.q.pending(f.mem)).toBe(1);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.head).toBe(3);
    expect(f.chain.count).toBe(1);
    expect(f.chain.readableCount).toBe(1);
    expect(f.chain.writableCount).toBe(0);
    expect(f.chain.readableBytes).toBe(100);
    expect(f.chain.writableBytes).toBe(0);
    expect(f.chain.indirect).toBe(false);
    expect(segments(f.chain)).toEqual([{ addr: DATA, len: 100, write: false }]);
    expect(f.q.nextAvail).toBe(1);
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.error).toBeNull();
  });

  it('pops a single writable descriptor', () => {
    const f = setup();
    f.ring.addChain(0, [{ addr: DATA, len: 7, write: true }]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect([f.chain.readableCount, f.chain.writableCount]).toEqual([0, 1]);
    expect([f.chain.readableBytes, f.chain.writableBytes]).toEqual([0, 7]);
    expect(f.chain.isWritable(0)).toBe(true);
  });

  it('walks many descriptors linked in any order, readable then writable, with byte counts', () => {
    const f = setup();
    // head 5 -> 2 -> 7 -> 0 -> 6
    const order = [5, 2, 7, 0, 6];
    const segs: ChainSegment[] = [
      { addr: DATA, len: 10 },
      { addr: DATA + 0x100, len: 20 },
      { addr: DATA + 0x200, len: 30, write: true },
      { addr: DATA + 0x300, len: 40, write: true },
      { addr: DATA + 0x400, len: 50, write: true },
    ];
    order.forEach((idx, k) => {
      const last = k + 1 === order.length;
      f.ring.setDesc(idx, {
        addr: segs[k].addr,
        len: segs[k].len,
        flags: (last ? 0 : DescFlag.NEXT) | (segs[k].write === true ? DescFlag.WRITE : 0),
        next: last ? 0 : order[k + 1],
      });
    });
    f.ring.publish(5);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.head).toBe(5);
    expect(segments(f.chain)).toEqual(
      segs.map((s) => ({ addr: s.addr, len: s.len, write: s.write === true })),
    );
    expect([f.chain.readableCount, f.chain.writableCount]).toEqual([2, 3]);
    expect([f.chain.readableBytes, f.chain.writableBytes]).toEqual([30, 120]);
  });

  it('accepts a chain that uses every descriptor of the table (the longest direct chain)', () => {
    const f = setup({ size: 16 });
    f.ring.addChain(
      0,
      Array.from({ length: 16 }, (_, k) => ({ addr: DATA + 16 * k, len: 16, write: k >= 8 })),
    );
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.count).toBe(16);
    expect(f.chain.readableBytes).toBe(128);
    expect(f.chain.writableBytes).toBe(128);
  });

  it('ignores descriptor flag bits the spec does not define', () => {
    const f = setup();
    f.ring.setDesc(0, { addr: DATA, len: 8, flags: DescFlag.NEXT | 0x80, next: 1 });
    f.ring.setDesc(1, { addr: DATA + 8, len: 8, flags: DescFlag.WRITE | 0x8000 });
    f.ring.publish(0);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect([f.chain.readableBytes, f.chain.writableBytes]).toEqual([8, 8]);
  });

  it('pops chains in available-ring order and reports pending counts', () => {
    const f = setup();
    f.ring.addChain(4, [{ addr: DATA, len: 1 }]);
    f.ring.addChain(1, [{ addr: DATA, len: 2 }]);
    f.ring.addChain(6, [{ addr: DATA, len: 3 }]);
    expect(f.q.pending(f.mem)).toBe(3);
    const heads: number[] = [];
    while (f.q.pop(f.mem, f.chain)) heads.push(f.chain.head);
    expect(heads).toEqual([4, 1, 6]);
    expect(f.q.pending(f.mem)).toBe(0);
    expect(f.q.error).toBeNull();
  });

  it('lets the same descriptors be made available again after they were used', () => {
    const f = setup({ size: 2 });
    for (let round = 0; round < 5; round++) {
      f.ring.addChain(0, [
        { addr: DATA, len: 4 },
        { addr: DATA + 4, len: 4, write: true },
      ]);
      expect(f.q.pop(f.mem, f.chain)).toBe(true);
      f.q.addUsed(f.mem, f.chain.head, 4);
    }
    expect(f.ring.usedIdx).toBe(5);
  });

  it('does nothing on a queue that is not ready', () => {
    const f = setup();
    f.ring.addChain(0, [{ addr: DATA, len: 4 }]);
    f.q.ready = false;
    expect(f.q.pending(f.mem)).toBe(0);
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.error).toBeNull();
    expect(f.q.nextAvail).toBe(0);
  });

  it('throws INVALID_ARGUMENT for a chain object smaller than the chain limit (host error)', () => {
    const f = setup();
    f.ring.addChain(0, [{ addr: DATA, len: 4 }]);
    expectVirtioError(() => f.q.pop(f.mem, new DescriptorChain(8)), 'INVALID_ARGUMENT');
    expect(f.q.nextAvail).toBe(0);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
  });
});

describe('DescriptorChain.readFrom / writeTo across segments', () => {
  /** Readable segments of 3, 5 and 4 bytes, then writable ones of 2, 6 and 3 bytes. */
  function scatter(): Fixture & { readable: Uint8Array } {
    const f = setup();
    const readable = Uint8Array.from({ length: 12 }, (_, i) => 0xa0 + i);
    f.mem.writeBytes(DATA + 0x000, readable.subarray(0, 3));
    f.mem.writeBytes(DATA + 0x100, readable.subarray(3, 8));
    f.mem.writeBytes(DATA + 0x200, readable.subarray(8, 12));
    f.ring.addChain(0, [
      { addr: DATA + 0x000, len: 3 },
      { addr: DATA + 0x100, len: 5 },
      { addr: DATA + 0x200, len: 4 },
      { addr: DATA + 0x300, len: 2, write: true },
      { addr: DATA + 0x400, len: 6, write: true },
      { addr: DATA + 0x500, len: 3, write: true },
    ]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    return { ...f, readable };
  }

  it('reads the whole readable part, and only it', () => {
    const f = scatter();
    const dst = new Uint8Array(20);
    expect(f.chain.readFrom(f.mem, 0, dst)).toBe(12);
    expect(dst.subarray(0, 12)).toEqual(f.readable);
    expect(dst.subarray(12)).toEqual(new Uint8Array(8));
  });

  it('reads from an offset across segment boundaries', () => {
    const f = scatter();
    for (let offset = 0; offset <= 12; offset++) {
      for (let n = 0; n <= 12; n++) {
        const dst = new Uint8Array(n);
        const got = f.chain.readFrom(f.mem, offset, dst);
        const want = Math.min(n, 12 - offset);
        expect(got).toBe(want);
        expect(dst.subarray(0, got)).toEqual(f.readable.subarray(offset, offset + want));
      }
    }
    expect(f.chain.readFrom(f.mem, 100, new Uint8Array(4))).toBe(0);
  });

  it('writes into the writable part from an offset across segment boundaries', () => {
    const f = scatter();
    const at = [DATA + 0x300, DATA + 0x400, DATA + 0x500];
    const lens = [2, 6, 3];
    const readBack = (): Uint8Array => {
      const out = new Uint8Array(11);
      let k = 0;
      for (let s = 0; s < 3; s++) {
        f.mem.readBytes(at[s], out.subarray(k, k + lens[s]));
        k += lens[s];
      }
      return out;
    };
    for (let offset = 0; offset <= 11; offset++) {
      for (let n = 0; n <= 12; n++) {
        for (const a of at) f.mem.fill(a, 8, 0);
        const src = Uint8Array.from({ length: n }, (_, i) => 0x10 + i);
        const wrote = f.chain.writeTo(f.mem, offset, src);
        const want = Math.min(n, 11 - offset);
        expect(wrote).toBe(want);
        const expected = new Uint8Array(11);
        expected.set(src.subarray(0, want), offset);
        expect(readBack()).toEqual(expected);
        // Nothing past each writable segment is touched.
        expect(f.mem.read8(DATA + 0x302)).toBe(0);
        expect(f.mem.read8(DATA + 0x406)).toBe(0);
        expect(f.mem.read8(DATA + 0x503)).toBe(0);
      }
    }
    // The readable part is never written.
    const readable = new Uint8Array(12);
    expect(f.chain.readFrom(f.mem, 0, readable)).toBe(12);
    expect(readable).toEqual(f.readable);
  });

  it('reports a short write when the writable part is too small', () => {
    const f = scatter();
    expect(f.chain.writeTo(f.mem, 0, new Uint8Array(50))).toBe(11);
    expect(f.chain.writeTo(f.mem, 11, new Uint8Array(1))).toBe(0);
  });

  it('rejects a negative or fractional offset (host error)', () => {
    const f = scatter();
    for (const bad of [-1, 0.5, Number.NaN]) {
      expectVirtioError(() => f.chain.readFrom(f.mem, bad, new Uint8Array(1)), 'INVALID_ARGUMENT');
      expectVirtioError(() => f.chain.writeTo(f.mem, bad, new Uint8Array(1)), 'INVALID_ARGUMENT');
    }
  });
});

describe('2.7.5.3 indirect descriptors', () => {
  const TABLE = DATA + 0x8000;

  it('walks an indirect table alone, ignoring VIRTQ_DESC_F_WRITE on the referring descriptor', () => {
    const f = setup({ indirect: true });
    const len = f.ring.writeTable(TABLE, [
      { addr: DATA, len: 10, flags: DescFlag.NEXT, next: 2 },
      { addr: DATA + 0x300, len: 30, flags: DescFlag.WRITE },
      { addr: DATA + 0x100, len: 20, flags: DescFlag.NEXT | DescFlag.WRITE, next: 1 },
    ]);
    // 2.7.5.3.2: "The device MUST ignore the write-only flag ... in the descriptor that refers to
    // an indirect table."
    f.ring.setDesc(6, { addr: TABLE, len, flags: DescFlag.INDIRECT | DescFlag.WRITE });
    f.ring.publish(6);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.head).toBe(6);
    expect(f.chain.indirect).toBe(true);
    expect(segments(f.chain)).toEqual([
      { addr: DATA, len: 10, write: false },
      { addr: DATA + 0x100, len: 20, write: true },
      { addr: DATA + 0x300, len: 30, write: true },
    ]);
    expect([f.chain.readableBytes, f.chain.writableBytes]).toEqual([10, 50]);
  });

  it('walks direct descriptors followed by an indirect one (2.7.5.3.2)', () => {
    const f = setup({ indirect: true });
    const len = f.ring.writeTable(
      TABLE,
      RingWriter.chainDescriptors([
        { addr: DATA + 0x200, len: 3 },
        { addr: DATA + 0x300, len: 4, write: true },
        { addr: DATA + 0x400, len: 5, write: true },
      ]),
    );
    f.ring.setDesc(2, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 5 });
    f.ring.setDesc(5, { addr: DATA + 0x100, len: 2, flags: DescFlag.NEXT, next: 7 });
    f.ring.setDesc(7, { addr: TABLE, len, flags: DescFlag.INDIRECT });
    f.ring.publish(2);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.head).toBe(2);
    expect(f.chain.indirect).toBe(true);
    expect(segments(f.chain).map((s) => [s.len, s.write])).toEqual([
      [1, false],
      [2, false],
      [3, false],
      [4, true],
      [5, true],
    ]);
    expect([f.chain.readableBytes, f.chain.writableBytes]).toEqual([6, 9]);
  });

  it('accepts an indirect table longer than the queue, up to MAX_INDIRECT_DESCRIPTORS', () => {
    const f = setup({ size: 4, indirect: true });
    const n = MAX_INDIRECT_DESCRIPTORS;
    const len = f.ring.writeTable(
      TABLE,
      RingWriter.chainDescriptors(Array.from({ length: n }, (_, k) => ({ addr: DATA + k, len: 1 }))),
    );
    f.ring.setDesc(0, { addr: TABLE, len, flags: DescFlag.INDIRECT });
    f.ring.publish(0);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.count).toBe(n);
    expect(f.chain.readableBytes).toBe(n);
  });

  it('counts direct descriptors and the indirect table together against the limit', () => {
    const f = setup({ size: 4, indirect: true });
    const n = MAX_INDIRECT_DESCRIPTORS - 3;
    const len = f.ring.writeTable(
      TABLE,
      RingWriter.chainDescriptors(Array.from({ length: n }, (_, k) => ({ addr: DATA + k, len: 1 }))),
    );
    f.ring.writeChain(0, [
      { addr: DATA, len: 1 },
      { addr: DATA, len: 1 },
      { addr: DATA, len: 1 },
    ]);
    f.ring.setDesc(2, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 3 });
    f.ring.setDesc(3, { addr: TABLE, len, flags: DescFlag.INDIRECT });
    f.ring.publish(0);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.chain.count).toBe(MAX_INDIRECT_DESCRIPTORS);
    // One more table entry tips it over.
    const g = setup({ size: 4, indirect: true });
    const len2 = g.ring.writeTable(
      TABLE,
      RingWriter.chainDescriptors(Array.from({ length: n + 1 }, (_, k) => ({ addr: DATA + k, len: 1 }))),
    );
    g.ring.writeChain(0, [
      { addr: DATA, len: 1 },
      { addr: DATA, len: 1 },
      { addr: DATA, len: 1 },
    ]);
    g.ring.setDesc(2, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 3 });
    g.ring.setDesc(3, { addr: TABLE, len: len2, flags: DescFlag.INDIRECT });
    g.ring.publish(0);
    expectStopped(g, 'chain-too-long');
  });
});

describe('2.7.6 / 2.7.8 16-bit index wrap-around', () => {
  it('pops across avail idx 65535 -> 0 over many rounds, using ring slots idx % size', () => {
    const f = setup({ size: 8 });
    const start = 65530;
    f.q.nextAvail = start;
    f.ring.availIdx = start;
    f.q.nextUsed = start;
    f.ring.usedIdx = start;
    let expectedHead = 0;
    let total = 0;
    for (let round = 0; round < 6; round++) {
      const batch = 1 + (round % 8);
      for (let k = 0; k < batch; k++) {
        const head = (expectedHead + k) % 8;
        f.ring.writeChain(head, [{ addr: DATA + 16 * head, len: 16, write: true }]);
        f.ring.publish(head);
      }
      expect(f.q.pending(f.mem)).toBe(batch);
      for (let k = 0; k < batch; k++) {
        const slot = f.q.nextAvail & 7;
        expect(f.q.pop(f.mem, f.chain)).toBe(true);
        expect(f.chain.head).toBe(f.ring.getAvailEntry(slot));
        expect(f.chain.head).toBe((expectedHead + k) % 8);
        const usedSlot = f.q.nextUsed & 7;
        f.q.addUsed(f.mem, f.chain.head, total);
        expect(f.ring.getUsedElem(usedSlot)).toEqual({ id: f.chain.head, len: total });
        total++;
      }
      expectedHead = (expectedHead + batch) % 8;
      expect(f.q.pending(f.mem)).toBe(0);
    }
    expect(total).toBe(21);
    expect(f.q.nextAvail).toBe((start + total) & 0xffff);
    expect(f.q.nextAvail).toBeLessThan(start);
    expect(f.q.nextUsed).toBe((start + total) & 0xffff);
    expect(f.ring.usedIdx).toBe(f.q.nextUsed);
    expect(f.q.error).toBeNull();
  });

  it('keeps popping through several complete wraps of the 16-bit indices', () => {
    const f = setup({ size: 4 });
    f.ring.writeChain(0, [{ addr: DATA, len: 1 }]);
    f.ring.writeChain(1, [{ addr: DATA, len: 2 }]);
    let wraps = 0;
    for (let i = 0; i < 3 * 65536 + 10; i++) {
      f.ring.publish(i & 1);
      if (!f.q.pop(f.mem, f.chain)) throw new Error(`pop ${String(i)} failed: ${f.q.error?.message}`);
      if (f.chain.head !== (i & 1)) throw new Error(`pop ${String(i)} returned head ${String(f.chain.head)}`);
      const before = f.q.nextUsed;
      f.q.addUsed(f.mem, f.chain.head, 0);
      if (f.q.nextUsed < before) wraps++;
    }
    expect(wraps).toBe(3);
    expect(f.q.nextAvail).toBe(10);
    expect(f.ring.usedIdx).toBe(10);
  });

  it('counts pending chains across the wrap, and accepts exactly size ahead', () => {
    const f = setup({ size: 8 });
    f.q.nextAvail = 65534;
    f.ring.availIdx = 3;
    expect(f.q.pending(f.mem)).toBe(5);
    f.ring.availIdx = (65534 + 8) & 0xffff;
    expect(f.q.pending(f.mem)).toBe(8);
    expect(f.q.error).toBeNull();
  });

  it('writes the used element at slot 65535 % size and wraps used.idx to 0', () => {
    const f = setup({ size: 8 });
    f.q.nextUsed = 65535;
    f.q.addUsed(f.mem, 2, 77);
    expect(f.ring.getUsedElem(7)).toEqual({ id: 2, len: 77 });
    expect(f.ring.usedIdx).toBe(0);
    f.q.addUsed(f.mem, 3, 78);
    expect(f.ring.getUsedElem(0)).toEqual({ id: 3, len: 78 });
    expect(f.ring.usedIdx).toBe(1);
  });
});

describe('2.7.7 used buffer notification (needsNotification)', () => {
  it('without EVENT_IDX: notifies unless VIRTQ_AVAIL_F_NO_INTERRUPT is set', () => {
    const f = setup();
    expect(f.q.needsNotification(f.mem)).toBe(false); // nothing used yet
    f.q.addUsed(f.mem, 0, 0);
    expect(f.q.needsNotification(f.mem)).toBe(true);
    expect(f.q.needsNotification(f.mem)).toBe(false); // nothing new since the last decision
    f.ring.availFlags = AvailFlag.NO_INTERRUPT;
    f.q.addUsed(f.mem, 1, 0);
    expect(f.q.needsNotification(f.mem)).toBe(false);
    f.ring.availFlags = 0;
    f.q.addUsed(f.mem, 2, 0);
    expect(f.q.needsNotification(f.mem)).toBe(true);
    // used_event is ignored without EVENT_IDX.
    f.ring.usedEvent = 1000;
    f.q.addUsed(f.mem, 3, 0);
    expect(f.q.needsNotification(f.mem)).toBe(true);
  });

  it('never notifies on a queue that is not ready', () => {
    const f = setup();
    f.q.addUsed(f.mem, 0, 0);
    f.q.ready = false;
    expect(f.q.needsNotification(f.mem)).toBe(false);
  });

  /**
   * Decision after the device moves used.idx from `old` to `old + added` (16-bit) with
   * used_event = `usedEvent`. The first decision after reset always notifies, so one is taken at
   * `old` first.
   */
  function decide(old: number, added: number, usedEvent: number, flags = 0): boolean {
    const f = setup({ eventIdx: true });
    f.q.nextUsed = old;
    f.q.needsNotification(f.mem);
    for (let k = 0; k < added; k++) f.q.addUsed(f.mem, k % 8, 0);
    f.ring.usedEvent = usedEvent;
    f.ring.availFlags = flags;
    return f.q.needsNotification(f.mem);
  }

  it('with EVENT_IDX: notifies when used.idx moved past used_event (vring_need_event)', () => {
    // old = 10, new = 13: notify iff used_event in [10, 13).
    expect(decide(10, 3, 9)).toBe(false);
    expect(decide(10, 3, 10)).toBe(true);
    expect(decide(10, 3, 11)).toBe(true);
    expect(decide(10, 3, 12)).toBe(true);
    expect(decide(10, 3, 13)).toBe(false);
    expect(decide(10, 3, 0x8000)).toBe(false);
    // 2.7.7.2: "idx ... was equal to used_event": one entry, used_event = old.
    expect(decide(10, 1, 10)).toBe(true);
    expect(decide(10, 1, 11)).toBe(false);
  });

  it('with EVENT_IDX: handles used_event just before and after the 16-bit wrap', () => {
    // old = 65534, new = 2 (four entries: 65534, 65535, 0, 1).
    expect(decide(65534, 4, 65533)).toBe(false);
    expect(decide(65534, 4, 65534)).toBe(true);
    expect(decide(65534, 4, 65535)).toBe(true);
    expect(decide(65534, 4, 0)).toBe(true);
    expect(decide(65534, 4, 1)).toBe(true);
    expect(decide(65534, 4, 2)).toBe(false);
    // old = 65535, new = 0: exactly the entry at 65535.
    expect(decide(65535, 1, 65535)).toBe(true);
    expect(decide(65535, 1, 0)).toBe(false);
    expect(decide(65535, 1, 65534)).toBe(false);
  });

  it('with EVENT_IDX: ignores VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.7.2)', () => {
    expect(decide(10, 1, 10, AvailFlag.NO_INTERRUPT)).toBe(true);
    expect(decide(10, 1, 11, AvailFlag.NO_INTERRUPT)).toBe(false);
  });

  it('with EVENT_IDX: the first decision after reset notifies whatever used_event says', () => {
    const f = setup({ eventIdx: true });
    f.ring.usedEvent = 500;
    f.q.addUsed(f.mem, 0, 0);
    expect(f.q.needsNotification(f.mem)).toBe(true);
    f.q.addUsed(f.mem, 1, 0);
    expect(f.q.needsNotification(f.mem)).toBe(false);
    f.q.reset();
    f.ring.zero();
    f.ring.configure(f.q, { eventIdx: true });
    f.ring.usedEvent = 500;
    f.q.addUsed(f.mem, 0, 0);
    expect(f.q.needsNotification(f.mem)).toBe(true);
  });
});

describe('2.7.10 available buffer notification suppression', () => {
  it('without EVENT_IDX: disable sets VIRTQ_USED_F_NO_NOTIFY, enable clears it', () => {
    const f = setup();
    f.ring.usedFlags = 0x8000; // an unrelated bit survives both
    f.q.disableNotification(f.mem);
    expect(f.ring.usedFlags).toBe(0x8000 | UsedFlag.NO_NOTIFY);
    expect(f.q.enableNotification(f.mem)).toBe(false);
    expect(f.ring.usedFlags).toBe(0x8000);
    expect(f.ring.availEvent).toBe(0);
  });

  it('enableNotification reports chains that raced the re-enable', () => {
    const f = setup();
    f.q.disableNotification(f.mem);
    f.ring.addChain(0, [{ addr: DATA, len: 1 }]);
    expect(f.q.enableNotification(f.mem)).toBe(true);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.q.enableNotification(f.mem)).toBe(false);
  });

  it('with EVENT_IDX: enable writes avail_event = next avail index and leaves flags 0', () => {
    const f = setup({ eventIdx: true });
    f.q.nextAvail = 65535;
    f.ring.availIdx = 65535;
    expect(f.q.enableNotification(f.mem)).toBe(false);
    expect(f.ring.availEvent).toBe(65535);
    expect(f.ring.usedFlags).toBe(0);
    f.ring.addChain(0, [{ addr: DATA, len: 1 }]);
    expect(f.ring.availIdx).toBe(0);
    expect(f.q.enableNotification(f.mem)).toBe(true);
  });

  it('with EVENT_IDX: pop keeps avail_event past what it consumed while notifications are on', () => {
    const f = setup({ eventIdx: true });
    f.ring.addChain(0, [{ addr: DATA, len: 1 }]);
    f.ring.addChain(1, [{ addr: DATA, len: 1 }]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.ring.availEvent).toBe(1);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.ring.availEvent).toBe(2);
  });

  it('with EVENT_IDX: disable writes nothing and stops pop from moving avail_event', () => {
    const f = setup({ eventIdx: true });
    f.q.disableNotification(f.mem);
    expect(f.ring.usedFlags).toBe(0); // 2.7.10.2: "The device MUST set flags to 0"
    f.ring.addChain(0, [{ addr: DATA, len: 1 }]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.ring.availEvent).toBe(0);
    expect(f.q.enableNotification(f.mem)).toBe(false);
    expect(f.ring.availEvent).toBe(1);
  });

  it('does not touch the rings when not ready or stopped', () => {
    const f = setup();
    f.q.ready = false;
    f.q.disableNotification(f.mem);
    expect(f.ring.usedFlags).toBe(0);
    f.q.ready = true;
    f.ring.usedFlags = UsedFlag.NO_NOTIFY;
    f.ring.publish(100);
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.enableNotification(f.mem)).toBe(false);
    expect(f.ring.usedFlags).toBe(UsedFlag.NO_NOTIFY);
  });
});

describe('2.7 validate(): ring configuration checks', () => {
  function configured(change: (q: DeviceQueue) => void): { q: DeviceQueue; mem: RamMemory } {
    const mem = new RamMemory(new ArrayBuffer(0x4000));
    const q = new DeviceQueue(16);
    q.size = 16;
    q.descTable = 0x1000;
    q.availRing = 0x2000;
    q.usedRing = 0x3000;
    change(q);
    return { q, mem };
  }

  it('accepts an aligned configuration inside RAM, including an area that ends at the last byte', () => {
    const plain = configured(() => {});
    expect(plain.q.validate(plain.mem)).toBeNull();
    const atEnd = configured((q) => {
      q.availRing = 0x4000 - (6 + 2 * 16);
    });
    expect(atEnd.q.validate(atEnd.mem)).toBeNull();
    const smaller = configured((q) => {
      q.size = 4; // any power of two up to the maximum
    });
    expect(smaller.q.validate(smaller.mem)).toBeNull();
  });

  const cases: Array<[string, (q: DeviceQueue) => void, QueueErrorReason, RegExp]> = [
    ['size 0', (q) => (q.size = 0), 'invalid-size', /invalid queue size 0/],
    ['size not a power of two', (q) => (q.size = 12), 'invalid-size', /invalid queue size 12/],
    ['size above the maximum', (q) => (q.size = 32), 'invalid-size', /invalid queue size 32/],
    ['misaligned descriptor table', (q) => (q.descTable = 0x1008), 'misaligned-ring', /desc 0x1008/],
    ['misaligned available ring', (q) => (q.availRing = 0x2001), 'misaligned-ring', /avail 0x2001/],
    ['misaligned used ring', (q) => (q.usedRing = 0x3002), 'misaligned-ring', /used 0x3002/],
    [
      'descriptor table outside RAM',
      (q) => (q.descTable = 0x4000),
      'ring-out-of-memory',
      /descriptor table 0x4000 outside ram/,
    ],
    [
      'descriptor table straddling the end of RAM',
      (q) => (q.descTable = 0x4000 - 0x80),
      'ring-out-of-memory',
      /descriptor table/,
    ],
    [
      'available ring outside RAM',
      (q) => (q.availRing = 0x10_0000),
      'ring-out-of-memory',
      /available ring 0x100000 outside ram/,
    ],
    [
      'available ring straddling the end of RAM',
      (q) => (q.availRing = 0x4000 - 0x10),
      'ring-out-of-memory',
      /available ring/,
    ],
    [
      'used ring outside RAM',
      (q) => (q.usedRing = 2 ** 40),
      'ring-out-of-memory',
      /used ring 0x10000000000 outside ram/,
    ],
    [
      'used ring straddling the end of RAM',
      (q) => (q.usedRing = 0x4000 - 0x40),
      'ring-out-of-memory',
      /used ring/,
    ],
  ];
  for (const [what, change, reason, message] of cases) {
    it(`rejects ${what} as ${reason} without recording it`, () => {
      const { q, mem } = configured(change);
      const e = q.validate(mem);
      expect(e?.reason).toBe(reason);
      expect(e?.message).toMatch(message);
      expect(q.error).toBeNull();
    });
  }
});

/** RAM that claims every address below 2^40 is valid; reads outside the backing RAM return 0. */
class HugeSparseMemory extends RamMemory {
  override isValid(gpa: number, length: number): boolean {
    return gpa >= 0 && length >= 0 && gpa + length <= 2 ** 40;
  }
}

describe('tier 2: malformed rings stop the queue with a recorded reason, never a throw', () => {
  const TABLE = DATA + 0x8000;

  const cases: Array<[string, QueueErrorReason, (f: Fixture) => void, { indirect?: boolean }?]> = [
    ['avail idx more than size ahead', 'avail-idx-too-far', (f) => (f.ring.availIdx = 9)],
    [
      'avail idx more than size ahead across the wrap',
      'avail-idx-too-far',
      (f) => {
        f.q.nextAvail = 65530;
        f.ring.availIdx = (65530 + 9) & 0xffff;
      },
    ],
    ['avail idx behind the device (went backwards)', 'avail-idx-too-far', (f) => (f.ring.availIdx = 0xffff)],
    ['head equal to the queue size', 'head-out-of-range', (f) => f.ring.publish(8)],
    ['head 0xffff', 'head-out-of-range', (f) => f.ring.publish(0xffff)],
    [
      'next out of range',
      'next-out-of-range',
      (f) => {
        f.ring.setDesc(0, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 8 });
        f.ring.publish(0);
      },
    ],
    [
      'a descriptor chained to itself',
      'chain-too-long',
      (f) => {
        f.ring.setDesc(3, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 3 });
        f.ring.publish(3);
      },
    ],
    [
      'a loop through the whole table',
      'chain-too-long',
      (f) => {
        for (let i = 0; i < 8; i++) {
          f.ring.setDesc(i, { addr: DATA, len: 1, flags: DescFlag.NEXT, next: (i + 1) % 8 });
        }
        f.ring.publish(5);
      },
    ],
    [
      'a loop inside an indirect table',
      'chain-too-long',
      (f) => {
        const len = f.ring.writeTable(TABLE, [
          { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 1 },
          { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 2 },
          { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 1 },
        ]);
        f.ring.setDesc(0, { addr: TABLE, len, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'next out of range inside an indirect table',
      'next-out-of-range',
      (f) => {
        const len = f.ring.writeTable(TABLE, [
          { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 1 },
          { addr: DATA, len: 1, flags: DescFlag.NEXT, next: 2 },
        ]);
        f.ring.setDesc(0, { addr: TABLE, len, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect table longer than the chain limit',
      'chain-too-long',
      (f) => {
        f.ring.setDesc(0, {
          addr: TABLE,
          len: 16 * (MAX_INDIRECT_DESCRIPTORS + 1),
          flags: DescFlag.INDIRECT,
        });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'a zero-length descriptor',
      'zero-length-desc',
      (f) => {
        f.ring.writeChain(0, [
          { addr: DATA, len: 4 },
          { addr: DATA, len: 0, write: true },
        ]);
        f.ring.publish(0);
      },
    ],
    [
      'a zero-length descriptor inside an indirect table',
      'zero-length-desc',
      (f) => f.ring.addIndirect(0, TABLE, [{ addr: DATA, len: 0 }]),
      { indirect: true },
    ],
    [
      'a readable descriptor after a writable one',
      'readable-after-writable',
      (f) =>
        f.ring.addChain(0, [
          { addr: DATA, len: 4, write: true },
          { addr: DATA, len: 4 },
        ]),
    ],
    [
      'a readable descriptor after a writable one inside an indirect table',
      'readable-after-writable',
      (f) =>
        f.ring.addIndirect(0, TABLE, [
          { addr: DATA, len: 4 },
          { addr: DATA, len: 4, write: true },
          { addr: DATA, len: 4 },
        ]),
      { indirect: true },
    ],
    [
      'a writable direct descriptor followed by a readable indirect entry',
      'readable-after-writable',
      (f) => {
        const len = f.ring.writeTable(TABLE, [{ addr: DATA, len: 4 }]);
        f.ring.setDesc(0, { addr: DATA, len: 4, flags: DescFlag.NEXT | DescFlag.WRITE, next: 1 });
        f.ring.setDesc(1, { addr: TABLE, len, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect descriptor without VIRTIO_F_INDIRECT_DESC',
      'indirect-not-negotiated',
      (f) => f.ring.addIndirect(0, TABLE, [{ addr: DATA, len: 4 }]),
    ],
    [
      'an indirect descriptor with VIRTQ_DESC_F_NEXT',
      'indirect-with-next',
      (f) => {
        f.ring.writeTable(TABLE, [{ addr: DATA, len: 4 }]);
        f.ring.setDesc(0, { addr: TABLE, len: 16, flags: DescFlag.INDIRECT | DescFlag.NEXT, next: 1 });
        f.ring.setDesc(1, { addr: DATA, len: 4 });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect descriptor inside an indirect table',
      'nested-indirect',
      (f) => {
        f.ring.writeTable(TABLE + 0x100, [{ addr: DATA, len: 4 }]);
        const len = f.ring.writeTable(TABLE, [
          { addr: DATA, len: 4, flags: DescFlag.NEXT, next: 1 },
          { addr: TABLE + 0x100, len: 16, flags: DescFlag.INDIRECT },
        ]);
        f.ring.setDesc(0, { addr: TABLE, len, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect table of length 0',
      'indirect-bad-length',
      (f) => {
        f.ring.setDesc(0, { addr: TABLE, len: 0, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect table whose length is not a multiple of 16',
      'indirect-bad-length',
      (f) => {
        f.ring.writeTable(TABLE, [{ addr: DATA, len: 4 }]);
        f.ring.setDesc(0, { addr: TABLE, len: 24, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'an indirect table of 8 bytes',
      'indirect-bad-length',
      (f) => {
        f.ring.setDesc(0, { addr: TABLE, len: 8, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
    [
      'a buffer past the end of RAM',
      'desc-out-of-memory',
      (f) => f.ring.addChain(0, [{ addr: RAM, len: 1 }]),
    ],
    [
      'a buffer straddling the end of RAM',
      'desc-out-of-memory',
      (f) => f.ring.addChain(0, [{ addr: RAM - 4, len: 8, write: true }]),
    ],
    [
      'a 4 GiB buffer in small RAM',
      'desc-out-of-memory',
      (f) => f.ring.addChain(0, [{ addr: DATA, len: 0xffff_ffff }]),
    ],
    [
      'a buffer at an address beyond 2^53',
      'desc-out-of-memory',
      (f) => {
        f.ring.setDesc(0, { addr: 0, len: 1 });
        f.mem.write32(f.ring.descTable + 4, 0xffff_ffff); // addr high word: 0xffffffff_00000000
        f.ring.publish(0);
      },
    ],
    [
      'an indirect table outside RAM',
      'desc-out-of-memory',
      (f) => {
        f.ring.setDesc(0, { addr: RAM - 16, len: 32, flags: DescFlag.INDIRECT });
        f.ring.publish(0);
      },
      { indirect: true },
    ],
  ];

  for (const [what, reason, build, opts] of cases) {
    it(`${what}: ${reason}`, () => {
      const f = setup({ indirect: opts?.indirect });
      build(f);
      expectStopped(f, reason);
    });
  }

  it('a chain longer than 2^32 bytes in total: chain-too-large (2.7.5.2)', () => {
    // No RAM of this size exists here: the memory claims huge ranges are valid, so the length check
    // is what trips. Reads of the rings come from the small backing buffer.
    const build = (lens: number[]): Fixture => {
      const mem = new HugeSparseMemory(new ArrayBuffer(RAM));
      const ring = RingWriter.at(mem, 8, RING_BASE);
      const q = new DeviceQueue(8);
      ring.configure(q);
      ring.addChain(
        0,
        lens.map((len, k) => ({ addr: 2 ** 33 * (k + 1), len, write: k > 0 })),
      );
      return { mem, ring, q, chain: q.newChain() };
    };
    const ok = build([0xffff_ffff, 1]); // exactly 2^32: allowed ("longer than" 2^32 is not)
    expect(ok.q.pop(ok.mem, ok.chain)).toBe(true);
    expect(ok.chain.readableBytes + ok.chain.writableBytes).toBe(2 ** 32);
    expect(ok.chain.len[0]).toBe(0xffff_ffff);
    const over = build([0xffff_ffff, 1, 1]);
    expectStopped(over, 'chain-too-large');
    const big = build([0xffff_ffff, 0xffff_ffff]);
    expectStopped(big, 'chain-too-large');
    expect(big.q.error?.message).toMatch(/2\^32/);
  });

  it('keeps the first error: the queue stays stopped until reset()', () => {
    const f = setup();
    f.ring.publish(8);
    f.ring.addChain(0, [{ addr: DATA, len: 4 }]);
    expectStopped(f, 'head-out-of-range');
    const first = f.q.error;
    for (let i = 0; i < 3; i++) {
      expect(f.q.pop(f.mem, f.chain)).toBe(false);
      expect(f.q.pending(f.mem)).toBe(0);
    }
    f.ring.availIdx = 100; // would be avail-idx-too-far: not recorded over the first error
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.error).toBe(first);
    expect(f.q.enableNotification(f.mem)).toBe(false);

    f.q.reset();
    f.ring.zero();
    f.ring.configure(f.q);
    f.ring.addChain(0, [{ addr: DATA, len: 4 }]);
    expect(f.q.pop(f.mem, f.chain)).toBe(true);
    expect(f.q.error).toBeNull();
  });

  it('pending() returns -1 once, when it detects a runaway avail idx', () => {
    const f = setup();
    f.ring.availIdx = 20;
    expect(f.q.pending(f.mem)).toBe(-1);
    expect(f.q.error?.reason).toBe('avail-idx-too-far');
    expect(f.q.error?.message).toMatch(/runs 20 ahead of queue size 8/);
    expect(f.q.pending(f.mem)).toBe(0);
  });

  it('consumes the bad available entry: nextAvail moves past it', () => {
    const f = setup();
    f.ring.publish(8);
    expect(f.q.pop(f.mem, f.chain)).toBe(false);
    expect(f.q.nextAvail).toBe(1);
    expect(f.chain.head).toBe(8);
  });
});

describe('tier 3: addUsed host errors', () => {
  it('drops the element on a queue the driver disabled, without throwing (a guest action)', () => {
    const f = setup();
    f.q.ready = false;
    expect(f.q.addUsed(f.mem, 0, 0)).toBe(false);
    expect(f.ring.usedIdx).toBe(0);
    expect(f.q.nextUsed).toBe(0);
  });

  it('throws INVALID_ARGUMENT for a head outside the queue', () => {
    const f = setup();
    for (const head of [8, 0xffff, -1, 1.5, Number.NaN]) {
      expectVirtioError(() => f.q.addUsed(f.mem, head, 0), 'INVALID_ARGUMENT');
    }
    expect(f.ring.usedIdx).toBe(0);
    expect(f.q.nextUsed).toBe(0);
  });

  it('throws INVALID_ARGUMENT for a length that is not a 32-bit unsigned integer', () => {
    const f = setup();
    for (const len of [-1, 2 ** 32, 0.5, Number.NaN]) {
      expectVirtioError(() => f.q.addUsed(f.mem, 0, len), 'INVALID_ARGUMENT');
    }
    expect(f.ring.usedIdx).toBe(0);
    f.q.addUsed(f.mem, 7, 0xffff_ffff);
    expect(f.ring.getUsedElem(0)).toEqual({ id: 7, len: 0xffff_ffff });
    expect(f.ring.usedIdx).toBe(1);
  });
});

describe('2.7.8 grouped used elements', () => {
  it('publishes a group of used elements with one used.idx update', () => {
    const mem = new RamMemory(new ArrayBuffer(0x10000));
    const ring = RingWriter.at(mem, 8, 0x1000);
    const q = new DeviceQueue(8);
    ring.configure(q, {});
    q.addUsed(mem, 0, 10, false);
    q.addUsed(mem, 1, 20, false);
    expect(ring.usedIdx).toBe(0);
    q.addUsed(mem, 2, 30);
    expect(ring.usedIdx).toBe(3);
    q.addUsed(mem, 3, 40, false);
    q.publishUsed(mem);
    expect(ring.usedIdx).toBe(4);
    expect(ring.getUsedElem(1)).toEqual({ id: 1, len: 20 });
  });
});
