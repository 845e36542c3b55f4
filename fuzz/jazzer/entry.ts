/**
 * Jazzer.js entry point for every fuzz target (issue 9): `fuzz(data)` runs one input through the
 * target named by `JAZZER_TARGET` and lets an invariant violation throw, which Jazzer.js reports
 * as a finding (exit 77, input saved as `crash-<sha1>`). The targets are consumed read-only from
 * the registry in fuzz/targets/index.ts.
 *
 * Jazzer.js 2.1 instruments CommonJS only (require hooks), so fuzz/jazzer/bundle.mjs bundles this
 * file with everything it reaches (fuzz/lib, fuzz/targets, src) into one CommonJS file that
 * Jazzer.js instruments as a whole. Run through fuzz/jazzer/run.sh (`npm run fuzz:jazzer`).
 *
 * @packageDocumentation
 */

import { type FuzzTarget, TARGETS } from '../targets/index.js';

/** Names of every registered target, in registry order (fuzz/jazzer/run.sh lists them). */
export const targetNames: readonly string[] = TARGETS.map((t) => t.name);

/** The target a name selects; throws (a harness error, not a finding) when there is none. */
export function selectTarget(name: string | undefined): FuzzTarget {
  const t = TARGETS.find((x) => x.name === name);
  if (t === undefined) {
    throw new Error(`JAZZER_TARGET must name a fuzz target (${targetNames.join(', ')}), got '${name ?? ''}'`);
  }
  return t;
}

let selected: FuzzTarget | undefined;

/** Jazzer.js fuzz function: one input through the selected target; a finding throws. */
export function fuzz(data: Uint8Array): void {
  selected ??= selectTarget(process.env.JAZZER_TARGET);
  selected.run(data);
}
