/**
 * virtio-console, the console device (virtio 1.2+, 5.3).
 *
 * Port 0 always has its receiveq (0) and transmitq (1). With VIRTIO_CONSOLE_F_MULTIPORT the
 * control receiveq (2) and control transmitq (3) follow, then a queue pair per further port
 * (port `n` on queues `2 + 2n` and `3 + 2n`), and ports are announced through the control
 * protocol of 5.3.6.2:
 *
 * ```
 * driver                         device
 * DEVICE_READY(1)        ->
 *                        <-      DEVICE_ADD(id)           for every port
 * PORT_READY(id, 1)      ->
 *                        <-      CONSOLE_PORT(id, 1)      console ports
 *                        <-      PORT_NAME(id) + name     named ports
 *                        <-      PORT_OPEN(id, 1)         the host end is connected
 * PORT_OPEN(id, 0|1)     ->                               guest opened / closed the port
 * ```
 *
 * Each port is backed by a {@link ConsoleBackend}. With MULTIPORT, input for a generic port waits
 * until the guest opens it (PORT_OPEN 1); console ports take input as soon as they have buffers. Output is handed to the backend one buffer
 * segment at a time, straight from guest memory where it offers views; a congested backend
 * (`writable() === false`) leaves transmit buffers in the ring until it drains. Input the guest
 * has no receive buffer for waits in a bounded per-port buffer; what does not fit is dropped and
 * counted (`inputDropped`), and the backend is asked to pause until the guest catches up.
 *
 * A chain in the wrong direction (5.3.6.1: "The driver MUST NOT put a device-readable buffer in a
 * receiveq. The driver MUST NOT put a device-writable buffer in a transmitq.") is returned with
 * used length 0 and nothing read from or written to it, and counts as a guest error. Nothing a
 * guest sends makes a device method throw.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import {
  CONSOLE_CONTROL_SIZE,
  CONSOLE_RESIZE_SIZE,
  ConsoleConfig,
  ConsoleControlEvent,
  ConsoleFeature,
  ConsoleQueue,
  DeviceId,
  VirtioError,
} from '../../spec/index.js';
import {
  DescriptorChain,
  type DeviceQueue,
  isPowerOfTwo,
  MAX_INDIRECT_DESCRIPTORS,
} from '../../virtqueue/index.js';
import { readConfigLe } from '../configSpace.js';
import { Features } from '../features.js';
import { MAX_PASSES_PER_NOTIFY, ServeOutcome, serveQueue } from '../serveQueue.js';
import type { DeviceContext, DeviceHost, VirtioDevice } from '../virtioDevice.js';
import type { ConsoleBackend } from './backend.js';
import { utf8Encode } from './utf8.js';

/** One port of a {@link ConsoleDevice}. */
export interface ConsolePortOptions {
  /** The host stream behind the port. */
  backend: ConsoleBackend;
  /** Name given to the guest with PORT_NAME (MULTIPORT only; Linux shows it as `/dev/virtio-ports/<name>`). */
  name?: string;
  /** Nominate the port as a console with CONSOLE_PORT (MULTIPORT only). Default: true for port 0. */
  console?: boolean;
}

/** Options of a {@link ConsoleDevice}. Give either `backend` (one port) or `ports`. */
export interface ConsoleDeviceOptions {
  /** The stream of port 0, for a single-port console. */
  backend?: ConsoleBackend;
  /** Every port, port 0 first. More than one offers VIRTIO_CONSOLE_F_MULTIPORT. At most 2^15 - 2. */
  ports?: ConsolePortOptions[];
  /** Offer VIRTIO_CONSOLE_F_MULTIPORT even with one port. Default: when more than one port. */
  multiport?: boolean;
  /** Console size: offers VIRTIO_CONSOLE_F_SIZE with these `cols` and `rows` (1..65535 each). */
  size?: { cols: number; rows: number };
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE (default true). */
  emergWrite?: boolean;
  /** Where emergency-write bytes go; default port 0's backend. */
  emergencyOutput?: ConsoleBackend;
  /** QueueNumMax of every queue: a power of two up to 32768. Default 128. */
  queueSize?: number;
  /** Bytes of input kept per port while the guest has no receive buffer. Default 64 KiB. */
  inputBufferBytes?: number;
  /** Receives one lowercase line per guest error or backend failure (QEMU LOG_GUEST_ERROR). */
  log?: (message: string) => void;
}

/** Counters of a {@link ConsoleDevice}, absolute since construction, over all ports. */
export interface ConsoleCounters {
  /** Bytes the guest wrote that were handed to backends. */
  txBytes: number;
  /** Transmit chains completed (including rejected ones). */
  txChains: number;
  /** Bytes written into guest receive buffers. */
  rxBytes: number;
  /** Receive chains completed (including rejected ones). */
  rxChains: number;
  /** Bytes the backends delivered. */
  inputBytes: number;
  /** Input bytes dropped because the port's input buffer was full. */
  inputDropped: number;
  /** Bytes emitted through emerg_wr. */
  emergencyBytes: number;
  /** Control messages received from the driver. */
  controlIn: number;
  /** Control messages delivered to the driver. */
  controlOut: number;
  /** Control messages dropped because too many waited for control receive buffers. */
  controlDropped: number;
  /** Guest mistakes: wrong-direction chains, bad control messages, bad notifications. */
  guestErrors: number;
  /** Backend writes that threw. */
  backendErrors: number;
  /** DEVICE_READY or PORT_READY with value 0: the driver reported a failure. */
  driverFailures: number;
  /** Times the transmit queue of a port stopped because its backend was congested. */
  blocked: number;
  /** Notifications that stopped at the work bound with chains still pending. */
  deferred: number;
}

/** State of one port, for embedders and tests. */
export interface ConsolePortState {
  /** DEVICE_ADD was delivered or queued (always true for port 0 without MULTIPORT). */
  readonly added: boolean;
  /** The driver answered PORT_READY(1). */
  readonly guestReady: boolean;
  /** The driver sent PORT_OPEN(1) and not PORT_OPEN(0) since. */
  readonly guestOpen: boolean;
  /** Input bytes waiting for receive buffers. */
  readonly pendingInput: number;
}

/** Default QueueNumMax of every console queue. */
export const CONSOLE_DEFAULT_QUEUE_SIZE = 128;

/** Default input buffer per port. */
export const CONSOLE_DEFAULT_INPUT_BUFFER = 64 * 1024;

/** Most ports: queue numbers must stay below 2^16 (2 + 2n + 1 <= 65535). */
export const CONSOLE_MAX_PORTS = 32766;

/** Control messages that may wait for control receive buffers, beyond eight per port. */
const CONTROL_BACKLOG_BASE = 64;

/** Chunk for copying output through host memory when guest memory offers no view. */
const BOUNCE_BYTES = 4096;

const EMPTY = new Uint8Array(0);

/** Receive queue number of port `id` (5.3.2). */
export function consoleReceiveQueue(id: number): number {
  return id === 0 ? ConsoleQueue.RECEIVEQ0 : 2 + 2 * id;
}

/** Transmit queue number of port `id` (5.3.2). */
export function consoleTransmitQueue(id: number): number {
  return consoleReceiveQueue(id) + 1;
}

/** A fixed-capacity FIFO of bytes: the input a port keeps while the guest has no buffer. */
class ByteRing {
  private readonly buf: Uint8Array;
  private head = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.buf = new Uint8Array(capacity);
  }

  get free(): number {
    return this.capacity - this.length;
  }

  /** Copies as much of `src` from `off` as fits; returns the count. */
  push(src: Uint8Array, off: number): number {
    const n = Math.min(this.free, src.length - off);
    const cap = this.capacity;
    let tail = (this.head + this.length) % cap;
    let done = 0;
    while (done < n) {
      const k = Math.min(n - done, cap - tail);
      this.buf.set(src.subarray(off + done, off + done + k), tail);
      done += k;
      tail = (tail + k) % cap;
    }
    this.length += n;
    return n;
  }

  /** Moves as many bytes as fit into the writable part of `chain`; returns the count. */
  drainTo(mem: GuestMemory, chain: DescriptorChain): number {
    const n = Math.min(this.length, chain.writableBytes);
    if (n === 0) return 0;
    const first = Math.min(n, this.capacity - this.head);
    chain.writeTo(mem, 0, this.buf.subarray(this.head, this.head + first));
    if (n > first) chain.writeTo(mem, first, this.buf.subarray(0, n - first));
    this.head = (this.head + n) % this.capacity;
    this.length -= n;
    if (this.length === 0) this.head = 0;
    return n;
  }
}

/** Device-side state of one port. */
interface Port {
  readonly id: number;
  readonly backend: ConsoleBackend;
  readonly name: Uint8Array | null;
  readonly console: boolean;
  readonly pending: ByteRing;
  /** The backend was asked to pause input. */
  paused: boolean;
  /** Input is being dropped (logged once per episode). */
  dropping: boolean;
  added: boolean;
  guestReady: boolean;
  guestOpen: boolean;
  /** Transmit stopped on a congested backend; resumed by its drain handler. */
  blocked: boolean;
}

/** Checks a u16 console dimension. */
function dimension(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1 || v > 0xffff) {
    throw new VirtioError('INVALID_ARGUMENT', `console ${name} ${String(v)} is not in 1..65535`);
  }
  return v;
}

/** The virtio console device. */
export class ConsoleDevice implements VirtioDevice {
  /** Device type 3 (5.3.1). */
  readonly deviceId = DeviceId.CONSOLE;
  /** Port 0's pair, then with MULTIPORT the control pair and a pair per further port (5.3.2). */
  readonly queueMaxSizes: readonly number[];
  /** The offered device feature bits (5.3.3). */
  readonly features: Features;
  /** `struct virtio_console_config` (5.3.4). */
  readonly configSize = ConsoleConfig.size;
  /** Counters, absolute since construction (not reset with the device). */
  readonly counters: ConsoleCounters = {
    txBytes: 0,
    txChains: 0,
    rxBytes: 0,
    rxChains: 0,
    inputBytes: 0,
    inputDropped: 0,
    emergencyBytes: 0,
    controlIn: 0,
    controlOut: 0,
    controlDropped: 0,
    guestErrors: 0,
    backendErrors: 0,
    driverFailures: 0,
    blocked: 0,
    deferred: 0,
  };
  /** Number of ports (`max_nr_ports` when MULTIPORT is offered). */
  readonly portCount: number;

  private readonly ports: Port[];
  private readonly emergency: ConsoleBackend;
  private readonly log: ((message: string) => void) | undefined;
  private readonly config = new Uint8Array(ConsoleConfig.size);
  private readonly configView = new DataView(this.config.buffer);
  private readonly emergByte = new Uint8Array(1);
  private readonly control = new Uint8Array(CONSOLE_CONTROL_SIZE);
  private readonly controlView = new DataView(this.control.buffer);
  /** Control messages waiting for control receive buffers, oldest first. */
  private outbox: Uint8Array[] = [];
  private readonly controlBacklog: number;
  private bounce: Uint8Array | null = null;
  private host: DeviceHost | null = null;
  private ctx: DeviceContext | null = null;
  /**
   * One reusable chain per direction: a backend may call back synchronously (an echo writing input
   * from inside \`write\`), and the receive path must not overwrite the chain being transmitted.
   */
  private rxChain: DescriptorChain;
  private txChain: DescriptorChain;
  private controlChain: DescriptorChain;

  /**
   * @param options - ports and their backends, features, sizes
   * @throws VirtioError `INVALID_ARGUMENT` for a missing or doubled backend choice, too many
   *   ports, a queue size that is not a power of two up to 32768, an input buffer below 1 byte or
   *   above 2^30, or a size outside 1..65535
   */
  constructor(options: ConsoleDeviceOptions) {
    if ((options.backend === undefined) === (options.ports === undefined)) {
      throw new VirtioError('INVALID_ARGUMENT', 'console needs exactly one of backend and ports');
    }
    const portOptions: ConsolePortOptions[] = options.ports ?? [
      { backend: options.backend as ConsoleBackend },
    ];
    if (portOptions.length < 1 || portOptions.length > CONSOLE_MAX_PORTS) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `console port count ${String(portOptions.length)} is not in 1..${CONSOLE_MAX_PORTS}`,
      );
    }
    const queueSize = options.queueSize ?? CONSOLE_DEFAULT_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize > 32768) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `console queue size ${String(queueSize)} is not a power of two up to 32768`,
      );
    }
    const inputBytes = options.inputBufferBytes ?? CONSOLE_DEFAULT_INPUT_BUFFER;
    if (!Number.isInteger(inputBytes) || inputBytes < 1 || inputBytes > 2 ** 30) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `console input buffer ${String(inputBytes)} is not in 1..2^30`,
      );
    }
    const multiport = options.multiport ?? portOptions.length > 1;
    if (!multiport && portOptions.length > 1) {
      throw new VirtioError('INVALID_ARGUMENT', 'console with several ports needs multiport');
    }
    this.log = options.log;
    this.portCount = portOptions.length;
    this.ports = portOptions.map((p, id) => ({
      id,
      backend: p.backend,
      name: p.name === undefined || p.name === '' ? null : utf8Encode(p.name),
      console: p.console ?? id === 0,
      pending: new ByteRing(inputBytes),
      paused: false,
      dropping: false,
      added: false,
      guestReady: false,
      guestOpen: false,
      blocked: false,
    }));
    this.emergency = options.emergencyOutput ?? this.ports[0].backend;
    this.controlBacklog = CONTROL_BACKLOG_BASE + 8 * this.portCount;

    const f = new Features();
    const c = this.configView;
    if (options.size !== undefined) {
      f.set(ConsoleFeature.SIZE);
      c.setUint16(ConsoleConfig.cols, dimension('cols', options.size.cols), true);
      c.setUint16(ConsoleConfig.rows, dimension('rows', options.size.rows), true);
    }
    if (multiport) {
      f.set(ConsoleFeature.MULTIPORT);
      c.setUint32(ConsoleConfig.maxNrPorts, this.portCount, true);
    }
    if (options.emergWrite ?? true) f.set(ConsoleFeature.EMERG_WRITE);
    this.features = f;
    this.queueMaxSizes = new Array<number>(multiport ? 2 + 2 * this.portCount : 2).fill(queueSize);
    const capacity = Math.max(queueSize, MAX_INDIRECT_DESCRIPTORS);
    this.rxChain = new DescriptorChain(capacity);
    this.txChain = new DescriptorChain(capacity);
    this.controlChain = new DescriptorChain(capacity);

    for (const p of this.ports) {
      p.backend.onData((bytes) => this.input(p, bytes));
      p.backend.onDrain?.(() => this.drained(p));
    }
  }

  /** True between {@link ConsoleDevice.activate} and {@link ConsoleDevice.reset}. */
  get isActivated(): boolean {
    return this.ctx !== null;
  }

  /** The current console size, or null when VIRTIO_CONSOLE_F_SIZE is not offered. */
  get size(): { cols: number; rows: number } | null {
    if (!this.features.has(ConsoleFeature.SIZE)) return null;
    const c = this.configView;
    return { cols: c.getUint16(ConsoleConfig.cols, true), rows: c.getUint16(ConsoleConfig.rows, true) };
  }

  /**
   * State of port `id`.
   * @throws VirtioError `INVALID_ARGUMENT` for a port that does not exist
   */
  port(id: number): ConsolePortState {
    const p = this.ports[id];
    if (!Number.isInteger(id) || p === undefined) {
      throw new VirtioError('INVALID_ARGUMENT', `console has no port ${String(id)}`);
    }
    return {
      added: p.added || (id === 0 && !this.multiportNegotiated()),
      guestReady: p.guestReady,
      guestOpen: p.guestOpen,
      pendingInput: p.pending.length,
    };
  }

  /** Keeps the transport's host interface (for configuration change notifications). */
  attach(host: DeviceHost): void {
    this.host = host;
  }

  /**
   * Changes the console size (the host terminal was resized): updates `cols` and `rows`, and the
   * transport bumps ConfigGeneration and sends a configuration change notification (5.3.6: "a
   * configuration change notification indicates that the updated size can be read from the
   * configuration fields"). With MULTIPORT negotiated, console ports that are ready also get a
   * RESIZE control message (what Linux uses when multiport is on).
   * @throws VirtioError `INVALID_STATE` when VIRTIO_CONSOLE_F_SIZE is not offered;
   *   `INVALID_ARGUMENT` for a dimension outside 1..65535
   */
  resize(cols: number, rows: number): void {
    if (!this.features.has(ConsoleFeature.SIZE)) {
      throw new VirtioError('INVALID_STATE', 'console was built without a size');
    }
    const c = this.configView;
    c.setUint16(ConsoleConfig.cols, dimension('cols', cols), true);
    c.setUint16(ConsoleConfig.rows, dimension('rows', rows), true);
    this.host?.configChanged();
    if (this.multiportNegotiated()) {
      const extra = new Uint8Array(CONSOLE_RESIZE_SIZE);
      const v = new DataView(extra.buffer);
      v.setUint16(0, cols, true);
      v.setUint16(2, rows, true);
      for (const p of this.ports) {
        if (p.console && p.guestReady) this.queueControl(p.id, ConsoleControlEvent.RESIZE, 0, extra);
      }
      this.flushControl();
    }
  }

  /** Reads configuration space; `emerg_wr` reads as 0. */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    return readConfigLe(this.configView, this.configView.byteLength, offset, width);
  }

  /**
   * Only `emerg_wr` is writable, with a 32-bit access (4.2.2.2), when VIRTIO_CONSOLE_F_EMERG_WRITE
   * is offered, at any time: 5.3.5.1 "The device MUST allow a write to emerg_wr, even on an
   * unconfigured device. The device SHOULD transmit the lower byte written to emerg_wr to an
   * appropriate log or output method." Everything else is refused.
   */
  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean {
    if (offset !== ConsoleConfig.emergWr || width !== 4 || !this.features.has(ConsoleFeature.EMERG_WRITE)) {
      return false;
    }
    this.emergByte[0] = value & 0xff;
    try {
      this.emergency.write(this.emergByte);
      this.counters.emergencyBytes++;
    } catch (e) {
      this.backendError(e);
    }
    return true;
  }

  /** Keeps the context; sizes the reusable chain for the largest queue the transport built. */
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    let limit = this.rxChain.capacity;
    for (const q of ctx.queues) limit = Math.max(limit, q.chainLimit);
    if (limit > this.rxChain.capacity) {
      this.rxChain = new DescriptorChain(limit);
      this.txChain = new DescriptorChain(limit);
      this.controlChain = new DescriptorChain(limit);
    }
  }

  /**
   * Drops the context, the undelivered control messages and the ports' guest state. Input waiting
   * for receive buffers is kept: it goes to the next driver.
   */
  reset(): void {
    this.ctx = null;
    this.outbox = [];
    for (const p of this.ports) {
      p.added = false;
      p.guestReady = false;
      p.guestOpen = false;
      p.blocked = false;
    }
  }

  /**
   * Available buffer notification: a transmitq is drained to its backend, a receiveq is filled
   * with waiting input, the control transmitq is processed and the control receiveq gets waiting
   * control messages.
   */
  notify(index: number): void {
    const ctx = this.ctx;
    if (ctx === null) {
      this.guestError(`notification for queue ${String(index)} before activation`);
      return;
    }
    const multiport = this.multiportNegotiated();
    const q: DeviceQueue | undefined = ctx.queues[index];
    const exists =
      Number.isInteger(index) && index >= 0 && index < this.queueMaxSizes.length && (multiport || index < 2);
    if (!exists || q === undefined) {
      this.guestError(`notification for queue ${String(index)} that does not exist`);
      return;
    }
    if (!q.ready) {
      this.guestError(`notification for queue ${String(index)} that is not ready`);
      return;
    }
    // Already reported through queueFailed: stays stopped until reset (2.1.2).
    if (q.error !== null) return;
    if (index === ConsoleQueue.CONTROL_TRANSMITQ) {
      this.serveControl(ctx);
      return;
    }
    if (index === ConsoleQueue.CONTROL_RECEIVEQ) {
      this.flushControl();
      return;
    }
    const p = this.ports[index < 2 ? 0 : (index >> 1) - 1];
    if ((index & 1) === 0) {
      this.fillReceive(p, EMPTY, 0);
      this.maybeResume(p);
    } else {
      this.serveTransmit(p);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Input: host to guest.

  /** True when the driver negotiated MULTIPORT (only then do the control queues and ports >= 1 exist). */
  private multiportNegotiated(): boolean {
    return this.ctx?.features.has(ConsoleFeature.MULTIPORT) ?? false;
  }

  /** True when port `p`'s queues exist for the current driver. */
  private portLive(p: Port): boolean {
    return p.id === 0 || this.multiportNegotiated();
  }

  /**
   * True when input may go to port \`p\`'s receive buffers. With MULTIPORT, a generic (non-console)
   * port takes input only while the guest has it open (PORT_OPEN 1): Linux discards data arriving
   * on a closed port, so it waits here instead, as QEMU's virtio-serial holds it back.
   */
  private acceptsInput(p: Port): boolean {
    if (!this.portLive(p)) return false;
    return p.console || p.guestOpen || !this.multiportNegotiated();
  }

  /** Input from a backend: to receive buffers, then the bounded buffer, then dropped and counted. */
  private input(p: Port, bytes: Uint8Array): void {
    this.counters.inputBytes += bytes.length;
    let off = this.fillReceive(p, bytes, 0);
    off += p.pending.push(bytes, off);
    if (off < bytes.length) {
      const lost = bytes.length - off;
      this.counters.inputDropped += lost;
      if (!p.dropping) {
        p.dropping = true;
        this.log?.(`console: port ${String(p.id)} input buffer full, dropping input`);
      }
    } else {
      p.dropping = false;
    }
    if (p.pending.free === 0 && !p.paused && p.backend.pause !== undefined) {
      p.paused = true;
      p.backend.pause();
    }
  }

  /** Resumes a paused backend once the guest took half of its buffered input. */
  private maybeResume(p: Port): void {
    if (p.paused && p.pending.length <= p.pending.capacity / 2) {
      p.paused = false;
      p.backend.resume?.();
    }
  }

  /**
   * Fills port `p`'s receive buffers: waiting input first, then `src` from `off`. Returns how far
   * into `src` it got. Sends one used buffer notification for the batch.
   */
  private fillReceive(p: Port, src: Uint8Array, off: number): number {
    const ctx = this.ctx;
    if (ctx === null || !this.acceptsInput(p)) return off;
    const index = consoleReceiveQueue(p.id);
    const q = ctx.queues[index];
    if (q === undefined || !q.ready || q.error !== null) return off;
    const mem = ctx.mem;
    const chain = this.rxChain;
    let used = false;
    // Every chain taken consumes input or is rejected; the rejected ones are bounded too.
    for (let budget = q.size * MAX_PASSES_PER_NOTIFY; budget > 0; budget--) {
      if (p.pending.length === 0 && off >= src.length) break;
      if (!q.pop(mem, chain)) break;
      used = true;
      this.counters.rxChains++;
      if (chain.readableCount > 0) {
        // 5.3.6.1: "The driver MUST NOT put a device-readable buffer in a receiveq."
        this.guestError(
          `receive buffer ${String(chain.head)} of port ${String(p.id)} has device-readable segments`,
        );
        q.addUsed(mem, chain.head, 0);
        continue;
      }
      let n = p.pending.drainTo(mem, chain);
      if (p.pending.length === 0 && n < chain.writableBytes && off < src.length) {
        const k = Math.min(src.length - off, chain.writableBytes - n);
        n += chain.writeTo(mem, n, src.subarray(off, off + k));
        off += k;
      }
      this.counters.rxBytes += n;
      q.addUsed(mem, chain.head, n);
    }
    if (used) ctx.notifyUsed(index);
    if (q.error !== null) ctx.queueFailed(index, q.error);
    return off;
  }

  // ---------------------------------------------------------------------------------------------
  // Output: guest to host.

  /** The backend of `p` drained: take the transmit buffers left in the ring. */
  private drained(p: Port): void {
    if (p.blocked && this.ctx !== null) this.serveTransmit(p);
  }

  /**
   * Serves port `p`'s transmitq like {@link serveQueue}, but stops before taking a chain while the
   * backend is congested; its drain handler resumes.
   */
  private serveTransmit(p: Port): void {
    const ctx = this.ctx;
    if (ctx === null || !this.portLive(p)) return;
    const index = consoleTransmitQueue(p.id);
    const q = ctx.queues[index];
    if (q === undefined || !q.ready || q.error !== null) return;
    const mem = ctx.mem;
    const chain = this.txChain;
    const backend = p.backend;
    p.blocked = false;
    let used = false;
    for (let pass = 0; ; pass++) {
      q.disableNotification(mem);
      for (let budget = q.size; budget > 0; budget--) {
        if (backend.writable !== undefined && !backend.writable()) {
          p.blocked = true;
          break;
        }
        if (!q.pop(mem, chain)) break;
        this.transmit(mem, p, chain);
        q.addUsed(mem, chain.head, 0);
        used = true;
      }
      if (q.error !== null) {
        if (used) ctx.notifyUsed(index);
        ctx.queueFailed(index, q.error);
        return;
      }
      // 2.7.10: re-enable, then look again for buffers that raced the re-enable.
      const more = q.enableNotification(mem);
      if (q.error !== null) {
        // The look found avail.idx corrupt (no chain was popped when the backend was congested):
        // reported like any ring failure (2.1.2), not left for a notification that never comes.
        if (used) ctx.notifyUsed(index);
        ctx.queueFailed(index, q.error);
        return;
      }
      if (p.blocked) {
        this.counters.blocked++;
        break;
      }
      if (!more) break;
      if (pass + 1 >= MAX_PASSES_PER_NOTIFY) {
        this.counters.deferred++;
        break;
      }
    }
    if (used) ctx.notifyUsed(index);
  }

  /** Hands the readable part of one transmit chain to the backend, segment by segment. */
  private transmit(mem: GuestMemory, p: Port, chain: DescriptorChain): void {
    this.counters.txChains++;
    if (chain.writableCount > 0) {
      // 5.3.6.1: "The driver MUST NOT put a device-writable buffer in a transmitq."
      this.guestError(
        `transmit buffer ${String(chain.head)} of port ${String(p.id)} has device-writable segments`,
      );
      return;
    }
    const backend = p.backend;
    try {
      for (let i = 0; i < chain.readableCount; i++) {
        const gpa = chain.addr[i];
        const len = chain.len[i];
        const view = mem.view(gpa, len);
        if (view !== null) {
          backend.write(view);
        } else {
          const bounce = this.bounceBuffer();
          for (let k = 0; k < len; k += bounce.length) {
            const part = bounce.subarray(0, Math.min(bounce.length, len - k));
            mem.readBytes(gpa + k, part);
            backend.write(part);
          }
        }
        this.counters.txBytes += len;
      }
    } catch (e) {
      this.backendError(e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Control queues (MULTIPORT, 5.3.6.2).

  /** Serves the control transmitq: each chain is one `struct virtio_console_control` from the driver. */
  private serveControl(ctx: DeviceContext): void {
    const mem = ctx.mem;
    const outcome = serveQueue(ctx, ConsoleQueue.CONTROL_TRANSMITQ, this.controlChain, (c) => {
      this.controlMessage(mem, c);
      return 0;
    });
    if (outcome === ServeOutcome.DEFERRED) this.counters.deferred++;
    this.flushControl();
  }

  /** Handles one control message from the driver. */
  private controlMessage(mem: GuestMemory, chain: DescriptorChain): void {
    this.counters.controlIn++;
    if (chain.writableCount > 0) {
      this.guestError(`control buffer ${String(chain.head)} has device-writable segments`);
      return;
    }
    if (chain.readableBytes < CONSOLE_CONTROL_SIZE) {
      this.guestError(`control message of ${String(chain.readableBytes)} bytes is shorter than 8`);
      return;
    }
    chain.readFrom(mem, 0, this.control);
    const v = this.controlView;
    const id = v.getUint32(0, true);
    const event = v.getUint16(4, true);
    const value = v.getUint16(6, true);
    if (event === ConsoleControlEvent.DEVICE_READY) {
      if (value !== 1) {
        this.driverFailure('driver failed to set up the device');
        return;
      }
      // QEMU answers every DEVICE_READY with the ports; one DEVICE_ADD per port and device reset.
      for (const p of this.ports) {
        if (p.added) continue;
        p.added = true;
        this.queueControl(p.id, ConsoleControlEvent.DEVICE_ADD, 0, null);
      }
      return;
    }
    if (event !== ConsoleControlEvent.PORT_READY && event !== ConsoleControlEvent.PORT_OPEN) {
      this.guestError(`control event ${String(event)} is not one a driver sends`);
      return;
    }
    const p = this.ports[id];
    if (p === undefined || !p.added) {
      this.guestError(`control event ${String(event)} for port ${String(id)} that was not added`);
      return;
    }
    if (value > 1) {
      this.guestError(`control event ${String(event)} for port ${String(id)} with value ${String(value)}`);
      return;
    }
    if (event === ConsoleControlEvent.PORT_OPEN) {
      p.guestOpen = value === 1;
      // Input held back while the port was closed goes out now.
      if (p.guestOpen) {
        this.fillReceive(p, EMPTY, 0);
        this.maybeResume(p);
      }
      return;
    }
    if (value === 0) {
      this.driverFailure(`driver failed to set up port ${String(id)}`);
      return;
    }
    if (p.guestReady) return;
    p.guestReady = true;
    if (p.console) this.queueControl(id, ConsoleControlEvent.CONSOLE_PORT, 1, null);
    if (p.name !== null) this.queueControl(id, ConsoleControlEvent.PORT_NAME, 1, p.name);
    // The host end of every port is connected (its backend exists).
    this.queueControl(id, ConsoleControlEvent.PORT_OPEN, 1, null);
  }

  /** Queues a control message for the driver (bounded: past the backlog it is dropped and counted). */
  private queueControl(id: number, event: number, value: number, extra: Uint8Array | null): void {
    if (this.outbox.length >= this.controlBacklog) {
      this.counters.controlDropped++;
      this.log?.(`console: control message ${String(event)} for port ${String(id)} dropped, backlog full`);
      return;
    }
    const msg = new Uint8Array(CONSOLE_CONTROL_SIZE + (extra?.length ?? 0));
    const v = new DataView(msg.buffer);
    v.setUint32(0, id, true);
    v.setUint16(4, event, true);
    v.setUint16(6, value, true);
    if (extra !== null) msg.set(extra, CONSOLE_CONTROL_SIZE);
    this.outbox.push(msg);
  }

  /** Delivers waiting control messages into control receive buffers, one message per buffer. */
  private flushControl(): void {
    const ctx = this.ctx;
    if (ctx === null || this.outbox.length === 0 || !this.multiportNegotiated()) return;
    const index = ConsoleQueue.CONTROL_RECEIVEQ;
    const q = ctx.queues[index];
    if (q === undefined || !q.ready || q.error !== null) return;
    const mem = ctx.mem;
    const chain = this.controlChain;
    let used = false;
    let sent = 0;
    for (let budget = q.size * MAX_PASSES_PER_NOTIFY; budget > 0 && sent < this.outbox.length; budget--) {
      if (!q.pop(mem, chain)) break;
      used = true;
      const msg = this.outbox[sent];
      if (chain.readableCount > 0) {
        this.guestError(`control receive buffer ${String(chain.head)} has device-readable segments`);
        q.addUsed(mem, chain.head, 0);
        continue;
      }
      if (chain.writableBytes < msg.length) {
        // The message stays for the next buffer.
        this.guestError(
          `control receive buffer of ${String(chain.writableBytes)} bytes is shorter than a ${String(msg.length)}-byte message`,
        );
        q.addUsed(mem, chain.head, 0);
        continue;
      }
      q.addUsed(mem, chain.head, chain.writeTo(mem, 0, msg));
      this.counters.controlOut++;
      sent++;
    }
    if (sent > 0) this.outbox.splice(0, sent);
    if (used) ctx.notifyUsed(index);
    if (q.error !== null) ctx.queueFailed(index, q.error);
  }

  // ---------------------------------------------------------------------------------------------

  private bounceBuffer(): Uint8Array {
    if (this.bounce === null) this.bounce = new Uint8Array(BOUNCE_BYTES);
    return this.bounce;
  }

  private backendError(e: unknown): void {
    this.counters.backendErrors++;
    this.log?.(`console: backend write failed: ${e instanceof Error ? e.message : String(e)}`);
  }

  private driverFailure(message: string): void {
    this.counters.driverFailures++;
    this.log?.(`console: ${message}`);
  }

  private guestError(message: string): void {
    this.counters.guestErrors++;
    this.log?.(`console: ${message}`);
  }
}
