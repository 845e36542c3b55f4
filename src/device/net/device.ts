/**
 * virtio-net, the network device (virtio 1.2+, 5.1).
 *
 * Queues (5.1.2): `receiveq1, transmitq1, ..., receiveqN, transmitqN, controlq`, i.e. rx of pair
 * `p` at `2p`, tx at `2p + 1`, and the control queue last: at `2N` where N is `max_virtqueue_pairs`
 * when VIRTIO_NET_F_MQ is negotiated, else at 2 (N = 1).
 *
 * Every frame in either direction is preceded by `struct virtio_net_hdr` (5.1.6): 12 bytes with
 * VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF, 10 on a legacy device without MRG_RXBUF. No
 * offloads are offered (no CSUM, GUEST_CSUM, TSO, UFO, USO): a transmitted header must say
 * `flags = 0, gso_type = GSO_NONE`, and received headers are all zero except `num_buffers`.
 *
 * Transmit: each tx chain is header + frame in its device-readable part, framing not assumed
 * (2.6.4); the frame goes to the backend, the chain is used with length 0.
 *
 * Receive: a frame from the backend is steered to a pair (the pair that last transmitted the flow,
 * else a symmetric flow hash, among the pairs in use), then written into receive buffers popped from
 * that rx queue: one buffer without MRG_RXBUF (a buffer too short for the frame drops the frame and
 * is kept for the next one), as many as needed with MRG_RXBUF (`num_buffers` in the first header).
 * Popped buffers the device has not filled yet stay with the device (its "stash"), so a frame is
 * never split over buffers it does not have. When there is no room, the frame waits in a bounded
 * per-queue backlog (copied), delivered in order when the driver adds buffers; when the backlog is
 * full it is dropped and counted. Nothing is ever written past a buffer.
 *
 * Link state (VIRTIO_NET_F_STATUS): {@link NetDevice.setLink} changes `status` and sends a
 * configuration change notification. While the link is down, transmitted frames are consumed and
 * dropped, and arriving frames are dropped (both counted), as QEMU does.
 *
 * Control queue (VIRTIO_NET_F_CTRL_VQ): `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (with MQ) selects how many
 * pairs carry received traffic; every other class and command answers VIRTIO_NET_ERR.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import {
  DeviceId,
  ETH_HLEN,
  FeatureBit,
  NET_CTRL_MQ_VQ_PAIRS_MAX,
  NET_CTRL_MQ_VQ_PAIRS_MIN,
  NET_HDR_SIZE,
  NET_HDR_SIZE_LEGACY,
  NET_MAC_BYTES,
  NET_MAX_MTU,
  NET_MIN_MTU,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlMq,
  NetFeature,
  NetGso,
  NetHdr,
  NetStatus,
  VirtioError,
  VLAN_HLEN,
} from '../../spec/index.js';
import { DescriptorChain, isPowerOfTwo, MAX_INDIRECT_DESCRIPTORS } from '../../virtqueue/index.js';
import { readConfigLe } from '../configSpace.js';
import { Features } from '../features.js';
import { ServeOutcome, serveQueue } from '../serveQueue.js';
import type { DeviceContext, DeviceHost, VirtioDevice } from '../virtioDevice.js';
import type { NetBackend } from './backend.js';
import { parseMac, symmetricFlowHash } from './packet.js';

/** Options of a {@link NetDevice}. */
export interface NetDeviceOptions {
  /** Where frames go and come from. */
  backend: NetBackend;
  /** MAC address (6 bytes or `aa:bb:cc:dd:ee:ff`), offered with VIRTIO_NET_F_MAC. Default 52:54:00:12:34:56. */
  mac?: Uint8Array | string;
  /** `max_virtqueue_pairs`: more than 1 offers VIRTIO_NET_F_MQ (needs the control queue). Default 1. */
  queuePairs?: number;
  /** QueueNumMax of every queue, a power of two up to 32768. Default 256. */
  queueSize?: number;
  /** `mtu`, offered with VIRTIO_NET_F_MTU, 68..65535. Default 1500. */
  mtu?: number;
  /** Offer VIRTIO_NET_F_MRG_RXBUF. Default true. */
  mrgRxbuf?: boolean;
  /** Offer VIRTIO_NET_F_CTRL_VQ. Default true. */
  ctrlVq?: boolean;
  /** Offer VIRTIO_NET_F_STATUS. Default true. */
  status?: boolean;
  /** Link state at construction. Default up. */
  linkUp?: boolean;
  /** Speed in Mbit/s: offers VIRTIO_NET_F_SPEED_DUPLEX (full duplex) when set. */
  speed?: number;
  /** Frames that may wait per receive queue for buffers; more are dropped. Default 256. */
  rxBacklog?: number;
  /** Receives one lowercase line per guest error or backend failure. */
  log?: (message: string) => void;
}

/** Counters of a {@link NetDevice}, absolute since construction (not reset with the device). */
export interface NetCounters {
  /** Frames handed to the backend. */
  txFrames: number;
  /** Bytes of those frames (without the virtio-net header). */
  txBytes: number;
  /** Frames written into receive buffers. */
  rxFrames: number;
  /** Bytes of those frames (without the virtio-net header). */
  rxBytes: number;
  /** Received frames that had to wait for buffers (then delivered or dropped). */
  rxBacklogged: number;
  /** Received frames dropped: no receive buffer and the backlog full. */
  rxDropNoBuffer: number;
  /** Received frames dropped: longer than the MTU allows, or shorter than an Ethernet header. */
  rxDropTooBig: number;
  /** Received frames dropped: the receive buffer (no MRG_RXBUF) is shorter than the frame. */
  rxDropBufferTooSmall: number;
  /** Received frames dropped while the link was down (backlog included). */
  rxDropLinkDown: number;
  /** Received frames dropped: driver not ready (before DRIVER_OK, queue not live, reset). */
  rxDropNotReady: number;
  /** Transmitted frames dropped while the link was down. */
  txDropLinkDown: number;
  /** Transmitted frames dropped: longer than the MTU allows. */
  txDropTooBig: number;
  /** Transmitted chains dropped: short or offload-requesting header, frame below 14 bytes. */
  txDropMalformed: number;
  /** Control commands handled. */
  ctrlCommands: number;
  /** Control commands answered VIRTIO_NET_ERR. */
  ctrlErrors: number;
  /** Configuration change notifications requested (link changes). */
  configChanges: number;
  /** Driver mistakes: bad buffers, notifications for absent queues. */
  guestErrors: number;
  /** Backend `send` calls that threw. */
  backendErrors: number;
  /** Transmit notifications that stopped at the work bound with chains pending. */
  deferred: number;
  /** Frames transmitted per queue pair. */
  txFramesPerPair: number[];
  /** Frames received per queue pair. */
  rxFramesPerPair: number[];
}

/** What happened to a frame given to {@link NetDevice.receiveFrame}. */
export type NetRxOutcome = 'delivered' | 'queued' | 'dropped';

/** Default QueueNumMax of each queue. */
export const NET_DEFAULT_QUEUE_SIZE = 256;
/** Default MTU. */
export const NET_DEFAULT_MTU = 1500;
/** Default receive backlog per queue. */
export const NET_DEFAULT_RX_BACKLOG = 256;
/** Largest frame any configuration accepts (without header); 65536 bytes and more are rejected. */
export const NET_MAX_FRAME_BYTES = 65535;
/** QEMU's default MAC. */
export const NET_DEFAULT_MAC = '52:54:00:12:34:56';

/** Entries of the transmit flow table used for steering (a power of two). */
const FLOW_TABLE_SIZE = 4096;

/** One receive buffer popped and not yet used: its head and writable segments. */
class RxBuf {
  head = 0;
  count = 0;
  bytes = 0;
  readonly addr: number[] = [];
  readonly len: number[] = [];
}

/** Per receive queue state. */
class RxQueue {
  /** Stashed buffers, FIFO over a ring of reusable objects. */
  readonly bufs: RxBuf[] = [];
  first = 0;
  count = 0;
  /** Sum of the stashed buffers' bytes. */
  bytes = 0;
  /** Frames waiting for buffers (copies), FIFO from `backlogHead`. */
  backlog: Uint8Array[] = [];
  backlogHead = 0;

  get waiting(): number {
    return this.backlog.length - this.backlogHead;
  }

  at(k: number): RxBuf {
    return this.bufs[(this.first + k) % this.bufs.length];
  }

  clear(): number {
    const dropped = this.waiting;
    this.first = 0;
    this.count = 0;
    this.bytes = 0;
    this.backlog = [];
    this.backlogHead = 0;
    return dropped;
  }
}

/** The virtio network device. */
export class NetDevice implements VirtioDevice {
  /** Device type 1 (5.1.1). */
  readonly deviceId = DeviceId.NET;
  /** `2 * queuePairs` data queues, then the control queue when offered. */
  readonly queueMaxSizes: readonly number[];
  /** The offered device feature bits (5.1.3). */
  readonly features: Features;
  /** Bytes of `struct virtio_net_config` up to `supported_hash_types` (5.1.4). */
  readonly configSize = NetConfig.size;
  /** `max_virtqueue_pairs`. */
  readonly maxQueuePairs: number;
  /** The MAC address. */
  readonly mac: Uint8Array;
  /** The MTU. */
  readonly mtu: number;
  /** Longest frame accepted either way: `mtu + 14 + 4` (a VLAN tag), at most 65535. */
  readonly maxFrame: number;
  /** Counters, absolute since construction. */
  readonly counters: NetCounters;

  private readonly backend: NetBackend;
  private readonly rxBacklogLimit: number;
  private readonly log: ((message: string) => void) | undefined;
  private readonly config = new Uint8Array(NetConfig.size);
  private readonly configView = new DataView(this.config.buffer);
  private host: DeviceHost | null = null;
  private ctx: DeviceContext | null = null;
  private chain: DescriptorChain;
  private rxChain: DescriptorChain;
  private rx: RxQueue[] = [];
  /** Pairs the negotiated features make exist (max with MQ, else 1). */
  private pairsAvailable = 1;
  /** Pairs in use (VQ_PAIRS_SET); 1 after reset (5.1.6.5.5). */
  private pairsInUse = 1;
  private ctrlIndex = -1;
  private hdrLen = NET_HDR_SIZE;
  private mergeable = false;
  private readonly hdr = new Uint8Array(NET_HDR_SIZE);
  /** `hdr` cut to the negotiated header length (set at activation). */
  private hdrNegotiated = this.hdr;
  private readonly txBuf: Uint8Array;
  private readonly ctrlBuf = new Uint8Array(4);
  /** Pair + 1 that last transmitted a flow with this hash slot; 0 none. */
  private readonly flows = new Uint16Array(FLOW_TABLE_SIZE);
  private link: boolean;

  /**
   * @throws VirtioError `INVALID_ARGUMENT` for an option outside its range, or multiqueue without
   *   the control queue (5.1.3.1: MQ requires CTRL_VQ)
   */
  constructor(options: NetDeviceOptions) {
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > NET_CTRL_MQ_VQ_PAIRS_MAX) {
      // 5.1.4.1: "The device MUST set max_virtqueue_pairs to between 1 and 0x8000 inclusive".
      throw new VirtioError('INVALID_ARGUMENT', `net queue pairs ${String(pairs)} not in 1..32768`);
    }
    const queueSize = options.queueSize ?? NET_DEFAULT_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize > 32768) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net queue size ${String(queueSize)} is not a power of two up to 32768`,
      );
    }
    const mtu = options.mtu ?? NET_DEFAULT_MTU;
    if (!Number.isInteger(mtu) || mtu < NET_MIN_MTU || mtu > NET_MAX_MTU) {
      // 5.1.4.1: "The device MUST set mtu to between 68 and 65535 inclusive".
      throw new VirtioError('INVALID_ARGUMENT', `net mtu ${String(mtu)} not in 68..65535`);
    }
    const ctrlVq = options.ctrlVq ?? true;
    if (pairs > 1 && !ctrlVq) {
      throw new VirtioError('INVALID_ARGUMENT', 'net multiqueue requires the control queue');
    }
    const backlog = options.rxBacklog ?? NET_DEFAULT_RX_BACKLOG;
    if (!Number.isSafeInteger(backlog) || backlog < 0) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net rx backlog ${String(backlog)} is not a non-negative integer`,
      );
    }
    const speed = options.speed;
    if (speed !== undefined && (!Number.isInteger(speed) || speed < 0 || speed > 0xffff_ffff)) {
      throw new VirtioError('INVALID_ARGUMENT', `net speed ${String(speed)} is not a 32-bit value`);
    }
    const macOption = options.mac ?? NET_DEFAULT_MAC;
    const mac = typeof macOption === 'string' ? parseMac(macOption) : macOption.slice();
    if (mac.length !== NET_MAC_BYTES) {
      throw new VirtioError('INVALID_ARGUMENT', `net mac of ${String(mac.length)} bytes`);
    }
    this.backend = options.backend;
    this.mac = mac;
    this.mtu = mtu;
    this.maxFrame = Math.min(mtu + ETH_HLEN + VLAN_HLEN, NET_MAX_FRAME_BYTES);
    this.maxQueuePairs = pairs;
    this.rxBacklogLimit = backlog;
    this.log = options.log;
    this.link = options.linkUp ?? true;
    this.txBuf = new Uint8Array(this.maxFrame);
    const sizes = new Array<number>(2 * pairs + (ctrlVq ? 1 : 0)).fill(queueSize);
    this.queueMaxSizes = sizes;
    this.chain = new DescriptorChain(Math.max(queueSize, MAX_INDIRECT_DESCRIPTORS));
    this.rxChain = new DescriptorChain(Math.max(queueSize, MAX_INDIRECT_DESCRIPTORS));
    this.counters = {
      txFrames: 0,
      txBytes: 0,
      rxFrames: 0,
      rxBytes: 0,
      rxBacklogged: 0,
      rxDropNoBuffer: 0,
      rxDropTooBig: 0,
      rxDropBufferTooSmall: 0,
      rxDropLinkDown: 0,
      rxDropNotReady: 0,
      txDropLinkDown: 0,
      txDropTooBig: 0,
      txDropMalformed: 0,
      ctrlCommands: 0,
      ctrlErrors: 0,
      configChanges: 0,
      guestErrors: 0,
      backendErrors: 0,
      deferred: 0,
      txFramesPerPair: new Array<number>(pairs).fill(0),
      rxFramesPerPair: new Array<number>(pairs).fill(0),
    };

    const f = new Features([NetFeature.MAC, NetFeature.MTU]);
    if (options.status ?? true) f.set(NetFeature.STATUS);
    if (options.mrgRxbuf ?? true) f.set(NetFeature.MRG_RXBUF);
    if (ctrlVq) f.set(NetFeature.CTRL_VQ);
    if (pairs > 1) f.set(NetFeature.MQ);
    if (speed !== undefined) f.set(NetFeature.SPEED_DUPLEX);
    this.features = f;

    this.config.set(mac, NetConfig.mac);
    const c = this.configView;
    c.setUint16(NetConfig.status, this.statusBits(), true);
    c.setUint16(NetConfig.maxVirtqueuePairs, pairs, true);
    c.setUint16(NetConfig.mtu, mtu, true);
    c.setUint32(NetConfig.speed, speed ?? 0xffff_ffff, true);
    c.setUint8(NetConfig.duplex, speed === undefined ? 0xff : 1);

    this.backend.onReceive((frame) => {
      this.receiveFrame(frame);
    });
  }

  private statusBits(): number {
    return this.features.has(NetFeature.STATUS) && this.link ? NetStatus.LINK_UP : 0;
  }

  /** True between {@link NetDevice.activate} and {@link NetDevice.reset}. */
  get isActivated(): boolean {
    return this.ctx !== null;
  }

  /** Whether the link is up. */
  get linkUp(): boolean {
    return this.link;
  }

  /** Queue pairs in use for receive steering (1 until the driver sends VQ_PAIRS_SET). */
  get queuePairsInUse(): number {
    return this.pairsInUse;
  }

  /** Frames waiting for receive buffers, over all queues. */
  get rxWaiting(): number {
    let n = 0;
    for (const r of this.rx) n += r.waiting;
    return n;
  }

  /** The queue number of the control queue under the negotiated features, or -1. */
  get controlQueueIndex(): number {
    return this.ctrlIndex;
  }

  /**
   * Host side: brings the link up or down. Changes `status` (with VIRTIO_NET_F_STATUS) and sends a
   * configuration change notification (5.1.4: "the device ... notifies the driver of a change in
   * status"). Going down drops the frames waiting for buffers (counted as link-down drops).
   */
  setLink(up: boolean): void {
    if (up === this.link) return;
    this.link = up;
    if (!up) {
      for (const r of this.rx) {
        this.counters.rxDropLinkDown += r.waiting;
        r.backlog = [];
        r.backlogHead = 0;
      }
    }
    if (!this.features.has(NetFeature.STATUS)) return;
    this.configView.setUint16(NetConfig.status, this.statusBits(), true);
    this.counters.configChanges++;
    this.host?.configChanged();
  }

  attach(host: DeviceHost): void {
    this.host = host;
  }

  /** 5.1.3.1: VIRTIO_NET_F_MQ requires VIRTIO_NET_F_CTRL_VQ; refuses FEATURES_OK otherwise. */
  validateFeatures(accepted: Features): boolean {
    if (accepted.has(NetFeature.MQ) && !accepted.has(NetFeature.CTRL_VQ)) {
      this.log?.('net: mq accepted without ctrl_vq');
      return false;
    }
    return true;
  }

  /** Little-endian read of the configuration bytes; outside them reads 0. */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    return readConfigLe(this.configView, NetConfig.size, offset, width);
  }

  /**
   * Every field is read-only (5.1.4.2: "The driver MUST NOT write to any of the device
   * configuration fields"); every write is refused.
   */
  writeConfig(_offset: number, _width: 1 | 2 | 4, _value: number): boolean {
    return false;
  }

  /** Takes the context; lays out the queues as the negotiated features say (5.1.2). */
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    const f = ctx.features;
    this.mergeable = f.has(NetFeature.MRG_RXBUF);
    // 5.1.6.1: the header is 12 bytes "if VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF".
    this.hdrLen = this.mergeable || f.has(FeatureBit.VERSION_1) ? NET_HDR_SIZE : NET_HDR_SIZE_LEGACY;
    this.hdrNegotiated = this.hdr.subarray(0, this.hdrLen);
    this.pairsAvailable = f.has(NetFeature.MQ) ? this.maxQueuePairs : 1;
    this.pairsInUse = 1;
    this.ctrlIndex = f.has(NetFeature.CTRL_VQ) ? 2 * this.pairsAvailable : -1;
    this.flows.fill(0);
    this.rx = [];
    for (let p = 0; p < this.pairsAvailable; p++) this.rx.push(new RxQueue());
    let limit = this.chain.capacity;
    for (const q of ctx.queues) limit = Math.max(limit, q.chainLimit);
    if (limit > this.chain.capacity) {
      this.chain = new DescriptorChain(limit);
      this.rxChain = new DescriptorChain(limit);
    }
  }

  /** Drops the context, the stashed buffers and the waiting frames (counted as not-ready drops). */
  reset(): void {
    this.ctx = null;
    for (const r of this.rx) this.counters.rxDropNotReady += r.clear();
    this.rx = [];
    this.pairsInUse = 1;
    this.ctrlIndex = -1;
  }

  /** Queue reset (VIRTIO_F_RING_RESET): a receive queue forgets its buffers and waiting frames. */
  resetQueue(index: number): void {
    if (index % 2 === 0 && index < 2 * this.pairsAvailable) {
      const r = this.rx[index / 2];
      if (r !== undefined) this.counters.rxDropNotReady += r.clear();
    }
  }

  /**
   * Available buffer notification: a receive queue delivers the frames waiting for it, a transmit
   * queue sends its chains, the control queue runs its commands.
   */
  notify(index: number): void {
    const ctx = this.ctx;
    if (ctx === null || !Number.isInteger(index) || index < 0) {
      this.guestError(`notification for queue ${String(index)} before activation`);
      return;
    }
    const q = ctx.queues[index];
    if (q === undefined || !q.ready) {
      this.guestError(`notification for queue ${String(index)} that is not ready`);
      return;
    }
    if (q.error !== null) return;
    if (index === this.ctrlIndex) {
      serveQueue(ctx, index, this.chain, (c) => this.control(ctx, c));
      return;
    }
    if (index >= 2 * this.pairsAvailable) {
      this.guestError(`notification for queue ${String(index)}, which the features do not make exist`);
      return;
    }
    if (index % 2 === 0) {
      this.drain(ctx, index / 2);
      return;
    }
    const pair = (index - 1) / 2;
    const mem = ctx.mem;
    if (serveQueue(ctx, index, this.chain, (c) => this.transmit(mem, c, pair)) === ServeOutcome.DEFERRED) {
      this.counters.deferred++;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Transmit.

  /** Sends one tx chain's frame; returns the used length (0: tx buffers are device-readable). */
  private transmit(mem: GuestMemory, chain: DescriptorChain, pair: number): number {
    const c = this.counters;
    const hdrLen = this.hdrLen;
    if (chain.readableBytes < hdrLen) {
      c.txDropMalformed++;
      this.guestError(
        `tx chain ${String(chain.head)} of ${String(chain.readableBytes)} bytes is shorter than the header`,
      );
      return 0;
    }
    const hdr = this.hdr;
    chain.readFrom(mem, 0, this.hdrNegotiated);
    // No CSUM or HOST_* offered: 5.1.6.2.1 "The driver MUST NOT set the VIRTIO_NET_HDR_F_NEEDS_CSUM
    // bit if VIRTIO_NET_F_CSUM was not negotiated" and gso_type must be VIRTIO_NET_HDR_GSO_NONE.
    if (hdr[NetHdr.flags] !== 0 || hdr[NetHdr.gsoType] !== NetGso.NONE) {
      c.txDropMalformed++;
      this.guestError(
        `tx header asks for offloads (flags ${String(hdr[NetHdr.flags])}, gso_type ${String(hdr[NetHdr.gsoType])}) that were not negotiated`,
      );
      return 0;
    }
    const len = chain.readableBytes - hdrLen;
    if (len < ETH_HLEN) {
      c.txDropMalformed++;
      this.guestError(`tx frame of ${String(len)} bytes is shorter than an ethernet header`);
      return 0;
    }
    if (len > this.maxFrame) {
      c.txDropTooBig++;
      this.guestError(`tx frame of ${String(len)} bytes exceeds ${String(this.maxFrame)}`);
      return 0;
    }
    if (!this.link) {
      c.txDropLinkDown++;
      return 0;
    }
    const frame = this.txBuf.subarray(0, len);
    chain.readFrom(mem, hdrLen, frame);
    c.txFrames++;
    c.txBytes += len;
    c.txFramesPerPair[pair]++;
    // 5.1.6.5.5: "After the driver transmitted a packet of a flow on transmitqX, the device SHOULD
    // cause incoming packets for that flow to be steered to receiveqX."
    if (this.pairsAvailable > 1) this.flows[symmetricFlowHash(frame) & (FLOW_TABLE_SIZE - 1)] = pair + 1;
    try {
      this.backend.send(frame);
    } catch (e) {
      c.backendErrors++;
      this.log?.(`net: backend send failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    return 0;
  }

  // ---------------------------------------------------------------------------------------------
  // Receive.

  /**
   * Host side: a frame arrived from the backend (the backend's handler calls this; tests may call
   * it directly). The frame is copied before this returns.
   */
  receiveFrame(frame: Uint8Array): NetRxOutcome {
    const c = this.counters;
    if (frame.length < ETH_HLEN || frame.length > this.maxFrame) {
      // 5.1.4.1: "The device MUST NOT pass received packets that exceed mtu (plus low level
      // ethernet header length) size with gso_type NONE".
      c.rxDropTooBig++;
      return 'dropped';
    }
    if (!this.link) {
      c.rxDropLinkDown++;
      return 'dropped';
    }
    const ctx = this.ctx;
    if (ctx === null) {
      c.rxDropNotReady++;
      return 'dropped';
    }
    const pair = this.steer(frame);
    const index = 2 * pair;
    const q = ctx.queues[index];
    if (q === undefined || !q.ready || q.error !== null) {
      c.rxDropNotReady++;
      return 'dropped';
    }
    const r = this.rx[pair];
    if (r.waiting > 0) this.drain(ctx, pair);
    if (r.waiting === 0) {
      const done = this.deliver(ctx, pair, frame);
      if (done !== 0) {
        ctx.notifyUsed(index);
        return done === 1 ? 'delivered' : 'dropped';
      }
    }
    if (r.waiting >= this.rxBacklogLimit) {
      c.rxDropNoBuffer++;
      return 'dropped';
    }
    r.backlog.push(frame.slice());
    c.rxBacklogged++;
    // Ask for a kick when the driver adds buffers, and catch buffers that raced the re-enable.
    if (this.rearm(ctx, index)) this.drain(ctx, pair);
    return r.waiting === 0 ? 'delivered' : 'queued';
  }

  /** The pair a received frame goes to, among those in use. */
  private steer(frame: Uint8Array): number {
    const n = this.pairsInUse;
    if (n === 1) return 0;
    const h = symmetricFlowHash(frame);
    const p = this.flows[h & (FLOW_TABLE_SIZE - 1)] - 1;
    if (p >= 0 && p < n) return p;
    return h % n;
  }

  /**
   * Delivers waiting frames of `pair` while buffers last. When none is left waiting, turns
   * available buffer notifications off (the device pops receive buffers when frames arrive);
   * otherwise asks for them, and goes on with buffers that raced the re-enable (2.7.10).
   */
  private drain(ctx: DeviceContext, pair: number): void {
    const r = this.rx[pair];
    const index = 2 * pair;
    const q = ctx.queues[index];
    if (r === undefined || q === undefined || !q.ready || q.error !== null) return;
    let used = false;
    for (;;) {
      while (r.waiting > 0) {
        const done = this.deliver(ctx, pair, r.backlog[r.backlogHead]);
        if (done === 0) break;
        used = true;
        r.backlogHead++;
      }
      if (r.waiting === 0) {
        r.backlog = [];
        r.backlogHead = 0;
        q.disableNotification(ctx.mem);
        break;
      }
      // Each pass that goes on pops at least one newly available buffer: bounded by the ring.
      if (q.error !== null || !this.rearm(ctx, index)) break;
    }
    if (used) ctx.notifyUsed(index);
  }

  /**
   * Asks for available buffer notifications on receive queue `index` and looks again (2.7.10);
   * true when buffers raced the re-enable. A corrupt avail.idx found by that look is reported
   * (once: only when the queue had not failed before).
   */
  private rearm(ctx: DeviceContext, index: number): boolean {
    const q = ctx.queues[index];
    const before = q.error;
    const more = q.enableNotification(ctx.mem);
    if (before === null && q.error !== null) {
      ctx.queueFailed(index, q.error);
      return false;
    }
    return more;
  }

  /**
   * Pops available receive buffers into the stash until it holds `need` bytes (or one buffer when
   * `need` is 1 and nothing is stashed). Returns true when the stash has what was asked.
   */
  private fill(ctx: DeviceContext, pair: number, need: number): boolean {
    const r = this.rx[pair];
    const index = 2 * pair;
    const q = ctx.queues[index];
    const mem = ctx.mem;
    const chain = this.rxChain;
    while (r.bytes < need || r.count === 0) {
      if (!q.pop(mem, chain)) {
        if (q.error !== null) ctx.queueFailed(index, q.error);
        return false;
      }
      // 5.1.6.3.1: receive buffers are device-writable; with MRG_RXBUF "each buffer MUST be at
      // least the size of the struct virtio_net_hdr".
      if (chain.readableCount > 0 || chain.writableBytes < this.hdrLen) {
        this.guestError(
          `rx buffer ${String(chain.head)} has ${String(chain.readableBytes)} readable and ${String(chain.writableBytes)} writable bytes`,
        );
        q.addUsed(mem, chain.head, 0);
        ctx.notifyUsed(index);
        continue;
      }
      if (r.bufs.length < q.size) {
        while (r.bufs.length < q.size) r.bufs.push(new RxBuf());
      }
      const b = r.bufs[(r.first + r.count) % r.bufs.length];
      b.head = chain.head;
      b.count = chain.count;
      b.bytes = chain.writableBytes;
      for (let i = 0; i < chain.count; i++) {
        b.addr[i] = chain.addr[i];
        b.len[i] = chain.len[i];
      }
      r.count++;
      r.bytes += b.bytes;
    }
    return true;
  }

  /**
   * Writes `frame` into stashed buffers of `pair`. Returns 1 when delivered, 2 when dropped (the
   * single buffer is too short, no MRG_RXBUF), 0 when there is not enough room yet (nothing
   * written). Does not notify.
   */
  private deliver(ctx: DeviceContext, pair: number, frame: Uint8Array): number {
    const c = this.counters;
    const r = this.rx[pair];
    const hdrLen = this.hdrLen;
    const total = hdrLen + frame.length;
    if (!this.fill(ctx, pair, this.mergeable ? total : 1)) {
      // Every buffer of the ring is stashed and still too short: it can never fit, drop it
      // rather than stall the queue behind it.
      if (r.count > 0 && r.count >= ctx.queues[2 * pair].size) {
        c.rxDropBufferTooSmall++;
        return 2;
      }
      return 0;
    }
    let nbufs: number;
    if (this.mergeable) {
      nbufs = 0;
      let room = 0;
      while (room < total) room += r.at(nbufs++).bytes;
    } else {
      if (r.at(0).bytes < total) {
        // QEMU drops the packet and keeps the buffer (virtqueue_unpop) in this case.
        c.rxDropBufferTooSmall++;
        return 2;
      }
      nbufs = 1;
    }
    const mem = ctx.mem;
    const hdr = this.hdr;
    hdr.fill(0);
    // 5.1.6.4: "If VIRTIO_NET_F_MRG_RXBUF is not negotiated, the device MUST set num_buffers to 1";
    // otherwise the number of buffers the packet spans.
    if (hdrLen === NET_HDR_SIZE) {
      hdr[NetHdr.numBuffers] = nbufs & 0xff;
      hdr[NetHdr.numBuffers + 1] = nbufs >>> 8;
    }
    const q = ctx.queues[2 * pair];
    let off = 0;
    for (let k = 0; k < nbufs; k++) {
      const b = r.at(0);
      let pos = 0;
      if (k === 0) pos = writeBuf(mem, b, 0, this.hdrNegotiated);
      const n = Math.min(b.bytes - pos, frame.length - off);
      if (n > 0) pos += writeBuf(mem, b, pos, frame.subarray(off, off + n));
      off += n;
      r.first = (r.first + 1) % r.bufs.length;
      r.count--;
      r.bytes -= b.bytes;
      // 5.1.6.4: the buffers of one merged frame become visible to the driver together.
      q.addUsed(mem, b.head, pos, k === nbufs - 1);
    }
    c.rxFrames++;
    c.rxBytes += frame.length;
    c.rxFramesPerPair[pair]++;
    return 1;
  }

  // ---------------------------------------------------------------------------------------------
  // Control queue.

  /**
   * Runs one control command (5.1.6.5): readable `u8 class, u8 command, data`, writable `u8 ack`.
   * Returns the used length (1 with the ack, 0 when there is no writable byte).
   */
  private control(ctx: DeviceContext, chain: DescriptorChain): number {
    const c = this.counters;
    c.ctrlCommands++;
    if (chain.writableBytes < 1) {
      c.ctrlErrors++;
      this.guestError(`control command ${String(chain.head)} has no writable ack byte`);
      return 0;
    }
    let ack: number = NetCtrlAck.ERR;
    const b = this.ctrlBuf;
    const got = chain.readFrom(ctx.mem, 0, b);
    if (got < 2) {
      this.guestError(`control command of ${String(got)} bytes has no class and command`);
    } else {
      const cls = b[0];
      const cmd = b[1];
      if (cls === NetCtrlClass.MQ && cmd === NetCtrlMq.VQ_PAIRS_SET && ctx.features.has(NetFeature.MQ)) {
        ack = this.setPairs(got, (b[3] << 8) | b[2]);
      } else {
        this.log?.(`net: control class ${String(cls)} command ${String(cmd)} not supported`);
      }
    }
    if (ack !== NetCtrlAck.OK) c.ctrlErrors++;
    b[0] = ack;
    chain.writeTo(ctx.mem, chain.writableBytes - 1, b.subarray(0, 1));
    return 1;
  }

  /** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with `got` command bytes and the le16 value `n`. */
  private setPairs(got: number, n: number): number {
    if (got < 4) {
      this.guestError('vq_pairs_set without its le16 argument');
      return NetCtrlAck.ERR;
    }
    // 5.1.6.5.5.1: "The driver MUST NOT request a virtqueue_pairs of 0 or greater than
    // max_virtqueue_pairs in the device configuration space."
    if (n < NET_CTRL_MQ_VQ_PAIRS_MIN || n > this.pairsAvailable) {
      this.guestError(`vq_pairs_set of ${String(n)} outside 1..${String(this.pairsAvailable)}`);
      return NetCtrlAck.ERR;
    }
    // "The device MUST NOT queue packets on receive queues greater than virtqueue_pairs once it
    // has placed the VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET command in the used ring": frames waiting on
    // pairs going out of use are dropped.
    for (let p = n; p < this.rx.length; p++) {
      const r = this.rx[p];
      this.counters.rxDropNotReady += r.waiting;
      r.backlog = [];
      r.backlogHead = 0;
    }
    this.pairsInUse = n;
    return NetCtrlAck.OK;
  }

  private guestError(message: string): void {
    this.counters.guestErrors++;
    this.log?.(`net: ${message}`);
  }
}

/** Writes `src` into buffer `b` from byte `pos`; returns the bytes written. */
function writeBuf(mem: GuestMemory, b: RxBuf, pos: number, src: Uint8Array): number {
  let skip = pos;
  let written = 0;
  for (let i = 0; i < b.count && written < src.length; i++) {
    const len = b.len[i];
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const n = Math.min(len - skip, src.length - written);
    mem.writeBytes(b.addr[i] + skip, src.subarray(written, written + n));
    written += n;
    skip = 0;
  }
  return written;
}
