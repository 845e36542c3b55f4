/**
 * The fuzz targets can fail: with a mutant planted (guest memory's `isValid` lying for ranges
 * past RAM, so descriptor checks pass while the accesses do not), a fixed sample of inputs finds
 * it in both the queue target and a device target. Guards against targets whose invariants are
 * vacuous. The mutant lives only in this test file's worker (pool: forks).
 */

import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { TARGETS } from '../../fuzz/targets/index.js';
import { RamMemory } from '../../src/memory/index.js';

const original = RamMemory.prototype.isValid;
afterEach(() => {
  RamMemory.prototype.isValid = original;
});

function failures(name: string, inputs: Uint8Array[]): number {
  const t = TARGETS.find((x) => x.name === name);
  if (t === undefined) throw new Error(`no target ${name}`);
  let n = 0;
  for (const x of inputs) {
    try {
      t.run(x);
    } catch {
      n++;
    }
  }
  return n;
}

describe('fuzz targets detect a planted bounds bug', () => {
  it('isValid that accepts any range under 1 MiB: queue and device-blk targets fail', () => {
    const inputs = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 2048, size: 'max' }), {
      numRuns: 1500,
      seed: 5,
    });
    expect(failures('queue', inputs)).toBe(0);
    RamMemory.prototype.isValid = function (this: RamMemory, gpa: number, length: number): boolean {
      return length < 0x10_0000 ? gpa >= 0 : original.call(this, gpa, length);
    };
    expect(failures('queue', inputs)).toBeGreaterThan(0);
    expect(failures('device-blk', inputs)).toBeGreaterThan(0);
  });
});
