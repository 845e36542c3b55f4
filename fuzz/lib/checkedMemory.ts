/**
 * A {@link GuestMemory} wrapper that asserts every access the code under test makes is inside guest
 * RAM (RamMemory would throw a MemoryError: the device code must never trigger that throw), counts
 * accesses for the bounded-work invariant, and can restrict writes to a set of windows (the driver
 * side may write only its own DMA memory).
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../src/memory/index.js';
import { hex } from '../../src/spec/index.js';

/** Counts and checks every access to the wrapped memory. */
export class CheckedMemory implements GuestMemory {
  /** Accesses made (scalar or bulk), since the last {@link CheckedMemory.resetCount}. */
  accesses = 0;
  /** Violations seen (out of range, or a write outside the allowed windows). */
  readonly violations: string[] = [];
  /** Writes allowed only inside these [start, end) windows when set. */
  writeWindows: Array<[number, number]> | null = null;

  constructor(readonly inner: GuestMemory) {}

  /** Zeroes the access count. */
  resetCount(): void {
    this.accesses = 0;
  }

  private r(gpa: number, len: number): void {
    this.accesses++;
    if (!this.inner.isValid(gpa, len)) this.violations.push(`read outside ram at ${hex(gpa)} len ${len}`);
  }

  private w(gpa: number, len: number): void {
    this.accesses++;
    if (!this.inner.isValid(gpa, len)) {
      this.violations.push(`write outside ram at ${hex(gpa)} len ${len}`);
      return;
    }
    const ws = this.writeWindows;
    if (ws !== null && len > 0 && !ws.some(([s, e]) => gpa >= s && gpa + len <= e)) {
      this.violations.push(`write outside the allowed buffers at ${hex(gpa)} len ${len}`);
    }
  }

  isValid(gpa: number, length: number): boolean {
    return this.inner.isValid(gpa, length);
  }
  read8(gpa: number): number {
    this.r(gpa, 1);
    return this.inner.read8(gpa);
  }
  read16(gpa: number): number {
    this.r(gpa, 2);
    return this.inner.read16(gpa);
  }
  read32(gpa: number): number {
    this.r(gpa, 4);
    return this.inner.read32(gpa);
  }
  read64(gpa: number): number {
    this.r(gpa, 8);
    return this.inner.read64(gpa);
  }
  write8(gpa: number, value: number): void {
    this.w(gpa, 1);
    this.inner.write8(gpa, value);
  }
  write16(gpa: number, value: number): void {
    this.w(gpa, 2);
    this.inner.write16(gpa, value);
  }
  write32(gpa: number, value: number): void {
    this.w(gpa, 4);
    this.inner.write32(gpa, value);
  }
  write64(gpa: number, value: number): void {
    this.w(gpa, 8);
    this.inner.write64(gpa, value);
  }
  readBytes(gpa: number, dst: Uint8Array): void {
    this.r(gpa, dst.length);
    this.inner.readBytes(gpa, dst);
  }
  writeBytes(gpa: number, src: Uint8Array): void {
    this.w(gpa, src.length);
    this.inner.writeBytes(gpa, src);
  }
  fill(gpa: number, length: number, byte: number): void {
    this.w(gpa, length);
    this.inner.fill(gpa, length, byte);
  }
  view(gpa: number, length: number): Uint8Array | null {
    // A view outside RAM is null by contract: counted, not a violation.
    this.accesses++;
    return this.inner.view(gpa, length);
  }
}
