/**
 * `npm run fuzz` / scripts/fuzz-smoke.sh: one time-boxed campaign per target.
 * FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (comma list, default all), FUZZ_SEED.
 */

import { describe, expect, it } from 'vitest';
import { stats } from './lib/stats.js';
import { campaign } from './runner.js';
import { TARGETS } from './targets/index.js';

const seconds = Number(process.env.FUZZ_SECONDS ?? 60);
const only = process.env.FUZZ_TARGETS?.split(',').filter((s) => s !== '');
const seed = process.env.FUZZ_SEED === undefined ? Date.now() : Number(process.env.FUZZ_SEED);

describe('fuzz campaign', () => {
  for (const t of TARGETS.filter((t) => only === undefined || only.includes(t.name))) {
    it(t.name, { timeout: (seconds + 120) * 1000 }, () => {
      stats.clear();
      const r = campaign(t, seconds, seed);
      const depth = [...stats].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`);
      console.log(`depth ${t.name}: ${depth.join(' ')}`);
      console.log(
        `fuzz ${r.target}: ${r.executions} executions in ${r.seconds.toFixed(1)} s (seed ${seed})` +
          (r.failure === null ? '' : `: FINDING ${r.failure} saved to ${r.saved}`),
      );
      expect(r.failure, `finding saved to ${r.saved}`).toBeNull();
    });
  }
});
