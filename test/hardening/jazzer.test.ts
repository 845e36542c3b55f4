/**
 * The Jazzer.js entry point (fuzz/jazzer/entry.ts) and its CommonJS bundle (fuzz/jazzer/bundle.mjs).
 * Jazzer.js itself is not needed here (it is installed by scripts/install-jazzer.sh, outside the
 * package): these check that every registered target is reachable through the entry, and that
 * the bundle Jazzer.js instruments still builds and runs as CommonJS as targets are added.
 */

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fuzz, selectTarget, targetNames } from '../../fuzz/jazzer/entry.js';
import { corpusOf } from '../../fuzz/runner.js';
import { TARGETS } from '../../fuzz/targets/index.js';

const ROOT = join(import.meta.dirname, '..', '..');

describe('jazzer entry', () => {
  it('lists every registered target, in registry order', () => {
    expect(targetNames).toEqual(TARGETS.map((t) => t.name));
  });

  it('selects a target by name', () => {
    for (const t of TARGETS) expect(selectTarget(t.name)).toBe(t);
  });

  it('refuses a missing or unknown target name', () => {
    expect(() => selectTarget(undefined)).toThrow(/JAZZER_TARGET must name a fuzz target/);
    expect(() => selectTarget('nosuch')).toThrow(/got 'nosuch'/);
    expect(() => selectTarget('')).toThrow(/JAZZER_TARGET/);
  });

  it('fuzz() runs an input through the target named by JAZZER_TARGET', () => {
    const saved = process.env.JAZZER_TARGET;
    process.env.JAZZER_TARGET = 'queue';
    try {
      const [, data] = corpusOf('queue')[0];
      expect(() => fuzz(data)).not.toThrow();
      expect(() => fuzz(new Uint8Array(0))).not.toThrow();
    } finally {
      if (saved === undefined) delete process.env.JAZZER_TARGET;
      else process.env.JAZZER_TARGET = saved;
    }
  });
});

describe('jazzer bundle', () => {
  const dir = mkdtempSync(join(tmpdir(), 'jazzer-bundle-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('builds one CommonJS file that runs every target on its first saved input', { timeout: 60_000 }, () => {
    const out = join(dir, 'entry.cjs');
    execFileSync(process.execPath, [join(ROOT, 'fuzz', 'jazzer', 'bundle.mjs'), out], { stdio: 'pipe' });
    const bundle = createRequire(import.meta.url)(out) as typeof import('../../fuzz/jazzer/entry.js');
    expect(bundle.targetNames).toEqual(targetNames);
    for (const name of bundle.targetNames) {
      const data = corpusOf(name)[0]?.[1] ?? new Uint8Array(0);
      expect(() => bundle.selectTarget(name).run(data), name).not.toThrow();
    }
    expect(() => bundle.selectTarget('nosuch')).toThrow(/got 'nosuch'/);
  });
});
