/**
 * Charts of the seeds' benchmark, drawn with Vega-Lite (compiled to Vega, rendered to SVG in Node
 * without a browser): trans/s per mode beside the ideal bound, exits / doorbells / interrupts per
 * transaction, the latency distribution, the multiqueue comparison, and block IOPS per queue
 * depth.
 *
 * @packageDocumentation
 */

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { SeedsBenchResult } from './results.js';

/** Mode names are long: keep them whole on the y axis. */
const WIDE_LABELS = { axisY: { labelLimit: 320 } };

/** One chart written by {@link writeSeedsCharts}. */
export interface SeedsChart {
  /** File name inside the output directory. */
  readonly file: string;
  /** What it shows (the report's caption). */
  readonly title: string;
}

/** Renders a Vega-Lite spec to an SVG string (headless). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** The Vega-Lite specs of a result, by file name (only those the result has data for). */
export function seedsChartSpecs(result: SeedsBenchResult): Array<SeedsChart & { spec: TopLevelSpec }> {
  const out: Array<SeedsChart & { spec: TopLevelSpec }> = [];
  const rr = result.results.filter((e) => e.workload === 'rr');
  const order = rr.map((e) => e.mode);
  if (rr.length > 0) {
    const runs = rr.flatMap((e) => e.runs.map((v, i) => ({ mode: e.mode, run: i + 1, value: v })));
    out.push({
      file: 'rr-transactions.svg',
      title: 'Request/response 32/1024 B: trans/s per mode (bar: median; dots: each run)',
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'request/response 32/1024 B, trans/s (median and runs)',
        width: 520,
        config: WIDE_LABELS,
        layer: [
          {
            data: { values: rr.map((e) => ({ mode: e.mode, value: e.value, ideal: e.mode === 'ideal' })) },
            mark: 'bar',
            encoding: {
              y: { field: 'mode', type: 'nominal', sort: order, title: null },
              x: { field: 'value', type: 'quantitative', title: 'trans/s' },
              color: { field: 'ideal', type: 'nominal', legend: null },
            },
          },
          {
            data: { values: runs },
            mark: { type: 'point', filled: true, color: 'black', size: 20 },
            encoding: {
              y: { field: 'mode', type: 'nominal', sort: order },
              x: { field: 'value', type: 'quantitative' },
            },
          },
        ],
      },
    });
    const counts = rr
      .filter((e) => e.mode !== 'ideal')
      .flatMap((e) => [
        { mode: e.mode, what: 'synchronous exits', value: e.exits },
        { mode: e.mode, what: 'posted doorbells', value: e.doorbells },
        { mode: e.mode, what: 'interrupts', value: e.interrupts },
        { mode: e.mode, what: 'handler accesses', value: e.handlerAccesses },
      ]);
    out.push({
      file: 'rr-exits.svg',
      title: 'Per transaction: synchronous exits, posted doorbells, interrupts, interrupt-handler accesses',
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'per transaction',
        width: 520,
        config: WIDE_LABELS,
        data: { values: counts },
        mark: 'bar',
        encoding: {
          y: { field: 'mode', type: 'nominal', sort: order, title: null },
          yOffset: { field: 'what', type: 'nominal' },
          x: { field: 'value', type: 'quantitative', title: 'count per transaction' },
          color: { field: 'what', type: 'nominal', title: null },
        },
      },
    });
    const lat = rr.flatMap((e) => [
      { mode: e.mode, p: 'p50', us: e.latencyUs.p50 },
      { mode: e.mode, p: 'p90', us: e.latencyUs.p90 },
      { mode: e.mode, p: 'p99', us: e.latencyUs.p99 },
    ]);
    out.push({
      file: 'rr-latency.svg',
      title: 'Request/response latency as the guest measured it: p50, p90, p99 (log scale)',
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'latency per transaction, microseconds',
        width: 520,
        config: WIDE_LABELS,
        data: { values: lat.filter((d) => d.us > 0) },
        mark: { type: 'point', filled: true, size: 50 },
        encoding: {
          y: { field: 'mode', type: 'nominal', sort: order, title: null },
          x: { field: 'us', type: 'quantitative', scale: { type: 'log' }, title: 'us' },
          color: { field: 'p', type: 'nominal', title: null },
          shape: { field: 'p', type: 'nominal' },
        },
      },
    });
  }
  const mq = result.results.filter((e) => e.workload === 'rr-mq');
  if (mq.length > 0) {
    const counts = mq.flatMap((e) => [
      { mode: e.mode, what: 'trans/s (thousands)', value: e.value / 1000 },
      { mode: e.mode, what: 'synchronous exits', value: e.exits },
      { mode: e.mode, what: 'interrupts', value: e.interrupts },
      { mode: e.mode, what: 'forwarding IPIs', value: e.ipis ?? 0 },
    ]);
    out.push({
      file: 'mq.svg',
      title:
        'Multiqueue, 2 vCPUs, 2 flows: trans/s (thousands) and per transaction exits, interrupts, forwarding IPIs',
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: 'two flows on two vCPUs: one or two queue pairs, interrupt routing',
        width: 520,
        config: WIDE_LABELS,
        data: { values: counts },
        mark: 'bar',
        encoding: {
          row: { field: 'what', type: 'nominal', title: null },
          y: { field: 'mode', type: 'nominal', sort: mq.map((e) => e.mode), title: null },
          x: { field: 'value', type: 'quantitative', title: null },
        },
        resolve: { scale: { x: 'independent' } },
      },
    });
  }
  const blk = result.results.filter((e) => e.workload.startsWith('blk-'));
  if (blk.length > 0) {
    out.push({
      file: 'blk-iops.svg',
      title: 'Block 4 KiB random read/write: IOPS per mode and queue depth',
      spec: {
        $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
        title: '4 KiB random read/write, IOPS (median)',
        width: 520,
        config: WIDE_LABELS,
        data: { values: blk.map((e) => ({ mode: e.mode, qd: e.workload, value: e.value })) },
        mark: 'bar',
        encoding: {
          y: { field: 'mode', type: 'nominal', title: null },
          yOffset: { field: 'qd', type: 'nominal' },
          x: { field: 'value', type: 'quantitative', title: 'IOPS' },
          color: { field: 'qd', type: 'nominal', title: null },
        },
      },
    });
  }
  return out;
}

/** Renders every chart of `result` into `dir` (which must exist); returns what was written. */
export async function writeSeedsCharts(result: SeedsBenchResult, dir: string): Promise<SeedsChart[]> {
  const written: SeedsChart[] = [];
  for (const c of seedsChartSpecs(result)) {
    writeFileSync(join(dir, c.file), await renderSvg(c.spec));
    written.push({ file: c.file, title: c.title });
  }
  return written;
}
