import { describe, expect, it } from 'vitest';
import type { GuestMemory } from '../../memory/index.js';
import {
  CONSOLE_CONTROL_SIZE,
  ConsoleConfig,
  ConsoleControlEvent,
  ConsoleFeature,
  ConsoleQueue,
  DESC_LEN,
  DESC_SIZE,
  DeviceId,
  VirtioError,
} from '../../spec/index.js';
import { activateWithFakeContext, type FakeContext } from '../../testing/index.js';
import { Features } from '../features.js';
import type { DeviceContext } from '../virtioDevice.js';
import { MemoryConsoleBackend } from './backend.js';
import {
  CONSOLE_DEFAULT_QUEUE_SIZE,
  ConsoleDevice,
  type ConsoleDeviceOptions,
  consoleReceiveQueue,
  consoleTransmitQueue,
} from './device.js';

/** Bytes `(seed + i * 7) & 0xff`, a pattern where a lost or repeated byte shows. */
function pattern(n: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed + i * 7 + (i >> 8)) & 0xff);
}

function setup(
  options: Partial<ConsoleDeviceOptions> = {},
  ctxOptions: { indirect?: boolean; queueSize?: number; features?: Features } = {},
) {
  const backend = new MemoryConsoleBackend();
  const logs: string[] = [];
  const dev = new ConsoleDevice({
    ...(options.ports === undefined ? { backend } : {}),
    ...options,
    log: (m) => logs.push(m),
  });
  const ctx = activateWithFakeContext(dev, ctxOptions);
  return { backend, dev, ctx, logs };
}

/** Adds a transmit buffer holding `data` split into segments of `lens` (sum = data.length). */
function addTx(ctx: FakeContext, q: number, data: Uint8Array, lens: number[], token: number): void {
  let off = 0;
  const segs = lens.map((len) => {
    const addr = ctx.allocBytes(data.subarray(off, off + len));
    off += len;
    return { addr, len };
  });
  expect(ctx.drivers[q].add(segs, [], token)).toBe(true);
}

/** Adds a receive buffer of writable segments (0xee filled); returns their addresses. */
function addRx(ctx: FakeContext, q: number, lens: number[], token: number): number[] {
  const addrs = lens.map((len) => ctx.alloc(len, 0xee));
  expect(
    ctx.drivers[q].add(
      [],
      addrs.map((addr, i) => ({ addr, len: lens[i] })),
      token,
    ),
  ).toBe(true);
  return addrs;
}

/** Reads back what receive buffers got: `len` bytes across the segments at `addrs`. */
function gather(ctx: FakeContext, addrs: number[], lens: number[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let off = 0;
  for (let i = 0; i < addrs.length && off < len; i++) {
    const n = Math.min(lens[i], len - off);
    out.set(ctx.bytes(addrs[i], n), off);
    off += n;
  }
  return out;
}

function expectCode(fn: () => unknown, code: string, what: string): void {
  try {
    fn();
  } catch (e) {
    expect(e, what).toBeInstanceOf(VirtioError);
    expect((e as VirtioError).code, what).toBe(code);
    return;
  }
  throw new Error(`${what}: did not throw`);
}

describe('ConsoleDevice identity and configuration (5.3.1-5.3.4)', () => {
  it('is device 3 with port 0 queues only, emergency write offered, 12 config bytes', () => {
    const dev = new ConsoleDevice({ backend: new MemoryConsoleBackend() });
    expect(dev.deviceId).toBe(DeviceId.CONSOLE);
    expect(dev.queueMaxSizes).toEqual([CONSOLE_DEFAULT_QUEUE_SIZE, CONSOLE_DEFAULT_QUEUE_SIZE]);
    expect(dev.features.bits()).toEqual([ConsoleFeature.EMERG_WRITE]);
    expect(dev.configSize).toBe(12);
    expect(dev.size).toBeNull();
    expect(
      new ConsoleDevice({ backend: new MemoryConsoleBackend(), emergWrite: false }).features.bits(),
    ).toEqual([]);
  });

  it('offers SIZE and MULTIPORT with 2 + 2n queues', () => {
    const ports = [0, 1, 2].map(() => ({ backend: new MemoryConsoleBackend() }));
    const dev = new ConsoleDevice({ ports, size: { cols: 80, rows: 25 }, queueSize: 16 });
    expect(dev.features.bits()).toEqual([
      ConsoleFeature.SIZE,
      ConsoleFeature.MULTIPORT,
      ConsoleFeature.EMERG_WRITE,
    ]);
    expect(dev.queueMaxSizes).toEqual(new Array(8).fill(16));
    expect(dev.portCount).toBe(3);
    const one = new ConsoleDevice({ backend: new MemoryConsoleBackend(), multiport: true });
    expect(one.queueMaxSizes).toHaveLength(4);
    expect([consoleReceiveQueue(0), consoleTransmitQueue(0)]).toEqual([0, 1]);
    expect([consoleReceiveQueue(1), consoleTransmitQueue(1)]).toEqual([4, 5]);
    expect([consoleReceiveQueue(3), consoleTransmitQueue(3)]).toEqual([8, 9]);
  });

  it('reads every field at every width, little-endian', () => {
    const ports = Array.from({ length: 0x0102 }, () => ({ backend: new MemoryConsoleBackend() }));
    const dev = new ConsoleDevice({ ports, size: { cols: 0x1234, rows: 0xabcd }, queueSize: 2 });
    // cols
    expect(dev.readConfig(ConsoleConfig.cols, 2)).toBe(0x1234);
    expect(dev.readConfig(ConsoleConfig.cols, 1)).toBe(0x34);
    expect(dev.readConfig(ConsoleConfig.cols + 1, 1)).toBe(0x12);
    // rows
    expect(dev.readConfig(ConsoleConfig.rows, 2)).toBe(0xabcd);
    expect(dev.readConfig(ConsoleConfig.rows, 1)).toBe(0xcd);
    expect(dev.readConfig(ConsoleConfig.rows + 1, 1)).toBe(0xab);
    // cols and rows as one 32-bit word
    expect(dev.readConfig(ConsoleConfig.cols, 4)).toBe(0xabcd1234);
    // max_nr_ports
    expect(dev.readConfig(ConsoleConfig.maxNrPorts, 4)).toBe(0x0102);
    expect(dev.readConfig(ConsoleConfig.maxNrPorts, 2)).toBe(0x0102);
    expect(dev.readConfig(ConsoleConfig.maxNrPorts + 2, 2)).toBe(0);
    expect(dev.readConfig(ConsoleConfig.maxNrPorts, 1)).toBe(0x02);
    expect(dev.readConfig(ConsoleConfig.maxNrPorts + 1, 1)).toBe(0x01);
    // emerg_wr is write-only: reads as 0 at every width
    for (const w of [1, 2, 4] as const) expect(dev.readConfig(ConsoleConfig.emergWr, w)).toBe(0);
    expect(dev.size).toEqual({ cols: 0x1234, rows: 0xabcd });
  });

  it('reads zero size and ports when SIZE and MULTIPORT are not offered', () => {
    const dev = new ConsoleDevice({ backend: new MemoryConsoleBackend() });
    for (let off = 0; off < ConsoleConfig.size; off += 4) expect(dev.readConfig(off, 4)).toBe(0);
  });

  it('refuses every configuration write except a 32-bit write of emerg_wr', () => {
    const backend = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend, size: { cols: 80, rows: 24 } });
    expect(dev.writeConfig(ConsoleConfig.cols, 2, 100)).toBe(false);
    expect(dev.writeConfig(ConsoleConfig.rows, 2, 100)).toBe(false);
    expect(dev.writeConfig(ConsoleConfig.cols, 4, 0xffff_ffff)).toBe(false);
    expect(dev.writeConfig(ConsoleConfig.maxNrPorts, 4, 7)).toBe(false);
    expect(dev.writeConfig(ConsoleConfig.emergWr, 1, 0x41)).toBe(false);
    expect(dev.writeConfig(ConsoleConfig.emergWr, 2, 0x41)).toBe(false);
    expect(dev.size).toEqual({ cols: 80, rows: 24 });
    expect(dev.readConfig(ConsoleConfig.maxNrPorts, 4)).toBe(0);
    expect(backend.writes).toBe(0);
  });

  it('rejects every invalid construction option with INVALID_ARGUMENT', () => {
    const b = new MemoryConsoleBackend();
    const cases: Array<[string, () => unknown]> = [
      ['neither backend nor ports', () => new ConsoleDevice({})],
      ['both backend and ports', () => new ConsoleDevice({ backend: b, ports: [{ backend: b }] })],
      ['no ports', () => new ConsoleDevice({ ports: [] })],
      [
        'several ports without multiport',
        () => new ConsoleDevice({ ports: [{ backend: b }, { backend: b }], multiport: false }),
      ],
      ['queue size 0', () => new ConsoleDevice({ backend: b, queueSize: 0 })],
      ['queue size 48', () => new ConsoleDevice({ backend: b, queueSize: 48 })],
      ['queue size 65536', () => new ConsoleDevice({ backend: b, queueSize: 65536 })],
      ['input buffer 0', () => new ConsoleDevice({ backend: b, inputBufferBytes: 0 })],
      ['input buffer 1.5', () => new ConsoleDevice({ backend: b, inputBufferBytes: 1.5 })],
      ['cols 0', () => new ConsoleDevice({ backend: b, size: { cols: 0, rows: 1 } })],
      ['rows 65536', () => new ConsoleDevice({ backend: b, size: { cols: 1, rows: 65536 } })],
    ];
    for (const [what, fn] of cases) expectCode(fn, 'INVALID_ARGUMENT', what);
    expectCode(() => new ConsoleDevice({ backend: b }).port(1), 'INVALID_ARGUMENT', 'port 1 of 1');
  });
});

describe('ConsoleDevice output (transmitq)', () => {
  for (const indirect of [false, true]) {
    it(`hands every byte to the backend exactly, across many multi-segment chains (${indirect ? 'indirect' : 'direct'})`, () => {
      const { ctx, dev, backend } = setup({ queueSize: 32 }, { indirect });
      const expected: number[] = [];
      let token = 0;
      // 100 chains of 3 segments over a 32-entry queue: the ring is refilled as the device completes.
      for (let round = 0; round < 10; round++) {
        for (let k = 0; k < 10; k++) {
          const lens = [1 + ((round * 10 + k) % 5), 17, 3 + k];
          const total = lens.reduce((a, b) => a + b, 0);
          const data = pattern(total, token);
          expected.push(...data);
          addTx(ctx, 1, data, lens, token++);
        }
        ctx.kick(dev, 1);
        expect(ctx.harvest(1).every((u) => u.len === 0)).toBe(true);
      }
      expect(backend.output()).toEqual(Uint8Array.from(expected));
      expect(dev.counters.txBytes).toBe(expected.length);
      expect(dev.counters.txChains).toBe(100);
      // One write per segment: streamed, never gathered first.
      expect(backend.writes).toBe(300);
      expect(dev.counters.guestErrors).toBe(0);
    });
  }

  it('copies through a bounce buffer when guest memory offers no view', () => {
    const backend = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend });
    const fake = activateWithFakeContext(dev);
    const mem = Object.create(fake.mem) as GuestMemory;
    mem.view = () => null;
    const ctx: DeviceContext = {
      mem,
      queues: fake.queues,
      features: fake.features,
      notifyUsed: (i) => fake.notifyUsed(i),
      queueFailed: (i, e) => fake.queueFailed(i, e),
    };
    dev.activate(ctx);
    const data = pattern(10_000, 3);
    addTx(fake, 1, data, [10_000], 1);
    fake.kick(dev, 1);
    expect(backend.output()).toEqual(data);
    // 4096-byte bounce chunks.
    expect(backend.writes).toBe(3);
  });

  it('leaves chains in the ring while the backend is congested and serves them on drain', () => {
    const { ctx, dev, backend } = setup();
    backend.setWritable(false);
    addTx(ctx, 1, pattern(10), [10], 1);
    addTx(ctx, 1, pattern(5, 9), [5], 2);
    ctx.kick(dev, 1);
    expect(backend.output()).toEqual(new Uint8Array(0));
    expect(ctx.harvest(1)).toEqual([]);
    expect(dev.counters.blocked).toBe(1);
    backend.setWritable(true);
    expect([...backend.output()]).toEqual([...pattern(10), ...pattern(5, 9)]);
    expect(ctx.harvest(1)).toEqual([
      { token: 1, len: 0 },
      { token: 2, len: 0 },
    ]);
    // A drain with nothing blocked does nothing.
    backend.setWritable(true);
    expect(backend.writes).toBe(2);
  });

  it('completes a transmit chain with device-writable segments without output (5.3.6.1)', () => {
    const { ctx, dev, backend, logs } = setup();
    const out = ctx.allocBytes(pattern(4));
    const inAddr = ctx.alloc(8, 0xee);
    ctx.drivers[1].add([{ addr: out, len: 4 }], [{ addr: inAddr, len: 8 }], 1);
    ctx.drivers[1].add([], [{ addr: ctx.alloc(8), len: 8 }], 2);
    addTx(ctx, 1, pattern(3, 1), [3], 3);
    ctx.kick(dev, 1);
    expect(ctx.harvest(1)).toEqual([
      { token: 1, len: 0 },
      { token: 2, len: 0 },
      { token: 3, len: 0 },
    ]);
    expect(backend.output()).toEqual(pattern(3, 1));
    expect(ctx.bytes(inAddr, 8)).toEqual(new Uint8Array(8).fill(0xee));
    expect(dev.counters.guestErrors).toBe(2);
    expect(logs).toEqual([
      'console: transmit buffer 0 of port 0 has device-writable segments',
      'console: transmit buffer 2 of port 0 has device-writable segments',
    ]);
  });

  it('survives a backend that echoes synchronously from inside write (receive path re-entered)', () => {
    const log = new MemoryConsoleBackend();
    let input: ((b: Uint8Array) => void) | null = null;
    const echo = {
      write: (b: Uint8Array) => {
        log.write(b);
        input?.(b.slice());
      },
      onData: (h: (b: Uint8Array) => void) => {
        input = h;
      },
    };
    const dev = new ConsoleDevice({ backend: echo });
    const ctx = activateWithFakeContext(dev);
    const rx = addRx(ctx, 0, [64], 1);
    ctx.kick(dev, 0);
    const data = pattern(40, 4);
    addTx(ctx, 1, data, [7, 13, 20], 2);
    ctx.kick(dev, 1);
    expect(log.output()).toEqual(data);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 7 }]);
    expect(ctx.bytes(rx[0], 7)).toEqual(data.subarray(0, 7));
    // The rest waits for receive buffers, in order.
    expect(dev.port(0).pendingInput).toBe(33);
    const more = addRx(ctx, 0, [64], 3);
    ctx.kick(dev, 0);
    expect(ctx.bytes(more[0], 33)).toEqual(data.subarray(7));
    expect(dev.counters.guestErrors).toBe(0);
  });

  it('counts a backend that throws, and goes on with the next chain', () => {
    const backend = new MemoryConsoleBackend();
    let fail = true;
    const flaky = {
      write: (b: Uint8Array) => {
        if (fail) {
          fail = false;
          throw new Error('disk full');
        }
        backend.write(b);
      },
      onData: (h: (b: Uint8Array) => void) => backend.onData(h),
    };
    const logs: string[] = [];
    const dev = new ConsoleDevice({ backend: flaky, log: (m) => logs.push(m) });
    const ctx = activateWithFakeContext(dev);
    addTx(ctx, 1, pattern(4), [4], 1);
    addTx(ctx, 1, pattern(4, 1), [4], 2);
    ctx.kick(dev, 1);
    expect(ctx.harvest(1)).toHaveLength(2);
    expect(backend.output()).toEqual(pattern(4, 1));
    expect(dev.counters.backendErrors).toBe(1);
    expect(logs).toEqual(['console: backend write failed: disk full']);
  });
});

describe('ConsoleDevice input (receiveq)', () => {
  it('delivers input into posted buffers in order, filling segments and chains', () => {
    const { ctx, dev, backend } = setup();
    const lens = [3, 5];
    const a = addRx(ctx, 0, lens, 1);
    const b = addRx(ctx, 0, [100], 2);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([]);
    const data = pattern(20, 5);
    backend.push(data);
    expect(ctx.harvest(0)).toEqual([
      { token: 1, len: 8 },
      { token: 2, len: 12 },
    ]);
    expect(gather(ctx, a, lens, 8)).toEqual(data.subarray(0, 8));
    expect(ctx.bytes(b[0], 12)).toEqual(data.subarray(8));
    expect(ctx.bytes(b[0] + 12, 4)).toEqual(new Uint8Array(4).fill(0xee));
    expect(dev.counters).toMatchObject({ rxBytes: 20, rxChains: 2, inputBytes: 20, inputDropped: 0 });
    expect(ctx.interrupts).toEqual([0]);
  });

  it('keeps input that arrives before any buffer (and before activation) and delivers it in order', () => {
    const backend = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend, inputBufferBytes: 64 });
    backend.push(pattern(10));
    expect(dev.port(0).pendingInput).toBe(10);
    const ctx = activateWithFakeContext(dev);
    backend.push(pattern(10, 10));
    expect(dev.port(0).pendingInput).toBe(20);
    const [a] = addRx(ctx, 0, [15], 1);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 15 }]);
    // More input while 5 bytes still wait: it queues behind them.
    backend.push(pattern(3, 20));
    const [b] = addRx(ctx, 0, [64], 2);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 2, len: 8 }]);
    const all = [...ctx.bytes(a, 15), ...ctx.bytes(b, 8)];
    expect(all).toEqual([...pattern(10), ...pattern(10, 10), ...pattern(3, 20)]);
    expect(dev.port(0).pendingInput).toBe(0);
  });

  it('wraps the input buffer around its end without reordering', () => {
    const { ctx, dev, backend } = setup({ inputBufferBytes: 8 });
    const got: number[] = [];
    const sent: number[] = [];
    for (let i = 0; i < 20; i++) {
      const chunk = pattern(5, i * 5);
      sent.push(...chunk);
      backend.push(chunk);
      const [addr] = addRx(ctx, 0, [3], i);
      ctx.kick(dev, 0);
      for (const u of ctx.harvest(0)) got.push(...ctx.bytes(addr, u.len));
    }
    while (dev.port(0).pendingInput > 0) {
      const [addr] = addRx(ctx, 0, [3], 99);
      ctx.kick(dev, 0);
      for (const u of ctx.harvest(0)) got.push(...ctx.bytes(addr, u.len));
    }
    // The buffer never overflowed: 5 in, 3 out per round, bounded by 8 → drops counted exactly.
    const dropped = dev.counters.inputDropped;
    expect(got.length + dropped).toBe(sent.length);
    expect(dev.counters.rxBytes).toBe(got.length);
    // What was delivered is a prefix-preserving subsequence: every run of kept bytes in order.
    let j = 0;
    for (const byte of got) {
      while (j < sent.length && sent[j] !== byte) j++;
      expect(j).toBeLessThan(sent.length);
      j++;
    }
  });

  it('drops and counts input beyond the bound, logs once per episode, and pauses and resumes the backend', () => {
    const { ctx, dev, backend, logs } = setup({ inputBufferBytes: 16 });
    backend.push(pattern(10));
    expect(backend.paused).toBe(false);
    backend.push(pattern(10, 10));
    expect(dev.counters.inputDropped).toBe(4);
    expect(backend.paused).toBe(true);
    backend.push(pattern(3, 20));
    expect(dev.counters.inputDropped).toBe(7);
    expect(logs).toEqual(['console: port 0 input buffer full, dropping input']);
    const [a] = addRx(ctx, 0, [6], 1);
    ctx.kick(dev, 0);
    // 10 left of 16: above half, still paused.
    expect(backend.paused).toBe(true);
    const [b] = addRx(ctx, 0, [6], 2);
    ctx.kick(dev, 0);
    expect(backend.paused).toBe(false);
    expect([...ctx.bytes(a, 6), ...ctx.bytes(b, 6)]).toEqual([...pattern(10), ...pattern(2, 10)]);
    expect(dev.port(0).pendingInput).toBe(4);
    expect(dev.counters).toMatchObject({ inputBytes: 23, inputDropped: 7, rxBytes: 12 });
    backend.push(pattern(1, 50));
    backend.push(pattern(20, 60));
    expect(logs).toHaveLength(2);
  });

  it('writes input straight into buffers when a chunk is larger than the input bound', () => {
    const { ctx, dev, backend } = setup({ inputBufferBytes: 4 });
    const [a] = addRx(ctx, 0, [100], 1);
    ctx.kick(dev, 0);
    const data = pattern(50, 1);
    backend.push(data);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 50 }]);
    expect(ctx.bytes(a, 50)).toEqual(data);
    expect(dev.counters.inputDropped).toBe(0);
  });

  it('completes a receive chain with device-readable segments empty and delivers into the next (5.3.6.1)', () => {
    const { ctx, dev, backend, logs } = setup();
    const readable = ctx.allocBytes(pattern(8));
    const writable = ctx.alloc(8, 0xee);
    ctx.drivers[0].add([{ addr: readable, len: 8 }], [{ addr: writable, len: 8 }], 1);
    ctx.drivers[0].add([{ addr: ctx.allocBytes(pattern(2)), len: 2 }], [], 2);
    const [good] = addRx(ctx, 0, [8], 3);
    ctx.kick(dev, 0);
    backend.push(pattern(6, 40));
    expect(ctx.harvest(0)).toEqual([
      { token: 1, len: 0 },
      { token: 2, len: 0 },
      { token: 3, len: 6 },
    ]);
    expect(ctx.bytes(readable, 8)).toEqual(pattern(8));
    expect(ctx.bytes(writable, 8)).toEqual(new Uint8Array(8).fill(0xee));
    expect(ctx.bytes(good, 6)).toEqual(pattern(6, 40));
    expect(dev.counters.guestErrors).toBe(2);
    expect(logs[0]).toBe('console: receive buffer 0 of port 0 has device-readable segments');
  });

  it('reports a corrupt receive ring once and keeps the input', () => {
    const { ctx, dev, backend } = setup();
    addRx(ctx, 0, [8], 1);
    ctx.mem.write32(ctx.drivers[0].rings.descTable + 0 * DESC_SIZE + DESC_LEN, 0);
    ctx.kick(dev, 0);
    backend.push(pattern(4));
    expect(ctx.failures).toHaveLength(1);
    expect(ctx.failures[0]).toMatchObject({ index: 0, error: { reason: 'zero-length-desc' } });
    backend.push(pattern(4));
    dev.notify(0);
    expect(ctx.failures).toHaveLength(1);
    expect(dev.port(0).pendingInput).toBe(8);
  });
});

describe('ConsoleDevice emergency write, resize, notifications', () => {
  it('emits the lower byte of each emerg_wr write, before activation too (5.3.5.1)', () => {
    const backend = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend });
    expect(dev.writeConfig(ConsoleConfig.emergWr, 4, 0x41)).toBe(true);
    expect(dev.writeConfig(ConsoleConfig.emergWr, 4, 0xffff_ff42)).toBe(true);
    activateWithFakeContext(dev);
    expect(dev.writeConfig(ConsoleConfig.emergWr, 4, 0x0a)).toBe(true);
    expect(backend.text()).toBe('AB\n');
    expect(dev.counters.emergencyBytes).toBe(3);
  });

  it('sends emergency bytes to a separate output when given, and refuses them when not offered', () => {
    const backend = new MemoryConsoleBackend();
    const log = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend, emergencyOutput: log });
    dev.writeConfig(ConsoleConfig.emergWr, 4, 0x21);
    expect(log.text()).toBe('!');
    expect(backend.writes).toBe(0);
    const off = new ConsoleDevice({ backend, emergWrite: false });
    expect(off.writeConfig(ConsoleConfig.emergWr, 4, 0x21)).toBe(false);
    expect(backend.writes).toBe(0);
  });

  it('resize updates cols and rows and announces a configuration change', () => {
    const backend = new MemoryConsoleBackend();
    const dev = new ConsoleDevice({ backend, size: { cols: 80, rows: 24 } });
    let changes = 0;
    dev.attach({ configChanged: () => changes++ });
    dev.resize(132, 43);
    expect(changes).toBe(1);
    expect(dev.readConfig(ConsoleConfig.cols, 2)).toBe(132);
    expect(dev.readConfig(ConsoleConfig.rows, 2)).toBe(43);
    expectCode(() => dev.resize(0, 10), 'INVALID_ARGUMENT', 'cols 0');
    expectCode(() => dev.resize(10, 70000), 'INVALID_ARGUMENT', 'rows 70000');
    expect(changes).toBe(1);
    const fixed = new ConsoleDevice({ backend });
    expectCode(() => fixed.resize(80, 24), 'INVALID_STATE', 'no SIZE');
  });

  it('counts notifications before activation, for absent, idle and multiport-only queues', () => {
    const backend = new MemoryConsoleBackend();
    const logs: string[] = [];
    const dev = new ConsoleDevice({ backend, multiport: true, log: (m) => logs.push(m) });
    dev.notify(1);
    // The driver did not negotiate MULTIPORT: the control queues do not exist for it.
    const ctx = activateWithFakeContext(dev, { features: new Features() });
    dev.notify(ConsoleQueue.CONTROL_TRANSMITQ);
    dev.notify(4);
    dev.notify(-1);
    dev.notify(1.5);
    ctx.queues[1].ready = false;
    dev.notify(1);
    expect(dev.counters.guestErrors).toBe(6);
    expect(logs).toEqual([
      'console: notification for queue 1 before activation',
      'console: notification for queue 3 that does not exist',
      'console: notification for queue 4 that does not exist',
      'console: notification for queue -1 that does not exist',
      'console: notification for queue 1.5 that does not exist',
      'console: notification for queue 1 that is not ready',
    ]);
    dev.reset();
    expect(dev.isActivated).toBe(false);
  });
});

/** Reads every control message the device delivered on c_ivq. */
function controlMessages(
  ctx: FakeContext,
  bufs: Map<number, number>,
): Array<{ id: number; event: number; value: number; extra: number[] }> {
  const out: Array<{ id: number; event: number; value: number; extra: number[] }> = [];
  for (const u of ctx.harvest(ConsoleQueue.CONTROL_RECEIVEQ)) {
    if (u.len < CONSOLE_CONTROL_SIZE) {
      out.push({ id: -1, event: -1, value: u.len, extra: [] });
      continue;
    }
    const b = ctx.bytes(bufs.get(u.token) as number, u.len);
    const v = new DataView(b.buffer);
    out.push({
      id: v.getUint32(0, true),
      event: v.getUint16(4, true),
      value: v.getUint16(6, true),
      extra: [...b.subarray(8)],
    });
  }
  return out;
}

/** Posts `n` control receive buffers of `len` bytes; returns token → address. */
function postControl(ctx: FakeContext, n: number, len = 64, first = 0): Map<number, number> {
  const m = new Map<number, number>();
  for (let i = 0; i < n; i++)
    m.set(first + i, addRx(ctx, ConsoleQueue.CONTROL_RECEIVEQ, [len], first + i)[0]);
  return m;
}

function sendControl(
  ctx: FakeContext,
  dev: ConsoleDevice,
  id: number,
  event: number,
  value: number,
  token = 0,
): void {
  const b = new Uint8Array(CONSOLE_CONTROL_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, id, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  addTx(ctx, ConsoleQueue.CONTROL_TRANSMITQ, b, [8], token);
  ctx.kick(dev, ConsoleQueue.CONTROL_TRANSMITQ);
}

describe('ConsoleDevice multiport control protocol (5.3.6.2)', () => {
  function multi() {
    const backends = [0, 1, 2].map(() => new MemoryConsoleBackend());
    const r = setup({
      ports: [
        { backend: backends[0] },
        { backend: backends[1], name: 'org.test.é' },
        { backend: backends[2], console: true },
      ],
      size: { cols: 80, rows: 24 },
    });
    return { ...r, backends };
  }
  const E = ConsoleControlEvent;

  it('announces every port on DEVICE_READY and configures each on PORT_READY', () => {
    const { ctx, dev } = multi();
    const bufs = postControl(ctx, 16);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1);
    expect(controlMessages(ctx, bufs)).toEqual([
      { id: 0, event: E.DEVICE_ADD, value: 0, extra: [] },
      { id: 1, event: E.DEVICE_ADD, value: 0, extra: [] },
      { id: 2, event: E.DEVICE_ADD, value: 0, extra: [] },
    ]);
    sendControl(ctx, dev, 0, E.PORT_READY, 1);
    sendControl(ctx, dev, 1, E.PORT_READY, 1);
    sendControl(ctx, dev, 2, E.PORT_READY, 1);
    expect(controlMessages(ctx, bufs)).toEqual([
      { id: 0, event: E.CONSOLE_PORT, value: 1, extra: [] },
      { id: 0, event: E.PORT_OPEN, value: 1, extra: [] },
      { id: 1, event: E.PORT_NAME, value: 1, extra: [...Buffer.from('org.test.é')] },
      { id: 1, event: E.PORT_OPEN, value: 1, extra: [] },
      { id: 2, event: E.CONSOLE_PORT, value: 1, extra: [] },
      { id: 2, event: E.PORT_OPEN, value: 1, extra: [] },
    ]);
    sendControl(ctx, dev, 1, E.PORT_OPEN, 1);
    expect(dev.port(1)).toEqual({ added: true, guestReady: true, guestOpen: true, pendingInput: 0 });
    sendControl(ctx, dev, 1, E.PORT_OPEN, 0);
    expect(dev.port(1).guestOpen).toBe(false);
    // A second DEVICE_READY adds nothing already added; a second PORT_READY changes nothing.
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1);
    sendControl(ctx, dev, 1, E.PORT_READY, 1);
    expect(controlMessages(ctx, bufs)).toEqual([]);
    expect(dev.counters.guestErrors).toBe(0);
    expect(dev.counters.controlIn).toBe(8);
    expect(dev.counters.controlOut).toBe(9);
  });

  it('keeps control messages until the driver posts buffers, and skips buffers too short for one', () => {
    const { ctx, dev } = multi();
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1);
    const short = postControl(ctx, 1, 4, 100);
    const bufs = postControl(ctx, 2, 64, 0);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    const all = new Map([...short, ...bufs]);
    const got = controlMessages(ctx, all);
    // The 4-byte buffer came back empty; the message went into the next one.
    expect(got.map((m) => m.id)).toEqual([-1, 0, 1]);
    expect(got[0].value).toBe(0);
    expect(dev.counters.guestErrors).toBe(1);
    const more = postControl(ctx, 1, 64, 200);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    expect(controlMessages(ctx, more)).toEqual([{ id: 2, event: E.DEVICE_ADD, value: 0, extra: [] }]);
  });

  it('carries each port on its own queue pair', () => {
    const { ctx, dev, backends } = multi();
    postControl(ctx, 16);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1);
    addTx(ctx, consoleTransmitQueue(2), pattern(5, 2), [5], 1);
    ctx.kick(dev, consoleTransmitQueue(2));
    addTx(ctx, consoleTransmitQueue(1), pattern(5, 1), [5], 1);
    ctx.kick(dev, consoleTransmitQueue(1));
    expect(backends[2].output()).toEqual(pattern(5, 2));
    expect(backends[1].output()).toEqual(pattern(5, 1));
    expect(backends[0].writes).toBe(0);
    backends[1].push(pattern(3, 9));
    const [a] = addRx(ctx, consoleReceiveQueue(1), [8], 1);
    ctx.kick(dev, consoleReceiveQueue(1));
    // Port 1 is a generic port the guest has not opened: its input waits (Linux would discard it).
    expect(ctx.harvest(consoleReceiveQueue(1))).toEqual([]);
    expect(dev.port(1).pendingInput).toBe(3);
    sendControl(ctx, dev, 1, E.PORT_READY, 1, 1);
    sendControl(ctx, dev, 1, E.PORT_OPEN, 1, 2);
    expect(ctx.harvest(consoleReceiveQueue(1))).toEqual([{ token: 1, len: 3 }]);
    expect(ctx.bytes(a, 3)).toEqual(pattern(3, 9));
    // Port 2 is a console port: input goes straight to its buffers.
    const [c] = addRx(ctx, consoleReceiveQueue(2), [8], 1);
    ctx.kick(dev, consoleReceiveQueue(2));
    backends[2].push(pattern(2, 1));
    expect(ctx.harvest(consoleReceiveQueue(2))).toEqual([{ token: 1, len: 2 }]);
    expect(ctx.bytes(c, 2)).toEqual(pattern(2, 1));
    // Closed again: input waits.
    sendControl(ctx, dev, 1, E.PORT_OPEN, 0, 3);
    backends[1].push(pattern(1));
    addRx(ctx, consoleReceiveQueue(1), [8], 2);
    ctx.kick(dev, consoleReceiveQueue(1));
    expect(ctx.harvest(consoleReceiveQueue(1))).toEqual([]);
  });

  it('sends RESIZE to ready console ports with cols first', () => {
    const { ctx, dev } = multi();
    const bufs = postControl(ctx, 16);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1);
    sendControl(ctx, dev, 0, E.PORT_READY, 1);
    controlMessages(ctx, bufs);
    dev.resize(0x0102, 0x0304);
    expect(controlMessages(ctx, bufs)).toEqual([
      { id: 0, event: E.RESIZE, value: 0, extra: [0x02, 0x01, 0x04, 0x03] },
    ]);
  });

  it('counts every malformed or misdirected control message and driver-reported failures', () => {
    const { ctx, dev, logs } = multi();
    const bufs = postControl(ctx, 16);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    sendControl(ctx, dev, 0, E.PORT_READY, 1, 1); // before DEVICE_ADD
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 0, 2); // driver failure
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1, 3);
    controlMessages(ctx, bufs);
    sendControl(ctx, dev, 7, E.PORT_READY, 1, 4); // no such port
    sendControl(ctx, dev, 0, E.DEVICE_ADD, 1, 5); // device-only event
    sendControl(ctx, dev, 0, E.RESIZE, 1, 6); // device-only event
    sendControl(ctx, dev, 0, 99, 1, 7); // unknown event
    sendControl(ctx, dev, 0, E.PORT_OPEN, 2, 8); // bad value
    sendControl(ctx, dev, 1, E.PORT_READY, 0, 9); // driver failure for port 1
    // Short message, and one with a writable segment.
    addTx(ctx, ConsoleQueue.CONTROL_TRANSMITQ, pattern(6), [6], 10);
    ctx.drivers[ConsoleQueue.CONTROL_TRANSMITQ].add(
      [{ addr: ctx.allocBytes(pattern(8)), len: 8 }],
      [{ addr: ctx.alloc(8), len: 8 }],
      11,
    );
    ctx.kick(dev, ConsoleQueue.CONTROL_TRANSMITQ);
    expect(controlMessages(ctx, bufs)).toEqual([]);
    expect(dev.counters.guestErrors).toBe(8);
    expect(dev.counters.driverFailures).toBe(2);
    expect(dev.port(1).guestReady).toBe(false);
    expect(logs).toContain('console: control event 3 for port 0 that was not added');
    expect(logs).toContain('console: control message of 6 bytes is shorter than 8');
    expect(logs).toContain('console: driver failed to set up port 1');
    expect(ctx.harvest(ConsoleQueue.CONTROL_TRANSMITQ).every((u) => u.len === 0)).toBe(true);
  });

  it('bounds the control backlog and counts what it drops', () => {
    const backends = Array.from({ length: 2 }, () => new MemoryConsoleBackend());
    const logs: string[] = [];
    const dev = new ConsoleDevice({
      ports: backends.map((backend) => ({ backend, name: 'p' })),
      size: { cols: 80, rows: 24 },
      log: (m) => logs.push(m),
    });
    const ctx = activateWithFakeContext(dev);
    // No control receive buffer is posted: everything waits.
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1, 0); // 2 DEVICE_ADD
    sendControl(ctx, dev, 0, E.PORT_READY, 1, 1); // CONSOLE_PORT, PORT_NAME, PORT_OPEN
    // The backlog is 64 + 8 per port = 80 messages: 75 resizes fit, 25 are dropped.
    for (let i = 0; i < 100; i++) dev.resize(80 + i, 24);
    expect(dev.counters.controlDropped).toBe(25);
    expect(logs).toContain('console: control message 5 for port 0 dropped, backlog full');
    const bufs = postControl(ctx, 100, 64);
    ctx.kick(dev, ConsoleQueue.CONTROL_RECEIVEQ);
    const got = controlMessages(ctx, bufs);
    expect(got).toHaveLength(80);
    // The oldest are kept: the last delivered resize is the 75th.
    expect(got[79].extra).toEqual([80 + 74, 0, 24, 0]);
    // After a reset the ports are announced again.
    dev.reset();
    dev.activate(ctx);
    sendControl(ctx, dev, 0xffff_ffff, E.DEVICE_READY, 1, 2);
    expect(controlMessages(ctx, bufs).map((m) => [m.id, m.event])).toEqual([
      [0, E.DEVICE_ADD],
      [1, E.DEVICE_ADD],
    ]);
  });
});
