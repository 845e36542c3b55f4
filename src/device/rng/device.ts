/**
 * virtio-rng, the entropy device (virtio 1.2+, 5.4).
 *
 * One queue (`requestq`). The driver makes device-writable buffers available; the device fills
 * them with bytes from an {@link EntropySource} and returns them with the number of bytes written.
 * There is no configuration space and no device feature bit.
 *
 * Work is bounded per notification (Firecracker `process_entropy_queue`, QEMU's rate limit): at
 * most the queue size of chains per pass, at most {@link RNG_MAX_PASSES} passes, and at most
 * {@link RngDeviceOptions.maxBytesPerRequest} bytes per chain; one used buffer notification per
 * batch. The device takes its bytes through an injected source: this layer never touches Node.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import { DeviceId, VirtioError } from '../../spec/index.js';
import { DescriptorChain, isPowerOfTwo, MAX_INDIRECT_DESCRIPTORS } from '../../virtqueue/index.js';
import { Features } from '../features.js';
import { MAX_PASSES_PER_NOTIFY, ServeOutcome, serveQueue } from '../serveQueue.js';
import type { DeviceContext, VirtioDevice } from '../virtioDevice.js';

/** Where the rng device takes its bytes from (node:crypto, a hardware source, a test pattern). */
export interface EntropySource {
  /**
   * Fills all of `dst` with random bytes. May throw on a host failure: the device then completes
   * the request with no bytes and counts it (the guest is never handed a partial fill).
   */
  fill(dst: Uint8Array): void;
}

/** Options of a {@link RngDevice}. */
export interface RngDeviceOptions {
  /** The entropy source (required: the device layer has no default, it must not touch Node). */
  entropy: EntropySource;
  /** QueueNumMax of the request queue: a power of two up to 32768. Default 256. */
  queueSize?: number;
  /**
   * Most bytes given to one request; longer buffers are filled up to this much and returned with
   * that length (5.4.6.1 allows fewer bytes than asked). Default 64 KiB.
   */
  maxBytesPerRequest?: number;
  /** Receives one lowercase line per guest error or source failure (QEMU LOG_GUEST_ERROR). */
  log?: (message: string) => void;
}

/** Counters of a {@link RngDevice}, absolute since construction. */
export interface RngCounters {
  /** Chains completed (including empty ones). */
  requests: number;
  /** Entropy bytes handed to the guest. */
  bytes: number;
  /** Guest mistakes: chains without a writable part, notifications for absent or idle queues. */
  guestErrors: number;
  /** Times the entropy source threw. */
  sourceErrors: number;
  /** Notifications that stopped at the work bound with chains still pending. */
  deferred: number;
}

/** Default QueueNumMax of the request queue. */
export const RNG_DEFAULT_QUEUE_SIZE = 256;

/** Default cap of bytes per request (QEMU's virtio-rng also caps each request). */
export const RNG_DEFAULT_MAX_BYTES_PER_REQUEST = 64 * 1024;

/** Passes per notification (the shared bound, {@link MAX_PASSES_PER_NOTIFY}). */
export const RNG_MAX_PASSES = MAX_PASSES_PER_NOTIFY;

/** The virtio entropy device. */
export class RngDevice implements VirtioDevice {
  /** Device type 4 (5.4.1). */
  readonly deviceId = DeviceId.ENTROPY;
  /** One queue, requestq (5.4.2). */
  readonly queueMaxSizes: readonly number[];
  /** No device-specific feature bits (5.4.3). */
  readonly features = new Features();
  /** No configuration space (5.4.4). */
  readonly configSize = 0;
  /** Counters, absolute since construction (not reset with the device). */
  readonly counters: RngCounters = { requests: 0, bytes: 0, guestErrors: 0, sourceErrors: 0, deferred: 0 };

  private readonly source: EntropySource;
  private readonly maxBytes: number;
  private readonly log: ((message: string) => void) | undefined;
  /** The one buffer entropy goes through: no allocation per request. */
  private readonly scratch: Uint8Array;
  private ctx: DeviceContext | null = null;
  private chain: DescriptorChain;

  /**
   * @param options - entropy source, queue size, per-request cap
   * @throws VirtioError `INVALID_ARGUMENT` for a queue size that is not a power of two up to 32768,
   *   or a per-request cap that is not a positive integer up to 2^31 - 1
   */
  constructor(options: RngDeviceOptions) {
    const queueSize = options.queueSize ?? RNG_DEFAULT_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize > 32768) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `rng queue size ${String(queueSize)} is not a power of two up to 32768`,
      );
    }
    const maxBytes = options.maxBytesPerRequest ?? RNG_DEFAULT_MAX_BYTES_PER_REQUEST;
    if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > 0x7fff_ffff) {
      throw new VirtioError('INVALID_ARGUMENT', `rng per-request cap ${String(maxBytes)} is invalid`);
    }
    this.source = options.entropy;
    this.maxBytes = maxBytes;
    this.log = options.log;
    this.queueMaxSizes = [queueSize];
    this.scratch = new Uint8Array(maxBytes);
    this.chain = new DescriptorChain(Math.max(queueSize, MAX_INDIRECT_DESCRIPTORS));
  }

  /** True between {@link RngDevice.activate} and {@link RngDevice.reset}. */
  get isActivated(): boolean {
    return this.ctx !== null;
  }

  /** No configuration space: reads as 0. */
  readConfig(_offset: number, _width: 1 | 2 | 4): number {
    return 0;
  }

  /** No configuration space: every write is refused. */
  writeConfig(_offset: number, _width: 1 | 2 | 4, _value: number): boolean {
    return false;
  }

  /** Keeps the context; sizes the reusable chain for the queue the transport built. */
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    const q = ctx.queues[0];
    if (q !== undefined && q.chainLimit > this.chain.capacity) this.chain = q.newChain();
  }

  /** Drops the context (the transport takes the queues back). */
  reset(): void {
    this.ctx = null;
  }

  /**
   * Serves the request queue: fills each popped chain's writable part, puts it in the used ring,
   * and sends one used buffer notification per batch. A corrupt ring is reported once through
   * {@link DeviceContext.queueFailed} and processing stops.
   */
  notify(index: number): void {
    const ctx = this.ctx;
    if (ctx === null || index !== 0) {
      this.guestError(
        `notification for queue ${String(index)} ${ctx === null ? 'before activation' : 'that does not exist'}`,
      );
      return;
    }
    const q = ctx.queues[0];
    if (q === undefined || !q.ready) {
      this.guestError('notification for a queue that is not ready');
      return;
    }
    // Already reported through queueFailed: stays stopped until reset (2.1.2).
    if (q.error !== null) return;
    const mem = ctx.mem;
    if (serveQueue(ctx, 0, this.chain, (c) => this.serve(mem, c)) === ServeOutcome.DEFERRED) {
      // Work bound reached with chains pending; they are served at the next notification.
      this.counters.deferred++;
    }
  }

  /** Fills one chain; returns the used length (bytes written). */
  private serve(mem: GuestMemory, chain: DescriptorChain): number {
    this.counters.requests++;
    const want = Math.min(chain.writableBytes, this.maxBytes);
    if (want === 0) {
      // 5.4.6: the driver places device-writable buffers only; a chain without one gets nothing.
      this.guestError(`request ${String(chain.head)} has no writable buffer`);
      return 0;
    }
    // One view object per request (not per byte or segment): the bytes live in the scratch buffer.
    const buf = want === this.scratch.length ? this.scratch : this.scratch.subarray(0, want);
    try {
      this.source.fill(buf);
    } catch (e) {
      this.counters.sourceErrors++;
      this.log?.(`rng: entropy source failed: ${e instanceof Error ? e.message : String(e)}`);
      return 0;
    }
    const n = chain.writeTo(mem, 0, buf);
    this.counters.bytes += n;
    return n;
  }

  private guestError(message: string): void {
    this.counters.guestErrors++;
    this.log?.(`rng: ${message}`);
  }
}
