/**
 * A set of feature bits (0..127) as four 32-bit words, the way the MMIO selectors expose them.
 * Feature negotiation is not a hot path, but words keep it free of BigInt anyway.
 *
 * @packageDocumentation
 */

import { FEATURE_WORDS, VirtioError } from '../spec/index.js';

/** A mutable set of feature bits, stored as {@link FEATURE_WORDS} 32-bit words. */
export class Features {
  /** The words: word `i` holds bits `32 * i` to `32 * i + 31`. */
  readonly words: Uint32Array;

  /** @param bits - bit numbers to set initially */
  constructor(bits: Iterable<number> = []) {
    this.words = new Uint32Array(FEATURE_WORDS);
    for (const b of bits) this.set(b);
  }

  /** Builds a set from 32-bit words (missing words are zero, extra words are ignored). */
  static fromWords(words: ArrayLike<number>): Features {
    const f = new Features();
    for (let i = 0; i < FEATURE_WORDS && i < words.length; i++) f.words[i] = words[i] >>> 0;
    return f;
  }

  private static check(bit: number): void {
    if (!Number.isInteger(bit) || bit < 0 || bit >= FEATURE_WORDS * 32) {
      throw new VirtioError('INVALID_ARGUMENT', `feature bit ${String(bit)} out of range`);
    }
  }

  /** True when `bit` is set. Bits outside 0..127 are never set. */
  has(bit: number): boolean {
    if (!Number.isInteger(bit) || bit < 0 || bit >= FEATURE_WORDS * 32) return false;
    return ((this.words[bit >>> 5] >>> (bit & 31)) & 1) === 1;
  }

  /** Sets `bit`; returns this. @throws VirtioError `INVALID_ARGUMENT` outside 0..127 */
  set(bit: number): this {
    Features.check(bit);
    this.words[bit >>> 5] |= 1 << (bit & 31);
    return this;
  }

  /** Clears `bit`; returns this. @throws VirtioError `INVALID_ARGUMENT` outside 0..127 */
  clear(bit: number): this {
    Features.check(bit);
    this.words[bit >>> 5] &= ~(1 << (bit & 31));
    return this;
  }

  /** Word `index` (0 past the last word, as an unimplemented selector reads). */
  word(index: number): number {
    return index >= 0 && index < FEATURE_WORDS ? this.words[index] : 0;
  }

  /** A new set holding the bits set in both. */
  and(other: Features): Features {
    const f = new Features();
    for (let i = 0; i < FEATURE_WORDS; i++) f.words[i] = (this.words[i] & other.words[i]) >>> 0;
    return f;
  }

  /** A new set holding the bits set in either. */
  or(other: Features): Features {
    const f = new Features();
    for (let i = 0; i < FEATURE_WORDS; i++) f.words[i] = (this.words[i] | other.words[i]) >>> 0;
    return f;
  }

  /** True when every bit of this set is also in `other`. */
  isSubsetOf(other: Features): boolean {
    for (let i = 0; i < FEATURE_WORDS; i++) if ((this.words[i] & ~other.words[i]) !== 0) return false;
    return true;
  }

  /** True when both sets hold the same bits. */
  equals(other: Features): boolean {
    for (let i = 0; i < FEATURE_WORDS; i++) if (this.words[i] !== other.words[i]) return false;
    return true;
  }

  /** A copy of this set. */
  clone(): Features {
    return Features.fromWords(this.words);
  }

  /** The set bits in ascending order. */
  bits(): number[] {
    const out: number[] = [];
    for (let b = 0; b < FEATURE_WORDS * 32; b++) if (this.has(b)) out.push(b);
    return out;
  }

  /** Hex words, most significant first, e.g. `0x00000000_00000001_30000000` trimmed of zero words. */
  toString(): string {
    let top = FEATURE_WORDS - 1;
    while (top > 0 && this.words[top] === 0) top--;
    const parts: string[] = [];
    for (let i = top; i >= 0; i--) parts.push(this.words[i].toString(16).padStart(8, '0'));
    return `0x${parts.join('_')}`;
  }
}
