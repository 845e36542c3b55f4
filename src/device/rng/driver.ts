/**
 * The guest driver of virtio-rng (virtio 1.2+, 5.4), in the manner of Linux `virtio-rng`: one
 * device-writable DMA buffer posted per request, the completion taken from the interrupt, and the
 * bytes copied out. It sees only the transport-neutral {@link VirtioTransportDriver} and a
 * {@link DriverQueue}, never registers.
 *
 * @packageDocumentation
 */

import { DeviceId, DeviceStatus, FeatureBit, VirtioError } from '../../spec/index.js';
import type { DriverQueue } from '../../virtqueue/index.js';
import {
  abandonDevice,
  beginInit,
  failDevice,
  finishInit,
  removeDevice,
  type VirtioTransportDriver,
  waitUntil,
} from '../driverApi.js';
import { Features } from '../features.js';

/** Options of {@link RngDriver.probe}. */
export interface RngDriverOptions {
  /** Bytes of the reusable DMA buffer, i.e. the most asked of the device per request. Default 4096. */
  bufferSize?: number;
  /** Queue size wanted (a power of two); default the device maximum. */
  queueSize?: number;
}

/** Default size of the request buffer. */
export const RNG_DRIVER_BUFFER_SIZE = 4096;

/**
 * Consecutive empty answers tolerated before a read gives up. 5.4.6.1: "The device MUST place one
 * or more random bytes into the buffer"; an empty answer is a device whose source failed.
 */
export const RNG_MAX_EMPTY_ANSWERS = 16;

/**
 * Features asked for: virtio-rng has no device bits (5.4.3); the ring and version bits are for the
 * transport to keep or drop.
 */
const RNG_WANTED = new Features([FeatureBit.VERSION_1, FeatureBit.EVENT_IDX]);

/** The guest side of an entropy device. */
export class RngDriver {
  /** The transport the driver runs over. */
  readonly transport: VirtioTransportDriver;
  /** The negotiated features. */
  readonly features: Features;
  /** Size of the reusable DMA buffer. */
  readonly bufferSize: number;

  private queue: DriverQueue<number> | null = null;
  /** The reusable DMA buffer, or -1. */
  private buffer = -1;
  /** Bytes the device returned for the request in flight; -1 while waiting. */
  private answer = -1;
  /** Set by the configuration handler when the device reports DEVICE_NEEDS_RESET. */
  private needsReset = false;
  /** Why the driver gave up on the device, or null. */
  private failure: string | null = null;
  private removed = false;

  private constructor(t: VirtioTransportDriver, features: Features, bufferSize: number) {
    this.transport = t;
    this.features = features;
    this.bufferSize = bufferSize;
  }

  /**
   * Initializes the device (3.1.1): reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, the request
   * queue, DRIVER_OK. On failure after negotiation the device is marked FAILED and everything set
   * up is released.
   * @throws VirtioError `DEVICE_REJECTED` when the device is not an entropy device
   * @throws VirtioError `INVALID_ARGUMENT` for a buffer size that is not an integer in 1..2^31
   * @throws VirtioError whatever negotiation or queue setup throws (`FEATURES_REJECTED`,
   *   `DEVICE_NOT_FOUND`, `ALLOC_FAILED`, ...)
   */
  static probe(t: VirtioTransportDriver, options: RngDriverOptions = {}): RngDriver {
    if (t.deviceId !== DeviceId.ENTROPY) {
      throw new VirtioError('DEVICE_REJECTED', `device id ${String(t.deviceId)} is not an entropy device`);
    }
    const bufferSize = options.bufferSize ?? RNG_DRIVER_BUFFER_SIZE;
    if (!Number.isInteger(bufferSize) || bufferSize < 1 || bufferSize > 2 ** 31) {
      throw new VirtioError('INVALID_ARGUMENT', `rng buffer size ${String(bufferSize)} is not in 1..2^31`);
    }
    const features = beginInit(t, RNG_WANTED);
    const d = new RngDriver(t, features, bufferSize);
    try {
      d.buffer = t.dma.alloc(bufferSize, 16);
      t.onConfigChange(() => d.configChanged());
      const [q] = t.setupQueues([{ index: 0, callback: () => d.harvest(), size: options.queueSize }]);
      d.queue = q as DriverQueue<number>;
      finishInit(t);
    } catch (e) {
      d.abort();
      throw e;
    }
    return d;
  }

  /** Undoes a failed probe: FAILED status, queues and buffer released. Never throws. */
  private abort(): void {
    abandonDevice(this.transport, () => {
      this.queue = null;
      this.releaseBuffer();
    });
  }

  private releaseBuffer(): void {
    if (this.buffer >= 0) {
      this.transport.dma.release(this.buffer);
      this.buffer = -1;
    }
  }

  /** Queue callback (from the interrupt handler): takes the answer. */
  private harvest(): void {
    const q = this.queue;
    if (q === null) return;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) this.answer = u.len;
  }

  /** Configuration change: the only news for an rng is DEVICE_NEEDS_RESET (2.1.2). */
  private configChanged(): void {
    if ((this.transport.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) this.needsReset = true;
  }

  /** Gives up on the device: FAILED status, and every later request refused. */
  private giveUp(reason: string): VirtioError {
    if (this.failure === null) {
      this.failure = reason;
      failDevice(this.transport);
    }
    return new VirtioError('DEVICE_FAILED', `rng: ${reason}`);
  }

  /** Throws unless the driver can issue requests. */
  private usable(): DriverQueue<number> {
    if (this.removed || this.queue === null) throw new VirtioError('INVALID_STATE', 'rng: driver removed');
    if (this.failure !== null) throw new VirtioError('DEVICE_FAILED', `rng: ${this.failure}`);
    return this.queue;
  }

  /**
   * Fills `dst` with random bytes, one request of at most {@link RngDriver.bufferSize} bytes at a
   * time; a short answer (5.4.6.1 allows fewer bytes than asked) is followed by another request.
   * @throws VirtioError `DEVICE_FAILED` when the device returns nonsense (the queue breaks) or
   *   needs a reset; the device is then marked FAILED
   * @throws VirtioError `TIMEOUT` when no completion arrives (the device is then marked FAILED)
   * @throws VirtioError `BACKEND_IO` after {@link RNG_MAX_EMPTY_ANSWERS} empty answers in a row
   * @throws VirtioError `INVALID_STATE` after {@link RngDriver.remove}
   */
  fill(dst: Uint8Array): void {
    const q = this.usable();
    const t = this.transport;
    let off = 0;
    let empty = 0;
    while (off < dst.length) {
      const want = Math.min(dst.length - off, this.bufferSize);
      this.answer = -1;
      // 5.4.6: "The driver MUST NOT place driver-readable buffers into the queue."
      if (!q.add([], [{ addr: this.buffer, len: want }], want)) {
        throw new VirtioError('INVALID_STATE', 'rng: request queue is full');
      }
      if (q.kickPrepare()) t.notify(q);
      try {
        waitUntil(t.platform, () => this.answer >= 0 || q.broken !== null || this.needsReset, 'rng read');
      } catch (e) {
        if (e instanceof VirtioError && e.code === 'TIMEOUT') this.giveUp(`no answer: ${e.message}`);
        throw e;
      }
      if (q.broken !== null) throw this.giveUp(q.broken);
      if (this.needsReset) throw this.giveUp('device needs reset');
      const got = this.answer;
      if (got === 0) {
        if (++empty >= RNG_MAX_EMPTY_ANSWERS) {
          throw new VirtioError(
            'BACKEND_IO',
            `rng: device returned no bytes ${String(empty)} times in a row`,
          );
        }
        continue;
      }
      empty = 0;
      t.mem.readBytes(this.buffer, dst.subarray(off, off + got));
      off += got;
    }
  }

  /**
   * Reads `n` random bytes.
   * @throws VirtioError `INVALID_ARGUMENT` for a negative or non-integer `n`; otherwise as
   *   {@link RngDriver.fill}
   */
  read(n: number): Uint8Array {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new VirtioError('INVALID_ARGUMENT', `rng: invalid read length ${String(n)}`);
    }
    const out = new Uint8Array(n);
    this.fill(out);
    return out;
  }

  /**
   * Unbinds the driver: resets the device, releases the queue and the DMA buffer. Everything is
   * released even when the device misbehaves; calling it again does nothing.
   * @throws VirtioError `DEVICE_FAILED` when the device did not reset or kept its queue live
   */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    removeDevice(this.transport, () => {
      this.queue = null;
      this.releaseBuffer();
    });
  }
}
