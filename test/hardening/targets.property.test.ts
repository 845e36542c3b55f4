/**
 * The fuzz targets as fast-check properties, in `npm test`: a fixed-seed sample of inputs per
 * target (random bytes and corpus mutations), each asserting every invariant of the target
 * (no escaping exception, no access outside RAM, bounded work, NEEDS_RESET then recovery, clean
 * driver failure). Longer campaigns: `npm run fuzz`.
 */

import fc from 'fast-check';
import { describe, it } from 'vitest';
import { inputArb } from '../../fuzz/runner.js';
import { TARGETS } from '../../fuzz/targets/index.js';

/** Runs per target, sized so each stays around a second on a shared CI machine. */
const RUNS: Record<string, number> = {
  'driver-rng': 150,
  'driver-blk': 150,
  'driver-net': 150,
  transport: 400,
  'seed-msi': 400,
};

describe('fuzz targets hold their invariants (property)', () => {
  for (const t of TARGETS) {
    it(t.name, () => {
      fc.assert(
        fc.property(inputArb(t.name), (data) => {
          t.run(data);
        }),
        { numRuns: RUNS[t.name] ?? 1000, seed: 0x9e3779b9 },
      );
    });
  }
});
