import { describe, expect, it } from 'vitest';
import { DESC_LEN, DESC_SIZE, DeviceId, USED_FLAGS, UsedFlag, VirtioError } from '../../spec/index.js';
import { activateWithFakeContext, type FakeContext } from '../../testing/index.js';
import {
  type EntropySource,
  RNG_DEFAULT_MAX_BYTES_PER_REQUEST,
  RNG_DEFAULT_QUEUE_SIZE,
  RNG_MAX_PASSES,
  RngDevice,
} from './device.js';

/** A deterministic source: byte k of the stream is `(start + k) & 0xff`; records each fill size. */
class CountingSource implements EntropySource {
  next = 0;
  readonly fills: number[] = [];
  fill(dst: Uint8Array): void {
    this.fills.push(dst.length);
    for (let i = 0; i < dst.length; i++) dst[i] = this.next++ & 0xff;
  }
}

/** The bytes `CountingSource` yields from position `start`, `n` of them. */
function stream(start: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (start + i) & 0xff;
  return out;
}

function setup(options: { queueSize?: number; maxBytesPerRequest?: number; indirect?: boolean } = {}) {
  const source = new CountingSource();
  const logs: string[] = [];
  const dev = new RngDevice({
    entropy: source,
    queueSize: options.queueSize,
    maxBytesPerRequest: options.maxBytesPerRequest,
    log: (m) => logs.push(m),
  });
  const ctx = activateWithFakeContext(dev, { indirect: options.indirect });
  return { source, dev, ctx, logs };
}

/** Adds a buffer of writable segments (each pre-filled with 0xee); returns their addresses. */
function addWritable(ctx: FakeContext, lens: number[], token: number): number[] {
  const addrs = lens.map((len) => ctx.alloc(len, 0xee));
  expect(
    ctx.drivers[0].add(
      [],
      addrs.map((addr, i) => ({ addr, len: lens[i] })),
      token,
    ),
  ).toBe(true);
  return addrs;
}

describe('RngDevice identity (5.4.1-5.4.4)', () => {
  it('is device 4 with one queue, no feature bits and no configuration space', () => {
    const dev = new RngDevice({ entropy: new CountingSource() });
    expect(dev.deviceId).toBe(DeviceId.ENTROPY);
    expect(dev.queueMaxSizes).toEqual([RNG_DEFAULT_QUEUE_SIZE]);
    expect(dev.features.bits()).toEqual([]);
    expect(dev.configSize).toBe(0);
    expect(dev.readConfig(0, 4)).toBe(0);
    expect(dev.readConfig(0, 1)).toBe(0);
    expect(dev.writeConfig(0, 1, 1)).toBe(false);
    expect(dev.writeConfig(0, 4, 0xffff_ffff)).toBe(false);
    expect(new RngDevice({ entropy: new CountingSource(), queueSize: 16 }).queueMaxSizes).toEqual([16]);
  });

  it('rejects every invalid construction option with INVALID_ARGUMENT', () => {
    const source = new CountingSource();
    const cases: Array<[string, () => unknown]> = [
      ['queue size 0', () => new RngDevice({ entropy: source, queueSize: 0 })],
      ['queue size not a power of two', () => new RngDevice({ entropy: source, queueSize: 48 })],
      ['queue size above 32768', () => new RngDevice({ entropy: source, queueSize: 65536 })],
      ['per-request cap 0', () => new RngDevice({ entropy: source, maxBytesPerRequest: 0 })],
      ['fractional per-request cap', () => new RngDevice({ entropy: source, maxBytesPerRequest: 1.5 })],
      ['per-request cap of 2^31', () => new RngDevice({ entropy: source, maxBytesPerRequest: 2 ** 31 })],
    ];
    for (const [what, fn] of cases) {
      expect(fn, what).toThrow(VirtioError);
      try {
        fn();
      } catch (e) {
        expect((e as VirtioError).code, what).toBe('INVALID_ARGUMENT');
      }
    }
  });
});

describe('RngDevice requests (5.4.6)', () => {
  it('fills a single writable buffer with the source bytes and reports its length', () => {
    const { ctx, dev, source } = setup();
    const [addr] = addWritable(ctx, [64], 7);
    expect(ctx.kick(dev, 0)).toBe(true);
    expect(ctx.harvest(0)).toEqual([{ token: 7, len: 64 }]);
    expect(ctx.bytes(addr, 64)).toEqual(stream(0, 64));
    expect(source.fills).toEqual([64]);
    expect(dev.counters).toMatchObject({ requests: 1, bytes: 64, guestErrors: 0, sourceErrors: 0 });
    expect(ctx.notifyCalls).toEqual([0]);
    expect(ctx.interrupts).toEqual([0]);
  });

  for (const indirect of [false, true]) {
    it(`fills a multi-segment chain in order across segments (${indirect ? 'indirect' : 'direct'})`, () => {
      const { ctx, dev } = setup({ indirect });
      const lens = [3, 100, 1, 29];
      const addrs = addWritable(ctx, lens, 1);
      ctx.kick(dev, 0);
      expect(ctx.harvest(0)).toEqual([{ token: 1, len: 133 }]);
      let pos = 0;
      addrs.forEach((addr, i) => {
        expect(ctx.bytes(addr, lens[i]), `segment ${i}`).toEqual(stream(pos, lens[i]));
        pos += lens[i];
      });
    });
  }

  it('fills only the writable part of a chain that also has readable buffers', () => {
    const { ctx, dev } = setup();
    const readable = ctx.alloc(8, 0x55);
    const writable = ctx.alloc(16, 0xee);
    ctx.drivers[0].add([{ addr: readable, len: 8 }], [{ addr: writable, len: 16 }], 3);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 3, len: 16 }]);
    expect(ctx.bytes(readable, 8)).toEqual(new Uint8Array(8).fill(0x55));
    expect(ctx.bytes(writable, 16)).toEqual(stream(0, 16));
  });

  it('completes a chain with no writable part with length 0 and counts a guest error', () => {
    const { ctx, dev, source, logs } = setup();
    const readable = ctx.alloc(8, 0x55);
    ctx.drivers[0].add([{ addr: readable, len: 8 }], [], 4);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 4, len: 0 }]);
    expect(ctx.bytes(readable, 8)).toEqual(new Uint8Array(8).fill(0x55));
    expect(source.fills).toEqual([]);
    expect(dev.counters).toMatchObject({ requests: 1, bytes: 0, guestErrors: 1 });
    expect(logs).toEqual(['rng: request 0 has no writable buffer']);
  });

  it('caps the bytes given to one request and leaves the rest of the buffer untouched', () => {
    const { ctx, dev } = setup({ maxBytesPerRequest: 100 });
    const [a, b] = addWritable(ctx, [60, 240], 9);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 9, len: 100 }]);
    expect(ctx.bytes(a, 60)).toEqual(stream(0, 60));
    expect(ctx.bytes(b, 40)).toEqual(stream(60, 40));
    expect(ctx.bytes(b + 40, 200)).toEqual(new Uint8Array(200).fill(0xee));
  });

  it('defaults the per-request cap to 64 KiB', () => {
    const source = new CountingSource();
    const dev = new RngDevice({ entropy: source });
    const ctx = activateWithFakeContext(dev, { memSize: 1 << 20 });
    addWritable(ctx, [RNG_DEFAULT_MAX_BYTES_PER_REQUEST + 4096], 1);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: RNG_DEFAULT_MAX_BYTES_PER_REQUEST }]);
    expect(source.fills).toEqual([RNG_DEFAULT_MAX_BYTES_PER_REQUEST]);
  });

  it('serves a batch of chains with one used buffer notification', () => {
    const { ctx, dev } = setup();
    for (let t = 0; t < 5; t++) addWritable(ctx, [10], t);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([0, 1, 2, 3, 4].map((token) => ({ token, len: 10 })));
    expect(ctx.notifyCalls).toEqual([0]);
    expect(ctx.interrupts).toEqual([0]);
    expect(dev.counters.requests).toBe(5);
    expect(dev.counters.bytes).toBe(50);
  });

  it('re-enables available buffer notifications after the batch (2.7.10)', () => {
    const { ctx, dev } = setup();
    addWritable(ctx, [10], 1);
    ctx.kick(dev, 0);
    expect(ctx.mem.read16(ctx.queues[0].usedRing + USED_FLAGS) & UsedFlag.NO_NOTIFY).toBe(0);
  });

  it('lets the transport suppress the interrupt when the driver asked for none (2.7.7)', () => {
    const { ctx, dev } = setup();
    ctx.drivers[0].disableCallbacks();
    addWritable(ctx, [10], 1);
    ctx.kick(dev, 0);
    expect(ctx.notifyCalls).toEqual([0]);
    expect(ctx.interrupts).toEqual([]);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 10 }]);
  });

  it('works with EVENT_IDX on both sides', () => {
    const source = new CountingSource();
    const dev = new RngDevice({ entropy: source });
    const ctx = activateWithFakeContext(dev, { eventIdx: true });
    addWritable(ctx, [8], 1);
    expect(ctx.kick(dev, 0)).toBe(true);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 8 }]);
    expect(ctx.interrupts).toEqual([0]);
    addWritable(ctx, [8], 2);
    expect(ctx.kick(dev, 0)).toBe(true);
    expect(ctx.harvest(0)).toEqual([{ token: 2, len: 8 }]);
    expect(ctx.interrupts).toEqual([0, 0]);
  });

  it('completes the request with no bytes when the source fails, and keeps serving', () => {
    let fail = true;
    const logs: string[] = [];
    const dev = new RngDevice({
      entropy: {
        fill(dst) {
          if (fail) throw new Error('entropy pool unavailable');
          dst.fill(0xab);
        },
      },
      log: (m) => logs.push(m),
    });
    const ctx = activateWithFakeContext(dev);
    const [a] = addWritable(ctx, [4], 1);
    expect(() => ctx.kick(dev, 0)).not.toThrow();
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 0 }]);
    expect(ctx.bytes(a, 4)).toEqual(new Uint8Array(4).fill(0xee));
    expect(dev.counters).toMatchObject({ requests: 1, bytes: 0, sourceErrors: 1, guestErrors: 0 });
    expect(logs).toEqual(['rng: entropy source failed: entropy pool unavailable']);
    fail = false;
    const [b] = addWritable(ctx, [4], 2);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 2, len: 4 }]);
    expect(ctx.bytes(b, 4)).toEqual(new Uint8Array(4).fill(0xab));
  });

  it('bounds the work of one notification against a driver that keeps refilling the ring', () => {
    const size = 4;
    const ctxRef: { ctx: FakeContext | null } = { ctx: null };
    let token = 100;
    const dev = new RngDevice({
      queueSize: size,
      entropy: {
        // A driver on another vCPU: every time the device works, it harvests and refills.
        fill(dst) {
          dst.fill(1);
          const ctx = ctxRef.ctx!;
          ctx.harvest(0);
          while (ctx.drivers[0].numFree > 0) {
            ctx.drivers[0].add([], [{ addr: ctx.alloc(4), len: 4 }], token++);
          }
        },
      },
    });
    const ctx = activateWithFakeContext(dev);
    ctxRef.ctx = ctx;
    for (let t = 0; t < size; t++) addWritable(ctx, [4], t);
    ctx.kick(dev, 0);
    expect(dev.counters.requests).toBe(RNG_MAX_PASSES * size);
    expect(dev.counters.deferred).toBe(1);
    expect(ctx.notifyCalls).toEqual([0]);
    // The host is asked for another pass (the driver will not kick: notifications were re-enabled).
    expect(ctx.deferCalls).toEqual([0]);
    // The next notification picks up where the bound stopped.
    dev.notify(0);
    expect(dev.counters.requests).toBe(2 * RNG_MAX_PASSES * size);
  });
});

describe('RngDevice misuse and failures', () => {
  it('reports an avail.idx corrupted by another vCPU while the device served, found by the look after re-enabling (once)', () => {
    const ctxRef: { ctx: FakeContext | null } = { ctx: null };
    let calls = 0;
    const dev = new RngDevice({
      queueSize: 4,
      entropy: {
        fill(dst) {
          dst.fill(1);
          // While the device serves the last buffer of its budget, the other vCPU scribbles
          // avail.idx far past the queue size: no pop sees it, only the look after re-enabling.
          if (++calls < 4) return;
          const ctx = ctxRef.ctx as FakeContext;
          const avail = ctx.drivers[0].rings.availRing;
          ctx.mem.write16(avail + 2, 1000);
        },
      },
    });
    const ctx = activateWithFakeContext(dev);
    ctxRef.ctx = ctx;
    for (let t = 0; t < 4; t++) addWritable(ctx, [4], t);
    ctx.kick(dev, 0);
    expect(ctx.failures).toHaveLength(1);
    expect(ctx.failures[0].error.reason).toBe('avail-idx-too-far');
    // The requests served before the look were completed and signalled.
    expect(dev.counters.requests).toBe(4);
    expect(ctx.notifyCalls).toEqual([0]);
    dev.notify(0);
    expect(ctx.failures).toHaveLength(1);
  });

  it('reports a corrupt ring once through queueFailed and stops processing', () => {
    const { ctx, dev } = setup();
    const [good] = addWritable(ctx, [8], 1);
    addWritable(ctx, [8], 2);
    // Corrupt the second chain: its descriptor now has length 0 (2.7.5: not a valid buffer).
    const head = 1;
    ctx.mem.write32(ctx.drivers[0].rings.descTable + head * DESC_SIZE + DESC_LEN, 0);
    ctx.kick(dev, 0);
    expect(ctx.failures).toHaveLength(1);
    expect(ctx.failures[0].index).toBe(0);
    expect(ctx.failures[0].error.reason).toBe('zero-length-desc');
    // The chain before the corruption was completed and signalled.
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 8 }]);
    expect(ctx.bytes(good, 8)).toEqual(stream(0, 8));
    expect(ctx.notifyCalls).toEqual([0]);
    // Later notifications do nothing until reset.
    addWritable(ctx, [8], 3);
    dev.notify(0);
    dev.notify(0);
    expect(ctx.failures).toHaveLength(1);
    expect(dev.counters.requests).toBe(1);
    expect(ctx.harvest(0)).toEqual([]);
  });

  it('counts notifications before activation, for absent queues, idle queues and after reset', () => {
    const source = new CountingSource();
    const logs: string[] = [];
    const dev = new RngDevice({ entropy: source, log: (m) => logs.push(m) });
    expect(dev.isActivated).toBe(false);
    dev.notify(0);
    const ctx = activateWithFakeContext(dev);
    expect(dev.isActivated).toBe(true);
    dev.notify(1);
    dev.notify(-1);
    ctx.queues[0].ready = false;
    dev.notify(0);
    ctx.queues[0].ready = true;
    dev.reset();
    expect(dev.isActivated).toBe(false);
    addWritable(ctx, [8], 1);
    dev.notify(0);
    expect(dev.counters.guestErrors).toBe(5);
    expect(dev.counters.requests).toBe(0);
    expect(source.fills).toEqual([]);
    expect(logs).toEqual([
      'rng: notification for queue 0 before activation',
      'rng: notification for queue 1 that does not exist',
      'rng: notification for queue -1 that does not exist',
      'rng: notification for a queue that is not ready',
      'rng: notification for queue 0 before activation',
    ]);
  });

  it('serves again after reset and re-activation', () => {
    const { ctx, dev } = setup();
    addWritable(ctx, [8], 1);
    ctx.kick(dev, 0);
    dev.reset();
    const ctx2 = activateWithFakeContext(dev);
    addWritable(ctx2, [8], 2);
    ctx2.kick(dev, 0);
    expect(ctx2.harvest(0)).toEqual([{ token: 2, len: 8 }]);
    expect(dev.counters.requests).toBe(2);
  });
});
