/**
 * The README's promises, kept true: the embedding example runs against the built package, and the
 * demo (`npm run demo`) completes with identical read-back data and no guest errors.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runDemo } from '../src/cli/demo.js';

const ROOT = join(import.meta.dirname, '..');

describe('README examples', () => {
  it('examples/embed.mjs runs against dist/ and round-trips a sector', () => {
    // npm test builds dist/ (tsc -b) before running vitest.
    expect(existsSync(join(ROOT, 'dist', 'index.js'))).toBe(true);
    const out = execFileSync(process.execPath, [join(ROOT, 'examples', 'embed.mjs')], { encoding: 'utf8' });
    expect(out).toContain('magic 0x74726976');
    expect(out).toContain('read back "hello from the guest"');
    expect(out).toContain('the backing store holds "hello from the guest"');
    expect(out).toContain('guest errors: 0');
  });

  it('the demo (npm run demo) reads entropy and round-trips a file-backed disk on both versions', () => {
    const lines = runDemo();
    const text = lines.join('\n');
    expect(text).toContain('== virtio-mmio Version 2');
    expect(text).toContain('== virtio-mmio Version 1 (legacy)');
    expect(lines.filter((l) => l.includes('read back: identical'))).toHaveLength(2);
    expect(text).not.toContain('DIFFERENT');
    for (const l of lines.filter((x) => /^(rng|blk)0: \d+ trapped accesses/.test(x)))
      expect(l).toContain('guest errors 0');
    // The interrupt path of the standard line: one status read, one ACK, one EOI per interrupt.
    for (const l of lines.filter((x) => x.includes('interrupt path'))) {
      const [isr, ack, eoi, n] = (l.match(/\d+/g) ?? []).map(Number);
      expect([isr, ack, eoi]).toEqual([n, n, n]);
    }
    // The chosen interrupt mode is visible, with its counted cost.
    expect(text).toMatch(/mode line +1 status read, 1 ack, 1 IO-APIC EOI = 3 trapped accesses/);
    expect(text).toMatch(/mode lines-per-queue +0 status read, 1 ack, 1 IO-APIC EOI = 2 trapped accesses/);
    expect(text).toMatch(/mode msi-per-queue +0 status read, 0 ack, 0 IO-APIC EOI = 0 trapped accesses/);
    expect(text).toMatch(/mode msi-shared +0 status read, 0 ack, 0 IO-APIC EOI = 0 trapped accesses/);
  });
});
