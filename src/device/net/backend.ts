/**
 * What a virtio-net device sends frames to and receives frames from (QEMU's `-netdev`), and the
 * pure in-process backend: a link between two endpoints, like a cable between two NICs.
 *
 * A frame is a whole Ethernet frame without FCS and without the virtio-net header. The device
 * passes `send` a view of a reusable buffer: a backend that keeps the frame past the call copies
 * it. Likewise a receive handler copies what it keeps.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../spec/index.js';

/** Handler of frames arriving from the backend. */
export type NetReceiveHandler = (frame: Uint8Array) => void;

/** A network backend: one side of an Ethernet segment. */
export interface NetBackend {
  /** Sends one frame out (copy it if it is kept past the call). */
  send(frame: Uint8Array): void;
  /** Sets the handler of arriving frames (one handler; a later call replaces it). */
  onReceive(handler: NetReceiveHandler): void;
  /** Stops delivery both ways and frees what the backend holds. Idempotent. */
  close(): void;
}

/** Counters of one {@link NetLinkEndpoint}. */
export interface NetLinkCounters {
  /** Frames sent into the link. */
  sent: number;
  /** Frames handed to this endpoint's handler. */
  delivered: number;
  /** Frames dropped: the peer's queue was full, no handler was set, or the link was closed. */
  dropped: number;
}

/** One end of an in-process link. */
export interface NetLinkEndpoint extends NetBackend {
  /** Counters of this end (sent from it, delivered to it, dropped on the way to it). */
  readonly counters: NetLinkCounters;
  /** Frames waiting for delivery to this end. */
  readonly queued: number;
}

/** Options of {@link createNetLink}. */
export interface NetLinkOptions {
  /**
   * When frames are delivered: `manual` (default) only in {@link NetLink.pump}, so a synchronous
   * machine never re-enters its device from inside its own transmit; `microtask` also schedules a
   * pump on a microtask after each send (for machines driven from the event loop).
   */
  delivery?: 'manual' | 'microtask';
  /** Most frames waiting per direction; more are dropped and counted. Default 1024. */
  capacity?: number;
}

/** Default per-direction queue bound of a link. */
export const NET_LINK_DEFAULT_CAPACITY = 1024;

/** A two-ended in-process link. */
export interface NetLink {
  /** The two ends: what one sends, the other receives. */
  readonly a: NetLinkEndpoint;
  /** The other end. */
  readonly b: NetLinkEndpoint;
  /**
   * Delivers queued frames in both directions, at most `max` (default: those queued when the call
   * began, so a ping-pong between two handlers cannot loop forever). Returns the number delivered.
   */
  pump(max?: number): number;
  /** Frames queued in both directions. */
  readonly pending: number;
  /** Closes both ends (queued frames are dropped and counted). */
  close(): void;
}

/** Frames up to this size are copied into recycled buffers (no allocation per frame). */
const POOLED_FRAME_BYTES = 2048;
/** Most recycled buffers kept per endpoint. */
const POOL_MAX = 64;

/** Internal state of one direction's receiving end. */
class Endpoint implements NetLinkEndpoint {
  /** Recycled {@link POOLED_FRAME_BYTES}-byte buffers for frames sent to this end. */
  private readonly pool: Uint8Array[] = [];
  readonly counters: NetLinkCounters = { sent: 0, delivered: 0, dropped: 0 };
  /** Frames waiting to be delivered to this end (FIFO, head at `head`). */
  readonly inbox: Uint8Array[] = [];
  head = 0;
  handler: NetReceiveHandler | null = null;
  peer: Endpoint | null = null;
  closed = false;

  constructor(
    private readonly link: LinkImpl,
    private readonly capacity: number,
  ) {}

  get queued(): number {
    return this.inbox.length - this.head;
  }

  send(frame: Uint8Array): void {
    if (this.closed) return;
    this.counters.sent++;
    const peer = this.peer as Endpoint;
    if (peer.closed || peer.queued >= peer.capacity) {
      peer.counters.dropped++;
      return;
    }
    peer.inbox.push(peer.copyIn(frame));
    this.link.scheduled();
  }

  onReceive(handler: NetReceiveHandler): void {
    this.handler = handler;
  }

  /** A copy of `frame`, in a recycled buffer when it is small enough. */
  copyIn(frame: Uint8Array): Uint8Array {
    if (frame.length > POOLED_FRAME_BYTES) return frame.slice();
    const buf = this.pool.pop() ?? new Uint8Array(POOLED_FRAME_BYTES);
    buf.set(frame);
    return buf.subarray(0, frame.length);
  }

  /** Returns a delivered frame's buffer to the pool (handlers copy what they keep). */
  private recycle(frame: Uint8Array): void {
    if (frame.buffer.byteLength === POOLED_FRAME_BYTES && this.pool.length < POOL_MAX) {
      this.pool.push(new Uint8Array(frame.buffer, 0, POOLED_FRAME_BYTES));
    }
  }

  /** Delivers the oldest waiting frame; false when none waits. */
  deliverOne(): boolean {
    if (this.head >= this.inbox.length) return false;
    const frame = this.inbox[this.head++];
    if (this.head > 64 && this.head * 2 > this.inbox.length) {
      this.inbox.splice(0, this.head);
      this.head = 0;
    }
    if (this.handler === null || this.closed) {
      this.counters.dropped++;
      return true;
    }
    this.counters.delivered++;
    try {
      this.handler(frame);
    } finally {
      this.recycle(frame);
    }
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.counters.dropped += this.queued;
    this.inbox.length = 0;
    this.head = 0;
    this.handler = null;
  }
}

class LinkImpl implements NetLink {
  readonly a: Endpoint;
  readonly b: Endpoint;
  private microtaskQueued = false;

  constructor(
    private readonly delivery: 'manual' | 'microtask',
    capacity: number,
  ) {
    this.a = new Endpoint(this, capacity);
    this.b = new Endpoint(this, capacity);
    this.a.peer = this.b;
    this.b.peer = this.a;
  }

  get pending(): number {
    return this.a.queued + this.b.queued;
  }

  scheduled(): void {
    if (this.delivery !== 'microtask' || this.microtaskQueued) return;
    this.microtaskQueued = true;
    // The device layer has no DOM or Node globals: a resolved promise schedules the microtask.
    void Promise.resolve().then(() => {
      this.microtaskQueued = false;
      this.pump();
    });
  }

  pump(max?: number): number {
    let budget = max ?? this.pending;
    let n = 0;
    // Alternate directions so neither starves the other.
    while (budget > 0) {
      const x = this.a.deliverOne();
      if (x) {
        n++;
        budget--;
      }
      if (budget <= 0) break;
      const y = this.b.deliverOne();
      if (y) {
        n++;
        budget--;
      }
      if (!x && !y) break;
    }
    return n;
  }

  close(): void {
    this.a.close();
    this.b.close();
  }
}

/**
 * Creates an in-process link between two NICs (or a NIC and a {@link HostPeer}): frames sent on
 * one end are copied into the other end's bounded queue and delivered by {@link NetLink.pump}
 * (and, with `delivery: 'microtask'`, on a microtask).
 * @throws VirtioError `INVALID_ARGUMENT` for a capacity that is not a positive integer
 */
export function createNetLink(options: NetLinkOptions = {}): NetLink {
  const capacity = options.capacity ?? NET_LINK_DEFAULT_CAPACITY;
  if (!Number.isSafeInteger(capacity) || capacity < 1) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `net link capacity ${String(capacity)} is not a positive integer`,
    );
  }
  return new LinkImpl(options.delivery ?? 'manual', capacity);
}
