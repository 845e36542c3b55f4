/**
 * Replays what Jazzer.js kept (.cache/jazzer/corpus/<target>/, the inputs that found new coverage)
 * together with the seed corpus (fuzz/corpus/<target>/) through the TypeScript sources, and prints
 * the depth counters they reach. Not part of `npm test`; used to measure a Jazzer.js campaign with
 * the same tools as the fallback runner (add the `--coverage.*` flags of fuzz/README.md):
 *
 *   npx vitest run --config fuzz/vitest.config.ts fuzz/jazzer/replay.fuzz.ts
 *
 * JAZZER_TARGETS (comma list) restricts the targets.
 */

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stats } from '../lib/stats.js';
import { TARGETS } from '../targets/index.js';

const ROOT = join(import.meta.dirname, '..', '..');
const only = process.env.JAZZER_TARGETS?.split(',').filter((s) => s !== '');

function inputs(dir: string): Array<[string, Uint8Array]> {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => !f.startsWith('.') && !f.endsWith('.md'))
    .sort()
    .map((f) => [join(dir, f), new Uint8Array(readFileSync(join(dir, f)))]);
}

describe('jazzer corpus replay', () => {
  for (const t of TARGETS.filter((x) => only === undefined || only.includes(x.name))) {
    it(t.name, { timeout: 600_000 }, () => {
      const seeds = inputs(join(ROOT, 'fuzz', 'corpus', t.name));
      const kept = inputs(join(ROOT, '.cache', 'jazzer', 'corpus', t.name));
      stats.clear();
      const failing: string[] = [];
      for (const [file, data] of [...seeds, ...kept]) {
        try {
          t.run(data);
        } catch (e) {
          failing.push(`${file}: ${(e as Error).message}`);
        }
      }
      const depth = [...stats].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`);
      console.log(`replay ${t.name}: ${seeds.length} seeds + ${kept.length} kept by Jazzer.js`);
      console.log(`depth ${t.name} (${stats.size} keys): ${depth.join(' ')}`);
      expect(seeds.length + kept.length).toBeGreaterThan(0);
      expect(failing).toEqual([]);
    });
  }
});
