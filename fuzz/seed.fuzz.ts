/**
 * Regenerates the seed corpus (fuzz/corpus/<target>/): `FUZZ_SEED_CORPUS=1 npm run fuzz -- fuzz/seed.fuzz.ts`.
 * Skipped unless FUZZ_SEED_CORPUS is set.
 */

import { describe, expect, it } from 'vitest';
import { stats } from './lib/stats.js';
import { seedCorpus } from './runner.js';
import { TARGETS } from './targets/index.js';

describe.runIf(process.env.FUZZ_SEED_CORPUS !== undefined)('seed corpus', () => {
  const only = process.env.FUZZ_TARGETS?.split(',').filter((s) => s !== '');
  for (const t of TARGETS.filter((x) => only === undefined || only.includes(x.name))) {
    it(t.name, () => {
      const kept = seedCorpus(t, stats, 3000, 24, 0x5eed);
      console.log(`corpus ${t.name}: ${kept.length} inputs`);
      expect(kept.length).toBeGreaterThan(0);
    });
  }
});
