/**
 * A raw driver-side writer for split rings (virtio 1.2+, 2.7), for tests, benches and fuzzers: the
 * TypeScript counterpart of rust-vmm's `MockSplitQueue`.
 *
 * Unlike {@link DriverQueue}, it checks nothing. It writes whatever descriptor, available entry or
 * index it is given, so tests can build the rings a hostile or buggy driver would: loops,
 * out-of-range `next` and heads, indirect tables inside indirect tables, avail.idx far ahead, and
 * so on. Only guest memory itself still refuses an access outside RAM (it throws a `MemoryError`).
 * It also reads back what the device wrote: used elements, used.idx, used.flags and avail_event.
 *
 * ```
 * Descriptor Table (16-byte aligned):  le64 addr | le32 len | le16 flags | le16 next   x size
 * Available Ring (2-byte aligned):     le16 flags | le16 idx | le16 ring[size] | le16 used_event
 * Used Ring (4-byte aligned):          le16 flags | le16 idx | {le32 id, le32 len}[size] | le16 avail_event
 * ```
 *
 * @packageDocumentation
 */

import type { GuestAllocator, GuestMemory } from '../memory/index.js';
import {
  AVAIL_ELEM_SIZE,
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  AVAIL_RING_ALIGN,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  DESC_TABLE_ALIGN,
  DescFlag,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  USED_RING_ALIGN,
} from '../spec/index.js';
import {
  alignUp,
  availRingBytes,
  type DeviceQueue,
  descTableBytes,
  type RingAddresses,
  usedRingBytes,
} from '../virtqueue/index.js';

/** One descriptor as written to a table, field by field; `flags` and `next` default to 0. */
export interface RawDescriptor {
  /** Guest physical address of the buffer (or of the indirect table). */
  addr: number;
  /** Length in bytes (written as le32: only the low 32 bits are kept). */
  len: number;
  /** `DescFlag` bits, any combination, including undefined bits. */
  flags?: number;
  /** Index of the next descriptor, any 16-bit value. */
  next?: number;
}

/** One used ring element as the device wrote it. */
export interface RawUsedElem {
  /** Head index of the used chain (le32). */
  id: number;
  /** Bytes the device says it wrote (le32). */
  len: number;
}

/** A buffer segment for the chain helpers: device-writable when `write` is true. */
export interface ChainSegment {
  /** Guest physical address. */
  addr: number;
  /** Length in bytes. */
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write?: boolean;
}

/** Features to set on a {@link DeviceQueue} in {@link RingWriter.configure}. */
export interface RingFeatures {
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirectDesc?: boolean;
}

/**
 * Driver-side view of one split ring in guest memory, with no checks. Indices given to it are
 * used as they are: a descriptor index past the table writes past the table, and `setAvailEntry`
 * takes a raw ring slot (not reduced modulo the size).
 */
export class RingWriter {
  /** Guest physical address of the descriptor table. */
  readonly descTable: number;
  /** Guest physical address of the available ring. */
  readonly availRing: number;
  /** Guest physical address of the used ring. */
  readonly usedRing: number;

  /**
   * @param mem - guest memory holding the rings
   * @param size - queue size used for the ring geometry (any number: nothing is checked)
   * @param rings - where the three areas are
   */
  constructor(
    readonly mem: GuestMemory,
    readonly size: number,
    rings: RingAddresses,
  ) {
    this.descTable = rings.descTable;
    this.availRing = rings.availRing;
    this.usedRing = rings.usedRing;
  }

  /**
   * The three areas packed one after the other from `base` (rounded up to 16), each at its
   * minimum alignment (2.7: 16 / 2 / 4).
   */
  static packedLayout(base: number, size: number): RingAddresses {
    const descTable = alignUp(base, DESC_TABLE_ALIGN);
    const availRing = alignUp(descTable + descTableBytes(size), AVAIL_RING_ALIGN);
    const usedRing = alignUp(availRing + availRingBytes(size), USED_RING_ALIGN);
    return { descTable, availRing, usedRing };
  }

  /** Bytes from a 16-aligned `base` to the end of a {@link RingWriter.packedLayout} ring. */
  static packedBytes(size: number): number {
    const l = RingWriter.packedLayout(0, size);
    return l.usedRing + usedRingBytes(size);
  }

  /** A writer over a packed, zeroed ring at `base` (see {@link RingWriter.packedLayout}). */
  static at(mem: GuestMemory, size: number, base = 0): RingWriter {
    const w = new RingWriter(mem, size, RingWriter.packedLayout(base, size));
    w.zero();
    return w;
  }

  /** A writer over zeroed areas taken from `allocator`, each at its minimum alignment. */
  static allocate(mem: GuestMemory, allocator: GuestAllocator, size: number): RingWriter {
    const descTable = allocator.alloc(descTableBytes(size), DESC_TABLE_ALIGN);
    const availRing = allocator.alloc(availRingBytes(size), AVAIL_RING_ALIGN);
    const usedRing = allocator.alloc(usedRingBytes(size), USED_RING_ALIGN);
    const w = new RingWriter(mem, size, { descTable, availRing, usedRing });
    w.zero();
    return w;
  }

  /** The three addresses, as a {@link DriverQueue} or a transport takes them. */
  get rings(): RingAddresses {
    return { descTable: this.descTable, availRing: this.availRing, usedRing: this.usedRing };
  }

  /** Zeroes the three areas (a fresh ring: 2.7.10.1 "initialize flags in the used ring to 0"). */
  zero(): void {
    this.mem.fill(this.descTable, descTableBytes(this.size), 0);
    this.mem.fill(this.availRing, availRingBytes(this.size), 0);
    this.mem.fill(this.usedRing, usedRingBytes(this.size), 0);
  }

  /**
   * Programs `queue` with this ring (size and addresses), sets the features, and marks it ready,
   * as a transport does on QueueReady = 1. Does not validate: call `queue.validate` for that.
   */
  configure(queue: DeviceQueue, features: RingFeatures = {}): void {
    queue.size = this.size;
    queue.descTable = this.descTable;
    queue.availRing = this.availRing;
    queue.usedRing = this.usedRing;
    queue.eventIdx = features.eventIdx ?? false;
    queue.indirectDesc = features.indirectDesc ?? false;
    queue.ready = true;
  }

  // ---- descriptors ----

  /** Writes descriptor `index` of the ring's table. */
  setDesc(index: number, d: RawDescriptor): void {
    this.setTableDesc(this.descTable, index, d);
  }

  /** Reads descriptor `index` of the ring's table. */
  getDesc(index: number): Required<RawDescriptor> {
    return this.getTableDesc(this.descTable, index);
  }

  /** Writes entry `index` of the descriptor table at `table` (the ring's, or an indirect one). */
  setTableDesc(table: number, index: number, d: RawDescriptor): void {
    const a = table + DESC_SIZE * index;
    this.mem.write64(a + DESC_ADDR, d.addr);
    this.mem.write32(a + DESC_LEN, d.len);
    this.mem.write16(a + DESC_FLAGS, d.flags ?? 0);
    this.mem.write16(a + DESC_NEXT, d.next ?? 0);
  }

  /** Reads entry `index` of the descriptor table at `table`. */
  getTableDesc(table: number, index: number): Required<RawDescriptor> {
    const a = table + DESC_SIZE * index;
    return {
      addr: this.mem.read64(a + DESC_ADDR),
      len: this.mem.read32(a + DESC_LEN),
      flags: this.mem.read16(a + DESC_FLAGS),
      next: this.mem.read16(a + DESC_NEXT),
    };
  }

  /**
   * Writes `descs` as entries 0.. of a table at `table` (typically an indirect table), exactly as
   * given. Returns the table's length in bytes (16 per entry), the `len` of the descriptor that
   * refers to it.
   */
  writeTable(table: number, descs: readonly RawDescriptor[]): number {
    for (let k = 0; k < descs.length; k++) this.setTableDesc(table, k, descs[k]);
    return descs.length * DESC_SIZE;
  }

  /**
   * Converts segments to well-formed chained descriptors with `next` = position + 1 within a table
   * that starts at index `first` (VIRTQ_DESC_F_NEXT on all but the last, VIRTQ_DESC_F_WRITE on
   * writable ones). Ordering is not checked: readable after writable stays as given.
   */
  static chainDescriptors(segs: readonly ChainSegment[], first = 0): RawDescriptor[] {
    return segs.map((s, k) => ({
      addr: s.addr,
      len: s.len,
      flags: (k + 1 < segs.length ? DescFlag.NEXT : 0) | (s.write === true ? DescFlag.WRITE : 0),
      next: k + 1 < segs.length ? first + k + 1 : 0,
    }));
  }

  /** Writes `segs` as a chain at descriptor indices `head`, `head + 1`, ...; returns `head`. */
  writeChain(head: number, segs: readonly ChainSegment[]): number {
    const descs = RingWriter.chainDescriptors(segs, head);
    for (let k = 0; k < descs.length; k++) this.setDesc(head + k, descs[k]);
    return head;
  }

  /** {@link RingWriter.writeChain} then {@link RingWriter.publish}; returns `head`. */
  addChain(head: number, segs: readonly ChainSegment[]): number {
    this.writeChain(head, segs);
    this.publish(head);
    return head;
  }

  /**
   * Writes `segs` as a well-formed indirect table at `table` and descriptor `head` of the ring as
   * the VIRTQ_DESC_F_INDIRECT descriptor that refers to it, then publishes `head`. Returns `head`.
   */
  addIndirect(head: number, table: number, segs: readonly ChainSegment[]): number {
    const len = this.writeTable(table, RingWriter.chainDescriptors(segs));
    this.setDesc(head, { addr: table, len, flags: DescFlag.INDIRECT });
    this.publish(head);
    return head;
  }

  // ---- available ring (driver-written) ----

  /** avail.flags. */
  get availFlags(): number {
    return this.mem.read16(this.availRing + AVAIL_FLAGS);
  }
  set availFlags(value: number) {
    this.mem.write16(this.availRing + AVAIL_FLAGS, value);
  }

  /** avail.idx (writing it publishes, or un-publishes, entries: nothing is checked). */
  get availIdx(): number {
    return this.mem.read16(this.availRing + AVAIL_IDX);
  }
  set availIdx(value: number) {
    this.mem.write16(this.availRing + AVAIL_IDX, value);
  }

  /** used_event, after the ring entries (meaningful with VIRTIO_F_EVENT_IDX). */
  get usedEvent(): number {
    return this.mem.read16(this.availRing + AVAIL_RING + AVAIL_ELEM_SIZE * this.size);
  }
  set usedEvent(value: number) {
    this.mem.write16(this.availRing + AVAIL_RING + AVAIL_ELEM_SIZE * this.size, value);
  }

  /** Writes avail.ring[slot] = head, with `slot` used as given. */
  setAvailEntry(slot: number, head: number): void {
    this.mem.write16(this.availRing + AVAIL_RING + AVAIL_ELEM_SIZE * slot, head);
  }

  /** Reads avail.ring[slot]. */
  getAvailEntry(slot: number): number {
    return this.mem.read16(this.availRing + AVAIL_RING + AVAIL_ELEM_SIZE * slot);
  }

  /**
   * Makes `head` available the way a driver does (2.7.13.2-3): avail.ring[avail.idx % size] = head,
   * then avail.idx + 1 (wrapping at 65536). `head` is not checked.
   */
  publish(head: number): void {
    const idx = this.availIdx;
    this.setAvailEntry(idx % this.size, head);
    this.availIdx = (idx + 1) & 0xffff;
  }

  // ---- used ring (device-written; writable here to play a hostile device) ----

  /** used.flags. */
  get usedFlags(): number {
    return this.mem.read16(this.usedRing + USED_FLAGS);
  }
  set usedFlags(value: number) {
    this.mem.write16(this.usedRing + USED_FLAGS, value);
  }

  /** used.idx. */
  get usedIdx(): number {
    return this.mem.read16(this.usedRing + USED_IDX);
  }
  set usedIdx(value: number) {
    this.mem.write16(this.usedRing + USED_IDX, value);
  }

  /** avail_event, after the used elements (meaningful with VIRTIO_F_EVENT_IDX). */
  get availEvent(): number {
    return this.mem.read16(this.usedRing + USED_RING + USED_ELEM_SIZE * this.size);
  }
  set availEvent(value: number) {
    this.mem.write16(this.usedRing + USED_RING + USED_ELEM_SIZE * this.size, value);
  }

  /** Reads used.ring[slot], with `slot` used as given. */
  getUsedElem(slot: number): RawUsedElem {
    const e = this.usedRing + USED_RING + USED_ELEM_SIZE * slot;
    return { id: this.mem.read32(e), len: this.mem.read32(e + 4) };
  }

  /** Writes used.ring[slot] (to play a device, possibly a hostile one). */
  setUsedElem(slot: number, id: number, len: number): void {
    const e = this.usedRing + USED_RING + USED_ELEM_SIZE * slot;
    this.mem.write32(e, id);
    this.mem.write32(e + 4, len);
  }

  /**
   * Puts `{ id, len }` at used.ring[used.idx % size] and advances used.idx, as a device does; for
   * driver-side tests.
   */
  pushUsed(id: number, len: number): void {
    const idx = this.usedIdx;
    this.setUsedElem(idx % this.size, id, len);
    this.usedIdx = (idx + 1) & 0xffff;
  }

  /** The used elements the device published in `[from, used.idx)` (free-running indices). */
  usedSince(from: number): RawUsedElem[] {
    const out: RawUsedElem[] = [];
    for (let i = from & 0xffff; i !== this.usedIdx; i = (i + 1) & 0xffff) {
      out.push(this.getUsedElem(i % this.size));
    }
    return out;
  }
}
