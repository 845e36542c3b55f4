import { describe, expect, it } from 'vitest';
import { RngDevice } from '../device/index.js';
import { activateWithFakeContext } from '../testing/index.js';
import { NodeEntropySource } from './nodeEntropy.js';

describe('NodeEntropySource', () => {
  it('fills the whole buffer, differently each time', () => {
    const s = new NodeEntropySource();
    const a = new Uint8Array(64);
    const b = new Uint8Array(64);
    s.fill(a);
    s.fill(b);
    // 2^-512 chance of a false failure per comparison.
    expect(a.every((v) => v === 0)).toBe(false);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
  });

  it('feeds an rng device end to end', () => {
    const dev = new RngDevice({ entropy: new NodeEntropySource() });
    const ctx = activateWithFakeContext(dev);
    const buf = ctx.alloc(128);
    ctx.drivers[0].add([], [{ addr: buf, len: 128 }], 1);
    ctx.kick(dev, 0);
    expect(ctx.harvest(0)).toEqual([{ token: 1, len: 128 }]);
    expect(ctx.bytes(buf, 128).every((v) => v === 0)).toBe(false);
    expect(dev.counters.sourceErrors).toBe(0);
  });
});
