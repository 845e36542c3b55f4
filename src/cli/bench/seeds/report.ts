/**
 * Output of the seeds' benchmark: the seeds-shaped table (mode by trans/s, each run and the
 * median, with the counts per transaction and the ratios), the JSON file and a short Markdown
 * report.
 *
 * @packageDocumentation
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type SeedsChart, writeSeedsCharts } from './charts.js';
import type { SeedsBenchResult, SeedsResultEntry } from './results.js';

/**
 * The seeds' headline (netperf TCP_RR 32/1024 B on KVM, trans/s, three runs; "[PATCH v1 2/2]
 * virtio-mmio: features for version 3", Dec 2019), for the table's last lines.
 */
export const SEEDS_REFERENCE = {
  'virtio-pci': [9536, 9734, 9894],
  'virtio-mmio': [6939, 7029, 7095],
  'virtio-mmio+MSI': [9500, 9749, 9318],
} as const;

/** The seeds' MSI-over-line ratio (medians): 9500 / 7029. */
export const SEEDS_MSI_OVER_LINE = 9500 / 7029;

/** Table titles per workload. */
const WORKLOAD_TITLES: Record<string, string> = {
  rr: 'rr: request/response 32/1024 B (netperf TCP_RR-like), trans/s; counts per transaction',
  'rr-mq':
    'rr-mq: two such flows on two vCPUs, one or two queue pairs, trans/s summed; counts per transaction (both vCPUs), ipis = completions forwarded to the other vCPU',
  'blk-qd1': 'blk-qd1: 4 KiB random read/write 50/50, queue depth 1 (fio-like), IOPS; counts per I/O',
  'blk-qd32': 'blk-qd32: 4 KiB random read/write 50/50, queue depth 32 (fio-like), IOPS; counts per I/O',
};

function int(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-';
}

function dec(x: number, digits = 2): string {
  return Number.isFinite(x) && x >= 0 ? x.toFixed(digits) : '-';
}

function ratioText(x: number | null): string {
  return x === null ? 'n/a' : `${x.toFixed(2)}x`;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

/** Table rows for one workload's entries (header first). */
function rows(entries: readonly SeedsResultEntry[], ideal: number | undefined): string[][] {
  const runs = Math.max(0, ...entries.map((e) => e.runs.length));
  const head = ['mode'];
  for (let i = 0; i < runs; i++) head.push(`run ${i + 1}`);
  head.push('median', '/ideal', 'exits', 'doorbells', 'irqs', 'handler', 'hlt', 'p50 us', 'p99 us', 'cores');
  const withIpis = entries.some((e) => e.ipis !== undefined);
  if (withIpis) head.push('ipis');
  const out = [head];
  for (const e of entries) {
    const r = [e.mode];
    for (let i = 0; i < runs; i++) r.push(int(e.runs[i] ?? Number.NaN));
    r.push(
      int(e.value),
      ideal === undefined || !(ideal > 0) ? '-' : dec(e.value / ideal),
      dec(e.exits),
      dec(e.doorbells),
      dec(e.interrupts),
      dec(e.handlerAccesses),
      dec(e.hltWakeups),
      dec(e.latencyUs.p50, 1),
      dec(e.latencyUs.p99, 1),
      dec(e.cpuCores),
    );
    if (withIpis) r.push(dec(e.ipis ?? Number.NaN));
    out.push(r);
  }
  return out;
}

/**
 * The seeds-shaped table as lines: per mode each run's trans/s and the median, the fraction of
 * the ideal bound, and per transaction the synchronous exits, posted doorbells, interrupts, guest
 * interrupt-handler accesses and halt wake-ups; latency p50/p99; then the ratios beside the seeds'.
 */
export function formatSeedsTable(result: SeedsBenchResult): string[] {
  const c = result.config;
  const m = result.machine;
  const lines: string[] = [];
  lines.push(`${c.runs} timed runs of ${c.durationMs} ms per mode, value = median`);
  lines.push(
    `waiting policy: vcpuSpin ${c.wait.vcpuSpin}, vmmSpin ${c.wait.vmmSpin}${c.wait.vcpuSpin === 0 && c.wait.vmmSpin === 0 ? ' (block at once)' : ''}`,
  );
  lines.push(`machine: ${m.cpu}, ${m.cores} cores, ${m.os}, node ${m.node}, load ${m.loadavg1.toFixed(2)}`);
  const workloads: string[] = [];
  for (const e of result.results) if (!workloads.includes(e.workload)) workloads.push(e.workload);
  for (const w of workloads) {
    const entries = result.results.filter((e) => e.workload === w);
    const ideal = entries.find((e) => e.mode === 'ideal')?.value;
    lines.push('');
    lines.push(WORKLOAD_TITLES[w] ?? w);
    const table = rows(entries, ideal);
    const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
    for (const r of table) lines.push(r.map((cell, i) => pad(cell, widths[i], i > 0)).join('  '));
  }
  lines.push('');
  const q = result.ratios;
  lines.push(
    `msiOverLine (msi trapped / line-v2 trapped): ${ratioText(q.msiOverLine)}   seeds: ${SEEDS_MSI_OVER_LINE.toFixed(2)}x (9,500 / 7,029)`,
  );
  lines.push(`msiOverLinePosted (msi posted / line-v2 posted): ${ratioText(q.msiOverLinePosted)}`);
  lines.push(
    `bestOverIdeal: ${ratioText(q.bestOverIdeal)}${q.bestMode === null ? '' : ` (${q.bestMode})`}   target: within 1.5x of ideal, i.e. >= 0.67x`,
  );
  if (q.bestOverIdealPoll !== null) {
    lines.push(
      `bestOverIdealPoll: ${ratioText(q.bestOverIdealPoll)}${q.bestModePoll === null ? '' : ` (${q.bestModePoll})`}   polling against polling (every thread spins before it blocks)`,
    );
  }
  lines.push(
    `blkMsiOverLine (msi posted / line-v2 posted, IOPS): QD1 ${ratioText(q.blkMsiOverLineQd1)}, QD32 ${ratioText(q.blkMsiOverLineQd32)}   Kata: +34 % (1.34x)`,
  );
  lines.push(
    `perQueueOverShared (2 pairs msi trapped / 2 pairs line-v2 trapped): ${ratioText(q.perQueueOverShared)}   target: > 1`,
  );
  lines.push(
    `seeds (KVM, trans/s): virtio-pci ${SEEDS_REFERENCE['virtio-pci'].join('/')}, virtio-mmio ${SEEDS_REFERENCE['virtio-mmio'].join('/')}, virtio-mmio+MSI ${SEEDS_REFERENCE['virtio-mmio+MSI'].join('/')}`,
  );
  return lines;
}

/** The Markdown report (the table, the charts, the ratios, how to reproduce). */
export function formatSeedsReport(result: SeedsBenchResult, charts: readonly SeedsChart[] = []): string {
  const c = result.config;
  const out: string[] = [];
  out.push("# virtio-mmio bench: the seeds' comparisons on the threaded runtime", '');
  out.push(
    `Run ${c.date}, package ${c.version}, ${c.quick ? '`--quick`' : 'full'}; machine: ${result.machine.cpu}, ${result.machine.cores} cores, ${result.machine.os}, Node ${result.machine.node}, 1-min load ${result.machine.loadavg1.toFixed(2)}.`,
    '',
  );
  for (const ch of charts) out.push(`![${ch.title}](${ch.file})`, '', `*${ch.title}*`, '');
  out.push('```');
  out.push(...formatSeedsTable(result));
  out.push('```', '');
  out.push(
    'Columns: `exits` synchronous exits per operation (trapped reads, writes, EOIs); `doorbells` posted notifications; `irqs` interrupts taken; `handler` interrupt-handler register accesses (InterruptStatus, InterruptACK, EOI); `hlt` halts woken by an interrupt. See docs/benchmarks.md for the modes and the JSON shape (`results.json` beside this file).',
    '',
  );
  return out.join('\n');
}

/**
 * Writes the JSON (`json`) and/or, into `out`, `results.json`, the SVG charts and `report.md`
 * linking them. Returns the charts written.
 */
export async function writeSeedsOutputs(
  result: SeedsBenchResult,
  where: { json?: string; out?: string },
): Promise<SeedsChart[]> {
  const text = `${JSON.stringify(result, null, 2)}\n`;
  if (where.json !== undefined) {
    mkdirSync(dirname(where.json), { recursive: true });
    writeFileSync(where.json, text);
  }
  if (where.out === undefined) return [];
  mkdirSync(where.out, { recursive: true });
  writeFileSync(join(where.out, 'results.json'), text);
  let charts: SeedsChart[] = [];
  let chartError: string | null = null;
  try {
    charts = await writeSeedsCharts(result, where.out);
  } catch (e) {
    // The numbers matter more than the pictures: a rendering failure leaves the report without them.
    chartError = e instanceof Error ? e.message : String(e);
  }
  const report = formatSeedsReport(result, charts);
  writeFileSync(
    join(where.out, 'report.md'),
    chartError === null ? report : `${report}\nCharts could not be drawn: ${chartError}\n`,
  );
  return charts;
}
