/**
 * The shared decoder: turns fuzzer bytes into values, so a target is a pure function of its input
 * and any finding replays as a plain test. Reading past the end yields zeros (never throws), so
 * every byte string is a valid input.
 *
 * @packageDocumentation
 */

/** Reads little-endian values and choices from a byte string, zeros past the end. */
export class ByteSource {
  private pos = 0;

  /** @param data - the fuzzer input */
  constructor(readonly data: Uint8Array) {}

  /** True while unread bytes remain. */
  get more(): boolean {
    return this.pos < this.data.length;
  }

  /** Bytes left. */
  get left(): number {
    return Math.max(0, this.data.length - this.pos);
  }

  /** One byte. */
  u8(): number {
    const p = this.pos++;
    return p < this.data.length ? this.data[p] : 0;
  }

  /** Little-endian 16-bit value. */
  u16(): number {
    return this.u8() | (this.u8() << 8);
  }

  /** Little-endian 32-bit value. */
  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return n <= 256 ? this.u8() % n : this.u32() % n;
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  /** A boolean. */
  bool(): boolean {
    return (this.u8() & 1) === 1;
  }

  /** Up to `max` raw bytes (fewer at the end of input). */
  bytes(max: number): Uint8Array {
    const n = Math.min(max, this.left);
    const out = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /**
   * A 32-bit value biased to interesting ones: boundaries, small numbers, or any value.
   */
  value(): number {
    switch (this.u8() & 7) {
      case 0:
        return 0;
      case 1:
        return this.u8();
      case 2:
        return this.pick([
          1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
        ]);
      case 3:
        return this.u16();
      default:
        return this.u32();
    }
  }
}

/** Raised by a target when an invariant breaks; the runner reports it with the input. */
export class InvariantViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvariantViolation';
  }
}

/** Throws an {@link InvariantViolation} unless `cond`. */
export function check(cond: boolean, message: string): asserts cond {
  if (!cond) throw new InvariantViolation(message);
}
