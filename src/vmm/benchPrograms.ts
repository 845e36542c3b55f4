/**
 * Machine setups (VMM worker) and guest programs (vCPU workers) of the seeds' benchmark
 * (`virtio-mmio bench`, src/cli/bench/seeds): a netperf TCP_RR-like request/response loop through
 * virtio-net to a host-side peer, and the ideal bound (the same request/response with no device at
 * all, two threads and a SharedArrayBuffer). Refer to them with
 * `vmmModule('benchPrograms', '<name>')`.
 *
 * The peer ({@link HostPeer}'s UDP request/response server) runs in the VMM worker, behind an
 * in-process link ({@link createNetLink}, manual delivery). The VMM loop never returns to the
 * event loop, so the link is pumped on the VMM thread right after each of the device's queue
 * notifications has been served ({@link PumpedNetDevice}): a request transmitted by the guest is
 * answered, and the answer written into the receive queue, inside the same notification.
 *
 * The block workload (fio-like 4 KiB random read/write at a queue depth) uses a virtio-blk device
 * over a {@link FileBlockBackend}; the device completes each request inside the notification
 * that submitted it (synchronous file I/O on the VMM thread).
 *
 * @packageDocumentation
 */

import { FileBlockBackend } from '../backend/index.js';
import {
  type BlkCompletion,
  BlkDevice,
  BlkDriver,
  buildUdpFrame,
  createNetLink,
  HOST_PEER_RR_PORT,
  HOST_PEER_SINK_PORT,
  HOST_PEER_SOURCE_PORT,
  HostPeer,
  type NetBackend,
  NetDevice,
  NetDriver,
  type NetLink,
  parseIpv4Address,
  parseMac,
  waitUntil,
} from '../device/index.js';
import { VirtioError } from '../spec/index.js';
import type { InterruptMode } from '../transport/index.js';
import type { GuestEnv } from './vcpu.js';
import type { VmmDeviceOptions, VmmHost } from './vmmCore.js';

// -------------------------------------------------------------------------------------------------
// Shared constants.

/** Guest IPv4 address of the request/response workload. */
export const RR_GUEST_IP = '10.0.2.15';
/** Peer IPv4 address. */
export const RR_PEER_IP = '10.0.2.2';
/** Peer MAC address. */
export const RR_PEER_MAC = '02:00:00:00:00:fe';
/** Guest UDP source port. */
export const RR_GUEST_PORT = 40000;
/** Ethernet + IPv4 + UDP header bytes before the UDP payload. */
export const UDP_PAYLOAD_OFFSET = 14 + 20 + 8;
/** Offset of the UDP checksum in a frame. */
const UDP_CHECKSUM_OFFSET = 14 + 20 + 6;

/**
 * A UDP frame from the guest (`mac`, {@link RR_GUEST_IP}, `srcPort`) to the peer
 * ({@link RR_PEER_MAC}, {@link RR_PEER_IP}, `dstPort`) carrying `payload`, with the UDP checksum 0
 * ("not computed", allowed over IPv4) so that a sequence number or transaction id can be patched in
 * at {@link UDP_PAYLOAD_OFFSET} through the returned view without recomputing it.
 */
export function guestUdpFrame(
  mac: Uint8Array,
  srcPort: number,
  dstPort: number,
  payload: Uint8Array,
): { frame: Uint8Array; view: DataView } {
  const frame = buildUdpFrame(
    parseMac(RR_PEER_MAC),
    mac,
    { src: parseIpv4Address(RR_GUEST_IP), dst: parseIpv4Address(RR_PEER_IP), id: 1 },
    { srcPort, dstPort, data: payload },
  );
  frame[UDP_CHECKSUM_OFFSET] = 0;
  frame[UDP_CHECKSUM_OFFSET + 1] = 0;
  return { frame, view: new DataView(frame.buffer, frame.byteOffset, frame.length) };
}

// -------------------------------------------------------------------------------------------------
// Machine setup (VMM worker).

/**
 * A {@link NetDevice} whose in-process link is pumped after every queue notification it serves,
 * on the VMM thread: the peer's answers are delivered without an event loop and without
 * re-entering the device from inside its own transmit.
 */
export class PumpedNetDevice extends NetDevice {
  /** The link between this device's backend and the peer. */
  netLink: NetLink | null = null;

  /** Serves the notification, then delivers what the link holds (both directions, until quiet). */
  override notify(index: number): void {
    super.notify(index);
    const link = this.netLink;
    if (link === null) return;
    // Each pump delivers what was queued when it began; answers queued by it go in the next pass.
    for (let i = 0; i < 16 && link.pending > 0; i++) link.pump();
  }
}

/** Arguments of {@link setupNetRr}. */
export interface NetRrSetupArgs {
  /** Register layout: 2 (modern, default) or 1 (legacy). */
  readonly version?: 1 | 2;
  /** Wired line layout (default 'single'). */
  readonly lines?: 'single' | 'per-queue' | 'shared';
  /** Seed MSI: none (default), non-sharing (fixed mapping) or sharing. */
  readonly msi?: 'none' | 'non-sharing' | 'sharing';
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  readonly eventIdx?: boolean;
  /** Bytes of each response (default 1024). */
  readonly responseSize?: number;
  /** `max_virtqueue_pairs` of the device (default 1). */
  readonly queuePairs?: number;
  /** With seed MSI: also offer the per-queue notification addresses (VIRTIO_F_MMIO_NOTIFICATION). */
  readonly notification?: boolean;
  /**
   * When the peer's answer is delivered: `after-notify` (default) once the device has served the
   * whole notification (the transmit completion is published first), or `in-transmit` inside
   * the device's send, before the transmit completion (a peer faster than the device).
   */
  readonly delivery?: 'after-notify' | 'in-transmit';
}

/** A backend that hands each sent frame to the link and pumps it at once (delivery `in-transmit`). */
class PumpingBackend implements NetBackend {
  constructor(private readonly link: NetLink) {}

  send(frame: Uint8Array): void {
    this.link.a.send(frame);
    for (let i = 0; i < 16 && this.link.pending > 0; i++) this.link.pump();
  }

  onReceive(handler: (frame: Uint8Array) => void): void {
    this.link.a.onReceive(handler);
  }

  close(): void {
    this.link.a.close();
  }
}

/**
 * Setup: `net0`, a virtio-net device linked to a {@link HostPeer} (at {@link RR_PEER_IP},
 * {@link RR_PEER_MAC}) whose UDP request/response server answers `responseSize` bytes; the
 * interrupt and notification layout from `args`.
 */
export function setupNetRr(host: VmmHost, rawArgs: unknown): void {
  const a = (rawArgs ?? {}) as NetRrSetupArgs;
  const link = createNetLink({ delivery: 'manual' });
  const pairs = a.queuePairs ?? 1;
  const inTransmit = a.delivery === 'in-transmit';
  const dev = new PumpedNetDevice({
    backend: inTransmit ? new PumpingBackend(link) : link.a,
    queuePairs: pairs,
  });
  if (!inTransmit) dev.netLink = link;
  new HostPeer({
    backend: link.b,
    ip: RR_PEER_IP,
    mac: RR_PEER_MAC,
    rrResponseSize: a.responseSize ?? 1024,
  });
  // Vectors: config + one per queue (rx/tx per pair, control queue), fixed mapping needs more
  // than the highest queue index + 1.
  host.addDevice(dev, placement('net0', a, 2 * pairs + 2));
}

// -------------------------------------------------------------------------------------------------
// Guest programs (vCPU workers).

let net: NetDriver | null = null;

/** Arguments of {@link netRrInit}. */
export interface NetRrInitArgs {
  /** Interrupt modes the driver's cascade may use (default all). */
  readonly allow?: readonly InterruptMode[];
  /** Queue pairs to use (default 1). */
  readonly queuePairs?: number;
  /**
   * Transmit completions reclaimed at the next send, with no transmit interrupt (default true:
   * Linux virtio_net's path without tx napi; false takes an interrupt per transmitted frame).
   */
  readonly txReclaimOnSend?: boolean;
}

/**
 * Probes `net0` with the MMIO driver (told the seed profile when the machine says so, and limited
 * to `args.allow`) and the net driver; keeps the driver for {@link netRrLoop}. Returns the
 * interrupt mode the cascade chose.
 */
export function netRrInit(env: GuestEnv): string {
  const a = (env.args ?? {}) as NetRrInitArgs;
  const t = env.probe('net0', { interrupts: a.allow === undefined ? undefined : { allow: a.allow } });
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'net0 is empty');
  net = NetDriver.probe(t, { queuePairs: a.queuePairs ?? 1, txReclaimOnSend: a.txReclaimOnSend ?? true });
  return String(t.interruptMode);
}

/** Arguments of {@link netRrLoop}. */
export interface NetRrLoopArgs {
  /** Untimed transactions first. */
  readonly warmup: number;
  /** Stop after this many timed transactions ... */
  readonly count: number;
  /** ... or after this many milliseconds, whichever comes first (0: count only). */
  readonly durationMs: number;
  /** UDP payload bytes of each request (default 32; at least 8). */
  readonly requestSize?: number;
  /** Expected UDP payload bytes of each response (default 1024). */
  readonly responseSize?: number;
}

/** What one {@link netRrLoop} run measured (latencies in microseconds, as the guest saw them). */
export interface RrRunResult {
  /** Timed transactions. */
  readonly transactions: number;
  /** Wall nanoseconds of the timed part. */
  readonly elapsedNs: number;
  /** Transactions per second. */
  readonly transPerSec: number;
  /** Latency percentiles, microseconds. */
  readonly p50Us: number;
  readonly p90Us: number;
  readonly p99Us: number;
  /** Mean latency, microseconds. */
  readonly meanUs: number;
  /**
   * Operations the run performed in all (the counters' denominator): `transactions` plus any
   * finished untimed at the end (requests still in flight at a queue depth above 1).
   */
  readonly operations: number;
}

/** Percentiles of `lat[0..n)` (sorted in place). */
export function latencySummary(lat: Float64Array, n: number, elapsedNs: number): RrRunResult {
  const s = lat.subarray(0, n).sort();
  const pick = (p: number): number => (n === 0 ? 0 : s[Math.min(n - 1, Math.floor(p * n))]);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i];
  return {
    transactions: n,
    elapsedNs,
    transPerSec: elapsedNs > 0 ? (n * 1e9) / elapsedNs : 0,
    p50Us: pick(0.5),
    p90Us: pick(0.9),
    p99Us: pick(0.99),
    meanUs: n === 0 ? 0 : sum / n,
    operations: n,
  };
}

/**
 * Runs `one` transaction `warmup` times untimed, then times each until `count` transactions or
 * `durationMs` (0: count only) have passed; returns the summary.
 */
export function timeTransactions(
  one: () => void,
  a: { readonly warmup: number; readonly count: number; readonly durationMs: number },
): RrRunResult {
  for (let i = 0; i < a.warmup; i++) one();
  const lat = new Float64Array(Math.max(1, a.count));
  const limitMs = a.durationMs > 0 ? a.durationMs : Number.POSITIVE_INFINITY;
  const start = performance.now();
  let n = 0;
  let now = start;
  while (n < a.count && now - start < limitMs) {
    const t0 = now;
    one();
    now = performance.now();
    lat[n++] = (now - t0) * 1000;
  }
  return latencySummary(lat, n, (now - start) * 1e6);
}

/**
 * The request/response loop (netperf TCP_RR-like, over UDP): sends a `requestSize`-byte request
 * carrying a transaction id to the peer, waits in halt until the `responseSize`-byte answer with
 * that id arrived (the driver's receive interrupt harvests it), and times each transaction.
 * @throws VirtioError `INVALID_STATE` before {@link netRrInit}; `DEVICE_FAILED` for a lost or wrong
 *   answer or a refused send
 */
export function netRrLoop(env: GuestEnv): RrRunResult {
  const a = env.args as NetRrLoopArgs;
  const d = net;
  if (d === null) throw new VirtioError('INVALID_STATE', 'netRrLoop before netRrInit');
  const reqSize = a.requestSize ?? 32;
  const respSize = a.responseSize ?? 1024;
  const payload = new Uint8Array(reqSize);
  const { frame, view } = guestUdpFrame(d.mac, RR_GUEST_PORT, HOST_PEER_RR_PORT, payload);
  let txid = 0;
  const platform = env.platform;
  const one = (): void => {
    txid = (txid + 1) >>> 0;
    view.setUint32(UDP_PAYLOAD_OFFSET, txid);
    if (!d.send(frame)) throw new VirtioError('DEVICE_FAILED', `request ${txid} not sent`);
    waitUntil(platform, () => d.poll() > 0, 'rr response');
    const got = d.receive();
    if (got.length !== 1) throw new VirtioError('DEVICE_FAILED', `${got.length} frames for one request`);
    const r = got[0];
    if (
      r.length !== UDP_PAYLOAD_OFFSET + respSize ||
      new DataView(r.buffer, r.byteOffset, r.length).getUint32(UDP_PAYLOAD_OFFSET) !== txid
    ) {
      throw new VirtioError('DEVICE_FAILED', `wrong answer to request ${txid} (${r.length} bytes)`);
    }
  };
  return timeTransactions(one, a);
}

/** Arguments of {@link netBulkTxLoop} and {@link netBulkRxLoop}. */
export interface NetBulkLoopArgs {
  /** Untimed datagrams first. */
  readonly warmup: number;
  /** Stop after this many timed datagrams ... */
  readonly count: number;
  /** ... or after this many milliseconds (0: count only). */
  readonly durationMs: number;
  /** UDP payload bytes of each datagram (default 1472: 1514-byte frames). */
  readonly size?: number;
  /** Transmit: frames queued per notification; receive: datagrams asked for per request (default 64). */
  readonly batch?: number;
}

/**
 * iperf-like transmit: UDP datagrams of `size` bytes with a sequence number to the peer's bulk
 * receiver, `batch` frames per notification (Linux `xmit_more`), transmit slots reclaimed on send;
 * a full ring is retried after a flush. The run ends when the device has consumed every frame.
 * `transactions` are datagrams; `transPerSec` datagrams per second; latency is per batch.
 * @throws VirtioError `INVALID_STATE` before {@link netRrInit}; `DEVICE_FAILED` when the device
 *   stops taking frames
 */
export function netBulkTxLoop(env: GuestEnv): RrRunResult {
  const a = env.args as NetBulkLoopArgs;
  const d = net;
  if (d === null) throw new VirtioError('INVALID_STATE', 'netBulkTxLoop before netRrInit');
  const size = a.size ?? 1472;
  const batch = a.batch ?? 64;
  const { frame, view } = guestUdpFrame(d.mac, RR_GUEST_PORT, HOST_PEER_SINK_PORT, new Uint8Array(size));
  let seq = 0;
  const sendOne = (): void => {
    view.setUint32(UDP_PAYLOAD_OFFSET, seq);
    for (let tries = 0; !d.send(frame, 0, false); tries++) {
      // Ring full: let the device catch up (a posted doorbell is served asynchronously).
      d.flush(0);
      if (tries > 10_000_000) {
        throw new VirtioError(
          'DEVICE_FAILED',
          `bulk: datagram ${seq} never taken (${d.txInFlight(0)} in flight, status ${d.transport.getStatus()})`,
        );
      }
    }
    seq = (seq + 1) >>> 0;
  };
  const drain = (): void => {
    d.flush(0);
    for (let tries = 0; d.txInFlight(0) > 0; tries++) {
      if (tries > 10_000_000) throw new VirtioError('DEVICE_FAILED', 'bulk: frames never consumed');
    }
  };
  for (let i = 0; i < a.warmup; i++) {
    sendOne();
    if ((i + 1) % batch === 0) d.flush(0);
  }
  drain();
  const lat = new Float64Array(Math.max(1, Math.ceil(a.count / batch)));
  const limitMs = a.durationMs > 0 ? a.durationMs : Number.POSITIVE_INFINITY;
  const start = performance.now();
  let n = 0;
  let batches = 0;
  let now = start;
  while (n < a.count && now - start < limitMs) {
    const t0 = now;
    for (let i = 0; i < batch && n < a.count; i++, n++) sendOne();
    d.flush(0);
    now = performance.now();
    if (batches < lat.length) lat[batches++] = (now - t0) * 1000;
  }
  drain();
  now = performance.now();
  const r = latencySummary(lat, batches, (now - start) * 1e6);
  return { ...r, transactions: n, operations: n, transPerSec: (n * 1e9) / ((now - start) * 1e6) };
}

/**
 * iperf-like receive (reverse direction), paced by the receiver: asks the peer's bulk source for
 * `batch` datagrams of `size` bytes, waits in halt until all arrived (checking each length and
 * sequence number), asks again. `transactions` are datagrams; latency is per request.
 * @throws VirtioError `INVALID_STATE` before {@link netRrInit}; `DEVICE_FAILED` for a lost,
 *   duplicated or wrong datagram
 */
export function netBulkRxLoop(env: GuestEnv): RrRunResult {
  const a = env.args as NetBulkLoopArgs;
  const d = net;
  if (d === null) throw new VirtioError('INVALID_STATE', 'netBulkRxLoop before netRrInit');
  const size = a.size ?? 1472;
  const batch = a.batch ?? 64;
  const req = new Uint8Array(8);
  new DataView(req.buffer).setUint32(0, batch);
  new DataView(req.buffer).setUint32(4, size);
  const request = guestUdpFrame(d.mac, RR_GUEST_PORT, HOST_PEER_SOURCE_PORT, req).frame;
  const platform = env.platform;
  let expectSeq = -1;
  const one = (): void => {
    if (!d.send(request)) throw new VirtioError('DEVICE_FAILED', 'bulk: request not sent');
    let got = 0;
    while (got < batch) {
      waitUntil(platform, () => d.poll() > 0, 'bulk datagrams');
      for (const f of d.receive()) {
        if (f.length !== UDP_PAYLOAD_OFFSET + size) {
          throw new VirtioError('DEVICE_FAILED', `bulk: datagram of ${f.length} bytes`);
        }
        const seq = new DataView(f.buffer, f.byteOffset, f.length).getUint32(UDP_PAYLOAD_OFFSET);
        if (expectSeq >= 0 && seq !== expectSeq) {
          throw new VirtioError('DEVICE_FAILED', `bulk: datagram ${seq}, expected ${expectSeq}`);
        }
        expectSeq = (seq + 1) >>> 0;
        got++;
      }
    }
  };
  const warm = Math.ceil(a.warmup / batch);
  for (let i = 0; i < warm; i++) one();
  const lat = new Float64Array(Math.max(1, Math.ceil(a.count / batch)));
  const limitMs = a.durationMs > 0 ? a.durationMs : Number.POSITIVE_INFINITY;
  const start = performance.now();
  let n = 0;
  let reqs = 0;
  let now = start;
  while (n < a.count && now - start < limitMs) {
    const t0 = now;
    one();
    n += batch;
    now = performance.now();
    if (reqs < lat.length) lat[reqs++] = (now - t0) * 1000;
  }
  const r = latencySummary(lat, reqs, (now - start) * 1e6);
  return { ...r, transactions: n, operations: n, transPerSec: (n * 1e9) / ((now - start) * 1e6) };
}

/** Removes the net driver (reset, queues released). */
export function netRrRemove(): void {
  net?.remove();
  net = null;
}

/** Arguments of {@link rrIdeal}. */
export interface RrIdealArgs {
  /** The shared buffer: word 0 is the state, the bytes from 64 carry request and response. */
  readonly sab: SharedArrayBuffer;
  /** 0: the server (answers until told to stop); 1: the client (measures). */
  readonly side: 0 | 1;
  /** `Atomics.load` polls before each `Atomics.wait` (the waiting policy). */
  readonly spin: number;
  readonly warmup: number;
  readonly count: number;
  readonly durationMs: number;
  readonly requestSize: number;
  readonly responseSize: number;
}

/** Bytes an {@link rrIdeal} buffer needs for `requestSize` / `responseSize`. */
export function rrIdealBytes(requestSize: number, responseSize: number): number {
  return 64 + requestSize + responseSize;
}

/** State word value that stops the server. */
const IDEAL_STOP = -1;

/**
 * The ideal bound: the same request/response with no device at all. The client copies a
 * `requestSize`-byte request into the shared buffer and signals; the server waits, copies it out,
 * copies a `responseSize`-byte response in and signals back; the client copies the response out.
 * Both sides wait with the same policy as the VMM and the vCPUs (`spin` polls, then
 * `Atomics.wait`). The client returns what it measured; the server returns its transaction count
 * once the client stops it.
 */
export function rrIdeal(env: GuestEnv): RrRunResult | number {
  const a = env.args as RrIdealArgs;
  const i32 = new Int32Array(a.sab, 0, 16);
  const reqArea = new Uint8Array(a.sab, 64, a.requestSize);
  const respArea = new Uint8Array(a.sab, 64 + a.requestSize, a.responseSize);
  const req = new Uint8Array(a.requestSize);
  const resp = new Uint8Array(a.responseSize);
  const waitWhile = (value: number): number => {
    for (let i = 0; i < a.spin; i++) {
      const v = Atomics.load(i32, 0);
      if (v !== value) return v;
    }
    for (;;) {
      const v = Atomics.load(i32, 0);
      if (v !== value) return v;
      Atomics.wait(i32, 0, value);
    }
  };
  if (a.side === 0) {
    // A fresh buffer starts at 0; the client moves it to 1, 3, 5, ..., the server to 2, 4, ...
    let seen = 0;
    let served = 0;
    for (;;) {
      const v = waitWhile(seen);
      if (v === IDEAL_STOP) return served;
      req.set(reqArea);
      resp[0] = req[0];
      respArea.set(resp);
      served++;
      seen = v + 1;
      Atomics.store(i32, 0, seen);
      Atomics.notify(i32, 0);
    }
  }
  let state = 0;
  const one = (): void => {
    req[0] = (req[0] + 1) & 0xff;
    reqArea.set(req);
    state++;
    Atomics.store(i32, 0, state);
    Atomics.notify(i32, 0);
    state = waitWhile(state);
    resp.set(respArea);
    if (resp[0] !== req[0]) throw new VirtioError('DEVICE_FAILED', 'ideal loop: wrong response');
  };
  try {
    return timeTransactions(one, a);
  } finally {
    Atomics.store(i32, 0, IDEAL_STOP);
    Atomics.notify(i32, 0);
  }
}

// -------------------------------------------------------------------------------------------------
// Block workload.

/** Arguments of {@link setupBlkFio}. */
export interface BlkFioSetupArgs extends Omit<NetRrSetupArgs, 'responseSize' | 'queuePairs'> {
  /** Host path of the image (created sparse when missing). */
  readonly path: string;
  /** Image size in bytes when it is created (default 64 MiB). */
  readonly size?: number;
}

/**
 * The device placement a benchmark mode asks for: register layout, wired lines, EVENT_IDX, and the
 * seed profile (MSI with `vectors` fixed-mapping vectors or 2 shared ones, optionally per-queue
 * notification addresses; RING_RESET is never offered with it).
 */
function placement(name: string, a: NetRrSetupArgs | BlkFioSetupArgs, vectors: number): VmmDeviceOptions {
  const msi = a.msi ?? 'none';
  const seed =
    msi === 'none'
      ? undefined
      : {
          msi: msi === 'sharing' ? { vectors: 2, sharing: true } : { vectors, sharing: false },
          ...(a.notification === true ? { notification: true as const } : {}),
        };
  return {
    name,
    version: a.version ?? 2,
    lines: a.lines ?? 'single',
    eventIdx: a.eventIdx ?? true,
    ...(seed === undefined ? {} : { seed, ringReset: false }),
  };
}

/** Setup: `blk0`, a virtio-blk device over a file image, with the interrupt layout from `args`. */
export function setupBlkFio(host: VmmHost, rawArgs: unknown): void {
  const a = rawArgs as BlkFioSetupArgs;
  const backend = new FileBlockBackend(a.path, { createSize: a.size ?? 64 << 20 });
  const dev = new BlkDevice({ backend, queueSize: 256 });
  host.addDevice(dev, placement('blk0', a, 4));
}

let blk: BlkDriver | null = null;

/** Probes `blk0` (cascade limited to `args.allow`); returns the interrupt mode chosen. */
export function blkFioInit(env: GuestEnv): string {
  const a = (env.args ?? {}) as NetRrInitArgs;
  const t = env.probe('blk0', { interrupts: a.allow === undefined ? undefined : { allow: a.allow } });
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'blk0 is empty');
  blk = BlkDriver.probe(t);
  return String(t.interruptMode);
}

/** Arguments of {@link blkFioLoop}. */
export interface BlkFioLoopArgs {
  /** Requests kept in flight (queue depth). */
  readonly qd: number;
  /** Untimed I/Os first. */
  readonly warmup: number;
  /** Stop after this many timed I/Os ... */
  readonly count: number;
  /** ... or after this many milliseconds (0: count only). */
  readonly durationMs: number;
  /** Percent of reads (default 50; fio `rwmixread`). */
  readonly readPercent?: number;
  /** Bytes per I/O, a multiple of 512 (default 4096). */
  readonly blockSize?: number;
  /** Seed of the offset generator (default 1). */
  readonly seed?: number;
}

/**
 * fio-like random I/O: keeps `qd` requests of `blockSize` bytes in flight at random aligned
 * offsets (`readPercent` reads, the rest writes), waiting in halt for completions; times each I/O
 * from submit to completion. Returns I/Os as `transactions` and IOPS as `transPerSec`.
 * @throws VirtioError `INVALID_STATE` before {@link blkFioInit}; `BACKEND_IO` for a failed I/O
 */
export function blkFioLoop(env: GuestEnv): RrRunResult {
  const a = env.args as BlkFioLoopArgs;
  const d = blk;
  if (d === null) throw new VirtioError('INVALID_STATE', 'blkFioLoop before blkFioInit');
  const bs = a.blockSize ?? 4096;
  const sectors = bs / 512;
  const blocks = Math.floor(d.capacity / sectors);
  const readPct = a.readPercent ?? 50;
  let x = (a.seed ?? 1) >>> 0 || 1;
  const rand = (): number => {
    // xorshift32: reproducible offsets without allocation.
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const wdata = new Uint8Array(bs).fill(0x5a);
  const rbufs: Uint8Array[] = [];
  for (let i = 0; i < a.qd; i++) rbufs.push(new Uint8Array(bs));
  const freeBufs = rbufs.slice();
  const started = new Map<number, { t: number; buf: Uint8Array | null }>();
  const submitOne = (): void => {
    const sector = (rand() % blocks) * sectors;
    const isRead = rand() % 100 < readPct;
    const buf = isRead ? (freeBufs.pop() as Uint8Array) : null;
    // Timed from before the submit: a trapped notification completes the request inside it.
    const t = performance.now();
    const id =
      buf === null
        ? d.submit({ op: 'write', sector, data: wdata })
        : d.submit({ op: 'read', sector, sectors, into: buf });
    if (id === null) throw new VirtioError('DEVICE_FAILED', 'blk queue full below the queue depth');
    started.set(id, { t, buf });
  };
  const lat = new Float64Array(Math.max(1, a.count));
  let n = 0;
  let warm = a.warmup;
  let timing = warm === 0;
  let start = performance.now();
  const limitMs = a.durationMs > 0 ? a.durationMs : Number.POSITIVE_INFINITY;
  let now = start;
  const finish = (c: BlkCompletion): void => {
    if (c.status !== 0) throw new VirtioError('BACKEND_IO', `blk i/o ${c.id} failed with status ${c.status}`);
    const s = started.get(c.id);
    if (s === undefined) return;
    started.delete(c.id);
    if (s.buf !== null) freeBufs.push(s.buf);
    if (timing) {
      if (n < lat.length) lat[n] = (now - s.t) * 1000;
      n++;
    } else if (--warm <= 0) {
      timing = true;
      start = performance.now();
      now = start;
    }
  };
  const active = (): boolean => (timing ? n < a.count && now - start < limitMs : true);
  while (active()) {
    while (started.size < a.qd) submitOne();
    const done = d.wait();
    now = performance.now();
    for (const c of done) finish(c);
  }
  const elapsed = (now - start) * 1e6;
  // Drain what is still in flight (not timed, but counted as operations: their exits are in the
  // counters).
  let drained = 0;
  while (started.size > 0) {
    for (const c of d.wait()) {
      if (started.delete(c.id)) drained++;
    }
  }
  return { ...latencySummary(lat, Math.min(n, lat.length), elapsed), operations: (timing ? n : 0) + drained };
}

/** Removes the blk driver. */
export function blkFioRemove(): void {
  blk?.remove();
  blk = null;
}
