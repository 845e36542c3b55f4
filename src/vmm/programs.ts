/**
 * Built-in machine setups (run in the VMM worker) and guest programs (run in vCPU workers), used by
 * the tests, the benchmark and as examples. Each is an exported function of this module; refer to
 * one with `vmmModule('programs', '<name>')`.
 *
 * Guest programs keep state between runs in module variables (each vCPU worker has its own copy):
 * `blkInit` probes the disk once, later runs use it.
 *
 * @packageDocumentation
 */

import {
  BlkDevice,
  BlkDriver,
  beginInit,
  Features,
  finishInit,
  MemoryBlockBackend,
  RngDevice,
  RngDriver,
  waitUntil,
} from '../device/index.js';
import { FeatureBit, MmioReg, VirtioError } from '../spec/index.js';
import type { MmioDriver } from '../transport/index.js';
import type { DriverQueue } from '../virtqueue/index.js';
import type { GuestEnv } from './vcpu.js';
import type { VmmHost } from './vmmCore.js';

// -------------------------------------------------------------------------------------------------
// Machine setups (VMM worker).

/** Deterministic entropy (a counter), so runs are reproducible. */
const counterEntropy = {
  n: 0,
  fill(dst: Uint8Array): void {
    for (let i = 0; i < dst.length; i++) dst[i] = this.n++ & 0xff;
  },
};

/** Setup: `rng0` (counter entropy) and `blk0` (1 MiB in memory), lines 5 and 6. */
export function setupRngBlk(host: VmmHost): void {
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng0' });
  host.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(1 << 20), serial: 'vmm-disk' }), {
    name: 'blk0',
  });
}

/**
 * Setup: `rng0`, `rng1` and `blk0`, all with the seed profile's MSI (4 vectors, fixed mapping)
 * and, when `args.notification` is true, its per-queue notification addresses.
 */
export function setupMsi(host: VmmHost, args: unknown): void {
  const notification = (args as { notification?: boolean } | undefined)?.notification === true;
  const seed = notification
    ? { msi: { vectors: 4, sharing: false }, notification: true as const }
    : { msi: { vectors: 4, sharing: false } };
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng0', seed, ringReset: false });
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng1', seed, ringReset: false });
  host.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(1 << 20), serial: 'vmm-disk' }), {
    name: 'blk0',
    seed,
    ringReset: false,
  });
}

/** Setup: `rng0` with a configuration line and one line per queue (the 2014 multi-IRQ RFC). */
export function setupPerQueueLines(host: VmmHost): void {
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng0', lines: 'per-queue' });
}

/** Setup that places two devices under one name (rejected). */
export function setupDuplicateName(host: VmmHost): void {
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng0' });
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { name: 'rng0' });
}

/** Setup with an unknown line layout (rejected). */
export function setupBadLines(host: VmmHost): void {
  host.addDevice(new RngDevice({ entropy: counterEntropy }), { lines: 'many' as 'shared' });
}

/** Setup that throws (to test start-up failure reporting). */
export function setupThrows(): void {
  throw new VirtioError('DEVICE_FAILED', 'deliberate setup failure');
}

// -------------------------------------------------------------------------------------------------
// Guest programs (vCPU workers).

/** Returns the vCPU number and the arguments. */
export function echo(env: GuestEnv): { vcpu: number; args: unknown } {
  return { vcpu: env.vcpu, args: env.args };
}

/** Throws a VirtioError. */
export function throwsError(): never {
  throw new VirtioError('DEVICE_FAILED', 'deliberate guest failure');
}

/** Spins forever (a guest stuck in a loop). */
export function spinsForever(): never {
  for (;;) {
    // Busy: only a terminate stops this thread.
  }
}

/** Halts with nothing that will ever interrupt it (a guest asleep forever). */
export function haltsForever(env: GuestEnv): void {
  for (;;) env.platform.halt();
}

let blk: BlkDriver | null = null;
let rng: RngDriver | null = null;

/** Probes `blk0` with the MMIO driver and the blk driver; keeps it for later runs. */
export function blkInit(env: GuestEnv): { capacity: number } {
  const t = env.probe('blk0');
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'blk0 is empty');
  blk = BlkDriver.probe(t);
  return { capacity: blk.capacity };
}

/** How blk0's and rng0's interrupts are routed on this vCPU (after init). */
export function interruptModes(): { blk: string | null; rng: string | null } {
  return {
    blk: blk === null ? null : String(blk.transport.interruptMode),
    rng: rng === null ? null : String(rng.transport.interruptMode),
  };
}

/** Writes `args.sectors` sectors of a pattern at `args.sector` (one request when small). */
export function blkWrite(env: GuestEnv): number {
  const a = env.args as { sector: number; sectors: number; seed: number };
  const data = new Uint8Array(a.sectors * 512);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + a.seed) & 0xff;
  (blk as BlkDriver).write(a.sector, data);
  return data.length;
}

/** Reads `args.sectors` at `args.sector`; returns a checksum and the first bytes. */
export function blkRead(env: GuestEnv): { sum: number; head: number[] } {
  const a = env.args as { sector: number; sectors: number };
  const data = (blk as BlkDriver).read(a.sector, a.sectors);
  let sum = 0;
  for (let i = 0; i < data.length; i++) sum = (sum + data[i] * (i + 1)) % 1_000_000_007;
  return { sum, head: Array.from(data.subarray(0, 8)) };
}

/** Removes the blk driver (reset, queues released, line freed). */
export function blkRemove(): void {
  blk?.remove();
  blk = null;
}

/** Probes `rng0`; keeps it for later runs. */
export function rngInit(env: GuestEnv): void {
  const t = env.probe('rng0');
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'rng0 is empty');
  rng = RngDriver.probe(t);
}

/** Reads `args.bytes` bytes from the rng. */
export function rngRead(env: GuestEnv): number[] {
  return Array.from((rng as RngDriver).read((env.args as { bytes: number }).bytes));
}

/** Removes the rng driver. */
export function rngRemove(): void {
  rng?.remove();
  rng = null;
}

/**
 * Times `args.count` trapped 32-bit reads of MagicValue on `args.device`; returns nanoseconds in
 * total (after `args.warmup` untimed reads).
 */
export function trappedReadLoop(env: GuestEnv): number {
  const a = env.args as { device: string; count: number; warmup: number };
  const w = env.mmio(a.device);
  for (let i = 0; i < a.warmup; i++) w.read32(MmioReg.MagicValue);
  const t0 = process.hrtime();
  for (let i = 0; i < a.count; i++) w.read32(MmioReg.MagicValue);
  const [s, ns] = process.hrtime(t0);
  return s * 1e9 + ns;
}

/**
 * Writes QueueNotify (queue 0) `args.count` times on `args.device` (posted or trapped, as the
 * machine is configured), in bursts of `args.burst` (default 64, below the doorbell ring's size)
 * after each of which it waits until the VMM drained the ring. Returns the vCPU-side nanoseconds
 * spent issuing and the total nanoseconds including the drains. Initializes the rng driver first
 * when needed (so the queue is live).
 */
export function notifyLoop(env: GuestEnv): { issueNs: number; drainedNs: number } {
  const a = env.args as { device: string; count: number; warmup: number; burst?: number };
  if (rng === null) rngInit(env);
  const burst = a.burst ?? 64;
  const w = env.mmio(a.device);
  for (let i = 0; i < a.warmup; i++) w.write32(MmioReg.QueueNotify, 0);
  env.runtime.drainDoorbells();
  let issue = 0;
  const t0 = process.hrtime();
  for (let done = 0; done < a.count; ) {
    const k = Math.min(burst, a.count - done);
    const b0 = process.hrtime();
    for (let i = 0; i < k; i++) w.write32(MmioReg.QueueNotify, 0);
    const [bs, bns] = process.hrtime(b0);
    issue += bs * 1e9 + bns;
    env.runtime.drainDoorbells();
    done += k;
  }
  const [s, ns] = process.hrtime(t0);
  return { issueNs: issue, drainedNs: s * 1e9 + ns };
}

interface RawQueue {
  t: MmioDriver;
  q: DriverQueue<number>;
  buf: number;
  done: number;
}

/** Raw entropy queues by device name, set up by {@link rawEntropyInit} on this vCPU. */
const raw = new Map<string, RawQueue>();

/**
 * Brings up an entropy device (`args.device`) with the MMIO driver directly and one bare queue, so
 * a request costs exactly one descriptor and its completion is counted without a device driver in
 * between. The seed bits are taken by the MMIO driver from the device's offer; the routing cascade
 * picks MSI when the device offers it, with this vCPU as the destination. Returns the interrupt
 * mode chosen.
 */
export function rawEntropyInit(env: GuestEnv): string {
  const name = (env.args as { device: string }).device;
  const t = env.probe(name);
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', `${name} is empty`);
  beginInit(t, new Features([FeatureBit.VERSION_1, FeatureBit.EVENT_IDX]));
  const r: RawQueue = { t, q: null as unknown as DriverQueue<number>, buf: env.dma.alloc(64, 16), done: 0 };
  const [q] = t.setupQueues([
    {
      index: 0,
      callback: () => {
        while (r.q.getUsed() !== null) r.done++;
      },
    },
  ]);
  r.q = q as DriverQueue<number>;
  finishInit(t);
  raw.set(name, r);
  return String(t.interruptMode);
}

/** One 16-byte entropy request on a device set up by {@link rawEntropyInit}; waits in halt. */
export function rawEntropyRequest(env: GuestEnv): number {
  const r = raw.get((env.args as { device: string }).device) as RawQueue;
  const want = r.done + 1;
  r.q.add([], [{ addr: r.buf, len: 16 }], want);
  if (r.q.kickPrepare()) r.t.notify(r.q);
  waitUntil(env.platform, () => r.done >= want, 'entropy request');
  return r.done;
}

/**
 * Times `args.count` entropy requests (after `args.warmup`) on a device set up by
 * {@link rawEntropyInit}; returns total nanoseconds.
 */
export function rawEntropyLoop(env: GuestEnv): number {
  const a = env.args as { device: string; count: number; warmup: number };
  const r = raw.get(a.device) as RawQueue;
  const one = (): void => {
    const want = r.done + 1;
    r.q.add([], [{ addr: r.buf, len: 16 }], want);
    if (r.q.kickPrepare()) r.t.notify(r.q);
    waitUntil(env.platform, () => r.done >= want, 'entropy request');
  };
  for (let i = 0; i < a.warmup; i++) one();
  const t0 = process.hrtime();
  for (let i = 0; i < a.count; i++) one();
  const [s, ns] = process.hrtime(t0);
  return s * 1e9 + ns;
}

/**
 * Calls every guest-platform entry point with rejected input and returns `[what, code, message]`
 * per attempt (`ok` when nothing was thrown), for the tests.
 */
export function platformRejections(env: GuestEnv): Array<[string, string, string]> {
  const out: Array<[string, string, string]> = [];
  const p = env.platform;
  const attempt = (what: string, f: () => unknown): void => {
    try {
      f();
      out.push([what, 'ok', '']);
    } catch (e) {
      out.push([what, String((e as { code?: unknown }).code), (e as Error).message]);
    }
  };
  attempt('requestIrq line 99', () => p.requestIrq(99, () => {}));
  attempt('requestIrq line -1', () => p.requestIrq(-1, () => {}));
  attempt('freeIrq line 24', () => p.freeIrq(24));
  attempt('requestVector 31', () => p.requestVector(31, () => {}));
  attempt('requestVector 256', () => p.requestVector(256, () => {}));
  attempt('requestVector of line 5', () => p.requestVector(env.runtime.machine.lineVectorBase + 5, () => {}));
  attempt('sendIpi vcpu 9', () => p.sendIpi(9, 0x40));
  attempt('sendIpi vector 20', () => p.sendIpi(0, 20));
  attempt('allocMsiVectors 0', () => p.allocMsiVectors(0));
  attempt('allocMsiVectors 1.5', () => p.allocMsiVectors(1.5));
  attempt('allocMsiVectors 1000', () => {
    if (p.allocMsiVectors(1000) !== null) throw new Error('allocated 1000 vectors');
  });
  attempt('msiMessage unallocated', () => p.msiMessage(0x50));
  attempt('setMsiHandler unallocated', () => p.setMsiHandler(0x50, () => {}));
  const [v] = p.allocMsiVectors(1) ?? [-1];
  attempt('msiMessage allocated', () => {
    const m = p.msiMessage(v);
    if (m.addressLow !== (0xfee0_0000 | (env.vcpu << 12)) >>> 0 || m.data !== v)
      throw new Error('wrong message');
  });
  p.setMsiHandler(v, () => {});
  attempt('setMsiHandler twice', () => p.setMsiHandler(v, () => {}));
  p.freeMsiVectors([v, 7, 300]);
  attempt('msiMessage freed', () => p.msiMessage(v));
  attempt('requestIrq line 5', () => p.requestIrq(5, () => {}));
  attempt('requestIrq line 5 again', () => p.requestIrq(5, () => {}));
  p.freeIrq(5);
  attempt('halt inside a handler', () => {
    p.requestVector(0x70, () => p.halt());
    p.sendIpi(env.vcpu, 0x70);
    p.halt();
  });
  p.requestVector(0x70, null);
  return out;
}

/** Vector vCPU 0 answers in the IPI ping-pong. */
export const PING_VECTOR = 0x40;
/** Vector vCPU 1 waits for in the IPI ping-pong. */
export const PONG_VECTOR = 0x41;

/**
 * IPI ping-pong, responder side (vCPU `args.peer` initiates): on each PING_VECTOR, sends
 * PONG_VECTOR back; returns after `args.count` pings. Every ping is taken in halt.
 */
export function ipiResponder(env: GuestEnv): number {
  const a = env.args as { count: number; peer: number };
  let seen = 0;
  env.platform.requestVector(PING_VECTOR, () => {
    seen++;
    env.platform.sendIpi(a.peer, PONG_VECTOR);
  });
  try {
    while (seen < a.count) env.platform.halt();
  } finally {
    env.platform.requestVector(PING_VECTOR, null);
  }
  return seen;
}

/**
 * IPI ping-pong, initiator side: `args.count` times, sends PING_VECTOR to `args.peer` and halts
 * until the PONG arrives (a lost wake-up hangs here). Returns total nanoseconds.
 */
export function ipiInitiator(env: GuestEnv): number {
  const a = env.args as { count: number; peer: number; warmup: number };
  let pongs = 0;
  env.platform.requestVector(PONG_VECTOR, () => {
    pongs++;
  });
  try {
    for (let i = 0; i < a.warmup; i++) {
      const want = pongs + 1;
      env.platform.sendIpi(a.peer, PING_VECTOR);
      while (pongs < want) env.platform.halt();
    }
    const t0 = process.hrtime();
    for (let i = 0; i < a.count; i++) {
      const want = pongs + 1;
      env.platform.sendIpi(a.peer, PING_VECTOR);
      while (pongs < want) env.platform.halt();
    }
    const [s, ns] = process.hrtime(t0);
    return s * 1e9 + ns;
  } finally {
    env.platform.requestVector(PONG_VECTOR, null);
  }
}

/**
 * The physical limit, measured on the same threads: a raw Atomics ping-pong over a word of guest
 * RAM (`args.word`, a byte address), no runtime in between. Side `args.side` 0 answers, 1
 * initiates; `args.spin` polls before each wait. Returns total nanoseconds (initiator) or 0.
 */
export function rawPingPong(env: GuestEnv): number {
  const a = env.args as { word: number; count: number; side: 0 | 1; spin: number; warmup: number };
  const i32 = new Int32Array(env.ram);
  const at = a.word >>> 2;
  const total = a.count + a.warmup;
  const waitFor = (value: number): void => {
    for (let i = 0; i < a.spin; i++) if (Atomics.load(i32, at) === value) return;
    while (Atomics.load(i32, at) !== value) Atomics.wait(i32, at, Atomics.load(i32, at));
  };
  if (a.side === 0) {
    for (let k = 0; k < total; k++) {
      waitFor(2 * k + 1);
      Atomics.store(i32, at, 2 * k + 2);
      Atomics.notify(i32, at);
    }
    return 0;
  }
  let t0 = process.hrtime();
  for (let k = 0; k < total; k++) {
    if (k === a.warmup) t0 = process.hrtime();
    Atomics.store(i32, at, 2 * k + 1);
    Atomics.notify(i32, at);
    waitFor(2 * k + 2);
  }
  const [s, ns] = process.hrtime(t0);
  return s * 1e9 + ns;
}
