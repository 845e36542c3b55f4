/**
 * The guest driver of virtio-net (virtio 1.2+, 5.1), in the manner of Linux `virtio_net`:
 *
 * - receive: every receive queue is kept full of fixed-size DMA buffers (one descriptor each);
 *   harvested buffers are copied out and posted again at once. With VIRTIO_NET_F_MRG_RXBUF a frame
 *   spans `num_buffers` consecutive used buffers; a frame whose later buffers are not used yet is
 *   kept partial until they are (Linux drops it instead).
 * - transmit: each frame is copied with its header into one of a pool of DMA slots, one
 *   descriptor per frame; used slots are reclaimed on the next send (and from the interrupt).
 * - multiqueue: with VIRTIO_NET_F_MQ every pair up to `max_virtqueue_pairs` (or the cap asked for)
 *   is set up, and {@link NetDriver.setQueuePairs} chooses how many the device uses through
 *   VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; one pair per vCPU is the intended use.
 * - link: the configuration change handler re-reads `status` (VIRTIO_NET_F_STATUS) and tells the
 *   listener; while the link is down {@link NetDriver.send} refuses frames, as a carrier-off
 *   interface does.
 *
 * No offloads are negotiated: headers are sent as all zeroes (GSO_NONE) and received checksums are
 * not assumed valid.
 *
 * The driver sees only the transport-neutral {@link VirtioTransportDriver} and {@link DriverQueue}.
 *
 * @packageDocumentation
 */

import {
  DeviceId,
  DeviceStatus,
  ETH_HLEN,
  FeatureBit,
  NET_CTRL_MQ_VQ_PAIRS_MAX,
  NET_HDR_SIZE,
  NET_HDR_SIZE_LEGACY,
  NET_MAC_BYTES,
  NET_MIN_MTU,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlMq,
  NetFeature,
  NetStatus,
  VirtioError,
  VLAN_HLEN,
} from '../../spec/index.js';
import type { DriverQueue } from '../../virtqueue/index.js';
import {
  abandonDevice,
  beginInit,
  failDevice,
  finishInit,
  type MsiMessageData,
  type QueueRequest,
  readConfigConsistent,
  removeDevice,
  type VirtioTransportDriver,
  waitUntil,
} from '../driverApi.js';
import { Features } from '../features.js';
import {
  type NetPairGeometry,
  type NetPairHandoff,
  type NetQueueHandoff,
  NetQueuePair,
} from './queuePair.js';

/** Options of {@link NetDriver.probe}. */
export interface NetDriverOptions {
  /** Queue pairs to use (one per vCPU); capped by what the device offers. Default 1. */
  queuePairs?: number;
  /** Most pairs to set up (default all of `max_virtqueue_pairs`). */
  maxQueuePairs?: number;
  /**
   * Bytes of each receive buffer, header included. Default 1536 with MRG_RXBUF, else the header
   * plus the longest frame (`mtu + 18`).
   */
  rxBufferSize?: number;
  /** Queue size wanted (a power of two); default the device maximum. */
  queueSize?: number;
  /** Feature bits not to negotiate (for example `NetFeature.MRG_RXBUF`). */
  without?: readonly number[];
  /**
   * Transmit completions without interrupts (Linux virtio_net without tx napi): the transmit
   * queues get no interrupt routing, their used buffer notifications are suppressed (2.7.7.1),
   * and used slots are reclaimed at every send. Default false (reclaimed from the interrupt).
   */
  txReclaimOnSend?: boolean;
  /**
   * Pairs serviced on other vCPUs (one pair per vCPU): set up here, but their buffers are posted
   * by a {@link NetPairDriver} there after {@link NetDriver.handoff}. Pair 0 stays here.
   */
  remotePairs?: readonly NetRemotePair[];
}

/** A pair another vCPU services (see {@link NetDriverOptions.remotePairs}). */
export interface NetRemotePair {
  /** Pair number, at least 1. */
  readonly pair: number;
  /**
   * Called on this vCPU when the pair's queues have new used buffers and their interrupt came
   * here (one shared vector or line for every queue): forwards the work, typically an IPI to the
   * vCPU that services the pair.
   */
  readonly forward: () => void;
  /** With per-queue MSI: the message raising the servicing vCPU's vector for the receive queue. */
  readonly rxMsi?: MsiMessageData;
  /** With per-queue MSI: the message for the transmit queue (unused with `txReclaimOnSend`). */
  readonly txMsi?: MsiMessageData;
}

/** Counters of a {@link NetDriver}. */
export interface NetDriverStats {
  /** Frames given to the device. */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
  /** Frames received. */
  rxFrames: number;
  /** Bytes of those frames. */
  rxBytes: number;
  /** Used receive buffers that made no sense (shorter than the header, bad num_buffers). */
  rxErrors: number;
  /** Frames {@link NetDriver.send} refused because the link was down. */
  txLinkDown: number;
  /** Times {@link NetDriver.send} found the transmit ring full. */
  txRingFull: number;
  /** Configuration change notifications handled. */
  configChanges: number;
  /** Frames sent per pair. */
  txPerPair: number[];
  /** Frames received per pair. */
  rxPerPair: number[];
}

/** Default receive buffer size with MRG_RXBUF. */
export const NET_DRIVER_MRG_BUFFER_SIZE = 1536;

/** Device-specific features the driver understands (no offloads). */
const NET_WANTED = [
  NetFeature.MAC,
  NetFeature.MTU,
  NetFeature.STATUS,
  NetFeature.MRG_RXBUF,
  NetFeature.CTRL_VQ,
  NetFeature.MQ,
  FeatureBit.VERSION_1,
  FeatureBit.EVENT_IDX,
];

/** Bytes of the control buffer: class, command, up to 60 bytes of data, then the ack. */
const CTRL_DATA_MAX = 60;

/** A pair set up here and serviced on another vCPU. */
interface RemoteState {
  readonly spec: NetRemotePair;
  readonly rx: DriverQueue<number>;
  readonly tx: DriverQueue<number>;
  /** used.idx of each queue when the work was last forwarded. */
  rxSeen: number;
  txSeen: number;
  handedOff: boolean;
}

/** The guest side of a network device. */
export class NetDriver {
  /** The transport the driver runs over. */
  readonly transport: VirtioTransportDriver;
  /** The negotiated features. */
  readonly features: Features;
  /** The MAC address (from the device with VIRTIO_NET_F_MAC, else random, locally administered). */
  readonly mac: Uint8Array;
  /** The MTU (the device's with VIRTIO_NET_F_MTU, else 1500). */
  readonly mtu: number;
  /** Longest frame sent or received: `mtu + 14 + 4`, at most 65535. */
  readonly maxFrame: number;
  /** Header bytes: 12, or 10 on a legacy device without MRG_RXBUF. */
  readonly hdrLen: number;
  /** `max_virtqueue_pairs` (1 without MQ). */
  readonly maxQueuePairs: number;
  /** Bytes of each receive buffer. */
  readonly rxBufferSize: number;
  /** Counters. */
  readonly stats: NetDriverStats;

  private link = true;
  private pairsInUse = 1;
  /** Pairs serviced here (null: serviced on another vCPU). */
  private pairs: Array<NetQueuePair | null> = [];
  private readonly remote = new Map<number, RemoteState>();
  private readonly txReclaimOnSend: boolean;
  private ctrlQueue: DriverQueue<number> | null = null;
  private ctrlBuf = -1;
  private ctrlDone = false;
  private inbox: Uint8Array[] = [];
  private linkListener: ((up: boolean) => void) | null = null;
  private needsReset = false;
  private failure: string | null = null;
  private removed = false;
  private readonly geometry: NetPairGeometry;

  private constructor(
    t: VirtioTransportDriver,
    features: Features,
    c: { mac: Uint8Array; mtu: number; maxPairs: number; status: number },
    rxBufferSize: number,
    txReclaimOnSend: boolean,
  ) {
    this.transport = t;
    this.features = features;
    this.mac = c.mac;
    this.mtu = c.mtu;
    this.maxFrame = Math.min(c.mtu + ETH_HLEN + VLAN_HLEN, 65535);
    this.hdrLen =
      features.has(NetFeature.MRG_RXBUF) || features.has(FeatureBit.VERSION_1)
        ? NET_HDR_SIZE
        : NET_HDR_SIZE_LEGACY;
    this.maxQueuePairs = c.maxPairs;
    this.rxBufferSize = rxBufferSize;
    this.link = !features.has(NetFeature.STATUS) || (c.status & NetStatus.LINK_UP) !== 0;
    this.txReclaimOnSend = txReclaimOnSend;
    this.geometry = {
      hdrLen: this.hdrLen,
      mergeable: features.has(NetFeature.MRG_RXBUF),
      rxBufferSize,
      maxFrame: this.maxFrame,
    };
    this.stats = {
      txFrames: 0,
      txBytes: 0,
      rxFrames: 0,
      rxBytes: 0,
      rxErrors: 0,
      txLinkDown: 0,
      txRingFull: 0,
      configChanges: 0,
      txPerPair: [],
      rxPerPair: [],
    };
  }

  /**
   * Initializes the device (3.1.1), reads its configuration, sets up the queues, fills the receive
   * queues, sets DRIVER_OK, then selects the pairs in use through the control queue.
   * @throws VirtioError `DEVICE_REJECTED` when the device is not a network device or its
   *   configuration is unusable (max_virtqueue_pairs outside 1..0x8000, mtu below 68)
   * @throws VirtioError `INVALID_ARGUMENT` for invalid options
   * @throws VirtioError whatever negotiation or queue setup throws
   */
  static probe(t: VirtioTransportDriver, options: NetDriverOptions = {}): NetDriver {
    if (t.deviceId !== DeviceId.NET) {
      throw new VirtioError('DEVICE_REJECTED', `device id ${String(t.deviceId)} is not a network device`);
    }
    const wantedPairs = options.queuePairs ?? 1;
    if (!Number.isInteger(wantedPairs) || wantedPairs < 1 || wantedPairs > NET_CTRL_MQ_VQ_PAIRS_MAX) {
      throw new VirtioError('INVALID_ARGUMENT', `net: queue pairs ${String(wantedPairs)} not in 1..32768`);
    }
    const cap = options.maxQueuePairs ?? NET_CTRL_MQ_VQ_PAIRS_MAX;
    if (!Number.isInteger(cap) || cap < 1) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net: max queue pairs ${String(cap)} is not a positive integer`,
      );
    }
    const wanted = new Features(NET_WANTED);
    for (const b of options.without ?? []) wanted.clear(b);
    const features = beginInit(t, wanted);
    let d: NetDriver | null = null;
    try {
      const c = readConfigConsistent(t, () => NetDriver.readConfig(t, features));
      const hdrLen =
        features.has(NetFeature.MRG_RXBUF) || features.has(FeatureBit.VERSION_1)
          ? NET_HDR_SIZE
          : NET_HDR_SIZE_LEGACY;
      const maxFrame = Math.min(c.mtu + ETH_HLEN + VLAN_HLEN, 65535);
      const bufSize =
        options.rxBufferSize ??
        (features.has(NetFeature.MRG_RXBUF) ? NET_DRIVER_MRG_BUFFER_SIZE : hdrLen + maxFrame);
      // 5.1.6.3.1: with MRG_RXBUF "each buffer MUST be at least the size of the struct virtio_net_hdr".
      if (
        !Number.isInteger(bufSize) ||
        bufSize < hdrLen + (features.has(NetFeature.MRG_RXBUF) ? 0 : ETH_HLEN)
      ) {
        throw new VirtioError('INVALID_ARGUMENT', `net: receive buffer size ${String(bufSize)} is too small`);
      }
      const reclaimOnSend = options.txReclaimOnSend ?? false;
      d = new NetDriver(t, features, c, bufSize, reclaimOnSend);
      const driver = d;
      t.onConfigChange(() => driver.configChanged());
      const pairs = Math.min(c.maxPairs, cap);
      const remote = new Map<number, NetRemotePair>();
      for (const r of options.remotePairs ?? []) {
        if (!Number.isInteger(r.pair) || r.pair < 1 || r.pair >= pairs || remote.has(r.pair)) {
          throw new VirtioError(
            'INVALID_ARGUMENT',
            `net: remote pair ${String(r.pair)} not in 1..${String(pairs - 1)} or given twice`,
          );
        }
        remote.set(r.pair, r);
      }
      const requests: QueueRequest[] = [];
      for (let p = 0; p < pairs; p++) {
        const r = remote.get(p);
        if (r === undefined) {
          requests.push({ index: 2 * p, callback: () => driver.harvestRx(p), size: options.queueSize });
          requests.push({
            index: 2 * p + 1,
            callback: reclaimOnSend ? null : () => driver.reclaim(p),
            size: options.queueSize,
          });
        } else {
          const forward = (): void => driver.forward(p);
          requests.push({ index: 2 * p, callback: forward, size: options.queueSize, msiMessage: r.rxMsi });
          requests.push({
            index: 2 * p + 1,
            callback: reclaimOnSend ? null : forward,
            size: options.queueSize,
            msiMessage: r.txMsi,
          });
        }
      }
      if (features.has(NetFeature.CTRL_VQ)) {
        // 5.1.2: the control queue is the last one: 2N with MQ, else 2.
        // An interrupt for the control queue's answer: Linux busy-polls it, but a guest that
        // halts while waiting (as `command` does) needs to be woken when the device answers after
        // the notification returned (a posted doorbell served on another thread).
        requests.push({ index: 2 * c.maxPairs, callback: () => {}, size: options.queueSize });
      }
      const queues = t.setupQueues(requests) as DriverQueue<number>[];
      const dma = t.dma;
      const kick = (q: DriverQueue<number>): void => t.notify(q);
      for (let p = 0; p < pairs; p++) {
        const rq = queues[2 * p];
        const tq = queues[2 * p + 1];
        const r = remote.get(p);
        if (r !== undefined) {
          // The servicing vCPU posts its own buffers after the handoff; nothing is posted here.
          if (reclaimOnSend) tq.disableCallbacks();
          driver.remote.set(p, { spec: r, rx: rq, tx: tq, rxSeen: 0, txSeen: 0, handedOff: false });
          driver.pairs.push(null);
          driver.stats.rxPerPair.push(0);
          driver.stats.txPerPair.push(0);
          continue;
        }
        driver.pairs.push(
          new NetQueuePair(
            t.mem,
            dma,
            p,
            rq,
            tq,
            driver.geometry,
            driver.stats,
            (f) => driver.inbox.push(f),
            kick,
            reclaimOnSend,
          ),
        );
      }
      if (features.has(NetFeature.CTRL_VQ)) {
        driver.ctrlQueue = queues[2 * pairs];
        driver.ctrlBuf = dma.alloc(CTRL_DATA_MAX + 4, 16);
      }
      // 3.1.1 step 7: populate the receive queues before DRIVER_OK (no kick before DRIVER_OK).
      for (const q of driver.pairs) q?.fill();
      finishInit(t);
    } catch (e) {
      if (d !== null) d.abort();
      else {
        try {
          failDevice(t);
        } catch {
          // Keep the original error.
        }
      }
      throw e;
    }
    const want = Math.min(wantedPairs, d.pairs.length);
    if (want > 1) d.setQueuePairs(want);
    return d;
  }

  /** Reads the fields the negotiated features make valid (5.1.4). */
  private static readConfig(
    t: VirtioTransportDriver,
    f: Features,
  ): { mac: Uint8Array; mtu: number; maxPairs: number; status: number } {
    const mac = new Uint8Array(NET_MAC_BYTES);
    if (f.has(NetFeature.MAC)) {
      for (let i = 0; i < NET_MAC_BYTES; i++) mac[i] = t.readConfig(NetConfig.mac + i, 1);
    } else {
      // 5.1.5: "Otherwise, the driver SHOULD generate a random local MAC address."
      for (let i = 0; i < NET_MAC_BYTES; i++) mac[i] = Math.floor(Math.random() * 256);
      mac[0] = (mac[0] & 0xfe) | 0x02;
    }
    let maxPairs = 1;
    if (f.has(NetFeature.MQ)) {
      maxPairs = t.readConfig(NetConfig.maxVirtqueuePairs, 2);
      if (maxPairs < 1 || maxPairs > NET_CTRL_MQ_VQ_PAIRS_MAX) {
        throw new VirtioError(
          'DEVICE_REJECTED',
          `net: max_virtqueue_pairs ${String(maxPairs)} not in 1..32768`,
        );
      }
    }
    let mtu = 1500;
    if (f.has(NetFeature.MTU)) {
      mtu = t.readConfig(NetConfig.mtu, 2);
      if (mtu < NET_MIN_MTU) throw new VirtioError('DEVICE_REJECTED', `net: mtu ${String(mtu)} below 68`);
    }
    const status = f.has(NetFeature.STATUS) ? t.readConfig(NetConfig.status, 2) : NetStatus.LINK_UP;
    return { mac, mtu, maxPairs, status };
  }

  /** Undoes a failed probe. Never throws. */
  private abort(): void {
    abandonDevice(this.transport, () => this.release());
  }

  private release(): void {
    const dma = this.transport.dma;
    for (const q of this.pairs) q?.release(dma);
    if (this.ctrlBuf >= 0) dma.release(this.ctrlBuf);
    this.pairs = [];
    this.remote.clear();
    this.ctrlQueue = null;
    this.ctrlBuf = -1;
  }

  /** Whether the link is up (always, without VIRTIO_NET_F_STATUS). */
  get linkUp(): boolean {
    return this.link;
  }

  /** Pairs set up. */
  get queuePairs(): number {
    return this.pairs.length;
  }

  /** Pairs the device was told to use. */
  get queuePairsInUse(): number {
    return this.pairsInUse;
  }

  /** Registers the listener of link changes (called from the configuration change handler). */
  onLinkChange(listener: (up: boolean) => void): void {
    this.linkListener = listener;
  }

  // ---------------------------------------------------------------------------------------------
  // Interrupt side.

  /** Configuration change: DEVICE_NEEDS_RESET stops the driver; else `status` is re-read. */
  private configChanged(): void {
    this.stats.configChanges++;
    const t = this.transport;
    if ((t.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) {
      this.needsReset = true;
      return;
    }
    if (!this.features.has(NetFeature.STATUS)) return;
    const up = (t.readConfig(NetConfig.status, 2) & NetStatus.LINK_UP) !== 0;
    if (up !== this.link) {
      this.link = up;
      this.linkListener?.(up);
    }
  }

  /** Harvests the used receive buffers of pair `p` (its receive interrupt). */
  private harvestRx(p: number): void {
    this.pairs[p]?.harvestRx();
  }

  /** Reclaims the used transmit slots of pair `p` (its transmit interrupt). */
  private reclaim(p: number): void {
    this.pairs[p]?.reclaim();
  }

  /**
   * Interrupt for a pair serviced elsewhere, arriving here on a shared vector or line: forwards
   * when either queue's used index moved since the last forward (Linux `vring_interrupt`'s
   * "more used" check), so interrupts of other queues cost the other vCPU nothing.
   */
  private forward(p: number): void {
    const r = this.remote.get(p);
    if (r === undefined || !r.handedOff) return;
    const mem = this.transport.mem;
    const rxIdx = mem.read16(r.rx.rings.usedRing + 2);
    const txIdx = mem.read16(r.tx.rings.usedRing + 2);
    if (rxIdx === r.rxSeen && txIdx === r.txSeen) return;
    r.rxSeen = rxIdx;
    r.txSeen = txIdx;
    r.spec.forward();
  }

  /**
   * The plain-data description of remote pair `pair` for the {@link NetPairDriver} that will
   * service it on another vCPU. Call once, after probe; from then on that vCPU owns the pair's
   * rings (this driver only forwards shared interrupts to it).
   * @throws VirtioError `INVALID_ARGUMENT` for a pair not declared in `remotePairs`;
   *   `INVALID_STATE` when it was already handed off
   */
  handoff(pair: number): NetPairHandoff {
    this.checkUsable();
    const r = this.remote.get(pair);
    if (r === undefined) throw new VirtioError('INVALID_ARGUMENT', `net: pair ${String(pair)} is not remote`);
    if (r.handedOff) throw new VirtioError('INVALID_STATE', `net: pair ${String(pair)} already handed off`);
    r.handedOff = true;
    const t = this.transport;
    const eventIdx = this.features.has(FeatureBit.EVENT_IDX);
    const q = (dq: DriverQueue<number>): NetQueueHandoff => ({
      index: dq.index,
      size: dq.size,
      rings: { ...dq.rings },
      eventIdx,
      notify: t.notifyLocation(dq.index),
    });
    return {
      pair,
      rx: q(r.rx),
      tx: q(r.tx),
      geometry: this.geometry,
      mac: Array.from(this.mac),
      txReclaimOnSend: this.txReclaimOnSend,
    };
  }

  // ---------------------------------------------------------------------------------------------
  // Use.

  /** Throws unless the driver can be used. */
  private checkUsable(): void {
    if (this.removed) throw new VirtioError('INVALID_STATE', 'net: driver removed');
    if (this.failure !== null) throw new VirtioError('DEVICE_FAILED', `net: ${this.failure}`);
    let reason: string | null = this.needsReset ? 'device needs reset' : null;
    for (const q of this.pairs) if (reason === null && q !== null) reason = q.broken;
    if (reason === null && this.ctrlQueue?.broken != null) reason = this.ctrlQueue.broken;
    if (reason !== null) {
      this.failure = reason;
      failDevice(this.transport);
      throw new VirtioError('DEVICE_FAILED', `net: ${reason}`);
    }
  }

  /**
   * Queues `frame` (a whole Ethernet frame, 14..maxFrame bytes) on the transmit queue of `pair`.
   * Returns false when the link is down or the ring is full (counted); the frame is then not sent.
   * With `kick` false the device is not notified (call {@link NetDriver.flush}).
   * @throws VirtioError `INVALID_ARGUMENT` for a bad length or pair; `INVALID_STATE` after remove;
   *   `DEVICE_FAILED` when the device broke
   */
  send(frame: Uint8Array, pair = 0, kick = true): boolean {
    this.checkUsable();
    const x = this.pairs[pair];
    if (!Number.isInteger(pair) || x === undefined || x === null || pair >= this.pairsInUse) {
      throw new VirtioError('INVALID_ARGUMENT', `net: pair ${String(pair)} is not in use`);
    }
    if (frame.length < ETH_HLEN || frame.length > this.maxFrame) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net: frame of ${String(frame.length)} bytes not in ${String(ETH_HLEN)}..${String(this.maxFrame)}`,
      );
    }
    if (!this.link) {
      this.stats.txLinkDown++;
      return false;
    }
    return x.send(frame, kick);
  }

  /** Notifies the device of frames queued with `kick` false on `pair` (if it wants a notification). */
  flush(pair = 0): void {
    this.pairs[pair]?.flush();
  }

  /**
   * Frames queued on `pair` whose transmit slots the device has not returned yet (used slots are
   * reclaimed first); 0 once the device consumed everything sent.
   * @throws VirtioError `INVALID_ARGUMENT` for a pair not serviced here
   */
  txInFlight(pair = 0): number {
    const x = this.pairs[pair];
    if (x === undefined || x === null)
      throw new VirtioError('INVALID_ARGUMENT', `net: pair ${String(pair)} is not serviced here`);
    return x.txInFlight();
  }

  /**
   * Harvests every queue without waiting for an interrupt (NAPI-style polling): receive buffers are
   * copied out and posted again, transmit slots reclaimed. Returns the frames now waiting in
   * {@link NetDriver.receive}.
   * @throws VirtioError `DEVICE_FAILED` when the device broke
   */
  poll(): number {
    this.checkUsable();
    for (const q of this.pairs) {
      if (q === null) continue;
      q.harvestRx();
      q.reclaim();
    }
    this.checkUsable();
    return this.inbox.length;
  }

  /** Polls, then returns and forgets the received frames, oldest first. */
  receive(): Uint8Array[] {
    this.poll();
    const out = this.inbox;
    this.inbox = [];
    return out;
  }

  /**
   * Sends a control command (5.1.6.5) and waits for the device's ack. Returns the ack byte
   * (VIRTIO_NET_OK or VIRTIO_NET_ERR).
   * @throws VirtioError `INVALID_STATE` without VIRTIO_NET_F_CTRL_VQ; `INVALID_ARGUMENT` for data
   *   longer than 60 bytes; `TIMEOUT` / `DEVICE_FAILED` for a device that does not answer
   */
  command(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): number {
    this.checkUsable();
    const q = this.ctrlQueue;
    if (q === null) throw new VirtioError('INVALID_STATE', 'net: no control queue');
    if (data.length > CTRL_DATA_MAX) {
      throw new VirtioError('INVALID_ARGUMENT', `net: control data of ${String(data.length)} bytes`);
    }
    const mem = this.transport.mem;
    const b = this.ctrlBuf;
    mem.write8(b, cls & 0xff);
    mem.write8(b + 1, cmd & 0xff);
    mem.writeBytes(b + 2, data);
    const ackAddr = b + CTRL_DATA_MAX + 2;
    mem.write8(ackAddr, 0xff);
    this.ctrlDone = false;
    if (!q.add([{ addr: b, len: 2 + data.length }], [{ addr: ackAddr, len: 1 }], 0)) {
      throw new VirtioError('INVALID_STATE', 'net: control queue is full');
    }
    if (q.kickPrepare()) this.transport.notify(q);
    const done = (): boolean => {
      if (!this.ctrlDone && q.getUsed() !== null) this.ctrlDone = true;
      return this.ctrlDone || q.broken !== null || this.needsReset;
    };
    try {
      waitUntil(this.transport.platform, done, 'net control command');
    } catch (e) {
      if (e instanceof VirtioError && e.code === 'TIMEOUT') {
        this.failure = `no answer to control command: ${e.message}`;
        failDevice(this.transport);
      }
      throw e;
    }
    this.checkUsable();
    return mem.read8(ackAddr);
  }

  /**
   * Tells the device to use `n` queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET), 1..the pairs set up.
   * @throws VirtioError `INVALID_STATE` without MQ and CTRL_VQ; `INVALID_ARGUMENT` for `n` out of
   *   range; `BACKEND_IO` when the device answers VIRTIO_NET_ERR
   */
  setQueuePairs(n: number): void {
    this.checkUsable();
    if (!this.features.has(NetFeature.MQ) || this.ctrlQueue === null) {
      throw new VirtioError('INVALID_STATE', 'net: multiqueue is not negotiated');
    }
    if (!Number.isInteger(n) || n < 1 || n > this.pairs.length) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net: queue pairs ${String(n)} not in 1..${String(this.pairs.length)}`,
      );
    }
    const ack = this.command(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(n & 0xff, n >>> 8));
    if (ack !== NetCtrlAck.OK) {
      throw new VirtioError('BACKEND_IO', `net: device refused ${String(n)} queue pairs`);
    }
    this.pairsInUse = n;
  }

  /**
   * Unbinds the driver: resets the device, releases the queues and every DMA buffer. Calling it
   * again does nothing.
   * @throws VirtioError `DEVICE_FAILED` when the device did not reset or kept a queue live
   */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    removeDevice(this.transport, () => this.release());
  }
}
