/**
 * A {@link DeviceContext} for device tests and benches, without a transport: ready
 * {@link DeviceQueue}s and matching {@link DriverQueue}s over one {@link RamMemory}, so a test plays
 * the guest driver against a device model and observes every notification and queue failure.
 *
 * ```
 * const dev = new RngDevice({ source });
 * const ctx = activateWithFakeContext(dev);
 * const buf = ctx.alloc(64);
 * ctx.drivers[0].add([], [{ addr: buf, len: 64 }], 1);
 * ctx.kick(dev, 0);
 * ctx.drivers[0].getUsed(); // { token: 1, len: 64 }
 * ```
 *
 * @packageDocumentation
 */

import type { DeviceContext, VirtioDevice } from '../device/index.js';
import { Features } from '../device/index.js';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { AVAIL_RING_ALIGN, DESC_TABLE_ALIGN, USED_RING_ALIGN, VirtioError } from '../spec/index.js';
import {
  availRingBytes,
  DeviceQueue,
  DriverQueue,
  descTableBytes,
  type QueueError,
  type RingAddresses,
  usedRingBytes,
} from '../virtqueue/index.js';

/** Options of {@link createFakeContext}. */
export interface FakeContextOptions {
  /** QueueNumMax of each queue (usually the device's `queueMaxSizes`). Required. */
  queueMaxSizes: readonly number[];
  /** Size the "driver" chooses for every queue; default each queue's maximum. */
  queueSize?: number;
  /** Guest RAM in bytes. Default 1 MiB. */
  memSize?: number;
  /** The negotiated features the device sees. Default none. */
  features?: Features;
  /** VIRTIO_F_EVENT_IDX on both sides. Default false. */
  eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC on both sides: multi-segment buffers go through indirect tables. */
  indirect?: boolean;
}

/** First guest address the allocator hands out (keeps gpa 0 unused, so a zero address stands out). */
const ALLOC_BASE = 0x1000;

/**
 * A recording {@link DeviceContext}: `notifyUsed` decides like a transport would (through
 * {@link DeviceQueue.needsNotification}) and records the call; `queueFailed` records the failure.
 */
export class FakeContext implements DeviceContext {
  readonly mem: RamMemory;
  readonly queues: DeviceQueue[];
  /** The driver side of each queue, over the same rings. */
  readonly drivers: DriverQueue<number>[];
  /** Allocator over the RAM not used by rings: for request buffers. */
  readonly allocator: GuestAllocator;
  features: Features;
  /** Queue index of every `notifyUsed` call, in order. */
  readonly notifyCalls: number[] = [];
  /** Queue index of every `notifyUsed` call that signalled an interrupt. */
  readonly interrupts: number[] = [];
  /** Every `queueFailed` call, in order. */
  readonly failures: Array<{ index: number; error: QueueError }> = [];
  /** Queue index of every `defer` call, in order. */
  readonly deferCalls: number[] = [];

  /** Use {@link createFakeContext}. */
  constructor(
    mem: RamMemory,
    allocator: GuestAllocator,
    queues: DeviceQueue[],
    drivers: DriverQueue<number>[],
    features: Features,
  ) {
    this.mem = mem;
    this.allocator = allocator;
    this.queues = queues;
    this.drivers = drivers;
    this.features = features;
  }

  notifyUsed(index: number): boolean {
    this.notifyCalls.push(index);
    const q = this.queues[index];
    const signal = q?.needsNotification(this.mem) ?? false;
    if (signal) this.interrupts.push(index);
    return signal;
  }

  queueFailed(index: number, error: QueueError): void {
    this.failures.push({ index, error });
  }

  defer(index: number): void {
    this.deferCalls.push(index);
  }

  /** Allocates a guest buffer of `length` bytes (16-byte aligned), filled with `fill` (default 0). */
  alloc(length: number, fill = 0): number {
    const gpa = this.allocator.alloc(length, 16);
    this.mem.fill(gpa, length, fill);
    return gpa;
  }

  /** Allocates a guest buffer holding a copy of `bytes`. */
  allocBytes(bytes: Uint8Array): number {
    const gpa = this.allocator.alloc(Math.max(1, bytes.length), 16);
    this.mem.writeBytes(gpa, bytes);
    return gpa;
  }

  /** A copy of `length` guest bytes at `gpa`. */
  bytes(gpa: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.mem.readBytes(gpa, out);
    return out;
  }

  /**
   * Plays the driver's kick: if the device wants an available buffer notification for queue
   * `index` (2.7.10, as the driver decides it), calls `device.notify(index)`. Returns whether it did.
   */
  kick(device: VirtioDevice, index: number): boolean {
    if (!this.drivers[index].kickPrepare()) return false;
    device.notify(index);
    return true;
  }

  /** Harvests every used buffer of queue `index`. */
  harvest(index: number): Array<{ token: number; len: number }> {
    const out: Array<{ token: number; len: number }> = [];
    for (let u = this.drivers[index].getUsed(); u !== null; u = this.drivers[index].getUsed()) out.push(u);
    return out;
  }
}

/**
 * Builds guest RAM, places and zeroes the rings of every queue, and returns a context whose device
 * queues are ready (as after QueueReady = 1 and DRIVER_OK) with driver queues over the same rings.
 * @throws VirtioError `INVALID_ARGUMENT` when a queue does not validate (a test setup bug)
 */
export function createFakeContext(options: FakeContextOptions): FakeContext {
  const mem = new RamMemory(new ArrayBuffer(options.memSize ?? 1 << 20));
  const allocator = new GuestAllocator(ALLOC_BASE, mem.totalSize - ALLOC_BASE);
  const eventIdx = options.eventIdx ?? false;
  const indirect = options.indirect ?? false;
  const queues: DeviceQueue[] = [];
  const drivers: DriverQueue<number>[] = [];
  options.queueMaxSizes.forEach((maxSize, index) => {
    const size = Math.min(options.queueSize ?? maxSize, maxSize);
    const rings: RingAddresses = {
      descTable: allocator.alloc(descTableBytes(size), DESC_TABLE_ALIGN),
      availRing: allocator.alloc(availRingBytes(size), AVAIL_RING_ALIGN),
      usedRing: allocator.alloc(usedRingBytes(size), USED_RING_ALIGN),
    };
    const q = new DeviceQueue(maxSize);
    q.size = size;
    q.descTable = rings.descTable;
    q.availRing = rings.availRing;
    q.usedRing = rings.usedRing;
    q.eventIdx = eventIdx;
    q.indirectDesc = indirect;
    const err = q.validate(mem);
    if (err !== null) throw new VirtioError('INVALID_ARGUMENT', `fake queue ${index}: ${err.message}`);
    q.ready = true;
    queues.push(q);
    drivers.push(
      new DriverQueue<number>(mem, index, size, rings, {
        eventIdx,
        indirectAllocator: indirect ? allocator : undefined,
      }),
    );
  });
  return new FakeContext(mem, allocator, queues, drivers, options.features ?? new Features());
}

/**
 * Creates a {@link FakeContext} for `device` (its queue sizes; by default its offered features as
 * the negotiated ones) and activates the device with it.
 */
export function activateWithFakeContext(
  device: VirtioDevice,
  options: Partial<FakeContextOptions> = {},
): FakeContext {
  const ctx = createFakeContext({
    ...options,
    queueMaxSizes: options.queueMaxSizes ?? device.queueMaxSizes,
    features: options.features ?? device.features.clone(),
  });
  device.activate(ctx);
  return ctx;
}
