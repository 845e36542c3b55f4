/**
 * The device side of a split virtqueue (virtio 1.2+, 2.7).
 *
 * As in rust-vmm `virtio-queue`, a {@link DeviceQueue} owns the driver-programmed configuration and
 * its cursors only; guest memory is passed to every operation. A hostile driver can write anything
 * into the rings: every index and address is checked, every walk is bounded, and a corrupt ring
 * stops with a recorded {@link QueueError} instead of throwing. The device then moves to
 * DEVICE_NEEDS_RESET (2.1.2).
 *
 * Hot path: {@link DeviceQueue.pop} fills a caller-owned, reusable {@link DescriptorChain}; nothing
 * is allocated per descriptor or per chain.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../memory/index.js';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  AVAIL_RING_ALIGN,
  AvailFlag,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  DESC_TABLE_ALIGN,
  DescFlag,
  hex,
  MAX_CHAIN_BYTES,
  MAX_QUEUE_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  USED_RING_ALIGN,
  UsedFlag,
  VirtioError,
} from '../spec/index.js';
import { availRingBytes, descTableBytes, isPowerOfTwo, usedRingBytes } from './layout.js';

/** Why the device stopped processing a queue. Each is a driver error (tier 2). */
export type QueueErrorReason =
  /** Queue size is zero, not a power of two, or above the maximum. */
  | 'invalid-size'
  /** A ring area is misaligned (2.7: 16 / 2 / 4 bytes). */
  | 'misaligned-ring'
  /** A ring area is not inside guest RAM. */
  | 'ring-out-of-memory'
  /** avail.idx is more than queue size ahead of the device's cursor (2.7.6). */
  | 'avail-idx-too-far'
  /** An available ring entry names a descriptor past the table. */
  | 'head-out-of-range'
  /** A `next` field names a descriptor past the table. */
  | 'next-out-of-range'
  /** More descriptors than the table holds: a loop, or a chain past the limit (2.7.5.3.1). */
  | 'chain-too-long'
  /** The chain's total length exceeds 2^32 bytes (2.7.5.2). */
  | 'chain-too-large'
  /** A descriptor buffer is not inside guest RAM. */
  | 'desc-out-of-memory'
  /** A zero-length buffer descriptor. */
  | 'zero-length-desc'
  /** A device-readable descriptor after a device-writable one (2.7.4.2). */
  | 'readable-after-writable'
  /** VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated (2.7.5.3.1). */
  | 'indirect-not-negotiated'
  /** VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT (2.7.5.3.1). */
  | 'indirect-with-next'
  /** An indirect descriptor inside an indirect table (2.7.5.3.1). */
  | 'nested-indirect'
  /** An indirect table whose length is zero or not a multiple of 16. */
  | 'indirect-bad-length';

/** A recorded queue failure: a reason code and a lowercase message with addresses in hex. */
export interface QueueError {
  /** Machine-readable reason. */
  readonly reason: QueueErrorReason;
  /** Human-readable detail. */
  readonly message: string;
}

/**
 * Largest number of descriptors one chain may hold, direct and indirect together, whatever the
 * queue size. 2.7.5.3.1 says a chain is not longer than the queue size, but Linux builds indirect
 * tables longer than small queues (it only warns for direct chains), and QEMU accepts indirect
 * tables up to 1024 entries; we accept the larger of the queue size and this.
 */
export const MAX_INDIRECT_DESCRIPTORS = 1024;

/**
 * A descriptor chain as the device sees it: segments in order, the device-readable ones first.
 * One instance is reused for every pop; its arrays are sized once.
 */
export class DescriptorChain {
  /** Head descriptor index: what goes back in the used ring. */
  head = 0;
  /** Number of segments. */
  count = 0;
  /** Number of device-readable segments; they come first. */
  readableCount = 0;
  /** Total bytes in device-readable segments. */
  readableBytes = 0;
  /** Total bytes in device-writable segments. */
  writableBytes = 0;
  /** True when the chain went through an indirect table. */
  indirect = false;
  /** Guest physical address of each segment. */
  readonly addr: Float64Array;
  /** Length of each segment. */
  readonly len: Uint32Array;

  /** @param capacity - most segments a chain may hold */
  constructor(readonly capacity: number) {
    this.addr = new Float64Array(capacity);
    this.len = new Uint32Array(capacity);
  }

  /** True when segment `i` is device-writable. */
  isWritable(i: number): boolean {
    return i >= this.readableCount;
  }

  /** Number of device-writable segments. */
  get writableCount(): number {
    return this.count - this.readableCount;
  }

  /**
   * Copies up to `dst.length` bytes of the readable part, starting `offset` bytes into it, into
   * `dst`. Returns the number of bytes copied. Segments were checked to lie in RAM at pop time.
   */
  readFrom(mem: GuestMemory, offset: number, dst: Uint8Array): number {
    checkOffset(offset);
    let copied = 0;
    let skip = offset;
    for (let i = 0; i < this.readableCount && copied < dst.length; i++) {
      const len = this.len[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, dst.length - copied);
      mem.readBytes(this.addr[i] + skip, dst.subarray(copied, copied + n));
      copied += n;
      skip = 0;
    }
    return copied;
  }

  /**
   * Copies `src` into the writable part, starting `offset` bytes into it. Returns the number of
   * bytes written (less than `src.length` when the writable part is too short).
   */
  writeTo(mem: GuestMemory, offset: number, src: Uint8Array): number {
    checkOffset(offset);
    let written = 0;
    let skip = offset;
    for (let i = this.readableCount; i < this.count && written < src.length; i++) {
      const len = this.len[i];
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, src.length - written);
      mem.writeBytes(this.addr[i] + skip, src.subarray(written, written + n));
      written += n;
      skip = 0;
    }
    return written;
  }
}

/** Rejects an offset into a chain that is not a non-negative integer (a device bug, tier 3). */
function checkOffset(offset: number): void {
  if (!Number.isInteger(offset) || offset < 0) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid chain offset ${String(offset)}`);
  }
}

/**
 * Device-side state of one split virtqueue: the configuration the driver programs through the
 * transport, the device's cursors, and notification suppression state.
 */
export class DeviceQueue {
  /** Queue size the driver chose (QueueNum). */
  size: number;
  /** Whether the queue is live (QueueReady / QueuePFN != 0). */
  ready = false;
  /** Guest physical address of the descriptor table. */
  descTable = 0;
  /** Guest physical address of the available ring (Driver Area). */
  availRing = 0;
  /** Guest physical address of the used ring (Device Area). */
  usedRing = 0;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx = false;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirectDesc = false;
  /** Next available ring slot the device will consume (free-running 16-bit). */
  nextAvail = 0;
  /** Next used ring slot the device will fill (free-running 16-bit). */
  nextUsed = 0;
  /** The failure that stopped this queue, or null. */
  error: QueueError | null = null;
  /** Most descriptors one chain may hold (see {@link MAX_INDIRECT_DESCRIPTORS}). */
  readonly chainLimit: number;

  /** used idx at the last used buffer notification (for EVENT_IDX, 2.7.10). */
  private signalledUsed = 0;
  /** False until the first notification decision after reset: the first one always notifies. */
  private signalledUsedValid = false;
  /**
   * Available buffer notifications wanted (the state after reset, and after
   * {@link DeviceQueue.enableNotification}). With EVENT_IDX, {@link DeviceQueue.pop} keeps
   * avail_event just past what it consumed while this holds.
   */
  private notifyEnabled = true;

  /**
   * @param maxSize - QueueNumMax: largest size the driver may choose, a power of two up to 32768
   * @throws VirtioError `QUEUE_INVALID_SIZE` otherwise
   */
  constructor(readonly maxSize: number) {
    if (!isPowerOfTwo(maxSize) || maxSize > MAX_QUEUE_SIZE) {
      throw new VirtioError(
        'QUEUE_INVALID_SIZE',
        `queue max size ${String(maxSize)} is not a power of two up to ${MAX_QUEUE_SIZE}`,
      );
    }
    this.size = maxSize;
    this.chainLimit = Math.max(maxSize, MAX_INDIRECT_DESCRIPTORS);
  }

  /** A chain object sized for this queue, to reuse across pops. */
  newChain(): DescriptorChain {
    return new DescriptorChain(this.chainLimit);
  }

  /** Back to the reset state (4.2.2: QueueReady reads 0, addresses cleared, size = max). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.descTable = 0;
    this.availRing = 0;
    this.usedRing = 0;
    this.eventIdx = false;
    this.indirectDesc = false;
    this.nextAvail = 0;
    this.nextUsed = 0;
    this.error = null;
    this.signalledUsed = 0;
    this.signalledUsedValid = false;
    this.notifyEnabled = true;
  }

  /**
   * Checks the programmed configuration before the queue goes live: size a power of two up to
   * {@link DeviceQueue.maxSize}, areas aligned as 2.7 requires (16 / 2 / 4) and inside guest RAM.
   * Returns null when valid, or the error (not recorded in {@link DeviceQueue.error}).
   */
  validate(mem: GuestMemory): QueueError | null {
    const size = this.size;
    if (!isPowerOfTwo(size) || size > this.maxSize) {
      return { reason: 'invalid-size', message: `invalid queue size ${String(size)}` };
    }
    if (
      this.descTable % DESC_TABLE_ALIGN !== 0 ||
      this.availRing % AVAIL_RING_ALIGN !== 0 ||
      this.usedRing % USED_RING_ALIGN !== 0
    ) {
      return {
        reason: 'misaligned-ring',
        message: `misaligned ring: desc ${hex(this.descTable)} avail ${hex(this.availRing)} used ${hex(this.usedRing)}`,
      };
    }
    if (!mem.isValid(this.descTable, descTableBytes(size))) {
      return { reason: 'ring-out-of-memory', message: `descriptor table ${hex(this.descTable)} outside ram` };
    }
    if (!mem.isValid(this.availRing, availRingBytes(size))) {
      return { reason: 'ring-out-of-memory', message: `available ring ${hex(this.availRing)} outside ram` };
    }
    if (!mem.isValid(this.usedRing, usedRingBytes(size))) {
      return { reason: 'ring-out-of-memory', message: `used ring ${hex(this.usedRing)} outside ram` };
    }
    return null;
  }

  /** Records a failure (the first one wins) and returns false, for `return this.fail(...)`. */
  private fail(reason: QueueErrorReason, message: string): false {
    if (this.error === null) this.error = { reason, message };
    return false;
  }

  /**
   * Number of chains the driver has made available and the device has not popped. Returns -1 when
   * this call finds avail.idx corrupt (and records the error), 0 on a stopped or idle queue.
   */
  pending(mem: GuestMemory): number {
    if (!this.ready || this.error !== null) return 0;
    const n = (mem.read16(this.availRing + AVAIL_IDX) - this.nextAvail) & 0xffff;
    if (n > this.size) {
      this.fail('avail-idx-too-far', `avail idx runs ${String(n)} ahead of queue size ${String(this.size)}`);
      return -1;
    }
    return n;
  }

  /**
   * Pops the next available chain into `chain`. Returns true when a chain was popped; false when
   * none is available, or when the ring is corrupt, in which case {@link DeviceQueue.error} is set
   * and the queue stays stopped until reset.
   * @throws VirtioError `INVALID_ARGUMENT` when `chain` holds fewer than
   *   {@link DeviceQueue.chainLimit} segments (use {@link DeviceQueue.newChain})
   */
  pop(mem: GuestMemory, chain: DescriptorChain): boolean {
    if (chain.capacity < this.chainLimit) {
      // A short chain would silently drop segments (typed arrays ignore writes past their end).
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `descriptor chain capacity ${String(chain.capacity)} below the queue's limit ${String(this.chainLimit)}`,
      );
    }
    if (this.pending(mem) <= 0) return false;
    const slot = this.nextAvail & (this.size - 1);
    const head = mem.read16(this.availRing + AVAIL_RING + 2 * slot);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    if (this.eventIdx && this.notifyEnabled) {
      // 2.7.10: with EVENT_IDX the driver kicks only when avail.idx crosses avail_event, so a device
      // that leaves notifications on must move avail_event along as it consumes (as QEMU's
      // virtqueue_pop does); otherwise it hears one kick and then none until the index wraps.
      mem.write16(this.usedRing + USED_RING + 8 * this.size, this.nextAvail);
    }
    return this.walk(mem, head, chain);
  }

  /**
   * Walks the chain starting at `head` into `chain`, checking every rule of 2.7.5 on the way.
   * Bounded: at most `size` direct descriptors and {@link DeviceQueue.chainLimit} segments.
   */
  private walk(mem: GuestMemory, head: number, chain: DescriptorChain): boolean {
    const size = this.size;
    chain.head = head;
    chain.count = 0;
    chain.readableCount = 0;
    chain.readableBytes = 0;
    chain.writableBytes = 0;
    chain.indirect = false;
    if (head >= size) {
      return this.fail(
        'head-out-of-range',
        `available ring names descriptor ${String(head)} of ${String(size)}`,
      );
    }
    let table = this.descTable;
    let tableSize = size;
    let i = head;
    let visited = 0;
    let total = 0;
    let seenWritable = false;
    for (;;) {
      const d = table + DESC_SIZE * i;
      const addr = mem.read64(d + DESC_ADDR);
      const len = mem.read32(d + DESC_LEN);
      const flags = mem.read16(d + DESC_FLAGS);
      const next = mem.read16(d + DESC_NEXT);
      if ((flags & DescFlag.INDIRECT) !== 0) {
        // 2.7.5.3.1: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the
        // VIRTIO_F_INDIRECT_DESC feature was negotiated", "MUST NOT set the
        // VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor", "MUST NOT set both
        // VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags".
        if (!this.indirectDesc) {
          return this.fail(
            'indirect-not-negotiated',
            `indirect descriptor ${String(i)} without indirect_desc`,
          );
        }
        if (chain.indirect) {
          return this.fail('nested-indirect', `indirect descriptor ${String(i)} inside an indirect table`);
        }
        if ((flags & DescFlag.NEXT) !== 0) {
          return this.fail('indirect-with-next', `descriptor ${String(i)} sets both indirect and next`);
        }
        if (len === 0 || len % DESC_SIZE !== 0) {
          return this.fail('indirect-bad-length', `indirect table length ${hex(len)} at ${hex(addr)}`);
        }
        const entries = len / DESC_SIZE;
        if (chain.count + entries > this.chainLimit) {
          return this.fail('chain-too-long', `indirect table of ${String(entries)} descriptors is too long`);
        }
        if (!mem.isValid(addr, len)) {
          return this.fail(
            'desc-out-of-memory',
            `indirect table ${hex(addr)} length ${hex(len)} outside ram`,
          );
        }
        chain.indirect = true;
        table = addr;
        tableSize = entries;
        i = 0;
        visited = 0;
        continue;
      }
      if (len === 0) {
        return this.fail('zero-length-desc', `descriptor ${String(i)} has length 0`);
      }
      if (!mem.isValid(addr, len)) {
        return this.fail(
          'desc-out-of-memory',
          `descriptor ${String(i)} buffer ${hex(addr)} length ${hex(len)} outside ram`,
        );
      }
      const writable = (flags & DescFlag.WRITE) !== 0;
      if (writable) {
        seenWritable = true;
      } else if (seenWritable) {
        // 2.7.4.2: "The driver MUST place any device-writable descriptor elements after any
        // device-readable descriptor elements."
        return this.fail('readable-after-writable', `readable descriptor ${String(i)} after a writable one`);
      }
      if (chain.count >= this.chainLimit) {
        return this.fail('chain-too-long', `chain longer than ${String(this.chainLimit)} descriptors`);
      }
      // Cannot overflow: at most chainLimit (<= 32768) lengths below 2^32 each stay far below 2^53.
      total += len;
      if (total > MAX_CHAIN_BYTES) {
        // 2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total".
        return this.fail('chain-too-large', `chain longer than 2^32 bytes`);
      }
      const k = chain.count++;
      chain.addr[k] = addr;
      chain.len[k] = len;
      if (writable) {
        chain.writableBytes += len;
      } else {
        chain.readableCount++;
        chain.readableBytes += len;
      }
      visited++;
      if ((flags & DescFlag.NEXT) === 0) return true;
      if (next >= tableSize) {
        return this.fail(
          'next-out-of-range',
          `descriptor ${String(i)} names next ${String(next)} of ${String(tableSize)}`,
        );
      }
      // Every entry of the table visited and still NEXT: a loop (2.7.5.2 forbids loops).
      if (visited >= tableSize) {
        return this.fail('chain-too-long', `descriptor chain loops or exceeds ${String(tableSize)} entries`);
      }
      i = next;
    }
  }

  /**
   * Puts a used element `{ id: head, len }` in the used ring and, unless `publish` is false,
   * publishes it by advancing used.idx (2.7.8). `len` is the number of bytes written into the
   * chain's writable part. Pass `publish = false` for all but the last element of a group the
   * driver must see at once (a merged receive buffer, 5.1.6.4), then call
   * {@link DeviceQueue.publishUsed}: a driver on another CPU never sees half of the group.
   * @throws VirtioError `INVALID_ARGUMENT` for a head outside the queue or a `len` that is not a
   *   32-bit unsigned integer (device bugs)
   *
   * On a queue that is not live the element is dropped and false is returned: the driver may
   * disable a queue (QueueReady = 0) or reset it while the device still holds buffers from it, and
   * that guest action must not become an exception in the device (the buffers were the driver's to
   * take back).
   */
  addUsed(mem: GuestMemory, head: number, len: number, publish = true): boolean {
    if (!this.ready) return false;
    if (!Number.isInteger(head) || head < 0 || head >= this.size) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `used id ${String(head)} outside queue of ${String(this.size)}`,
      );
    }
    if (!Number.isInteger(len) || len < 0 || len > 0xffff_ffff) {
      throw new VirtioError('INVALID_ARGUMENT', `used length ${String(len)} is not a 32-bit value`);
    }
    // 2.7.8.1: "The device MUST set len prior to updating the used idx."
    const slot = this.nextUsed & (this.size - 1);
    const e = this.usedRing + USED_RING + 8 * slot;
    mem.write32(e, head);
    mem.write32(e + 4, len);
    this.nextUsed = (this.nextUsed + 1) & 0xffff;
    if (publish) mem.write16(this.usedRing + USED_IDX, this.nextUsed);
    return true;
  }

  /** Publishes every used element added so far: used.idx = the device's next used index (2.7.8). */
  publishUsed(mem: GuestMemory): void {
    if (this.ready) mem.write16(this.usedRing + USED_IDX, this.nextUsed);
  }

  /**
   * Decides whether the driver wants a used buffer notification for what was added since the last
   * decision (2.7.7.2 and 2.7.10): with EVENT_IDX, when used.idx passed used_event; without, unless
   * VIRTQ_AVAIL_F_NO_INTERRUPT is set. Returns false when nothing new was used.
   */
  needsNotification(mem: GuestMemory): boolean {
    if (!this.ready) return false;
    const newUsed = this.nextUsed;
    const old = this.signalledUsed;
    const valid = this.signalledUsedValid;
    this.signalledUsed = newUsed;
    this.signalledUsedValid = true;
    // Both start at 0 after reset, so "nothing used since reset" also returns here.
    if (old === newUsed) return false;
    // The published used.idx must be visible before used_event / flags are read (QEMU
    // virtio_split_should_notify's smp_mb): the driver re-checks used.idx after writing used_event.
    mem.fence?.();
    if (this.eventIdx) {
      if (!valid) return true;
      const usedEvent = mem.read16(this.availRing + AVAIL_RING + 2 * this.size);
      // vring_need_event: (u16)(new - event - 1) < (u16)(new - old)
      return ((newUsed - usedEvent - 1) & 0xffff) < ((newUsed - old) & 0xffff);
    }
    return (mem.read16(this.availRing + AVAIL_FLAGS) & AvailFlag.NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver for available buffer notifications (2.7.10): with EVENT_IDX, writes
   * avail_event = next avail index; without, clears VIRTQ_USED_F_NO_NOTIFY. Returns true when
   * buffers are already pending, so the caller processes them instead of waiting for a kick that
   * raced the re-enable.
   */
  enableNotification(mem: GuestMemory): boolean {
    if (!this.ready || this.error !== null) return false;
    this.notifyEnabled = true;
    if (this.eventIdx) {
      mem.write16(this.usedRing + USED_RING + 8 * this.size, this.nextAvail);
    } else {
      mem.write16(this.usedRing + USED_FLAGS, mem.read16(this.usedRing + USED_FLAGS) & ~UsedFlag.NO_NOTIFY);
    }
    // avail_event / flags must be visible before avail.idx is read again: a driver on another thread
    // publishes avail.idx and then reads avail_event (QEMU virtio_queue_set_notification's smp_mb).
    mem.fence?.();
    return this.pending(mem) > 0;
  }

  /**
   * Tells the driver not to send available buffer notifications. With EVENT_IDX nothing is written
   * (2.7.10.2: "The device MUST set flags to 0"): avail_event simply stops following
   * {@link DeviceQueue.pop}, so the driver stops kicking once it passes it.
   */
  disableNotification(mem: GuestMemory): void {
    if (!this.ready) return;
    this.notifyEnabled = false;
    if (this.eventIdx) return;
    mem.write16(this.usedRing + USED_FLAGS, mem.read16(this.usedRing + USED_FLAGS) | UsedFlag.NO_NOTIFY);
  }
}
