/**
 * The far end of QEMU's virtio-net in the frame scenarios: our {@link HostPeer} over a
 * {@link UdpNetBackend}, run in a `worker_threads` Worker with its own event loop. The scenarios
 * drive QEMU through the synchronous qtest client, which blocks the main thread, so a socket on the
 * main thread would never see its datagrams; the worker keeps answering while the main thread waits
 * on qtest. QEMU's netdev is `-netdev dgram` (or `socket,udp=` where dgram is missing): one
 * Ethernet frame per UDP datagram on loopback, the framing of {@link UdpNetBackend}.
 *
 * The worker publishes its counters in a `SharedArrayBuffer` after every frame it handles or
 * sends, so the blocked main thread reads them with `Atomics.load`; commands (a bulk send towards
 * the guest) go by `postMessage`, which the worker receives whatever the main thread is doing, and
 * their completion comes back through the same shared cells.
 *
 * ```
 * const peer = await QemuNetPeer.start();
 * try { const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'net', dgram: peer.dgram }] }); ... }
 * finally { await peer.close(); }
 * ```
 *
 * @packageDocumentation
 */

import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { Worker } from 'node:worker_threads';
import { VirtioError } from '../../spec/index.js';
import { sleepSync } from './syncPipe.js';

/** Where the compiled worker module lives (source runs, as under vitest, map to `dist/peers`). */
export function netPeerWorkerUrl(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL('../../../dist/peers/qemu/netPeerWorker.js', here);
  return new URL('./netPeerWorker.js', here);
}

/**
 * Cells of the shared counter block, one `Int32` each: the {@link HostPeerCounters} the scenarios
 * use, frame and byte counts in both directions at the backend, the backend's own counters, and the
 * command handshake.
 */
export const NetPeerCell = {
  /** HostPeer: frames received. */
  frames: 0,
  /** HostPeer: ARP requests answered. */
  arpReplies: 1,
  /** HostPeer: ICMP echo requests answered. */
  echoReplies: 2,
  /** HostPeer: request/response transactions answered. */
  rrTransactions: 3,
  /** HostPeer: frames sent. */
  sent: 4,
  /** HostPeer: frames ignored. */
  ignored: 5,
  /** Bytes of the frames received (Ethernet frames, no virtio header). */
  rxBytes: 6,
  /** Bytes of the frames sent. */
  txBytes: 7,
  /** UdpNetBackend: datagrams received from QEMU's port. */
  udpReceived: 8,
  /** UdpNetBackend: datagrams dropped (wrong source, no handler). */
  udpDropped: 9,
  /** UdpNetBackend: datagrams handed to the socket. */
  udpSent: 10,
  /** UdpNetBackend: send errors reported by the socket. */
  udpSendErrors: 11,
  /** Commands completed (the main thread waits for it to reach the number it posted). */
  commandsDone: 12,
  /** Result of the last command (frames sent by a bulk send). */
  commandResult: 13,
  /** Set to 1 when the worker failed after startup (the message is lost; see stderr). */
  failed: 14,
} as const;

/** Number of cells in the shared block. */
export const NET_PEER_CELLS = 16;

/** What the worker is started with. */
export interface NetPeerWorkerData {
  /** The shared counter block ({@link NET_PEER_CELLS} Int32 cells). */
  readonly cells: SharedArrayBuffer;
  /** QEMU's local UDP port: where the peer sends, and the only source it accepts. */
  readonly remotePort: number;
  /** The peer's IPv4 address (dotted quad). */
  readonly ip: string;
  /** The peer's MAC address (`xx:xx:...`). */
  readonly mac: string;
  /** Bytes of each request/response answer. */
  readonly rrResponseSize: number;
}

/** A command to the worker. */
export interface NetPeerCommand {
  /** A bulk send of `count` UDP datagrams of `size` bytes to `dstIp:dstPort` (HostPeer.bulkSend). */
  readonly op: 'bulk';
  /** Destination address (number). */
  readonly dstIp: number;
  /** Destination port. */
  readonly dstPort: number;
  /** Datagrams. */
  readonly count: number;
  /** Payload bytes of each. */
  readonly size: number;
}

/** Messages the worker posts during startup. */
export type NetPeerStartMessage =
  | { readonly type: 'ready'; readonly port: number }
  | { readonly type: 'error'; readonly message: string };

/** A snapshot of the peer's counters. */
export interface NetPeerCounters {
  /** HostPeer: frames received. */
  frames: number;
  /** HostPeer: ARP requests answered. */
  arpReplies: number;
  /** HostPeer: ICMP echo requests answered. */
  echoReplies: number;
  /** HostPeer: request/response transactions answered. */
  rrTransactions: number;
  /** HostPeer: frames sent. */
  sent: number;
  /** HostPeer: frames not understood or not for it. */
  ignored: number;
  /** Bytes of the frames received. */
  rxBytes: number;
  /** Bytes of the frames sent. */
  txBytes: number;
  /** Datagrams received from QEMU. */
  udpReceived: number;
  /** Datagrams dropped by the backend. */
  udpDropped: number;
  /** Datagrams handed to the socket. */
  udpSent: number;
  /** Socket send errors. */
  udpSendErrors: number;
}

/** Options of {@link QemuNetPeer.start}. */
export interface QemuNetPeerOptions {
  /** The peer's IPv4 address. Default 10.0.2.2. */
  ip?: string;
  /** The peer's MAC address. Default 02:00:00:00:00:fe (HostPeer's). */
  mac?: string;
  /** Bytes of each request/response answer. Default 1024. */
  rrResponseSize?: number;
  /** Startup timeout in milliseconds. Default 10 s. */
  startTimeoutMs?: number;
}

/** The UDP ports of one QEMU netdev: QEMU binds `localPort` and sends to `remotePort`. */
export interface QemuDgramPorts {
  /** QEMU's own port (free when picked). */
  readonly localPort: number;
  /** The peer's port. */
  readonly remotePort: number;
}

/** A UDP port on 127.0.0.1 held by a bound socket until `release`. */
interface HeldPort {
  readonly port: number;
  release(): Promise<void>;
}

/** Binds a socket on 127.0.0.1 port 0 and holds it. */
async function holdUdpPort(): Promise<HeldPort> {
  const s = createSocket('udp4');
  const release = () => new Promise<void>((resolve) => s.close(() => resolve()));
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(0, '127.0.0.1', () => resolve());
    });
  } catch (e) {
    await release();
    throw e;
  }
  return { port: s.address().port, release };
}

/** A free UDP port on 127.0.0.1: bound with port 0, read back, released. */
export async function freeUdpPort(): Promise<number> {
  const held = await holdUdpPort();
  await held.release();
  return held.port;
}

let netdevTypes: Map<string, Set<string>> | null = null;

/**
 * The netdev backend types `binary` lists in `-netdev help` (cached per binary); empty when the
 * listing fails.
 */
export function qemuNetdevTypes(binary: string): Set<string> {
  netdevTypes ??= new Map();
  let types = netdevTypes.get(binary);
  if (types === undefined) {
    types = new Set<string>();
    try {
      const out = execFileSync(binary, ['-netdev', 'help'], { encoding: 'utf8', timeout: 10_000 });
      for (const line of out.split('\n').slice(1)) if (line.trim() !== '') types.add(line.trim());
    } catch {
      // Leave it empty: the caller falls back to the oldest syntax.
    }
    netdevTypes.set(binary, types);
  }
  return types;
}

/** The `-netdev` value of a loopback UDP netdev with `id`: `dgram` when listed, else `socket,udp=`. */
export function qemuDgramNetdev(binary: string, id: string, ports: QemuDgramPorts): string {
  const local = String(ports.localPort);
  const remote = String(ports.remotePort);
  if (qemuNetdevTypes(binary).has('dgram')) {
    return `dgram,id=${id},local.type=inet,local.host=127.0.0.1,local.port=${local},remote.type=inet,remote.host=127.0.0.1,remote.port=${remote}`;
  }
  return `socket,id=${id},udp=127.0.0.1:${remote},localaddr=127.0.0.1:${local}`;
}

/** The HostPeer in its worker, seen from the (blocking) main thread. */
export class QemuNetPeer {
  /** The ports to give QEMU's netdev. */
  readonly dgram: QemuDgramPorts;
  /** The peer's IPv4 address (dotted quad). */
  readonly ip: string;
  /** The peer's MAC address. */
  readonly mac: string;
  /** Bytes of each request/response answer. */
  readonly rrResponseSize: number;
  private readonly worker: Worker;
  private readonly cells: Int32Array;
  private readonly exited: Promise<void>;
  private exitInfo: string | null = null;
  private posted = 0;
  private closed = false;

  private constructor(
    worker: Worker,
    cells: Int32Array,
    exited: Promise<void>,
    dgram: QemuDgramPorts,
    o: Required<Omit<QemuNetPeerOptions, 'startTimeoutMs'>>,
  ) {
    this.worker = worker;
    this.cells = cells;
    this.exited = exited;
    this.dgram = dgram;
    this.ip = o.ip;
    this.mac = o.mac;
    this.rrResponseSize = o.rrResponseSize;
  }

  /**
   * Picks QEMU's port, starts the worker (which binds its own port 0 and sends to QEMU's) and waits
   * for it to be ready. Always pair with {@link QemuNetPeer.close}.
   * @throws VirtioError `BACKEND_IO` when the worker fails to start, `TIMEOUT` when it is not ready in time
   */
  static async start(options: QemuNetPeerOptions = {}): Promise<QemuNetPeer> {
    const o = {
      ip: options.ip ?? '10.0.2.2',
      mac: options.mac ?? '02:00:00:00:00:fe',
      rrResponseSize: options.rrResponseSize ?? 1024,
    };
    // QEMU's port stays bound until the worker has its own, so the two never coincide; it is
    // released just before QEMU binds it.
    const held = await holdUdpPort();
    const qemuPort = held.port;
    const sab = new SharedArrayBuffer(NET_PEER_CELLS * 4);
    const data: NetPeerWorkerData = { cells: sab, remotePort: qemuPort, ...o };
    const worker = new Worker(netPeerWorkerUrl(), { workerData: data });
    let exitInfo: string | null = null;
    let failure: string | null = null;
    const exited = new Promise<void>((resolve) => {
      worker.once('exit', (code) => {
        exitInfo = `code ${String(code)}`;
        resolve();
      });
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      const port = await new Promise<number>((resolve, reject) => {
        timer = setTimeout(
          () => reject(new VirtioError('TIMEOUT', 'net peer worker not ready in time')),
          options.startTimeoutMs ?? 10_000,
        );
        worker.on('error', (e) => {
          failure = e.message;
          reject(new VirtioError('BACKEND_IO', `net peer worker failed: ${e.message}`));
        });
        worker.once('message', (m: NetPeerStartMessage) => {
          if (m.type === 'ready') resolve(m.port);
          else reject(new VirtioError('BACKEND_IO', `net peer worker failed: ${m.message}`));
        });
        void exited.then(() =>
          reject(new VirtioError('BACKEND_IO', `net peer worker exited (${String(exitInfo)}) at startup`)),
        );
      });
      const peer = new QemuNetPeer(
        worker,
        new Int32Array(sab),
        exited,
        { localPort: qemuPort, remotePort: port },
        o,
      );
      void exited.then(() => {
        peer.exitInfo = `${String(exitInfo)}${failure === null ? '' : `: ${failure}`}`;
      });
      return peer;
    } catch (e) {
      await worker.terminate();
      throw e;
    } finally {
      clearTimeout(timer);
      await held.release();
    }
  }

  /** Whether the worker is running (false once closed, exited or failed). */
  get alive(): boolean {
    return !this.closed && this.exitInfo === null && Atomics.load(this.cells, NetPeerCell.failed) === 0;
  }

  /** Throws when the worker is gone or failed. */
  private checkAlive(): void {
    if (this.closed) throw new VirtioError('INVALID_STATE', 'net peer closed');
    if (this.exitInfo !== null || Atomics.load(this.cells, NetPeerCell.failed) !== 0) {
      throw new VirtioError('BACKEND_IO', `net peer worker died (${this.exitInfo ?? 'failed'})`);
    }
  }

  /** The peer's counters now (readable while the main thread blocks). */
  counters(): NetPeerCounters {
    const c = this.cells;
    const at = (i: number) => Atomics.load(c, i);
    return {
      frames: at(NetPeerCell.frames),
      arpReplies: at(NetPeerCell.arpReplies),
      echoReplies: at(NetPeerCell.echoReplies),
      rrTransactions: at(NetPeerCell.rrTransactions),
      sent: at(NetPeerCell.sent),
      ignored: at(NetPeerCell.ignored),
      rxBytes: at(NetPeerCell.rxBytes),
      txBytes: at(NetPeerCell.txBytes),
      udpReceived: at(NetPeerCell.udpReceived),
      udpDropped: at(NetPeerCell.udpDropped),
      udpSent: at(NetPeerCell.udpSent),
      udpSendErrors: at(NetPeerCell.udpSendErrors),
    };
  }

  /**
   * Blocks until `done(counters)` holds, sleeping 1 ms between looks.
   * @throws VirtioError `TIMEOUT` after `timeoutMs`; `BACKEND_IO` when the worker died
   */
  waitCounters(done: (c: NetPeerCounters) => boolean, what: string, timeoutMs = 5000): NetPeerCounters {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.checkAlive();
      const c = this.counters();
      if (done(c)) return c;
      if (Date.now() > deadline) {
        throw new VirtioError(
          'TIMEOUT',
          `net peer: ${what} not reached in ${String(timeoutMs)} ms: ${JSON.stringify(c)}`,
        );
      }
      sleepSync(1);
    }
  }

  /**
   * Has the peer send `count` UDP datagrams of `size` bytes (a big-endian sequence number first,
   * from 0) to `dstIp:dstPort`, and blocks until they are handed to its socket. Returns the number
   * sent (0 when the peer has not learned the guest's MAC).
   * @throws VirtioError `TIMEOUT` / `BACKEND_IO` when the worker does not answer
   */
  bulkSend(dstIp: number, dstPort: number, count: number, size: number, timeoutMs = 5000): number {
    this.checkAlive();
    const cmd: NetPeerCommand = { op: 'bulk', dstIp, dstPort, count, size };
    const want = ++this.posted;
    this.worker.postMessage(cmd);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const done = Atomics.load(this.cells, NetPeerCell.commandsDone);
      if (done >= want) return Atomics.load(this.cells, NetPeerCell.commandResult);
      this.checkAlive();
      const left = deadline - Date.now();
      if (left <= 0)
        throw new VirtioError('TIMEOUT', `net peer: bulk send not done in ${String(timeoutMs)} ms`);
      Atomics.wait(this.cells, NetPeerCell.commandsDone, done, Math.min(left, 50));
    }
  }

  /** Terminates the worker (its socket goes with it). Idempotent; never throws. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.worker.terminate();
    } catch {
      // Already gone.
    }
    await this.exited;
  }
}
