/**
 * One receive/transmit queue pair of the virtio-net guest driver (5.1.6): the receive buffers and
 * their harvesting (with VIRTIO_NET_F_MRG_RXBUF merging), the transmit slots and their reclaim.
 * {@link NetDriver} owns one per pair it services; {@link NetPairDriver} services one pair on
 * another vCPU from a {@link NetPairHandoff} (one pair per vCPU, as Linux's virtio_net binds
 * `rq[i]`/`sq[i]` to CPU i).
 *
 * @packageDocumentation
 */

import type { GuestAllocator, GuestMemory } from '../../memory/index.js';
import { ETH_HLEN, NetHdr, VirtioError } from '../../spec/index.js';
import { DriverQueue, type RingAddresses } from '../../virtqueue/index.js';
import { type NotifyLocation, notificationValue } from '../driverApi.js';

/** Frame geometry a pair needs, fixed at negotiation. */
export interface NetPairGeometry {
  /** Header bytes before each frame (12, or 10 on a legacy device without MRG_RXBUF). */
  readonly hdrLen: number;
  /** VIRTIO_NET_F_MRG_RXBUF negotiated: a frame may span `num_buffers` receive buffers. */
  readonly mergeable: boolean;
  /** Bytes of each receive buffer, header included. */
  readonly rxBufferSize: number;
  /** Longest frame sent or received. */
  readonly maxFrame: number;
}

/** Counters a pair updates (the driver's, shared by all its pairs). */
export interface NetPairCounters {
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
  /** Times a send found the transmit ring full. */
  txRingFull: number;
  /** Frames sent per pair. */
  txPerPair: number[];
  /** Frames received per pair. */
  rxPerPair: number[];
}

/** One queue of a pair as plain data (crosses threads by structured clone). */
export interface NetQueueHandoff {
  /** Queue number. */
  readonly index: number;
  /** Queue size. */
  readonly size: number;
  /** Where its areas are (set up, zeroed, enabled, nothing posted yet). */
  readonly rings: RingAddresses;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  readonly eventIdx: boolean;
  /** Where its notifications go. */
  readonly notify: NotifyLocation;
}

/**
 * A queue pair set up by {@link NetDriver} and handed to another vCPU, as plain data: the two
 * queues (live, empty) and the frame geometry. See {@link NetDriver.handoff}.
 */
export interface NetPairHandoff {
  /** Pair number (receiveq = 2 * pair, transmitq = 2 * pair + 1). */
  readonly pair: number;
  /** The receive queue. */
  readonly rx: NetQueueHandoff;
  /** The transmit queue. */
  readonly tx: NetQueueHandoff;
  /** Frame geometry. */
  readonly geometry: NetPairGeometry;
  /** The MAC address the driver uses. */
  readonly mac: readonly number[];
  /** Transmit completions are reclaimed on send, without interrupts. */
  readonly txReclaimOnSend: boolean;
}

/** One receive/transmit pair: DMA buffers, posting, harvesting, reclaim, send. */
export class NetQueuePair {
  /** DMA base of the receive buffers (`rx.size` of `rxBufferSize` bytes). */
  readonly rxBase: number;
  /** DMA base of the transmit slots. */
  readonly txBase: number;
  private readonly free: number[] = [];
  /** A frame spanning several buffers whose later buffers are not used yet. */
  private parts: Uint8Array[] = [];
  private partBytes = 0;
  private remaining = 0;
  /** Later buffers of a dropped merged frame still to put back unread (Linux frees them too). */
  private skip = 0;
  private readonly slotBytes: number;
  private readonly hdrZero: Uint8Array;

  /**
   * Allocates the pair's DMA buffers (from `dma`); nothing is posted until {@link NetQueuePair.fill}.
   * @param mem - guest memory
   * @param dma - allocator of the buffers
   * @param pair - pair number (for counters)
   * @param rx - the receive queue
   * @param tx - the transmit queue
   * @param g - frame geometry
   * @param counters - counters to update
   * @param deliver - takes each received frame
   * @param kick - notifies the device of `queue`
   * @param txReclaimOnSend - reclaim used transmit slots at every send (transmit interrupts off)
   */
  constructor(
    private readonly mem: GuestMemory,
    dma: GuestAllocator,
    readonly pair: number,
    readonly rx: DriverQueue<number>,
    readonly tx: DriverQueue<number>,
    private readonly g: NetPairGeometry,
    private readonly counters: NetPairCounters,
    private readonly deliver: (frame: Uint8Array) => void,
    private readonly kick: (queue: DriverQueue<number>) => void,
    readonly txReclaimOnSend: boolean,
  ) {
    this.slotBytes = g.hdrLen + g.maxFrame;
    this.hdrZero = new Uint8Array(g.hdrLen);
    this.rxBase = dma.alloc(rx.size * g.rxBufferSize, 64);
    try {
      this.txBase = dma.alloc(tx.size * this.slotBytes, 64);
    } catch (e) {
      dma.release(this.rxBase);
      throw e;
    }
    for (let i = tx.size - 1; i >= 0; i--) this.free.push(i);
    while (counters.rxPerPair.length <= pair) counters.rxPerPair.push(0);
    while (counters.txPerPair.length <= pair) counters.txPerPair.push(0);
    // Linux virtio_net without tx napi: transmit interrupts stay off, slots are freed at xmit.
    if (txReclaimOnSend) tx.disableCallbacks();
  }

  /** Posts every receive buffer (no notification: before DRIVER_OK, or followed by a kick). */
  fill(): void {
    for (let i = 0; i < this.rx.size; i++) this.postRx(i);
  }

  /** Notifies the device of the receive buffers posted (when it wants a notification). */
  kickRx(): void {
    if (this.rx.kickPrepare()) this.kick(this.rx);
  }

  /** Posts receive buffer `i`. */
  private postRx(i: number): void {
    const size = this.g.rxBufferSize;
    this.rx.add([], [{ addr: this.rxBase + i * size, len: size }], i);
  }

  /**
   * Harvests the used receive buffers: copies the frames out (to `deliver`), posts the buffers
   * again and notifies the device when it wants it.
   */
  harvestRx(): void {
    const q = this.rx;
    const mem = this.mem;
    const { hdrLen, rxBufferSize, maxFrame } = this.g;
    const c = this.counters;
    let posted = false;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) {
      const addr = this.rxBase + u.token * rxBufferSize;
      const len = u.len;
      if (this.skip > 0) {
        // A later buffer of a dropped merged frame: frame data, not a header.
        this.skip--;
      } else if (this.remaining > 0) {
        // A later buffer of a merged frame: all of it is frame data.
        if (this.partBytes + len > maxFrame) {
          c.rxErrors++;
          this.skip = this.remaining - 1;
          this.remaining = 0;
          this.parts = [];
          this.partBytes = 0;
        } else {
          const part = new Uint8Array(len);
          mem.readBytes(addr, part);
          this.parts.push(part);
          this.partBytes += len;
          if (--this.remaining === 0) this.finishMerged();
        }
      } else if (len < hdrLen + ETH_HLEN) {
        // Linux: "rx error: len %u too small".
        c.rxErrors++;
      } else {
        const nbufs = this.g.mergeable ? mem.read16(addr + NetHdr.numBuffers) : 1;
        if (nbufs < 1 || nbufs > q.size) {
          c.rxErrors++;
        } else if (len - hdrLen > maxFrame) {
          // Longer than the frames the driver takes (5.1.4.1: the device "MUST NOT pass received
          // packets that exceed mtu"); Linux: "rx error: len %u exceeds max size". Dropped with
          // the rest of its buffers.
          c.rxErrors++;
          this.skip = nbufs - 1;
        } else {
          const part = new Uint8Array(len - hdrLen);
          mem.readBytes(addr + hdrLen, part);
          if (nbufs === 1) this.take(part);
          else {
            this.parts = [part];
            this.partBytes = part.length;
            this.remaining = nbufs - 1;
          }
        }
      }
      this.postRx(u.token);
      posted = true;
    }
    if (posted && q.kickPrepare()) this.kick(q);
  }

  private finishMerged(): void {
    const frame = new Uint8Array(this.partBytes);
    let off = 0;
    for (const part of this.parts) {
      frame.set(part, off);
      off += part.length;
    }
    this.parts = [];
    this.partBytes = 0;
    this.take(frame);
  }

  private take(frame: Uint8Array): void {
    const c = this.counters;
    c.rxFrames++;
    c.rxBytes += frame.length;
    c.rxPerPair[this.pair]++;
    this.deliver(frame);
  }

  /** Reclaims the used transmit slots. */
  reclaim(): void {
    const q = this.tx;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) this.free.push(u.token);
  }

  /**
   * Queues `frame` (its length already checked by the caller) with a zero header; notifies the
   * device when `kick` and it wants it. Returns false when the ring is full (counted).
   */
  send(frame: Uint8Array, kick: boolean): boolean {
    if (this.txReclaimOnSend || this.free.length === 0) this.reclaim();
    const slot = this.free.pop();
    const c = this.counters;
    if (slot === undefined) {
      c.txRingFull++;
      return false;
    }
    const mem = this.mem;
    const addr = this.txBase + slot * this.slotBytes;
    // 5.1.6.2: flags 0, gso_type GSO_NONE; 5.1.6.2.1 "The driver MUST set num_buffers to zero".
    mem.writeBytes(addr, this.hdrZero);
    mem.writeBytes(addr + this.g.hdrLen, frame);
    if (!this.tx.add([{ addr, len: this.g.hdrLen + frame.length }], [], slot)) {
      this.free.push(slot);
      c.txRingFull++;
      return false;
    }
    c.txFrames++;
    c.txBytes += frame.length;
    c.txPerPair[this.pair]++;
    if (kick && this.tx.kickPrepare()) this.kick(this.tx);
    return true;
  }

  /** Frames given to the device whose slots are not reclaimed yet (reclaims first). */
  txInFlight(): number {
    this.reclaim();
    return this.tx.size - this.free.length;
  }

  /** Notifies the device of frames queued without a kick (when it wants a notification). */
  flush(): void {
    if (this.tx.kickPrepare()) this.kick(this.tx);
  }

  /** Why one of the two queues stopped (the device returned nonsense), or null. */
  get broken(): string | null {
    return this.rx.broken ?? this.tx.broken;
  }

  /** Frees the DMA buffers (after the device was reset or the pair abandoned). */
  release(dma: GuestAllocator): void {
    dma.release(this.rxBase);
    dma.release(this.txBase);
  }
}

/** Counters of a {@link NetPairDriver}. */
export type NetPairDriverStats = NetPairCounters;

/**
 * Services one queue pair of a device that {@link NetDriver} (on another vCPU) initialized and
 * handed over with {@link NetDriver.handoff}: the same ring work as the NetDriver does for its own
 * pairs, from this vCPU's memory allocator, notifying through this vCPU's view of the register
 * window. Interrupt wiring stays with the caller: call {@link NetPairDriver.service} from the
 * handler of the pair's vector (per-queue MSI aimed at this vCPU) or of the forwarding IPI.
 */
export class NetPairDriver {
  /** Counters. */
  readonly stats: NetPairDriverStats = {
    txFrames: 0,
    txBytes: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxErrors: 0,
    txRingFull: 0,
    txPerPair: [],
    rxPerPair: [],
  };
  /** The MAC address the device was configured with. */
  readonly mac: Uint8Array;
  /** Longest frame. */
  readonly maxFrame: number;
  private readonly q: NetQueuePair;
  private inbox: Uint8Array[] = [];
  private released = false;

  /**
   * Takes over the pair described by `h`: builds the driver side of both rings (empty, as the
   * handoff left them), allocates and posts the receive buffers, and notifies the device.
   * @param mem - guest memory
   * @param dma - this vCPU's allocator
   * @param h - the handoff
   * @param write32 - a 32-bit write into the device's register window (for notifications)
   * @throws VirtioError `INVALID_ARGUMENT` for a malformed handoff
   */
  constructor(
    mem: GuestMemory,
    private readonly dma: GuestAllocator,
    h: NetPairHandoff,
    write32: (offset: number, value: number) => void,
  ) {
    if (h.rx.index !== 2 * h.pair || h.tx.index !== 2 * h.pair + 1) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net: handoff queues ${h.rx.index}/${h.tx.index} are not pair ${h.pair}`,
      );
    }
    const kick = (queue: DriverQueue<number>): void => {
      const loc = queue === this.q.rx ? h.rx.notify : h.tx.notify;
      write32(loc.offset, notificationValue(queue.index, queue.availIndex, loc.withData));
    };
    const rx = new DriverQueue<number>(mem, h.rx.index, h.rx.size, h.rx.rings, { eventIdx: h.rx.eventIdx });
    const tx = new DriverQueue<number>(mem, h.tx.index, h.tx.size, h.tx.rings, { eventIdx: h.tx.eventIdx });
    this.mac = Uint8Array.from(h.mac);
    this.maxFrame = h.geometry.maxFrame;
    this.q = new NetQueuePair(
      mem,
      dma,
      h.pair,
      rx,
      tx,
      h.geometry,
      this.stats,
      (f) => this.inbox.push(f),
      kick,
      h.txReclaimOnSend,
    );
    this.q.fill();
    this.q.kickRx();
  }

  /** Pair number. */
  get pair(): number {
    return this.q.pair;
  }

  private check(): void {
    if (this.released) throw new VirtioError('INVALID_STATE', 'net: pair released');
    const b = this.q.broken;
    if (b !== null) throw new VirtioError('DEVICE_FAILED', `net: ${b}`);
  }

  /** Harvests receive buffers and reclaims transmit slots (what the pair's interrupt handler calls). */
  service(): void {
    if (this.released) return;
    this.q.harvestRx();
    this.q.reclaim();
  }

  /**
   * Queues `frame` on the pair's transmit queue. Returns false when the ring is full (counted).
   * @throws VirtioError `INVALID_ARGUMENT` for a bad length; `INVALID_STATE` after release;
   *   `DEVICE_FAILED` when a queue broke
   */
  send(frame: Uint8Array, kick = true): boolean {
    this.check();
    if (frame.length < ETH_HLEN || frame.length > this.maxFrame) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `net: frame of ${String(frame.length)} bytes not in ${String(ETH_HLEN)}..${String(this.maxFrame)}`,
      );
    }
    return this.q.send(frame, kick);
  }

  /** Services the pair without an interrupt; returns the frames waiting in {@link NetPairDriver.receive}. */
  poll(): number {
    this.check();
    this.service();
    this.check();
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
   * Frees this vCPU's buffers. Call after the owning {@link NetDriver} reset the device (or the
   * buffers may still be written by it). Calling it again does nothing.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.q.release(this.dma);
  }
}
