/**
 * Guest programs of the multiqueue benchmark (`virtio-mmio bench`, workload `mq`): two vCPUs, one
 * request/response flow each (netperf TCP_RR-like, 32/1024 bytes, to the {@link HostPeer} of
 * {@link setupNetRr}), through one virtio-net device with one or two queue pairs.
 *
 * - One pair: both flows run on vCPU 0, which owns the only pair (the guest has one queue, so all
 *   of its traffic and interrupts are one CPU's work); vCPU 1 has nothing to do.
 * - Two pairs: vCPU 0 probes the device and keeps pair 0; pair 1 is handed to vCPU 1
 *   ({@link NetDriver.handoff} → {@link NetPairDriver}), which runs the second flow. Where pair 1's
 *   interrupt lands depends on the routing the cascade chose: per-queue MSI aims pair 1's vector at
 *   vCPU 1 (its own handler, nothing else involved); one shared line (or one shared MSI vector)
 *   lands on vCPU 0, whose handler forwards pair 1's completions to vCPU 1 with an IPI, as Linux
 *   runs the interrupt on the CPU the line is routed to and then wakes the waiting task elsewhere.
 *
 * Order of calls: {@link mqReserve} on vCPU 1 (its vectors), {@link mqInit} on vCPU 0 (probe,
 * handoff), {@link mqAdopt} on vCPU 1, then {@link mqLoop} on both at once, {@link mqRemove} on
 * vCPU 1 and vCPU 0. Transmit completions are reclaimed on send (no transmit interrupts) in every
 * mode. Refer to them with `vmmModule('mqPrograms', '<name>')`.
 *
 * @packageDocumentation
 */

import {
  HOST_PEER_RR_PORT,
  type MsiMessageData,
  NetDriver,
  NetPairDriver,
  type NetPairHandoff,
  type NetRemotePair,
  waitUntil,
} from '../device/index.js';
import { VirtioError } from '../spec/index.js';
import type { InterruptMode } from '../transport/index.js';
import {
  guestUdpFrame,
  latencySummary,
  RR_GUEST_PORT,
  type RrRunResult,
  UDP_PAYLOAD_OFFSET,
} from './benchPrograms.js';
import type { GuestEnv } from './vcpu.js';

/** Vector vCPU 1 takes pair 1's forwarded completions on (an IPI from vCPU 0). */
export const MQ_FORWARD_VECTOR = 0x48;
/** Vector that wakes a vCPU idling at a rendezvous (see {@link mqLoop}). */
export const MQ_WAKE_VECTOR = 0x49;

/** What this vCPU drives: NetDriver pair 0 (vCPU 0) or a handed-off pair (vCPU 1). */
interface FlowPort {
  send(frame: Uint8Array): boolean;
  poll(): number;
  receive(): Uint8Array[];
  readonly mac: Uint8Array;
}

let net: NetDriver | null = null;
let pairDriver: NetPairDriver | null = null;
let rxVector = -1;
/** IPIs this vCPU sent (vCPU 0: forwards) and took (vCPU 1), since the last loop start. */
let ipisSent = 0;
let ipisTaken = 0;

/** What {@link mqReserve} returns (plain data for {@link mqInit}). */
export interface MqReservation {
  /** The message raising vCPU 1's receive vector (per-queue MSI). */
  readonly rxMsi: MsiMessageData;
  /** The IPI vector vCPU 1 takes forwarded completions on. */
  readonly forwardVector: number;
}

/**
 * vCPU 1, first: allocates the receive vector of pair 1 on this vCPU and binds it and
 * {@link MQ_FORWARD_VECTOR} to the pair driver's service routine (the driver arrives later, with
 * {@link mqAdopt}; until then nothing is posted on the pair, so nothing can interrupt).
 * @throws VirtioError `INVALID_STATE` when the platform has no MSI or no free vector
 */
export function mqReserve(env: GuestEnv): MqReservation {
  const p = env.platform;
  const v = p.allocMsiVectors(1);
  if (v === null) throw new VirtioError('INVALID_STATE', `vcpu ${env.vcpu}: no msi vector free`);
  rxVector = v[0];
  const service = (): void => {
    pairDriver?.service();
  };
  p.setMsiHandler(rxVector, service);
  p.requestVector(MQ_FORWARD_VECTOR, () => {
    ipisTaken++;
    service();
  });
  p.requestVector(MQ_WAKE_VECTOR, () => {});
  return { rxMsi: p.msiMessage(rxVector), forwardVector: MQ_FORWARD_VECTOR };
}

/** Arguments of {@link mqInit}. */
export interface MqInitArgs {
  /** Interrupt modes the cascade may use. */
  readonly allow?: readonly InterruptMode[];
  /** Queue pairs: 1 (both flows here) or 2 (pair 1 handed to vCPU 1). */
  readonly pairs: 1 | 2;
  /** vCPU 1's reservation (with 2 pairs). */
  readonly reservation?: MqReservation;
}

/** What {@link mqInit} returns. */
export interface MqInitResult {
  /** The interrupt mode the cascade chose. */
  readonly mode: string;
  /** Pair 1 for vCPU 1 (null with one pair). */
  readonly handoff: NetPairHandoff | null;
}

/**
 * vCPU 0: probes `net0` (transmit completions reclaimed on send), with 2 pairs declares pair 1
 * remote (its receive vector vCPU 1's, or forwarded by IPI) and hands it off.
 * @throws VirtioError `INVALID_ARGUMENT` for 2 pairs without a reservation; whatever probe throws
 */
export function mqInit(env: GuestEnv): MqInitResult {
  const a = env.args as MqInitArgs;
  const t = env.probe('net0', { interrupts: a.allow === undefined ? undefined : { allow: a.allow } });
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'net0 is empty');
  let remotePairs: NetRemotePair[] = [];
  if (a.pairs === 2) {
    const r = a.reservation;
    if (r === undefined) throw new VirtioError('INVALID_ARGUMENT', 'two pairs need vcpu 1 reservation');
    const platform = env.platform;
    remotePairs = [
      {
        pair: 1,
        forward: () => {
          ipisSent++;
          platform.sendIpi(1, r.forwardVector);
        },
        rxMsi: r.rxMsi,
      },
    ];
  }
  env.platform.requestVector(MQ_WAKE_VECTOR, () => {});
  net = NetDriver.probe(t, { queuePairs: a.pairs, txReclaimOnSend: true, remotePairs });
  if (net.queuePairsInUse !== a.pairs) {
    throw new VirtioError('DEVICE_FAILED', `net0 uses ${net.queuePairsInUse} pairs, not ${a.pairs}`);
  }
  return { mode: String(t.interruptMode), handoff: a.pairs === 2 ? net.handoff(1) : null };
}

/** vCPU 1: takes over pair 1 from `args.handoff`, posting its receive buffers. */
export function mqAdopt(env: GuestEnv): number {
  const h = (env.args as { handoff: NetPairHandoff }).handoff;
  const w = env.mmio('net0');
  pairDriver = new NetPairDriver(env.mem, env.dma, h, (off, v) => w.write32(off, v));
  return pairDriver.pair;
}

/** Arguments of {@link mqLoop}. */
export interface MqLoopArgs {
  /** Flows this vCPU runs (2 on vCPU 0 with one pair, else 1), each one transaction in flight. */
  readonly flows: number;
  /** Untimed transactions first (per vCPU). */
  readonly warmup: number;
  /** Stop after this many timed transactions or `durationMs`, whichever comes first. */
  readonly count: number;
  readonly durationMs: number;
  /** Word 0: vCPUs at the start line; word 1: vCPUs finished (8 bytes, zeroed). */
  readonly barrier: SharedArrayBuffer;
  /** vCPUs taking part. */
  readonly parties: number;
  /** Request and response UDP payload bytes. */
  readonly requestSize: number;
  readonly responseSize: number;
}

/** What one vCPU's {@link mqLoop} measured. */
export interface MqLoopResult extends RrRunResult {
  /** IPIs this vCPU sent (forwards) and took, in the timed part. */
  readonly ipisSent: number;
  readonly ipisTaken: number;
}

/**
 * Request/response on this vCPU's pair with `flows` flows (distinct UDP source ports per vCPU and
 * flow, so the device steers each answer to the pair that sent its flow): each flow keeps one
 * request in flight; the vCPU halts until an answer arrives. Timed from a start barrier shared
 * with the other vCPU.
 * @throws VirtioError `INVALID_STATE` before init/adopt; `DEVICE_FAILED` for a wrong or lost answer
 */
export function mqLoop(env: GuestEnv): MqLoopResult {
  const a = env.args as MqLoopArgs;
  const port: FlowPort | null =
    env.vcpu === 0
      ? net === null
        ? null
        : {
            send: (f) => (net as NetDriver).send(f, 0),
            poll: () => (net as NetDriver).poll(),
            receive: () => (net as NetDriver).receive(),
            mac: net.mac,
          }
      : pairDriver;
  if (port === null) throw new VirtioError('INVALID_STATE', `vcpu ${env.vcpu}: mqLoop before init`);
  const flows = a.flows;
  const frames: Uint8Array[] = [];
  const views: DataView[] = [];
  for (let f = 0; f < flows; f++) {
    const { frame, view } = guestUdpFrame(
      port.mac,
      RR_GUEST_PORT + 16 * env.vcpu + f,
      HOST_PEER_RR_PORT,
      new Uint8Array(a.requestSize),
    );
    frames.push(frame);
    views.push(view);
  }
  const txid = new Uint32Array(flows);
  const sentAt = new Float64Array(flows);
  const expectLen = UDP_PAYLOAD_OFFSET + a.responseSize;
  const fire = (f: number, now: number): void => {
    txid[f] = (txid[f] + 1) >>> 0;
    views[f].setUint32(UDP_PAYLOAD_OFFSET, txid[f]);
    sentAt[f] = now;
    if (!port.send(frames[f]))
      throw new VirtioError('DEVICE_FAILED', `flow ${f}: request ${txid[f]} not sent`);
  };
  /** Takes the answers that arrived; returns the flows answered (calls `done` per answer). */
  const harvest = (done: (f: number) => void): void => {
    for (const r of port.receive()) {
      const dv = new DataView(r.buffer, r.byteOffset, r.length);
      const dstPort = dv.getUint16(14 + 20 + 2);
      const f = dstPort - RR_GUEST_PORT - 16 * env.vcpu;
      if (r.length !== expectLen || f < 0 || f >= flows || dv.getUint32(UDP_PAYLOAD_OFFSET) !== txid[f]) {
        throw new VirtioError('DEVICE_FAILED', `vcpu ${env.vcpu}: unexpected frame of ${r.length} bytes`);
      }
      done(f);
    }
  };
  const platform = env.platform;
  const run = (n: number, limitMs: number, lat: Float64Array | null): { n: number; elapsedNs: number } => {
    let completed = 0;
    const start = performance.now();
    for (let f = 0; f < flows; f++) fire(f, start);
    let outstanding = flows;
    let now = start;
    while (outstanding > 0) {
      waitUntil(platform, () => port.poll() > 0, 'mq response');
      harvest((f) => {
        now = performance.now();
        if (lat !== null && completed < lat.length) lat[completed] = (now - sentAt[f]) * 1000;
        completed++;
        if (completed + outstanding - 1 < n && now - start < limitMs) fire(f, now);
        else outstanding--;
      });
    }
    return { n: completed, elapsedNs: (now - start) * 1e6 };
  };
  // A vCPU that is done must go on taking interrupts until the other is done too: with one shared
  // line or vector every completion of pair 1 lands on vCPU 0 and reaches vCPU 1 only through
  // vCPU 0's handler (an idle CPU halts with interrupts on). The last to arrive wakes the others.
  if (a.barrier.byteLength < 8) throw new VirtioError('INVALID_ARGUMENT', 'mq barrier needs 8 bytes');
  const b = new Int32Array(a.barrier, 0, 2);
  const rendezvous = (word: number): void => {
    if (Atomics.add(b, word, 1) + 1 === a.parties) {
      for (let v = 0; v < a.parties; v++) if (v !== env.vcpu) platform.sendIpi(v, MQ_WAKE_VECTOR);
      return;
    }
    while (Atomics.load(b, word) < a.parties) platform.halt();
  };
  if (a.warmup > 0) run(a.warmup, Number.POSITIVE_INFINITY, null);
  // Start line: both vCPUs begin timing together.
  rendezvous(0);
  ipisSent = 0;
  ipisTaken = 0;
  const lat = new Float64Array(Math.max(1, Math.min(a.count, 4_000_000)));
  const limit = a.durationMs > 0 ? a.durationMs : Number.POSITIVE_INFINITY;
  const r = run(a.count, limit, lat);
  const sent = ipisSent;
  const taken = ipisTaken;
  rendezvous(1);
  return { ...latencySummary(lat, Math.min(r.n, lat.length), r.elapsedNs), ipisSent: sent, ipisTaken: taken };
}

/**
 * Unbinds: vCPU 1 stops servicing its pair (its buffers are freed once vCPU 0 reset the device:
 * call this on vCPU 0 first), vCPU 0 removes the driver (reset, queues released).
 */
export function mqRemove(env: GuestEnv): void {
  env.platform.requestVector(MQ_WAKE_VECTOR, null);
  if (env.vcpu === 0) {
    net?.remove();
    net = null;
    return;
  }
  pairDriver?.release();
  pairDriver = null;
  const p = env.platform;
  if (rxVector >= 0) p.freeMsiVectors([rxVector]);
  rxVector = -1;
  p.requestVector(MQ_FORWARD_VECTOR, null);
}
