/**
 * The campaign runner (fallback for Jazzer.js, whose prebuilt fuzzer needs glibc 2.38: see
 * docs/threat-model.md). fast-check generates inputs: random byte strings, and mutations of the
 * corpus (bit flips, byte sets, splices, truncations), time-boxed per target. A failing input is
 * shrunk by fast-check and saved under fuzz/findings/<target>/ for replay as a regression.
 *
 * @packageDocumentation
 */

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import type { FuzzTarget } from './targets/index.js';

/** fuzz/ on disk. */
export const FUZZ_DIR = import.meta.dirname;

/** The saved inputs of `target` (corpus and findings), as [file, bytes]. */
export function corpusOf(target: string, dir = 'corpus'): Array<[string, Uint8Array]> {
  const d = join(FUZZ_DIR, dir, target);
  if (!existsSync(d)) return [];
  return readdirSync(d)
    .filter((f) => !f.startsWith('.') && !f.endsWith('.md'))
    .sort()
    .map((f) => [f, new Uint8Array(readFileSync(join(d, f)))]);
}

/** Mutates `seed` with fuzzer-chosen edits. */
function mutationArb(seeds: Uint8Array[]): fc.Arbitrary<Uint8Array> {
  return fc
    .tuple(
      fc.constantFrom(...seeds),
      fc.array(fc.tuple(fc.nat(7), fc.nat(), fc.nat(255), fc.uint8Array({ maxLength: 32 })), {
        maxLength: 8,
      }),
    )
    .map(([seed, edits]) => {
      let b = Uint8Array.from(seed);
      for (const [kind, pos, val, ins] of edits) {
        const p = b.length === 0 ? 0 : pos % b.length;
        if (kind <= 2 && b.length > 0) b[p] ^= 1 << (val & 7);
        else if (kind <= 4 && b.length > 0) b[p] = val;
        else if (kind === 5) b = Uint8Array.from([...b.subarray(0, p), ...ins, ...b.subarray(p)]);
        else if (kind === 6) b = b.subarray(0, p);
        else b = Uint8Array.from([...b, ...ins]);
      }
      return b;
    });
}

/** Input arbitrary of a campaign: random bytes, plus corpus mutations when there is a corpus. */
export function inputArb(target: string): fc.Arbitrary<Uint8Array> {
  const seeds = corpusOf(target).map(([, b]) => b);
  const random = fc.uint8Array({ minLength: 1, maxLength: 2048, size: 'max' });
  return seeds.length === 0 ? random : fc.oneof(random, mutationArb(seeds));
}

/** Result of one campaign. */
export interface CampaignResult {
  target: string;
  executions: number;
  seconds: number;
  failure: string | null;
  saved: string | null;
}

/** Runs `target` for `seconds`; saves a (shrunk) failing input under fuzz/findings/<target>/. */
export function campaign(target: FuzzTarget, seconds: number, seed = Date.now()): CampaignResult {
  let executions = 0;
  const start = Date.now();
  const out = fc.check(
    fc.property(inputArb(target.name), (data) => {
      executions++;
      target.run(data);
    }),
    { numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: seconds * 1000, seed, endOnFailure: false },
  );
  let saved: string | null = null;
  let failure: string | null = null;
  if (out.failed && out.counterexample !== null) {
    const input = out.counterexample[0] as Uint8Array;
    const dir = join(FUZZ_DIR, 'findings', target.name);
    mkdirSync(dir, { recursive: true });
    const name = createHash('sha1').update(input).digest('hex').slice(0, 16);
    saved = join(dir, name);
    writeFileSync(saved, input);
    failure = String(out.errorInstance instanceof Error ? out.errorInstance.message : out.errorInstance);
  }
  return { target: target.name, executions, seconds: (Date.now() - start) / 1000, failure, saved };
}

/**
 * Seeds `fuzz/corpus/<target>/`: runs random inputs and keeps those that reach a depth key (see
 * lib/stats.ts) no kept input reached yet, at most `max` of them. Returns the file names written.
 */
export function seedCorpus(
  target: FuzzTarget,
  stats: Map<string, number>,
  runs: number,
  max: number,
  seed: number,
): string[] {
  const seen = new Set<string>();
  const kept: string[] = [];
  const dir = join(FUZZ_DIR, 'corpus', target.name);
  mkdirSync(dir, { recursive: true });
  for (const data of fc.sample(fc.uint8Array({ minLength: 1, maxLength: 2048, size: 'max' }), {
    numRuns: runs,
    seed,
  })) {
    if (kept.length >= max) break;
    stats.clear();
    try {
      target.run(data);
    } catch {
      continue;
    }
    const fresh = [...stats.keys()].filter((k) => !seen.has(k));
    if (fresh.length === 0) continue;
    for (const k of fresh) seen.add(k);
    const name = `${fresh[0].replace(/[^a-z0-9-]/gi, '_')}-${createHash('sha1').update(data).digest('hex').slice(0, 10)}`;
    writeFileSync(join(dir, name), data);
    kept.push(name);
  }
  return kept;
}
