import { describe, expect, it } from 'vitest';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { AvailFlag, DescFlag, UsedFlag, VirtioError } from '../spec/index.js';
import { RingWriter } from '../testing/index.js';
import { DeviceQueue } from './deviceQueue.js';
import { DriverQueue, type DriverQueueOptions, type Segment } from './driverQueue.js';

const RAM = 0x2_0000;
const RING_BASE = 0x1000;
/** Indirect tables come from [TABLES, TABLES + 0x4000). */
const TABLES = 0x8000;
const DATA = 0x1_0000;

interface Fixture {
  mem: RamMemory;
  /** Raw view of the same ring: plays the device, hostile or not. */
  ring: RingWriter;
  dq: DriverQueue<string>;
  tables: GuestAllocator;
}

function setup(
  size = 8,
  options: { eventIdx?: boolean; indirect?: boolean; tableBytes?: number } = {},
): Fixture {
  const mem = new RamMemory(new ArrayBuffer(RAM));
  const ring = RingWriter.at(mem, size, RING_BASE);
  const tables = new GuestAllocator(TABLES, options.tableBytes ?? 0x4000);
  const opts: DriverQueueOptions = { eventIdx: options.eventIdx };
  if (options.indirect === true) opts.indirectAllocator = tables;
  const dq = new DriverQueue<string>(mem, 0, size, ring.rings, opts);
  return { mem, ring, dq, tables };
}

/** A device over the same ring, for end-to-end checks of what the driver wrote. */
function deviceFor(f: Fixture, features: { indirectDesc?: boolean; eventIdx?: boolean } = {}): DeviceQueue {
  const q = new DeviceQueue(f.ring.size);
  f.ring.configure(q, features);
  expect(q.validate(f.mem)).toBeNull();
  return q;
}

const seg = (addr: number, len: number): Segment => ({ addr, len });

function expectVirtioError(fn: () => unknown, code: string, message?: RegExp): void {
  let e: unknown;
  try {
    fn();
  } catch (err) {
    e = err;
  }
  expect(e).toBeInstanceOf(VirtioError);
  expect((e as VirtioError).code).toBe(code);
  if (message !== undefined) expect((e as VirtioError).message).toMatch(message);
}

describe('DriverQueue construction', () => {
  it('rejects a size that is not a power of two up to 32768', () => {
    const mem = new RamMemory(new ArrayBuffer(RAM));
    const rings = RingWriter.packedLayout(RING_BASE, 8);
    for (const bad of [0, 3, 65536, -2, 2.5]) {
      expectVirtioError(() => new DriverQueue(mem, 0, bad, rings), 'QUEUE_INVALID_SIZE');
    }
  });

  it('starts with every descriptor free and nothing in flight', () => {
    const f = setup(16);
    expect(f.dq.numFree).toBe(16);
    expect(f.dq.inFlight).toBe(0);
    expect(f.dq.hasUsed()).toBe(false);
    expect(f.dq.getUsed()).toBeNull();
    expect(f.dq.broken).toBeNull();
  });

  it('reports the area sizes of 2.7', () => {
    expect(DriverQueue.areaBytes(256)).toEqual({ desc: 4096, avail: 518, used: 2054 });
  });
});

describe('2.7.13 add: descriptors, available ring and the free list', () => {
  it('writes a direct chain (readable then writable) and publishes its head', () => {
    const f = setup();
    expect(f.dq.add([seg(DATA, 10), seg(DATA + 0x100, 20)], [seg(DATA + 0x200, 30)], 'a')).toBe(true);
    expect(f.ring.availIdx).toBe(1);
    const head = f.ring.getAvailEntry(0);
    const d0 = f.ring.getDesc(head);
    expect(d0).toMatchObject({ addr: DATA, len: 10, flags: DescFlag.NEXT });
    const d1 = f.ring.getDesc(d0.next);
    expect(d1).toMatchObject({ addr: DATA + 0x100, len: 20, flags: DescFlag.NEXT });
    const d2 = f.ring.getDesc(d1.next);
    expect(d2).toEqual({ addr: DATA + 0x200, len: 30, flags: DescFlag.WRITE, next: 0 });
    expect(f.dq.numFree).toBe(5);
    expect(f.dq.inFlight).toBe(1);
    // The device sees exactly that chain.
    const q = deviceFor(f);
    const chain = q.newChain();
    expect(q.pop(f.mem, chain)).toBe(true);
    expect([chain.head, chain.count, chain.readableBytes, chain.writableBytes]).toEqual([head, 3, 30, 30]);
  });

  it('exhausts the free list, then returns false without writing anything', () => {
    const f = setup(4);
    for (let i = 0; i < 4; i++) expect(f.dq.add([seg(DATA, 1)], [], `b${String(i)}`)).toBe(true);
    expect(f.dq.numFree).toBe(0);
    expect(f.dq.add([seg(DATA, 1)], [], 'full')).toBe(false);
    expect(f.ring.availIdx).toBe(4);
    expect(f.dq.inFlight).toBe(4);
    // Harvest two (2 free): a 3-segment buffer still does not fit, a 2-segment one does.
    f.ring.pushUsed(f.ring.getAvailEntry(0), 0);
    f.ring.pushUsed(f.ring.getAvailEntry(1), 0);
    expect(f.dq.getUsed()?.token).toBe('b0');
    expect(f.dq.getUsed()?.token).toBe('b1');
    expect(f.dq.numFree).toBe(2);
    expect(f.dq.add([seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1)], 'three')).toBe(false);
    expect(f.dq.numFree).toBe(2);
    expect(f.ring.availIdx).toBe(4);
    expect(f.dq.add([seg(DATA, 1)], [seg(DATA, 1)], 'two')).toBe(true);
    expect(f.dq.numFree).toBe(0);
  });

  it('reuses freed descriptors in chains the device can walk, after out-of-order harvests', () => {
    const f = setup(8);
    const q = deviceFor(f);
    const chain = q.newChain();
    const heads: number[] = [];
    // Three buffers of 3, 2 and 3 descriptors.
    f.dq.add([seg(DATA, 1), seg(DATA, 2)], [seg(DATA, 3)], 'x');
    f.dq.add([seg(DATA, 4)], [seg(DATA, 5)], 'y');
    f.dq.add([seg(DATA, 6)], [seg(DATA, 7), seg(DATA, 8)], 'z');
    expect(f.dq.numFree).toBe(0);
    while (q.pop(f.mem, chain)) heads.push(chain.head);
    // Device completes the middle one first, then the last, then the first.
    q.addUsed(f.mem, heads[1], 5);
    q.addUsed(f.mem, heads[2], 15);
    expect(f.dq.getUsed()).toEqual({ token: 'y', len: 5 });
    expect(f.dq.getUsed()).toEqual({ token: 'z', len: 15 });
    expect(f.dq.numFree).toBe(5);
    // A 5-descriptor buffer reuses the scattered free descriptors.
    expect(f.dq.add([seg(DATA, 1), seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1), seg(DATA, 1)], 'w')).toBe(
      true,
    );
    expect(f.dq.numFree).toBe(0);
    expect(q.pop(f.mem, chain)).toBe(true);
    expect([chain.count, chain.readableCount]).toEqual([5, 2]);
    q.addUsed(f.mem, heads[0], 3);
    q.addUsed(f.mem, chain.head, 0);
    expect(f.dq.getUsed()).toEqual({ token: 'x', len: 3 });
    expect(f.dq.getUsed()).toEqual({ token: 'w', len: 0 });
    expect(f.dq.numFree).toBe(8);
    expect(f.dq.inFlight).toBe(0);
    expect(q.error).toBeNull();
  });

  it('rejects an empty buffer and zero-length segments with INVALID_ARGUMENT, writing nothing', () => {
    const f = setup(4);
    expectVirtioError(() => f.dq.add([], [], 'e'), 'INVALID_ARGUMENT', /at least one segment/);
    expectVirtioError(() => f.dq.add([seg(DATA, 0)], [], 'e'), 'INVALID_ARGUMENT', /segment length 0/);
    expectVirtioError(() => f.dq.add([seg(DATA, 4)], [seg(DATA, 0)], 'e'), 'INVALID_ARGUMENT');
    expect(f.dq.numFree).toBe(4);
    expect(f.ring.availIdx).toBe(0);
  });

  it('rejects segments a descriptor cannot hold, and buffers past 2^32 bytes (2.7.5.2)', () => {
    const f = setup(4);
    const bad: Segment[] = [
      seg(DATA, -1),
      seg(DATA, 1.5),
      seg(DATA, Number.NaN),
      seg(DATA, 2 ** 32),
      seg(-16, 1),
      seg(0.5, 1),
      seg(2 ** 53, 1),
      seg(Number.NaN, 1),
    ];
    for (const s of bad) {
      expectVirtioError(() => f.dq.add([s], [], 'e'), 'INVALID_ARGUMENT');
      expectVirtioError(() => f.dq.add([], [s], 'e'), 'INVALID_ARGUMENT');
    }
    expectVirtioError(
      () => f.dq.add([seg(DATA, 0xffff_ffff)], [seg(DATA, 2)], 'e'),
      'INVALID_ARGUMENT',
      /longer than 2\^32/,
    );
    expect(f.dq.numFree).toBe(4);
    expect(f.ring.availIdx).toBe(0);
    // Exactly 2^32 is allowed.
    expect(f.dq.add([seg(DATA, 0xffff_ffff)], [seg(DATA, 1)], 'max')).toBe(true);
  });

  it('rejects more segments than the queue size without indirect tables (2.7.5.3.1)', () => {
    const f = setup(2);
    expectVirtioError(
      () => f.dq.add([seg(DATA, 1), seg(DATA, 1)], [seg(DATA, 1)], 'e'),
      'INVALID_ARGUMENT',
      /3 segments does not fit a queue of 2/,
    );
    expect(f.dq.numFree).toBe(2);
  });
});

describe('2.7.5.3 indirect mode', () => {
  it('puts a multi-segment buffer in an indirect table: one ring descriptor', () => {
    const f = setup(8, { indirect: true });
    expect(f.dq.add([seg(DATA, 10)], [seg(DATA + 0x100, 20), seg(DATA + 0x200, 30)], 'i')).toBe(true);
    expect(f.dq.numFree).toBe(7);
    expect(f.tables.count).toBe(1);
    const head = f.ring.getAvailEntry(0);
    const d = f.ring.getDesc(head);
    expect(d.flags).toBe(DescFlag.INDIRECT);
    expect(d.len).toBe(48);
    expect(d.addr).toBeGreaterThanOrEqual(TABLES);
    expect(d.addr % 16).toBe(0);
    expect(f.ring.getTableDesc(d.addr, 0)).toEqual({ addr: DATA, len: 10, flags: DescFlag.NEXT, next: 1 });
    expect(f.ring.getTableDesc(d.addr, 1)).toEqual({
      addr: DATA + 0x100,
      len: 20,
      flags: DescFlag.NEXT | DescFlag.WRITE,
      next: 2,
    });
    expect(f.ring.getTableDesc(d.addr, 2)).toEqual({
      addr: DATA + 0x200,
      len: 30,
      flags: DescFlag.WRITE,
      next: 0,
    });
    const q = deviceFor(f, { indirectDesc: true });
    const chain = q.newChain();
    expect(q.pop(f.mem, chain)).toBe(true);
    expect([chain.indirect, chain.count, chain.readableBytes, chain.writableBytes]).toEqual([
      true,
      3,
      10,
      50,
    ]);
    q.addUsed(f.mem, chain.head, 50);
    expect(f.dq.getUsed()).toEqual({ token: 'i', len: 50 });
    expect(f.tables.count).toBe(0);
    expect(f.dq.numFree).toBe(8);
  });

  it('sends single-segment buffers indirect too when minIndirectSegments is 1', () => {
    const mem = new RamMemory(new ArrayBuffer(RAM));
    const ring = RingWriter.at(mem, 8, RING_BASE);
    const tables = new GuestAllocator(TABLES, 0x4000);
    const dq = new DriverQueue<string>(mem, 0, 8, ring.rings, {
      indirectAllocator: tables,
      minIndirectSegments: 1,
    });
    expect(dq.add([seg(DATA, 4)], [], 'one')).toBe(true);
    expect(tables.count).toBe(1);
    const d = ring.getDesc(ring.getAvailEntry(0));
    expect([d.flags, d.len]).toEqual([DescFlag.INDIRECT, 16]);
    const q = new DeviceQueue(8);
    ring.configure(q, { indirectDesc: true });
    const chain = q.newChain();
    expect(q.pop(mem, chain)).toBe(true);
    expect([chain.indirect, chain.count, chain.readableBytes]).toEqual([true, 1, 4]);
  });

  it('keeps single-segment buffers direct', () => {
    const f = setup(8, { indirect: true });
    f.dq.add([seg(DATA, 4)], [], 'one');
    expect(f.tables.count).toBe(0);
    expect(f.ring.getDesc(f.ring.getAvailEntry(0)).flags).toBe(0);
  });

  it('holds more buffers than descriptors allow directly, and more segments than the queue size', () => {
    const f = setup(2, { indirect: true });
    const six = [seg(DATA, 1), seg(DATA, 2), seg(DATA, 3)];
    expect(f.dq.add(six, six, 'a')).toBe(true);
    expect(f.dq.add(six, six, 'b')).toBe(true);
    expect(f.dq.numFree).toBe(0);
    expect(f.dq.add(six, six, 'c')).toBe(false);
    expect(f.tables.count).toBe(2);
    const q = deviceFor(f, { indirectDesc: true });
    const chain = q.newChain();
    expect(q.pop(f.mem, chain)).toBe(true);
    expect(chain.count).toBe(6);
    q.addUsed(f.mem, chain.head, 6);
    expect(f.dq.getUsed()).toEqual({ token: 'a', len: 6 });
    expect(f.tables.count).toBe(1);
  });

  it('falls back to direct descriptors when the table allocator is exhausted', () => {
    const f = setup(8, { indirect: true, tableBytes: 48 });
    expect(f.dq.add([seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1)], 'fits')).toBe(true);
    expect(f.tables.count).toBe(1);
    expect(f.dq.numFree).toBe(7);
    expect(f.dq.add([seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1)], 'direct')).toBe(true);
    expect(f.tables.count).toBe(1);
    expect(f.dq.numFree).toBe(4);
    expect(f.ring.getDesc(f.ring.getAvailEntry(1)).flags).toBe(DescFlag.NEXT);
    // Too long for the remaining descriptors and no table: try again later.
    expect(f.dq.add([seg(DATA, 1), seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1), seg(DATA, 1)], 'x')).toBe(
      false,
    );
    expect(f.dq.numFree).toBe(4);
    // Harvesting returns both kinds correctly.
    f.ring.pushUsed(f.ring.getAvailEntry(1), 2);
    f.ring.pushUsed(f.ring.getAvailEntry(0), 1);
    expect(f.dq.getUsed()).toEqual({ token: 'direct', len: 2 });
    expect(f.dq.getUsed()).toEqual({ token: 'fits', len: 1 });
    expect(f.tables.count).toBe(0);
    expect(f.dq.numFree).toBe(8);
  });

  it('returns false for a buffer longer than the queue when no table is free', () => {
    const f = setup(2, { indirect: true, tableBytes: 16 });
    expect(f.dq.add([seg(DATA, 1), seg(DATA, 1)], [seg(DATA, 1)], 'x')).toBe(false);
    expect(f.dq.numFree).toBe(2);
  });

  it('releases the tables of buffers taken back by detachUnused', () => {
    const f = setup(4, { indirect: true });
    f.dq.add([seg(DATA, 1)], [seg(DATA, 1)], 'a');
    f.dq.add([seg(DATA, 1)], [], 'b');
    f.dq.add([seg(DATA, 1)], [seg(DATA, 1), seg(DATA, 1)], 'c');
    expect(f.tables.count).toBe(2);
    expect(f.dq.detachUnused().sort()).toEqual(['a', 'b', 'c']);
    expect(f.tables.count).toBe(0);
    expect(f.dq.numFree).toBe(4);
    expect(f.dq.inFlight).toBe(0);
  });
});

describe('2.7.14 getUsed', () => {
  it('returns used buffers in used-ring order with their lengths', () => {
    const f = setup(8);
    f.dq.add([seg(DATA, 4)], [seg(DATA + 0x10, 8)], 'a');
    f.dq.add([], [seg(DATA + 0x20, 8)], 'b');
    f.dq.add([seg(DATA, 4)], [], 'c');
    const heads = [0, 1, 2].map((i) => f.ring.getAvailEntry(i));
    f.ring.pushUsed(heads[0], 8);
    f.ring.pushUsed(heads[1], 3);
    expect(f.dq.hasUsed()).toBe(true);
    expect(f.dq.getUsed()).toEqual({ token: 'a', len: 8 });
    expect(f.dq.getUsed()).toEqual({ token: 'b', len: 3 });
    expect(f.dq.getUsed()).toBeNull();
    expect(f.dq.hasUsed()).toBe(false);
    f.ring.pushUsed(heads[2], 0);
    expect(f.dq.getUsed()).toEqual({ token: 'c', len: 0 });
    expect(f.dq.numFree).toBe(8);
  });

  it('returns buffers used out of order', () => {
    const f = setup(4);
    for (const t of ['a', 'b', 'c', 'd']) f.dq.add([], [seg(DATA, 16)], t);
    const heads = [0, 1, 2, 3].map((i) => f.ring.getAvailEntry(i));
    for (const i of [2, 0, 3, 1]) f.ring.pushUsed(heads[i], i);
    const got = [];
    for (let u = f.dq.getUsed(); u !== null; u = f.dq.getUsed()) got.push(u);
    expect(got).toEqual([
      { token: 'c', len: 2 },
      { token: 'a', len: 0 },
      { token: 'd', len: 3 },
      { token: 'b', len: 1 },
    ]);
    expect(f.dq.numFree).toBe(4);
  });

  it('harvests across the used idx wrap (16 bits)', () => {
    const f = setup(4);
    for (let i = 0; i < 65536 + 6; i++) {
      f.dq.add([seg(DATA, 1)], [], `t${String(i)}`);
      f.ring.pushUsed(f.ring.getAvailEntry(i % 4), 0);
      const u = f.dq.getUsed();
      if (u?.token !== `t${String(i)}`) throw new Error(`harvest ${String(i)} returned ${String(u?.token)}`);
    }
    expect(f.ring.usedIdx).toBe(6);
    expect(f.ring.availIdx).toBe(6);
    expect(f.dq.numFree).toBe(4);
  });
});

describe('detachUnused', () => {
  it('takes back every outstanding buffer and frees every descriptor', () => {
    const f = setup(8);
    f.dq.add([seg(DATA, 1), seg(DATA, 1)], [], 'a');
    f.dq.add([seg(DATA, 1)], [seg(DATA, 1)], 'b');
    f.dq.add([seg(DATA, 1)], [], 'c');
    f.ring.pushUsed(f.ring.getAvailEntry(1), 1);
    expect(f.dq.getUsed()?.token).toBe('b');
    expect(f.dq.detachUnused()).toEqual(['a', 'c']);
    expect(f.dq.numFree).toBe(8);
    expect(f.dq.inFlight).toBe(0);
    expect(f.dq.detachUnused()).toEqual([]);
  });
});

describe('2.7.13.4 / 2.7.10 kickPrepare', () => {
  it('without EVENT_IDX: kicks unless VIRTQ_USED_F_NO_NOTIFY, and only for new buffers', () => {
    const f = setup(8);
    expect(f.dq.kickPrepare()).toBe(false); // nothing added
    f.dq.add([seg(DATA, 1)], [], 'a');
    expect(f.dq.kickPrepare()).toBe(true);
    expect(f.dq.kickPrepare()).toBe(false);
    f.ring.usedFlags = UsedFlag.NO_NOTIFY;
    f.dq.add([seg(DATA, 1)], [], 'b');
    expect(f.dq.kickPrepare()).toBe(false);
    f.ring.usedFlags = 0;
    f.dq.add([seg(DATA, 1)], [], 'c');
    f.dq.add([seg(DATA, 1)], [], 'd');
    expect(f.dq.kickPrepare()).toBe(true);
    // avail_event is ignored without EVENT_IDX.
    f.ring.availEvent = 1000;
    f.dq.add([seg(DATA, 1)], [], 'e');
    expect(f.dq.kickPrepare()).toBe(true);
  });

  /** A driver whose avail idx is `start` with everything harvested (cycled through a raw device). */
  function warmed(start: number, eventIdx: boolean): Fixture {
    const f = setup(4, { eventIdx });
    for (let i = 0; i < start; i++) {
      f.dq.add([seg(DATA, 1)], [], 'w');
      f.ring.pushUsed(f.ring.getAvailEntry(i % 4), 0);
      f.dq.getUsed();
    }
    f.dq.kickPrepare();
    expect(f.ring.availIdx).toBe(start & 0xffff);
    return f;
  }

  it('with EVENT_IDX: kicks when avail.idx moves past avail_event (vring_need_event)', () => {
    const f = warmed(10, true);
    const addAndKick = (n: number, availEvent: number): boolean => {
      for (let k = 0; k < n; k++) {
        f.dq.add([seg(DATA, 1)], [], 'k');
      }
      f.ring.availEvent = availEvent;
      const kick = f.dq.kickPrepare();
      for (let k = 0; k < n; k++) {
        f.ring.pushUsed(f.ring.getAvailEntry((f.ring.availIdx - n + k) & 3), 0);
        f.dq.getUsed();
      }
      return kick;
    };
    // old = 10, new = 13: kick iff avail_event in [10, 13).
    expect(addAndKick(3, 9)).toBe(false);
    expect(addAndKick(3, 13)).toBe(true); // now old = 13, new = 16
    expect(addAndKick(3, 15)).toBe(false); // 16..19: 15 is behind
    expect(addAndKick(3, 19)).toBe(true); // 19..22
    expect(addAndKick(1, 22)).toBe(true); // 22..23: exactly the entry at avail_event
    expect(addAndKick(1, 24)).toBe(false); // 23..24: one ahead
    // VIRTQ_USED_F_NO_NOTIFY is ignored with EVENT_IDX (2.7.10.1).
    f.ring.usedFlags = UsedFlag.NO_NOTIFY;
    expect(addAndKick(1, 24)).toBe(true);
  });

  it('with EVENT_IDX: decides correctly across the 16-bit wrap of avail.idx', () => {
    const f = warmed(65534, true);
    const window = (n: number, availEvent: number): boolean => {
      for (let k = 0; k < n; k++) f.dq.add([seg(DATA, 1)], [], 'k');
      f.ring.availEvent = availEvent;
      const kick = f.dq.kickPrepare();
      for (let k = 0; k < n; k++) {
        f.ring.pushUsed(f.ring.getAvailEntry((f.ring.availIdx - n + k) & 3), 0);
        f.dq.getUsed();
      }
      return kick;
    };
    // old = 65534, new = 2: entries 65534, 65535, 0, 1.
    expect(window(4, 0)).toBe(true);
    expect(f.ring.availIdx).toBe(2);
    // old = 2, new = 6.
    expect(window(4, 1)).toBe(false);
  });

  it('with EVENT_IDX: every avail_event value around the wrap', () => {
    // old = 65534, new = 2 (entries 65534, 65535, 0, 1): kick iff avail_event is one of them.
    const expected: Array<[number, boolean]> = [
      [65532, false],
      [65533, false],
      [65534, true],
      [65535, true],
      [0, true],
      [1, true],
      [2, false],
      [3, false],
    ];
    for (const [availEvent, kick] of expected) {
      const f = warmed(65534, true);
      for (let k = 0; k < 4; k++) f.dq.add([seg(DATA, 1)], [], 'k');
      f.ring.availEvent = availEvent;
      expect(f.dq.kickPrepare(), `avail_event ${String(availEvent)}`).toBe(kick);
    }
  });
});

describe('2.7.7 enableCallbacks / disableCallbacks', () => {
  it('without EVENT_IDX: toggles VIRTQ_AVAIL_F_NO_INTERRUPT', () => {
    const f = setup(4);
    f.dq.disableCallbacks();
    expect(f.ring.availFlags).toBe(AvailFlag.NO_INTERRUPT);
    expect(f.ring.usedEvent).toBe(0);
    expect(f.dq.enableCallbacks()).toBe(false);
    expect(f.ring.availFlags).toBe(0);
  });

  it('enableCallbacks reports used buffers that raced the re-enable', () => {
    const f = setup(4);
    f.dq.add([seg(DATA, 1)], [], 'a');
    f.dq.disableCallbacks();
    f.ring.pushUsed(f.ring.getAvailEntry(0), 0);
    expect(f.dq.enableCallbacks()).toBe(true);
    expect(f.dq.getUsed()?.token).toBe('a');
    expect(f.dq.enableCallbacks()).toBe(false);
  });

  it('with EVENT_IDX: getUsed re-arms used_event at the next entry while callbacks are on', () => {
    const f = setup(4, { eventIdx: true });
    f.dq.add([seg(DATA, 1)], [], 'a');
    f.dq.add([seg(DATA, 1)], [], 'b');
    f.ring.pushUsed(f.ring.getAvailEntry(0), 0);
    f.ring.pushUsed(f.ring.getAvailEntry(1), 0);
    f.dq.getUsed();
    expect(f.ring.usedEvent).toBe(1);
    f.dq.getUsed();
    expect(f.ring.usedEvent).toBe(2);
    expect(f.ring.availFlags).toBe(0);
  });

  it('with EVENT_IDX: disable leaves flags 0 (2.7.7.1), moves used_event away, and stays disabled', () => {
    const f = setup(4, { eventIdx: true });
    f.dq.disableCallbacks();
    // "If the VIRTIO_F_EVENT_IDX feature bit is negotiated: The driver MUST set flags to 0."
    expect(f.ring.availFlags).toBe(0);
    expect(f.ring.usedEvent).toBe(65535); // one behind last used 0: the farthest point
    f.dq.add([seg(DATA, 1)], [], 'a');
    f.ring.pushUsed(f.ring.getAvailEntry(0), 0);
    // A device over this ring would not notify for that entry.
    const q = deviceFor(f, { eventIdx: true });
    q.nextAvail = 1;
    q.nextUsed = 0;
    q.needsNotification(f.mem); // first decision after reset always notifies: take it at 0
    q.nextUsed = 1;
    expect(q.needsNotification(f.mem)).toBe(false);
    // Harvesting while disabled does not re-arm used_event.
    expect(f.dq.getUsed()?.token).toBe('a');
    expect(f.ring.usedEvent).toBe(65535);
    expect(f.dq.enableCallbacks()).toBe(false);
    expect(f.ring.usedEvent).toBe(1);
    expect(f.ring.availFlags).toBe(0);
  });
});

describe('hostile device: the driver marks the queue broken and keeps its free list', () => {
  /** Four outstanding buffers: 'a' (2 descriptors, 8 writable bytes), 'b', 'c', 'd'. */
  function busy(): Fixture & { heads: number[] } {
    const f = setup(8);
    f.dq.add([seg(DATA, 4)], [seg(DATA + 0x10, 8)], 'a');
    f.dq.add([seg(DATA, 4)], [], 'b');
    f.dq.add([], [seg(DATA + 0x20, 16)], 'c');
    f.dq.add([seg(DATA, 1)], [], 'd');
    const heads = [0, 1, 2, 3].map((i) => f.ring.getAvailEntry(i));
    return { ...f, heads };
  }

  function expectBroken(f: Fixture, message: RegExp): void {
    const numFree = f.dq.numFree;
    const inFlight = f.dq.inFlight;
    expect(f.dq.getUsed()).toBeNull();
    expect(f.dq.broken).toMatch(message);
    expect(f.dq.broken).toBe(f.dq.broken?.toLowerCase());
    expect(f.dq.numFree).toBe(numFree);
    expect(f.dq.inFlight).toBe(inFlight);
    expect(f.dq.hasUsed()).toBe(false);
    expect(f.dq.getUsed()).toBeNull();
    expectVirtioError(() => f.dq.add([seg(DATA, 1)], [], 'late'), 'INVALID_STATE', /queue 0 is broken/);
    expect(f.dq.numFree).toBe(numFree);
    // Teardown still recovers every outstanding buffer and descriptor.
    expect(f.dq.detachUnused().length).toBe(inFlight);
    expect(f.dq.numFree).toBe(8);
  }

  it('a used id that is not a descriptor index', () => {
    const f = busy();
    f.ring.pushUsed(8, 0);
    expectBroken(f, /device used descriptor 8 that was not available/);
  });

  it('a used id far outside the table (32-bit)', () => {
    const f = busy();
    f.ring.pushUsed(0xffff_ffff, 0);
    expectBroken(f, /device used descriptor 4294967295/);
  });

  it('a used id of a free descriptor', () => {
    const f = busy();
    f.ring.pushUsed(7, 0);
    expectBroken(f, /device used descriptor 7 that was not available/);
  });

  it('a used id naming the second descriptor of a chain', () => {
    const f = busy();
    const second = f.ring.getDesc(f.heads[0]).next;
    f.ring.pushUsed(second, 0);
    expectBroken(f, /not available/);
  });

  it('the same id used twice', () => {
    const f = busy();
    f.ring.pushUsed(f.heads[1], 0);
    f.ring.pushUsed(f.heads[1], 0);
    expect(f.dq.getUsed()?.token).toBe('b');
    expectBroken(f, /not available/);
  });

  it('a used length larger than the writable bytes', () => {
    const f = busy();
    f.ring.pushUsed(f.heads[0], 9);
    expectBroken(f, /device wrote 9 bytes into a buffer of 8/);
  });

  it('a used length on a buffer without writable segments', () => {
    const f = busy();
    f.ring.pushUsed(f.heads[1], 1);
    expectBroken(f, /device wrote 1 bytes into a buffer of 0/);
  });

  it('accepts a used length equal to the writable bytes', () => {
    const f = busy();
    f.ring.pushUsed(f.heads[0], 8);
    expect(f.dq.getUsed()).toEqual({ token: 'a', len: 8 });
    expect(f.dq.broken).toBeNull();
  });

  it('a used idx more than the queue size ahead', () => {
    const f = busy();
    f.ring.usedIdx = 9;
    expectBroken(f, /used idx 9 runs more than queue size ahead of 0/);
  });

  it('a used idx that went backwards', () => {
    const f = busy();
    f.ring.pushUsed(f.heads[2], 0);
    expect(f.dq.getUsed()?.token).toBe('c');
    f.ring.usedIdx = 0;
    expectBroken(f, /used idx 0 runs more than queue size ahead of 1/);
  });

  it('accepts a used idx exactly the queue size ahead', () => {
    const f = setup(4);
    for (const t of ['a', 'b', 'c', 'd']) f.dq.add([seg(DATA, 1)], [], t);
    for (let i = 0; i < 4; i++) f.ring.pushUsed(f.ring.getAvailEntry(i), 0);
    expect(f.ring.usedIdx).toBe(4);
    const got = [];
    for (let u = f.dq.getUsed(); u !== null; u = f.dq.getUsed()) got.push(u.token);
    expect(got).toEqual(['a', 'b', 'c', 'd']);
    expect(f.dq.broken).toBeNull();
  });
});
