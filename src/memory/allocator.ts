/**
 * A guest-side allocator for DMA memory: what a guest kernel's page allocator gives a driver for
 * its rings and buffers. First fit over a free list of guest physical ranges, with alignment.
 * Not a hot path: drivers allocate rings once and reuse request buffers.
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../spec/index.js';

/** A free range `[start, end)`. */
interface FreeRange {
  start: number;
  end: number;
}

/** Allocates guest physical ranges from a window of guest RAM. */
export class GuestAllocator {
  private free: FreeRange[];
  private readonly sizes = new Map<number, number>();
  private readonly base: number;
  private readonly limit: number;

  /**
   * @param base - first guest physical address the allocator may hand out
   * @param size - number of bytes in the window
   * @throws VirtioError `INVALID_ARGUMENT` for a negative, unsafe or empty window
   */
  constructor(base: number, size: number) {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid allocator window ${hex(base)}+${hex(size)}`);
    }
    this.base = base;
    this.limit = base + size;
    this.free = [{ start: base, end: base + size }];
  }

  /** Bytes currently allocated. */
  get used(): number {
    let n = 0;
    for (const s of this.sizes.values()) n += s;
    return n;
  }

  /** Number of live allocations. */
  get count(): number {
    return this.sizes.size;
  }

  /**
   * Allocates `size` bytes aligned to `align` (a power of two).
   * @throws VirtioError `ALLOC_FAILED` when no free range fits, `INVALID_ARGUMENT` for bad sizes
   */
  alloc(size: number, align = 16): number {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid allocation size ${String(size)}`);
    }
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new VirtioError('INVALID_ARGUMENT', `alignment ${String(align)} is not a power of two`);
    }
    for (let i = 0; i < this.free.length; i++) {
      const r = this.free[i];
      const start = Math.ceil(r.start / align) * align;
      if (start + size > r.end) continue;
      const pieces: FreeRange[] = [];
      if (start > r.start) pieces.push({ start: r.start, end: start });
      if (start + size < r.end) pieces.push({ start: start + size, end: r.end });
      this.free.splice(i, 1, ...pieces);
      this.sizes.set(start, size);
      return start;
    }
    throw new VirtioError(
      'ALLOC_FAILED',
      `out of guest memory: ${hex(size)} bytes aligned to ${hex(align)} in ${hex(this.base)}..${hex(this.limit)}`,
    );
  }

  /**
   * Returns an allocation to the free list, merging neighbours.
   * @throws VirtioError `INVALID_ARGUMENT` for an address that is not a live allocation
   */
  release(gpa: number): void {
    const size = this.sizes.get(gpa);
    if (size === undefined) {
      throw new VirtioError('INVALID_ARGUMENT', `release of unallocated address ${hex(gpa)}`);
    }
    this.sizes.delete(gpa);
    const range: FreeRange = { start: gpa, end: gpa + size };
    let i = 0;
    while (i < this.free.length && this.free[i].start < range.start) i++;
    this.free.splice(i, 0, range);
    // Merge with the following and the preceding ranges.
    if (i + 1 < this.free.length && this.free[i].end === this.free[i + 1].start) {
      this.free[i].end = this.free[i + 1].end;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1].end === this.free[i].start) {
      this.free[i - 1].end = this.free[i].end;
      this.free.splice(i, 1);
    }
  }
}
