/**
 * The guest driver of virtio-console (virtio 1.2+, 5.3), in the manner of Linux `virtio_console`:
 * receive buffers posted per port and re-posted as they come back, output copied into transmit
 * buffers of at most {@link ConsoleDriverOptions.bufferSize} bytes, completions reclaimed by
 * polling (as Linux's hvc path does) and from the interrupt, the console size from the
 * configuration space, and with VIRTIO_CONSOLE_F_MULTIPORT the control protocol of 5.3.6.2.
 * It sees only the transport-neutral {@link VirtioTransportDriver} and {@link DriverQueue}.
 *
 * @packageDocumentation
 */

import {
  CONSOLE_BAD_ID,
  CONSOLE_CONTROL_SIZE,
  CONSOLE_RESIZE_SIZE,
  ConsoleConfig,
  ConsoleControlEvent,
  ConsoleFeature,
  ConsoleQueue,
  DeviceId,
  DeviceStatus,
  FeatureBit,
  VirtioError,
} from '../../spec/index.js';
import type { DriverQueue } from '../../virtqueue/index.js';
import {
  abandonDevice,
  beginInit,
  failDevice,
  finishInit,
  type QueueRequest,
  readConfigConsistent,
  removeDevice,
  type VirtioTransportDriver,
  waitUntil,
} from '../driverApi.js';
import { Features } from '../features.js';
import { consoleReceiveQueue, consoleTransmitQueue } from './device.js';
import { utf8Decode, utf8Encode } from './utf8.js';

/** Options of {@link ConsoleDriver.probe}. */
export interface ConsoleDriverOptions {
  /** Bytes of each receive and transmit buffer (output is split at this size). Default 4096. */
  bufferSize?: number;
  /** Receive buffers kept posted per port. Default 8 (capped by the queue size). */
  receiveBuffers?: number;
  /** Transmit buffers per port. Default 8 (capped by the queue size). */
  transmitBuffers?: number;
  /** Negotiate VIRTIO_CONSOLE_F_MULTIPORT when offered. Default true. */
  multiport?: boolean;
  /** Most ports set up with MULTIPORT (the rest are refused with PORT_READY 0). Default 16. */
  maxPorts?: number;
  /**
   * Bytes received and not yet read, per port, past which receive buffers are no longer re-posted
   * (the device then keeps, and at its bound drops, further input). Default 1 MiB.
   */
  maxUnread?: number;
  /** Queue size wanted (a power of two); default the device maximum. */
  queueSize?: number;
}

/** A console port as the driver knows it. */
export interface ConsolePortInfo {
  /** Port number. */
  readonly id: number;
  /** Name from PORT_NAME, or null. */
  readonly name: string | null;
  /** Nominated as a console (always for port 0 without MULTIPORT). */
  readonly console: boolean;
  /** The host end is connected (PORT_OPEN from the device; always true without MULTIPORT). */
  readonly hostOpen: boolean;
  /** DEVICE_REMOVE was received. */
  readonly removed: boolean;
}

/** Handler of console size changes: the new size and the port it applies to. */
export type ConsoleResizeHandler = (size: { cols: number; rows: number }, port: number) => void;

/** Default buffer size. */
export const CONSOLE_DRIVER_BUFFER_SIZE = 4096;

/** Default receive and transmit buffers per port. */
export const CONSOLE_DRIVER_BUFFERS = 8;

/** Default cap of ports set up with MULTIPORT. */
export const CONSOLE_DRIVER_MAX_PORTS = 16;

/** Default unread bytes per port before receive buffers stop being re-posted. */
export const CONSOLE_DRIVER_MAX_UNREAD = 1 << 20;

/** Control receive buffers kept posted. */
const CONTROL_BUFFERS = 8;

/** Control receive buffer size: a message plus a port name. */
const CONTROL_BUFFER_SIZE = 4096;

/** Driver-side state of one port. */
interface DriverPort {
  readonly id: number;
  readonly rxq: DriverQueue<number>;
  readonly txq: DriverQueue<number>;
  /** Every DMA buffer of the port, for release. */
  readonly buffers: number[];
  /** Transmit buffers not in the ring. */
  readonly txFree: number[];
  /** Transmit buffers the port owns. */
  txCount: number;
  /** Receive buffers held back while unread input is over the bound. */
  readonly parked: number[];
  /** Received chunks not yet read. */
  inbound: Uint8Array[];
  unread: number;
  name: string | null;
  console: boolean;
  hostOpen: boolean;
  removed: boolean;
}

/** Checks a positive integer option. */
function positive(name: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new VirtioError('INVALID_ARGUMENT', `console: ${name} ${String(v)} is not in 1..${String(max)}`);
  }
  return v;
}

/** The guest side of a console device. */
export class ConsoleDriver {
  /** The transport the driver runs over. */
  readonly transport: VirtioTransportDriver;
  /** The negotiated features. */
  readonly features: Features;
  /** Size of each data buffer. */
  readonly bufferSize: number;
  /** Control messages the device sent that made no sense (unknown event, bad port, short). */
  deviceErrors = 0;
  /** Configuration change notifications taken. */
  configChanges = 0;

  private readonly ports = new Map<number, DriverPort>();
  private queues: DriverQueue<number>[] = [];
  private readonly receiveBuffers: number;
  private readonly transmitBuffers: number;
  private readonly maxPorts: number;
  private readonly maxUnread: number;
  private readonly multiport: boolean;
  /** Control DMA buffers (receive ones stay posted; send ones are allocated per message). */
  private readonly controlBuffers: number[] = [];
  private consoleSize: { cols: number; rows: number } | null = null;
  private resizeHandler: ConsoleResizeHandler | null = null;
  private pumping = false;
  private needsReset = false;
  private failure: string | null = null;
  private removed = false;

  private constructor(t: VirtioTransportDriver, features: Features, options: ConsoleDriverOptions) {
    this.transport = t;
    this.features = features;
    this.bufferSize = options.bufferSize ?? CONSOLE_DRIVER_BUFFER_SIZE;
    this.receiveBuffers = options.receiveBuffers ?? CONSOLE_DRIVER_BUFFERS;
    this.transmitBuffers = options.transmitBuffers ?? CONSOLE_DRIVER_BUFFERS;
    this.maxPorts = options.maxPorts ?? CONSOLE_DRIVER_MAX_PORTS;
    this.maxUnread = options.maxUnread ?? CONSOLE_DRIVER_MAX_UNREAD;
    this.multiport = features.has(ConsoleFeature.MULTIPORT);
  }

  /**
   * Writes one character through `emerg_wr`, which works without initializing the device (5.3.5:
   * "the driver can use emergency write to output a single character without initializing virtio
   * queues, or even acknowledging the feature"). Returns false when the device does not offer
   * VIRTIO_CONSOLE_F_EMERG_WRITE (nothing is written).
   */
  static emergencyWrite(t: VirtioTransportDriver, byte: number): boolean {
    if (t.deviceId !== DeviceId.CONSOLE || !t.getFeatures().has(ConsoleFeature.EMERG_WRITE)) return false;
    t.writeConfig(ConsoleConfig.emergWr, 4, byte & 0xff);
    return true;
  }

  /**
   * Initializes the device (3.1.1), reads the size, sets up the queues, sets DRIVER_OK, then posts
   * receive buffers (port 0), or with MULTIPORT posts control buffers, sends DEVICE_READY and
   * handles the ports the device announces. On failure the device is marked FAILED and everything
   * set up is released.
   * @throws VirtioError `DEVICE_REJECTED` when the device is not a console
   * @throws VirtioError `INVALID_ARGUMENT` for options out of range
   * @throws VirtioError whatever negotiation, queue setup or allocation throws
   */
  static probe(t: VirtioTransportDriver, options: ConsoleDriverOptions = {}): ConsoleDriver {
    if (t.deviceId !== DeviceId.CONSOLE) {
      throw new VirtioError('DEVICE_REJECTED', `device id ${String(t.deviceId)} is not a console`);
    }
    positive('buffer size', options.bufferSize ?? CONSOLE_DRIVER_BUFFER_SIZE, 2 ** 31);
    positive('receive buffers', options.receiveBuffers ?? CONSOLE_DRIVER_BUFFERS, 32768);
    positive('transmit buffers', options.transmitBuffers ?? CONSOLE_DRIVER_BUFFERS, 32768);
    positive('max ports', options.maxPorts ?? CONSOLE_DRIVER_MAX_PORTS, 32766);
    positive('max unread', options.maxUnread ?? CONSOLE_DRIVER_MAX_UNREAD, 2 ** 31);
    const wanted = new Features([
      FeatureBit.VERSION_1,
      FeatureBit.EVENT_IDX,
      FeatureBit.INDIRECT_DESC,
      ConsoleFeature.SIZE,
      ConsoleFeature.EMERG_WRITE,
    ]);
    if (options.multiport ?? true) wanted.set(ConsoleFeature.MULTIPORT);
    const features = beginInit(t, wanted);
    const d = new ConsoleDriver(t, features, options);
    try {
      if (features.has(ConsoleFeature.SIZE)) d.consoleSize = readConfigConsistent(t, () => d.readSize());
      let portQueues = 1;
      if (d.multiport) {
        const max = t.readConfig(ConsoleConfig.maxNrPorts, 4);
        portQueues = Math.max(1, Math.min(max, d.maxPorts));
      }
      const requests: QueueRequest[] = [];
      for (let id = 0; id < portQueues; id++) {
        requests.push({
          index: consoleReceiveQueue(id),
          callback: () => d.harvest(id),
          size: options.queueSize,
        });
        requests.push({
          index: consoleTransmitQueue(id),
          callback: () => d.reclaim(id),
          size: options.queueSize,
        });
        if (id === 0 && d.multiport) {
          requests.push({
            index: ConsoleQueue.CONTROL_RECEIVEQ,
            callback: () => d.pumpControl(),
            size: options.queueSize,
          });
          requests.push({
            index: ConsoleQueue.CONTROL_TRANSMITQ,
            callback: () => d.reclaimControl(),
            size: options.queueSize,
          });
        }
      }
      const qs = t.setupQueues(requests) as DriverQueue<number>[];
      for (let i = 0; i < requests.length; i++) d.queues[requests[i].index] = qs[i];
      t.onConfigChange(() => d.configChanged());
      finishInit(t);
      if (d.multiport) {
        const cq = d.queues[ConsoleQueue.CONTROL_RECEIVEQ];
        for (let i = 0; i < Math.min(CONTROL_BUFFERS, cq.size); i++) {
          const gpa = t.dma.alloc(CONTROL_BUFFER_SIZE, 16);
          d.controlBuffers.push(gpa);
          cq.add([], [{ addr: gpa, len: CONTROL_BUFFER_SIZE }], gpa);
        }
        if (cq.kickPrepare()) t.notify(cq);
        // 5.3.6.2.2: "The driver MUST send a VIRTIO_CONSOLE_DEVICE_READY message if
        // VIRTIO_CONSOLE_F_MULTIPORT is negotiated."
        d.sendControl(CONSOLE_BAD_ID, ConsoleControlEvent.DEVICE_READY, 1);
        d.pumpControl();
      } else {
        d.addPort(0);
      }
    } catch (e) {
      d.abort();
      throw e;
    }
    return d;
  }

  /** Undoes a failed probe: FAILED status, queues and buffers released. Never throws. */
  private abort(): void {
    abandonDevice(this.transport, () => this.releaseBuffers());
  }

  private releaseBuffers(): void {
    const dma = this.transport.dma;
    for (const p of this.ports.values()) for (const gpa of p.buffers) dma.release(gpa);
    for (const gpa of this.controlBuffers) dma.release(gpa);
    this.ports.clear();
    this.controlBuffers.length = 0;
    this.queues = [];
  }

  /** Reads `cols` and `rows` (5.3.4). */
  private readSize(): { cols: number; rows: number } {
    const t = this.transport;
    return { cols: t.readConfig(ConsoleConfig.cols, 2), rows: t.readConfig(ConsoleConfig.rows, 2) };
  }

  // ---------------------------------------------------------------------------------------------
  // Public API.

  /** The console size (VIRTIO_CONSOLE_F_SIZE), or null when not negotiated. */
  get size(): { cols: number; rows: number } | null {
    return this.consoleSize === null ? null : { ...this.consoleSize };
  }

  /** True when VIRTIO_CONSOLE_F_MULTIPORT was negotiated. */
  get isMultiport(): boolean {
    return this.multiport;
  }

  /** The ports the driver has set up, by id. */
  get portList(): ConsolePortInfo[] {
    return [...this.ports.values()]
      .sort((a, b) => a.id - b.id)
      .map((p) => ({ id: p.id, name: p.name, console: p.console, hostOpen: p.hostOpen, removed: p.removed }));
  }

  /** Registers the handler of size changes (configuration change, or RESIZE with MULTIPORT). */
  onResize(handler: ConsoleResizeHandler): void {
    this.resizeHandler = handler;
  }

  /** Writes one character through `emerg_wr`; false when the device does not offer it. */
  emergencyWrite(byte: number): boolean {
    this.usable();
    return ConsoleDriver.emergencyWrite(this.transport, byte);
  }

  /**
   * Queues as much of `bytes` as free transmit buffers take, without waiting, and returns the
   * number of bytes queued (completions are reclaimed first).
   * @throws VirtioError `INVALID_STATE` for a port that is not set up, or after remove;
   *   `DEVICE_FAILED` when the device broke
   */
  writeSome(bytes: Uint8Array, port = 0): number {
    const p = this.dataPort(port);
    this.reclaim(port);
    const t = this.transport;
    let off = 0;
    while (off < bytes.length && p.txFree.length > 0) {
      const gpa = p.txFree.pop() as number;
      const n = Math.min(this.bufferSize, bytes.length - off);
      t.mem.writeBytes(gpa, bytes.subarray(off, off + n));
      // 5.3.6.1: "The driver MUST NOT put a device-writable buffer in a transmitq."
      if (!p.txq.add([{ addr: gpa, len: n }], [], gpa)) {
        p.txFree.push(gpa);
        break;
      }
      off += n;
    }
    if (off > 0 && p.txq.kickPrepare()) t.notify(p.txq);
    this.reclaim(port);
    return off;
  }

  /**
   * Writes all of `bytes` to `port`, split into buffers of {@link ConsoleDriver.bufferSize},
   * waiting for transmit completions when every buffer is in flight.
   * @throws VirtioError `TIMEOUT` when the device takes no buffer back (a congested host with
   *   nothing else to run); otherwise as {@link ConsoleDriver.writeSome}
   */
  write(bytes: Uint8Array | string, port = 0): void {
    const data = typeof bytes === 'string' ? utf8Encode(bytes) : bytes;
    const p = this.dataPort(port);
    let off = this.writeSome(data, port);
    while (off < data.length) {
      waitUntil(
        this.transport.platform,
        () => {
          this.reclaim(port);
          return p.txFree.length > 0 || p.txq.broken !== null || this.needsReset;
        },
        'console write',
      );
      this.checkHealthy(p);
      off += this.writeSome(data.subarray(off), port);
    }
  }

  /**
   * Returns what arrived on `port` since the last read (possibly empty), harvesting the receive
   * queue first and re-posting buffers held back.
   * @throws VirtioError `INVALID_STATE` for a port that is not set up, or after remove;
   *   `DEVICE_FAILED` when the device needs a reset
   */
  read(port = 0): Uint8Array {
    const p = this.dataPort(port);
    this.harvest(port);
    const out = new Uint8Array(p.unread);
    this.take(p, out, 0);
    return out;
  }

  /**
   * Reads exactly `n` bytes from `port`, halting for interrupts while none are there; bytes past
   * `n` stay for the next read.
   * @throws VirtioError `TIMEOUT` when no more input can arrive; `DEVICE_FAILED` when the receive
   *   queue breaks or the device needs a reset; otherwise as {@link ConsoleDriver.read}
   */
  readExactly(n: number, port = 0): Uint8Array {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new VirtioError('INVALID_ARGUMENT', `console: invalid read length ${String(n)}`);
    }
    const p = this.dataPort(port);
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      waitUntil(
        this.transport.platform,
        () => {
          this.harvest(port);
          return p.unread > 0 || p.rxq.broken !== null || this.needsReset;
        },
        'console read',
      );
      this.checkHealthy(p);
      off += this.take(p, out, off);
    }
    return out;
  }

  /**
   * Moves received bytes into `out` from `off`, leaving what does not fit; re-posts held-back
   * receive buffers once below the unread bound. Returns the count.
   */
  private take(p: DriverPort, out: Uint8Array, off: number): number {
    let n = 0;
    let k = 0;
    while (k < p.inbound.length && off + n < out.length) {
      const c = p.inbound[k];
      const m = Math.min(c.length, out.length - off - n);
      out.set(c.subarray(0, m), off + n);
      n += m;
      if (m < c.length) p.inbound[k] = c.subarray(m);
      else k++;
    }
    p.inbound.splice(0, k);
    p.unread -= n;
    if (p.parked.length > 0 && p.unread < this.maxUnread) {
      for (const gpa of p.parked.splice(0)) p.rxq.add([], [{ addr: gpa, len: this.bufferSize }], gpa);
      if (p.rxq.kickPrepare()) this.transport.notify(p.rxq);
    }
    return n;
  }

  /** Transmit buffers of `port` the device has not returned. */
  inFlight(port = 0): number {
    const p = this.dataPort(port);
    this.reclaim(port);
    return p.txCount - p.txFree.length;
  }

  /**
   * Unbinds the driver: resets the device, releases the queues and every buffer. Calling it again
   * does nothing.
   * @throws VirtioError `DEVICE_FAILED` when the device did not reset
   */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    removeDevice(this.transport, () => this.releaseBuffers());
  }

  // ---------------------------------------------------------------------------------------------
  // Ports.

  private usable(): void {
    if (this.removed) throw new VirtioError('INVALID_STATE', 'console: driver removed');
    if (this.failure !== null) throw new VirtioError('DEVICE_FAILED', `console: ${this.failure}`);
    if (this.needsReset) this.giveUp('device needs reset');
  }

  private dataPort(id: number): DriverPort {
    this.usable();
    const p = this.ports.get(id);
    if (p === undefined || p.removed) {
      throw new VirtioError('INVALID_STATE', `console: port ${String(id)} is not set up`);
    }
    return p;
  }

  private checkHealthy(p: DriverPort): void {
    const broken = p.txq.broken ?? p.rxq.broken;
    if (broken !== null) this.giveUp(broken);
    if (this.needsReset) this.giveUp('device needs reset');
  }

  private giveUp(reason: string): never {
    if (this.failure === null) {
      this.failure = reason;
      failDevice(this.transport);
    }
    throw new VirtioError('DEVICE_FAILED', `console: ${reason}`);
  }

  /** Creates port `id` on its queues: allocates its buffers and posts the receive ones. */
  private addPort(id: number): boolean {
    const rxq = this.queues[consoleReceiveQueue(id)];
    const txq = this.queues[consoleTransmitQueue(id)];
    if (rxq === undefined || txq === undefined || this.ports.has(id)) return false;
    const dma = this.transport.dma;
    const p: DriverPort = {
      id,
      rxq,
      txq,
      buffers: [],
      txFree: [],
      txCount: 0,
      parked: [],
      inbound: [],
      unread: 0,
      name: null,
      console: !this.multiport,
      hostOpen: !this.multiport,
      removed: false,
    };
    this.ports.set(id, p);
    for (let i = 0; i < Math.min(this.transmitBuffers, txq.size); i++) {
      const gpa = dma.alloc(this.bufferSize, 16);
      p.buffers.push(gpa);
      p.txFree.push(gpa);
      p.txCount++;
    }
    for (let i = 0; i < Math.min(this.receiveBuffers, rxq.size); i++) {
      const gpa = dma.alloc(this.bufferSize, 16);
      p.buffers.push(gpa);
      // 5.3.6.1: "The driver MUST NOT put a device-readable buffer in a receiveq."
      rxq.add([], [{ addr: gpa, len: this.bufferSize }], gpa);
    }
    if (rxq.kickPrepare()) this.transport.notify(rxq);
    return true;
  }

  /** Receive queue callback (and polled by reads): takes input, re-posts the buffers. */
  private harvest(id: number): void {
    const p = this.ports.get(id);
    if (p === undefined) return;
    const q = p.rxq;
    const mem = this.transport.mem;
    let reposted = false;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) {
      if (u.len > 0) {
        const chunk = new Uint8Array(u.len);
        mem.readBytes(u.token, chunk);
        p.inbound.push(chunk);
        p.unread += u.len;
      }
      if (p.unread >= this.maxUnread || p.removed) {
        p.parked.push(u.token);
      } else {
        q.add([], [{ addr: u.token, len: this.bufferSize }], u.token);
        reposted = true;
      }
    }
    if (reposted && q.kickPrepare()) this.transport.notify(q);
  }

  /** Transmit queue callback (and polled by writes): returns completed buffers to the free list. */
  private reclaim(id: number): void {
    const p = this.ports.get(id);
    if (p === undefined) return;
    for (let u = p.txq.getUsed(); u !== null; u = p.txq.getUsed()) p.txFree.push(u.token);
  }

  // ---------------------------------------------------------------------------------------------
  // Control protocol (MULTIPORT).

  /** Sends one control message on the control transmitq. */
  private sendControl(id: number, event: number, value: number): void {
    const q = this.queues[ConsoleQueue.CONTROL_TRANSMITQ];
    const t = this.transport;
    this.reclaimControl();
    const gpa = t.dma.alloc(CONSOLE_CONTROL_SIZE, 16);
    t.mem.write32(gpa, id >>> 0);
    t.mem.write16(gpa + 4, event);
    t.mem.write16(gpa + 6, value);
    if (!q.add([{ addr: gpa, len: CONSOLE_CONTROL_SIZE }], [], gpa)) {
      t.dma.release(gpa);
      throw new VirtioError('INVALID_STATE', 'console: control transmit queue is full');
    }
    if (q.kickPrepare()) t.notify(q);
    this.reclaimControl();
  }

  /** Control transmitq callback: frees the message buffers the device took. */
  private reclaimControl(): void {
    const q = this.queues[ConsoleQueue.CONTROL_TRANSMITQ];
    if (q === undefined) return;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) this.transport.dma.release(u.token);
  }

  /** Control receiveq callback: handles every message the device sent, until none is left. */
  private pumpControl(): void {
    const q = this.queues[ConsoleQueue.CONTROL_RECEIVEQ];
    if (q === undefined || this.pumping) return;
    this.pumping = true;
    const t = this.transport;
    try {
      for (let u = q.getUsed(); u !== null; u = q.getUsed()) {
        const msg = new Uint8Array(u.len);
        t.mem.readBytes(u.token, msg);
        q.add([], [{ addr: u.token, len: CONTROL_BUFFER_SIZE }], u.token);
        if (q.kickPrepare()) t.notify(q);
        this.controlMessage(msg);
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Handles one control message from the device (5.3.6.2). */
  private controlMessage(msg: Uint8Array): void {
    if (msg.length < CONSOLE_CONTROL_SIZE) {
      this.deviceErrors++;
      return;
    }
    const v = new DataView(msg.buffer, msg.byteOffset, msg.length);
    const id = v.getUint32(0, true);
    const event = v.getUint16(4, true);
    const value = v.getUint16(6, true);
    if (event === ConsoleControlEvent.DEVICE_ADD) {
      // Refused (PORT_READY 0) past our port cap or for a port that exists.
      let ok = false;
      try {
        ok = id < this.maxPorts && this.addPort(id);
      } catch {
        ok = false;
      }
      this.sendControl(id, ConsoleControlEvent.PORT_READY, ok ? 1 : 0);
      // The driver's reader is always there, so every port is opened at once (a Linux guest sends
      // this when a process opens /dev/vportNpM). A console port is opened again on CONSOLE_PORT.
      if (ok) this.sendControl(id, ConsoleControlEvent.PORT_OPEN, 1);
      return;
    }
    const p = this.ports.get(id);
    if (p === undefined) {
      this.deviceErrors++;
      return;
    }
    switch (event) {
      case ConsoleControlEvent.DEVICE_REMOVE:
        p.removed = true;
        p.hostOpen = false;
        return;
      case ConsoleControlEvent.CONSOLE_PORT:
        p.console = true;
        // 5.3.6.2.2: the driver "MUST respond with a VIRTIO_CONSOLE_PORT_OPEN message, which MUST
        // have value set to 1".
        this.sendControl(id, ConsoleControlEvent.PORT_OPEN, 1);
        return;
      case ConsoleControlEvent.RESIZE: {
        if (msg.length < CONSOLE_CONTROL_SIZE + CONSOLE_RESIZE_SIZE) {
          this.deviceErrors++;
          return;
        }
        const size = { cols: v.getUint16(8, true), rows: v.getUint16(10, true) };
        if (id === 0) this.consoleSize = size;
        this.resizeHandler?.({ ...size }, id);
        return;
      }
      case ConsoleControlEvent.PORT_OPEN:
        p.hostOpen = value === 1;
        return;
      case ConsoleControlEvent.PORT_NAME: {
        // 5.3.6.2: the name is not NUL-terminated, but QEMU sends a NUL: stop at the first one, as
        // Linux does.
        const raw = msg.subarray(CONSOLE_CONTROL_SIZE);
        const nul = raw.indexOf(0);
        p.name = utf8Decode(nul >= 0 ? raw.subarray(0, nul) : raw);
        return;
      }
      default:
        this.deviceErrors++;
    }
  }

  /**
   * Configuration change: DEVICE_NEEDS_RESET (2.1.2) stops the driver; otherwise the size is
   * re-read (5.3.6: "a configuration change notification indicates that the updated size can be
   * read from the configuration fields. This size applies to port 0 only").
   */
  private configChanged(): void {
    this.configChanges++;
    const t = this.transport;
    if ((t.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) {
      this.needsReset = true;
      return;
    }
    if (!this.features.has(ConsoleFeature.SIZE)) return;
    let size: { cols: number; rows: number };
    try {
      size = readConfigConsistent(t, () => this.readSize());
    } catch (e) {
      this.needsReset = true;
      this.failure ??= e instanceof Error ? e.message : String(e);
      return;
    }
    const old = this.consoleSize;
    if (old !== null && old.cols === size.cols && old.rows === size.rows) return;
    this.consoleSize = size;
    this.resizeHandler?.({ ...size }, 0);
  }
}
