/**
 * The driver side of a split virtqueue (virtio 1.2+, 2.7.13 "Supplying Buffers to The Device" and
 * 2.7.14 "Receiving Used Buffers From The Device"), as a guest kernel's virtio_ring does it: a
 * free list of descriptors, scatter-gather buffers (direct or through an indirect table), kicks
 * only when the device wants them, and harvesting used buffers.
 *
 * The driver also defends itself against a broken device: a used element naming a descriptor it
 * never gave out, or a length larger than the buffer, marks the queue broken instead of corrupting
 * the free list.
 *
 * @packageDocumentation
 */

import type { GuestAllocator, GuestMemory } from '../memory/index.js';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  AvailFlag,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  DescFlag,
  MAX_CHAIN_BYTES,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  UsedFlag,
  VirtioError,
} from '../spec/index.js';
import { availRingBytes, descTableBytes, isPowerOfTwo, type RingAddresses, usedRingBytes } from './layout.js';

/** One buffer segment: guest physical address and length. */
export interface Segment {
  /** Guest physical address. */
  readonly addr: number;
  /** Length in bytes (non-zero). */
  readonly len: number;
}

/** A used buffer handed back by the device. */
export interface UsedBuffer<T> {
  /** The token given to {@link DriverQueue.add}. */
  readonly token: T;
  /** Bytes the device wrote into the device-writable segments. */
  readonly len: number;
}

/** Options of a driver queue. */
export interface DriverQueueOptions {
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * Allocator for indirect tables; when given (and VIRTIO_F_INDIRECT_DESC negotiated), buffers of
   * more than one segment go through an indirect table and use one ring descriptor. When the
   * allocator is exhausted, a buffer falls back to direct descriptors (as Linux does).
   */
  indirectAllocator?: GuestAllocator;
  /**
   * Fewest segments a buffer needs to go through an indirect table (default 2: a single segment
   * gains nothing from one, as Linux decides). Benchmarks set 1 to measure indirect walking alone.
   */
  minIndirectSegments?: number;
}

/**
 * Checks one segment from the caller (tier 3) and returns its length: a safe non-negative integer
 * address and a length that fits a descriptor's le32 `len`, zero excluded.
 */
function checkSegment(s: Segment): number {
  if (!Number.isInteger(s.len) || s.len <= 0 || s.len > 0xffff_ffff) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid segment length ${String(s.len)}`);
  }
  if (!Number.isSafeInteger(s.addr) || s.addr < 0) {
    throw new VirtioError('INVALID_ARGUMENT', `invalid segment address ${String(s.addr)}`);
  }
  return s.len;
}

/** Per-head bookkeeping of an outstanding buffer. */
interface Outstanding<T> {
  token: T;
  /** Descriptors taken from the table (1 for indirect). */
  ndesc: number;
  /** Indirect table address, or -1. */
  indirect: number;
  /** Sum of the device-writable lengths, to bound the device's `len`. */
  writable: number;
}

/**
 * Driver-side split ring over guest memory. The rings must be zeroed, at the addresses given, and
 * are not owned: the transport allocates and frees them.
 */
export class DriverQueue<T = unknown> {
  /** Guest physical addresses of the three areas. */
  readonly rings: RingAddresses;
  /** Why the queue stopped (the device returned nonsense), or null. */
  broken: string | null = null;

  private readonly outstanding: Array<Outstanding<T> | undefined>;
  private readonly nextFree: Uint16Array;
  private freeHead = 0;
  private freeCount: number;
  /** Free-running available index (what avail.idx will say). */
  private availIdx = 0;
  /** Available index at the last kick decision. */
  private kickedAvail = 0;
  /** Free-running index of the next used element to harvest. */
  private lastUsed = 0;
  /** Used buffer notifications wanted (shadow of what was last published, as Linux keeps it). */
  private callbacksEnabled = true;
  private readonly eventIdx: boolean;
  private readonly indirectAllocator: GuestAllocator | undefined;
  private readonly minIndirectSegments: number;

  /**
   * @param mem - guest memory as the guest sees it
   * @param index - queue number, for messages
   * @param size - queue size, a power of two
   * @param rings - where the zeroed areas are
   * @throws VirtioError `QUEUE_INVALID_SIZE` for a size that is not a power of two up to 32768
   */
  constructor(
    private readonly mem: GuestMemory,
    readonly index: number,
    readonly size: number,
    rings: RingAddresses,
    options: DriverQueueOptions = {},
  ) {
    if (!isPowerOfTwo(size) || size > 32768) {
      throw new VirtioError(
        'QUEUE_INVALID_SIZE',
        `queue size ${String(size)} is not a power of two up to 32768`,
      );
    }
    this.rings = rings;
    this.eventIdx = options.eventIdx ?? false;
    this.indirectAllocator = options.indirectAllocator;
    this.minIndirectSegments = Math.max(1, options.minIndirectSegments ?? 2);
    this.outstanding = new Array(size).fill(undefined);
    this.nextFree = new Uint16Array(size);
    for (let i = 0; i < size; i++) this.nextFree[i] = (i + 1) % size;
    this.freeCount = size;
  }

  /** Bytes needed for each area of a queue of `size` (modern layout, any placement). */
  static areaBytes(size: number): { desc: number; avail: number; used: number } {
    return { desc: descTableBytes(size), avail: availRingBytes(size), used: usedRingBytes(size) };
  }

  /** Descriptors currently free. */
  get numFree(): number {
    return this.freeCount;
  }

  /**
   * The free-running available index as last published in avail.idx: the index the next buffer
   * will take. The notification data of VIRTIO_F_NOTIFICATION_DATA carries it (split ring: next_off
   * is its low 15 bits, next_wrap bit 15).
   */
  get availIndex(): number {
    return this.availIdx;
  }

  /** Buffers given to the device and not yet harvested. */
  get inFlight(): number {
    let n = 0;
    for (const o of this.outstanding) if (o !== undefined) n++;
    return n;
  }

  /**
   * Makes a buffer available: `out` segments are device-readable, `inSegs` device-writable
   * (2.7.13). Returns false when there are not enough free descriptors (try again after harvesting).
   * @throws VirtioError `INVALID_ARGUMENT` for an empty buffer, a segment whose length is not in
   *   [1, 2^32 - 1] or whose address is not a safe non-negative integer, a buffer longer than 2^32
   *   bytes in total, or (without an indirect allocator) more segments than the queue size;
   *   `INVALID_STATE` on a broken queue
   */
  add(out: readonly Segment[], inSegs: readonly Segment[], token: T): boolean {
    if (this.broken !== null)
      throw new VirtioError('INVALID_STATE', `queue ${String(this.index)} is broken: ${this.broken}`);
    const total = out.length + inSegs.length;
    if (total === 0) throw new VirtioError('INVALID_ARGUMENT', 'a buffer needs at least one segment');
    let bytes = 0;
    let writable = 0;
    for (const s of out) bytes += checkSegment(s);
    for (const s of inSegs) writable += checkSegment(s);
    bytes += writable;
    if (bytes > MAX_CHAIN_BYTES) {
      // 2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total".
      throw new VirtioError('INVALID_ARGUMENT', `buffer of ${String(bytes)} bytes is longer than 2^32`);
    }
    if (total > this.size && this.indirectAllocator === undefined) {
      // 2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer than the Queue Size of the
      // device." Without indirect tables it could never fit: returning false would spin the caller.
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `buffer of ${String(total)} segments does not fit a queue of ${String(this.size)}`,
      );
    }
    const mem = this.mem;
    const table = this.rings.descTable;
    let head: number;
    let ndesc: number;
    let indirect = -1;
    if (this.indirectAllocator !== undefined && total >= this.minIndirectSegments && this.freeCount >= 1) {
      indirect = this.allocIndirect(this.indirectAllocator, total * DESC_SIZE);
    }
    if (indirect >= 0) {
      // 2.7.5.3: one ring descriptor pointing at a table of `total` descriptors.
      for (let k = 0; k < total; k++) {
        const s = k < out.length ? out[k] : inSegs[k - out.length];
        const d = indirect + k * DESC_SIZE;
        let flags = k + 1 < total ? DescFlag.NEXT : 0;
        if (k >= out.length) flags |= DescFlag.WRITE;
        mem.write64(d + DESC_ADDR, s.addr);
        mem.write32(d + DESC_LEN, s.len);
        mem.write16(d + DESC_FLAGS, flags);
        mem.write16(d + DESC_NEXT, k + 1 < total ? k + 1 : 0);
      }
      head = this.freeHead;
      this.freeHead = this.nextFree[head];
      this.freeCount--;
      const d = table + head * DESC_SIZE;
      mem.write64(d + DESC_ADDR, indirect);
      mem.write32(d + DESC_LEN, total * DESC_SIZE);
      mem.write16(d + DESC_FLAGS, DescFlag.INDIRECT);
      mem.write16(d + DESC_NEXT, 0);
      ndesc = 1;
    } else {
      if (this.freeCount < total) return false;
      head = this.freeHead;
      let i = head;
      for (let k = 0; k < total; k++) {
        const s = k < out.length ? out[k] : inSegs[k - out.length];
        const d = table + i * DESC_SIZE;
        let flags = k + 1 < total ? DescFlag.NEXT : 0;
        if (k >= out.length) flags |= DescFlag.WRITE;
        const next = this.nextFree[i];
        mem.write64(d + DESC_ADDR, s.addr);
        mem.write32(d + DESC_LEN, s.len);
        mem.write16(d + DESC_FLAGS, flags);
        mem.write16(d + DESC_NEXT, k + 1 < total ? next : 0);
        if (k + 1 < total) i = next;
        else this.freeHead = next;
      }
      this.freeCount -= total;
      ndesc = total;
    }
    this.outstanding[head] = { token, ndesc, indirect, writable };
    // 2.7.13.2: place the head in the ring, then (after a barrier) publish the new idx.
    const slot = this.availIdx & (this.size - 1);
    mem.write16(this.rings.availRing + AVAIL_RING + 2 * slot, head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    mem.write16(this.rings.availRing + AVAIL_IDX, this.availIdx);
    return true;
  }

  /**
   * Whether the device wants an available buffer notification for what was added since the last
   * call (2.7.13.4 / 2.7.10): with EVENT_IDX, when avail.idx passed avail_event; without, unless
   * VIRTQ_USED_F_NO_NOTIFY is set.
   */
  kickPrepare(): boolean {
    const newIdx = this.availIdx;
    const old = this.kickedAvail;
    this.kickedAvail = newIdx;
    if (newIdx === old) return false;
    // The new avail.idx must be visible before avail_event / flags are read (Linux virtqueue_kick_prepare's
    // virtio_mb): the device re-checks avail.idx after writing avail_event, one of the two sees the other.
    this.mem.fence?.();
    if (this.eventIdx) {
      const availEvent = this.mem.read16(this.rings.usedRing + USED_RING + 8 * this.size);
      return ((newIdx - availEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
    }
    return (this.mem.read16(this.rings.usedRing + USED_FLAGS) & UsedFlag.NO_NOTIFY) === 0;
  }

  /** True when the device has used buffers not yet harvested. */
  hasUsed(): boolean {
    return this.broken === null && this.mem.read16(this.rings.usedRing + USED_IDX) !== this.lastUsed;
  }

  /**
   * Harvests the next used buffer, or returns null when there is none. A used element the driver
   * never handed out, or a length past the buffer's writable size, breaks the queue
   * ({@link DriverQueue.broken}) and returns null.
   */
  getUsed(): UsedBuffer<T> | null {
    if (this.broken !== null) return null;
    const mem = this.mem;
    const usedIdx = mem.read16(this.rings.usedRing + USED_IDX);
    if (usedIdx === this.lastUsed) return null;
    if (((usedIdx - this.lastUsed) & 0xffff) > this.size) {
      this.broken = `used idx ${String(usedIdx)} runs more than queue size ahead of ${String(this.lastUsed)}`;
      return null;
    }
    const slot = this.lastUsed & (this.size - 1);
    const e = this.rings.usedRing + USED_RING + 8 * slot;
    const id = mem.read32(e);
    const len = mem.read32(e + 4);
    const o = id < this.size ? this.outstanding[id] : undefined;
    if (o === undefined) {
      this.broken = `device used descriptor ${String(id)} that was not available`;
      return null;
    }
    if (len > o.writable) {
      this.broken = `device wrote ${String(len)} bytes into a buffer of ${String(o.writable)}`;
      return null;
    }
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.release(id, o);
    if (this.eventIdx && this.callbacksEnabled) {
      // 2.7.7.1: ask for the next interrupt as soon as one more buffer is used. Not while
      // callbacks are disabled: re-arming here would undo disableCallbacks.
      mem.write16(this.rings.availRing + AVAIL_RING + 2 * this.size, this.lastUsed);
      // ... and make it visible before used.idx is read again (Linux virtio_store_mb): a device on
      // another thread publishes used.idx then reads used_event; without the barrier both can
      // read the old value, no interrupt is sent and the driver halts on a buffer it never sees.
      mem.fence?.();
    }
    return { token: o.token, len };
  }

  /** Allocates an indirect table, or returns -1 when the allocator is exhausted. */
  private allocIndirect(allocator: GuestAllocator, bytes: number): number {
    try {
      return allocator.alloc(bytes, DESC_SIZE);
    } catch (e) {
      if (e instanceof VirtioError && e.code === 'ALLOC_FAILED') return -1;
      throw e;
    }
  }

  /** Returns the descriptors of `head` to the free list. */
  private release(head: number, o: Outstanding<T>): void {
    this.outstanding[head] = undefined;
    if (o.indirect >= 0) this.indirectAllocator?.release(o.indirect);
    // Follow our own links, never the table's: a hostile device may have rewritten `next`.
    // nextFree[] of a taken descriptor still names the one that followed it, i.e. the chain order.
    let tail = head;
    for (let k = 1; k < o.ndesc; k++) tail = this.nextFree[tail];
    this.nextFree[tail] = this.freeHead;
    this.freeHead = head;
    this.freeCount += o.ndesc;
  }

  /**
   * Asks the device not to interrupt for this queue (2.7.7.1). Without EVENT_IDX, sets
   * VIRTQ_AVAIL_F_NO_INTERRUPT. With EVENT_IDX the flags must stay 0 ("The driver MUST set flags to
   * 0"), so used_event is moved as far away as it goes, one entry behind the last harvested one, and
   * {@link DriverQueue.getUsed} stops re-arming it. Like every suppression, only a hint: the
   * driver still handles spurious notifications.
   */
  disableCallbacks(): void {
    this.callbacksEnabled = false;
    if (this.eventIdx) {
      this.mem.write16(this.rings.availRing + AVAIL_RING + 2 * this.size, (this.lastUsed - 1) & 0xffff);
    } else {
      const a = this.rings.availRing + AVAIL_FLAGS;
      this.mem.write16(a, this.mem.read16(a) | AvailFlag.NO_INTERRUPT);
    }
  }

  /**
   * Asks for interrupts again (clears VIRTQ_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX sets used_event
   * to the next entry to harvest); returns true when used buffers are already waiting (harvest them
   * rather than wait for an interrupt that raced the re-enable).
   */
  enableCallbacks(): boolean {
    this.callbacksEnabled = true;
    if (this.eventIdx) {
      this.mem.write16(this.rings.availRing + AVAIL_RING + 2 * this.size, this.lastUsed);
    } else {
      const a = this.rings.availRing + AVAIL_FLAGS;
      this.mem.write16(a, this.mem.read16(a) & ~AvailFlag.NO_INTERRUPT);
    }
    // used_event must be visible before used.idx is read again (virtqueue_enable_cb's virtio_mb).
    this.mem.fence?.();
    return this.hasUsed();
  }

  /** Takes back every outstanding buffer after the device was reset (teardown); returns their tokens. */
  detachUnused(): T[] {
    const tokens: T[] = [];
    for (let head = 0; head < this.size; head++) {
      const o = this.outstanding[head];
      if (o !== undefined) {
        tokens.push(o.token);
        this.outstanding[head] = undefined;
        if (o.indirect >= 0) this.indirectAllocator?.release(o.indirect);
      }
    }
    for (let i = 0; i < this.size; i++) this.nextFree[i] = (i + 1) % this.size;
    this.freeHead = 0;
    this.freeCount = this.size;
    return tokens;
  }
}
