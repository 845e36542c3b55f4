import { describe, expect, it } from 'vitest';
import {
  coveredBytes,
  formatLinuxReport,
  type LinuxCheckReport,
  printLinuxCheck,
  RecordingEntropy,
  runLinuxCheck,
} from './linuxCheck.js';

describe('linux check helpers', () => {
  it('the recording entropy source is deterministic and keeps what it produced', () => {
    const a = new RecordingEntropy(7);
    const b = new RecordingEntropy(7);
    const x = new Uint8Array(100);
    const y = new Uint8Array(100);
    a.fill(x);
    b.fill(y);
    expect(x).toEqual(y);
    a.fill(new Uint8Array(70_000));
    expect(a.produced.length).toBe(70_100);
    expect(a.produced.subarray(0, 100)).toEqual(x);
  });

  it('coveredBytes accepts a sample stitched from pieces of the stream and rejects foreign bytes', () => {
    const e = new RecordingEntropy(1);
    e.fill(new Uint8Array(4096));
    const s = e.produced;
    const stitched = new Uint8Array([...s.subarray(100, 140), ...s.subarray(3000, 3064)]);
    expect(coveredBytes(stitched, s)).toBe(104);
    const foreign = new RecordingEntropy(2);
    foreign.fill(new Uint8Array(64));
    expect(coveredBytes(foreign.produced, s)).toBeLessThan(8);
    expect(coveredBytes(new Uint8Array(0), s)).toBe(0);
  });

  it('formats missing prerequisites and scenario failures', () => {
    const base: LinuxCheckReport = {
      ok: false,
      missing: ['linux guest files missing in /x: vmlinuz (run scripts/fetch-linux-guest.sh)'],
      kernel: 'unknown',
      v86: '0.5.462',
      bootMs: 0,
      saveMs: 0,
      stateBytes: 0,
      bootProblems: [],
      scenarios: [],
      totalMs: 1,
    };
    expect(formatLinuxReport(base)).toMatch(
      /not run, missing prerequisites:\n {2}- linux guest files missing/,
    );
    const ran = formatLinuxReport({
      ...base,
      missing: [],
      bootMs: 12_000,
      scenarios: [
        {
          name: 'rng',
          title: 't',
          ok: false,
          restoreMs: 100,
          runMs: 2000,
          checks: ['a'],
          failures: ['status 7'],
          guestProblems: [],
        },
      ],
    });
    expect(ran).toMatch(/FAIL rng/);
    expect(ran).toMatch(/✗ status 7/);
    expect(ran).toMatch(/FAILED in/);
  });

  it('reports missing guest files as a failure without booting', async () => {
    const report = await runLinuxCheck({ guestDir: '/nonexistent/linux-guest' });
    expect(report.ok).toBe(false);
    expect(report.scenarios).toEqual([]);
    expect(report.missing.join('\n')).toMatch(/vmlinuz.*run scripts\/fetch-linux-guest\.sh/);
    const lines: string[] = [];
    expect(await printLinuxCheck({ guestDir: '/nonexistent/linux-guest' }, (l) => lines.push(l))).toBe(1);
    expect(lines.join('\n')).toMatch(/not run, missing prerequisites/);
  });
});
