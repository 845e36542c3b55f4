/**
 * A small benchmark harness: warm-up, then several timed runs of a batch loop, reported as
 * operations per second with mean, standard deviation, min and max across runs
 * (cloud-hypervisor's PerformanceTestResult shape). Timing uses `process.hrtime.bigint()` once per
 * run, never per operation.
 *
 * @packageDocumentation
 */

import os from 'node:os';

/** One benchmark's result. */
export interface BenchResult {
  /** Benchmark name. */
  name: string;
  /** Unit of `mean` etc., e.g. `accesses/s`. */
  unit: string;
  /** Mean rate over the runs. */
  mean: number;
  /** Standard deviation of the rate over the runs. */
  stdDev: number;
  /** Slowest run. */
  min: number;
  /** Fastest run. */
  max: number;
  /** Number of timed runs. */
  runs: number;
  /** Operations per run. */
  opsPerRun: number;
  /** Extra figures derived from the mean (e.g. MB/s). */
  extra?: Record<string, number>;
}

/** Options of {@link measure}. */
export interface MeasureOptions {
  /** Timed runs (default 5). */
  runs?: number;
  /** Minimum duration of one run in milliseconds; the batch grows until it takes this long (default 200). */
  minRunMs?: number;
  /** Warm-up duration in milliseconds (default 200). */
  warmupMs?: number;
}

/**
 * Measures `op(n)`, a function that performs `n` operations, and returns operations per second.
 */
export function measure(
  name: string,
  unit: string,
  op: (n: number) => void,
  options: MeasureOptions = {},
): BenchResult {
  const runs = options.runs ?? 5;
  const minRunNs = (options.minRunMs ?? 200) * 1e6;
  const warmupNs = (options.warmupMs ?? 200) * 1e6;
  // Warm up and size the batch so one run lasts at least minRunMs.
  let batch = 1;
  const warmStart = process.hrtime.bigint();
  for (;;) {
    const t0 = process.hrtime.bigint();
    op(batch);
    const dt = Number(process.hrtime.bigint() - t0);
    if (dt >= minRunNs && Number(process.hrtime.bigint() - warmStart) >= warmupNs) break;
    if (dt < minRunNs) batch = Math.min(batch * 2, 2 ** 30);
  }
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    op(batch);
    const dt = Number(process.hrtime.bigint() - t0);
    rates.push(batch / (dt / 1e9));
  }
  const mean = rates.reduce((a, b) => a + b, 0) / runs;
  const variance = rates.reduce((a, b) => a + (b - mean) ** 2, 0) / runs;
  return {
    name,
    unit,
    mean,
    stdDev: Math.sqrt(variance),
    min: Math.min(...rates),
    max: Math.max(...rates),
    runs,
    opsPerRun: batch,
  };
}

/** What a result file says about the machine it ran on. */
export interface MachineInfo {
  /** CPU model string. */
  cpu: string;
  /** Logical CPUs. */
  cores: number;
  /** Total memory in bytes. */
  memory: number;
  /** Node.js version. */
  node: string;
  /** V8 version. */
  v8: string;
  /** OS platform, release and architecture. */
  os: string;
  /** ISO time of the run. */
  date: string;
}

/** Describes this machine. */
export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memory: os.totalmem(),
    node: process.version,
    v8: process.versions.v8,
    os: `${os.platform()} ${os.release()} ${os.arch()}`,
    date: new Date().toISOString(),
  };
}

/** Formats a rate with thousands separators and its spread, for the printed table. */
export function formatRate(r: BenchResult): string {
  const pct = r.mean > 0 ? (100 * r.stdDev) / r.mean : 0;
  return `${Math.round(r.mean).toLocaleString('en-US')} ${r.unit} ±${pct.toFixed(1)}%`;
}
