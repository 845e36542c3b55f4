/**
 * `virtio-mmio check qemu`: runs every QEMU peer check (part 2 scenarios, the console scenarios and
 * the net frame scenarios; part 3 differential comparison and departure probes) and builds a
 * readable conformance report.
 *
 * @packageDocumentation
 */

import { qemuConsoleScenarios } from './consoleScenarios.js';
import {
  type Comparison,
  compareGeneratedRng,
  compareRecordedFlow,
  departure,
  probeDepartures,
  QEMU_DEPARTURES,
  TWIN_DISK_BYTES,
} from './differential.js';
import { qemuNetFrameScenarios } from './netScenarios.js';
import { QemuMicrovm, qemuAvailability } from './qemuProcess.js';
import { qemuScenarios, runScenario, type ScenarioResult } from './scenarios.js';

/** Generated sequences per register layout version in the full check. */
export const QEMU_GENERATED_SEQUENCES = 200;

/** Seed of the first generated sequence (sequence i uses seed + i; reported on failure). */
export const QEMU_GENERATED_SEED = 0x5151;

/** One section of the report. */
export interface ReportSection {
  /** Section title. */
  readonly title: string;
  /** Results in order. */
  readonly results: ScenarioResult[];
}

/** The conformance report of a peer check. */
export interface Report {
  /** Peer name. */
  readonly peer: 'qemu';
  /** QEMU binary used, or null. */
  readonly binary: string | null;
  /** QEMU version line, or null. */
  readonly qemuVersion: string | null;
  /** False when QEMU is missing (then `skipped` says why and nothing ran). */
  readonly available: boolean;
  /** Why the check did not run, or null. */
  readonly skipped: string | null;
  /** Sections in order. */
  readonly sections: ReportSection[];
  /** True when QEMU was available and every result passed. */
  readonly ok: boolean;
  /** Total wall time in milliseconds. */
  readonly ms: number;
}

/** Options of {@link runQemuCheck}. */
export interface QemuCheckOptions {
  /** Generated sequences per version (default {@link QEMU_GENERATED_SEQUENCES}). */
  sequences?: number;
  /** First seed (default {@link QEMU_GENERATED_SEED}). */
  seed?: number;
  /** Called after each result (progress output). */
  onResult?: (section: string, result: ScenarioResult) => void;
}

function describeComparison(c: Comparison): string {
  const norm = Object.entries(c.normalised)
    .map(([k, v]) => `${k} ${String(v)}`)
    .join(', ');
  return `${String(c.compared)} accesses compared${norm === '' ? '' : `; not compared or normalised: ${norm}`}`;
}

/** Runs `body` on a fresh machine and times it; never throws. */
async function timed(
  name: string,
  version: 1 | 2,
  body: (vm: QemuMicrovm) => { ok: boolean; detail: string },
): Promise<ScenarioResult> {
  const start = performance.now();
  let vm: QemuMicrovm | null = null;
  try {
    vm = await QemuMicrovm.start({
      version,
      devices: [{ kind: 'rng' }, { kind: 'blk', size: TWIN_DISK_BYTES }, { kind: 'net' }],
    });
    const r = body(vm);
    return { name, ok: r.ok, detail: r.detail, ms: performance.now() - start };
  } catch (e) {
    const detail = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { name, ok: false, detail, ms: performance.now() - start };
  } finally {
    await vm?.close();
  }
}

/** The part-3 checks of one version: recorded flow, generated sequences, departure probes. */
export async function differentialResults(
  version: 1 | 2,
  sequences: number,
  seed: number,
): Promise<ScenarioResult[]> {
  const out: ScenarioResult[] = [];
  for (const kind of ['rng', 'blk'] as const) {
    out.push(
      await timed(`v${String(version)} recorded ${kind} driver flow`, version, (vm) => {
        const c = compareRecordedFlow(vm, kind);
        const first = c.mismatches[0];
        return {
          ok: c.mismatches.length === 0,
          detail:
            first === undefined
              ? describeComparison(c)
              : `access ${String(first.at)}: ${first.message} (${String(c.mismatches.length)} differences)`,
        };
      }),
    );
  }
  out.push(
    await timed(`v${String(version)} ${String(sequences)} generated sequences`, version, (vm) => {
      const g = compareGeneratedRng(vm, sequences, seed);
      const norm = Object.entries(g.normalised)
        .map(([k, v]) => `${k} ${String(v)}`)
        .join(', ');
      if (g.failures.length === 0) {
        return {
          ok: true,
          detail: `${String(g.accesses)} accesses and ${String(g.requests)} rng requests compared (seeds ${String(seed)}..${String(seed + sequences - 1)}); not compared or normalised: ${norm}`,
        };
      }
      const f = g.failures[0];
      return {
        ok: false,
        detail: `${String(g.failures.length)} sequences differ; first: seed ${String(f.seed)} access ${String(f.mismatches[0].at)}: ${f.mismatches[0].message}`,
      };
    }),
  );
  out.push(
    await timed(`v${String(version)} departure probes`, version, (vm) => {
      const obs = probeDepartures(vm);
      const missing = obs.filter((o) => !o.observed);
      const detail = obs
        .map(
          (o) =>
            `${o.name} [${departure(o.name).section}]: ${o.observed ? 'observed' : 'NOT observed'}, ${o.detail}`,
        )
        .join('; ');
      return {
        ok: missing.length === 0,
        detail:
          missing.length === 0
            ? detail
            : `QEMU no longer behaves as docs/qemu-departures.md says for ${missing.map((m) => m.name).join(', ')}: ${detail}`,
      };
    }),
  );
  return out;
}

/** The QEMU version line of `binary`, or null. */
async function versionOf(binary: string): Promise<string | null> {
  const { execFileSync } = await import('node:child_process');
  try {
    return execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 }).split('\n')[0];
  } catch {
    return null;
  }
}

/**
 * Runs every QEMU peer check and returns the report (exposed as `virtio-mmio check qemu`). Never
 * throws: a missing QEMU gives a report with `available: false` and `ok: false`.
 */
export async function runQemuCheck(options: QemuCheckOptions = {}): Promise<Report> {
  const start = performance.now();
  const avail = qemuAvailability();
  if (!avail.available) {
    return {
      peer: 'qemu',
      binary: avail.binary,
      qemuVersion: null,
      available: false,
      skipped: avail.reason,
      sections: [],
      ok: false,
      ms: performance.now() - start,
    };
  }
  const sequences = options.sequences ?? QEMU_GENERATED_SEQUENCES;
  const seed = options.seed ?? QEMU_GENERATED_SEED;
  const drivers: ReportSection = { title: 'our drivers drive QEMU devices (qtest)', results: [] };
  for (const s of [...qemuScenarios(), ...qemuConsoleScenarios(), ...qemuNetFrameScenarios()]) {
    const r = await runScenario(s);
    drivers.results.push(r);
    options.onResult?.(drivers.title, r);
  }
  const diff: ReportSection = { title: 'differential register behaviour (QEMU vs ours)', results: [] };
  for (const v of [2, 1] as const) {
    for (const r of await differentialResults(v, sequences, seed)) {
      diff.results.push(r);
      options.onResult?.(diff.title, r);
    }
  }
  const sections = [drivers, diff];
  return {
    peer: 'qemu',
    binary: avail.binary,
    qemuVersion: await versionOf(avail.binary as string),
    available: true,
    skipped: null,
    sections,
    ok: sections.every((s) => s.results.every((r) => r.ok)),
    ms: performance.now() - start,
  };
}

/** Formats milliseconds for the report. */
function ms(n: number): string {
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${n.toFixed(0)} ms`;
}

/** The report as text: one line per check with PASS/FAIL and time, the departures, a summary. */
export function formatQemuReport(report: Report): string {
  const lines: string[] = [];
  lines.push(
    `virtio-mmio conformance against QEMU${report.qemuVersion === null ? '' : ` (${report.qemuVersion})`}`,
  );
  if (!report.available) {
    lines.push(`SKIPPED: ${report.skipped ?? 'qemu unavailable'}`);
    lines.push('result: FAIL (nothing was checked)');
    return lines.join('\n');
  }
  lines.push(`binary: ${report.binary ?? '?'}`);
  let pass = 0;
  let fail = 0;
  for (const s of report.sections) {
    lines.push('', `${s.title}:`);
    for (const r of s.results) {
      if (r.ok) pass++;
      else fail++;
      lines.push(`  ${r.ok ? 'PASS' : 'FAIL'}  ${r.name.padEnd(40)} ${ms(r.ms).padStart(9)}  ${r.detail}`);
    }
  }
  lines.push('', 'known QEMU departures (kept out of the comparison, see docs/qemu-departures.md):');
  for (const d of QEMU_DEPARTURES) lines.push(`  - ${d.name} [${d.section}]`);
  lines.push(
    '',
    `result: ${report.ok ? 'PASS' : 'FAIL'}: ${String(pass)} passed, ${String(fail)} failed in ${ms(report.ms)}`,
  );
  return lines.join('\n');
}

/**
 * The body of `virtio-mmio check qemu`: runs {@link runQemuCheck}, writes one progress line per
 * result as it finishes, then the report, and returns the process exit code (0 only when QEMU was
 * there and everything passed).
 */
export async function printQemuCheck(
  options: Omit<QemuCheckOptions, 'onResult'> = {},
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<number> {
  const report = await runQemuCheck({
    ...options,
    onResult: (_section, r) => write(`${r.ok ? 'PASS' : 'FAIL'} ${r.name} (${ms(r.ms)})`),
  });
  write('');
  write(formatQemuReport(report));
  return report.ok ? 0 : 1;
}
