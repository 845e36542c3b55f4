/**
 * The result shape of `virtio-mmio bench` (documented in docs/benchmarks.md; keep it stable), the
 * statistics over runs and the ratios computed from the results.
 *
 * @packageDocumentation
 */

import os from 'node:os';

/** Version of the JSON shape; bumped on any incompatible change. */
export const SEEDS_BENCH_SCHEMA = 1;

/** Suffix of the request/response rows measured under the polling policy (`msi posted poll`). */
export const POLL_SUFFIX = ' poll';

/** The machine the run came from. */
export interface SeedsMachine {
  /** CPU model string. */
  readonly cpu: string;
  /** Logical CPUs. */
  readonly cores: number;
  /** Bytes of RAM. */
  readonly memory: number;
  /** `os.platform() os.release() os.arch()`. */
  readonly os: string;
  /** Node.js version. */
  readonly node: string;
  /** V8 version. */
  readonly v8: string;
  /** 1-minute load average when the run began (a loaded machine gives lower, noisier figures). */
  readonly loadavg1: number;
}

/** How the run was configured. */
export interface SeedsConfig {
  /** JSON shape version ({@link SEEDS_BENCH_SCHEMA}). */
  readonly schema: number;
  /** This package's version. */
  readonly version: string;
  /** ISO date the run began. */
  readonly date: string;
  /** `--quick`. */
  readonly quick: boolean;
  /** Timed runs per mode (the value is their median). */
  readonly runs: number;
  /** Untimed transactions before the timed runs of a mode. */
  readonly warmup: number;
  /** Length of one timed run in milliseconds (or `maxTransactions`, whichever comes first). */
  readonly durationMs: number;
  /** Most transactions of one timed run. */
  readonly maxTransactions: number;
  /** Request and response UDP payload bytes. */
  readonly requestSize: number;
  readonly responseSize: number;
  /** Waiting policy of every thread (polls before `Atomics.wait`; 0 = block at once). */
  readonly wait: { readonly vcpuSpin: number; readonly vmmSpin: number };
  /** Waiting policy of the `... poll` rows (absent in results written before they existed). */
  readonly pollWait?: { readonly vcpuSpin: number; readonly vmmSpin: number };
  /** Workloads that ran. */
  readonly workloads: readonly string[];
}

/** Latency percentiles in microseconds, as the guest measured them (median over runs). */
export interface LatencyUs {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
}

/** One workload in one mode. Counts are per operation (transaction), over every timed run. */
export interface SeedsResultEntry {
  /**
   * `rr` (request/response 32/1024), `rr-mq` (two such flows on two vCPUs, one or two queue
   * pairs), `blk-qd1` / `blk-qd32` (4 KiB random read/write).
   */
  readonly workload: string;
  /** Mode name (see docs/benchmarks.md), or `ideal` for the no-device bound. */
  readonly mode: string;
  /** Unit of `value` and `runs`: `trans/s` (rr) or `IOPS` (blk). */
  readonly metric: string;
  /** Median of `runs`. */
  readonly value: number;
  /** Every timed run's figure, in order. */
  readonly runs: readonly number[];
  /** Synchronous exits per operation (trapped reads + writes + EOIs + irqchip writes). */
  readonly exits: number;
  /** Posted doorbells per operation. */
  readonly doorbells: number;
  /** Interrupts taken by the guest per operation. */
  readonly interrupts: number;
  /** CPU cores busy during the timed runs: thread CPU of the vCPU(s) and VMM over wall time (median; -1 unknown). */
  readonly cpuCores: number;
  /** Guest interrupt-handler accesses per operation: InterruptStatus reads, InterruptACK writes, line EOIs (trapped, posted or local). */
  readonly handlerAccesses: number;
  /** Halts that slept and were woken by an interrupt, per operation. */
  readonly hltWakeups: number;
  /** Breakdown of `exits` per operation. */
  readonly exitDetail: {
    readonly read: number;
    readonly write: number;
    readonly eoi: number;
    readonly irqchip: number;
  };
  /** Latency percentiles (median over runs), microseconds. */
  readonly latencyUs: LatencyUs;
  /** The guest driver's interrupt mode (`none` for the ideal bound). */
  readonly interruptMode: string;
  /** Operations timed over all runs. */
  readonly operations: number;
  /**
   * Inter-processor interrupts sent per operation (`rr-mq`: completions of a pair whose
   * interrupt landed on the other vCPU, forwarded to the vCPU that services it). Absent elsewhere.
   */
  readonly ipis?: number;
}

/** The ratios that answer the seeds' claims (null when a side did not run). */
export interface SeedsRatios {
  /** rr: `msi trapped` over `line-v2 trapped` (seed MSI non-sharing over the standard single line, Version 2). */
  readonly msiOverLine: number | null;
  /** The same with posted notifications on both sides (`msi posted` over `line-v2 posted`). */
  readonly msiOverLinePosted: number | null;
  /** rr: the best device mode over the ideal bound measured in the same run (1 = at the limit). */
  readonly bestOverIdeal: number | null;
  /** The mode that gave `bestOverIdeal`. */
  readonly bestMode: string | null;
  /**
   * The same under the polling policy: the best `<mode> poll` over `ideal poll` (both sides spin
   * before blocking; null when the polling rows did not run).
   */
  readonly bestOverIdealPoll: number | null;
  /** The mode that gave `bestOverIdealPoll`. */
  readonly bestModePoll: string | null;
  /** blk, queue depth 1: `msi posted` over `line-v2 posted` IOPS (the Kata comparison, MMIO line vs MSI-X). */
  readonly blkMsiOverLineQd1: number | null;
  /** The same at queue depth 32. */
  readonly blkMsiOverLineQd32: number | null;
  /**
   * Multiqueue: `2 pairs msi trapped` over `2 pairs line-v2 trapped` (per-queue vectors over one
   * shared line, 2 queue pairs on 2 vCPUs; null: not run).
   */
  readonly perQueueOverShared: number | null;
}

/** Everything one run of the seeds' benchmark produced. */
export interface SeedsBenchResult {
  readonly machine: SeedsMachine;
  readonly config: SeedsConfig;
  readonly results: readonly SeedsResultEntry[];
  readonly ratios: SeedsRatios;
}

/** Median of `xs` (mean of the middle two for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `a / b`, or null when either is missing or `b` is not positive. */
function ratio(a: number | undefined, b: number | undefined): number | null {
  if (a === undefined || b === undefined || !(b > 0) || !Number.isFinite(a)) return null;
  return a / b;
}

/** The ratios from a result list (see {@link SeedsRatios}). */
export function computeRatios(results: readonly SeedsResultEntry[]): SeedsRatios {
  const rr = (mode: string): number | undefined =>
    results.find((r) => r.workload === 'rr' && r.mode === mode)?.value;
  // Blocking against blocking, polling against polling (the rule for bestOverIdeal).
  const bestOf = (poll: boolean): SeedsResultEntry | null => {
    let best: SeedsResultEntry | null = null;
    for (const r of results) {
      if (r.workload !== 'rr' || r.mode === 'ideal' || r.mode === `ideal${POLL_SUFFIX}`) continue;
      if (r.mode.endsWith(POLL_SUFFIX) !== poll) continue;
      if (best === null || r.value > best.value) best = r;
    }
    return best;
  };
  const best = bestOf(false);
  const bestPoll = bestOf(true);
  const idealPoll = rr(`ideal${POLL_SUFFIX}`);
  const mq = (mode: string): number | undefined =>
    results.find((r) => r.workload === 'rr-mq' && r.mode === mode)?.value;
  const blk = (qd: number, mode: string): number | undefined =>
    results.find((r) => r.workload === `blk-qd${qd}` && r.mode === mode)?.value;
  return {
    msiOverLine: ratio(rr('msi trapped'), rr('line-v2 trapped')),
    msiOverLinePosted: ratio(rr('msi posted'), rr('line-v2 posted')),
    bestOverIdeal: best === null ? null : ratio(best.value, rr('ideal')),
    bestMode: best === null || rr('ideal') === undefined ? null : best.mode,
    bestOverIdealPoll: bestPoll === null ? null : ratio(bestPoll.value, idealPoll),
    bestModePoll: bestPoll === null || idealPoll === undefined ? null : bestPoll.mode,
    blkMsiOverLineQd1: ratio(blk(1, 'msi posted'), blk(1, 'line-v2 posted')),
    blkMsiOverLineQd32: ratio(blk(32, 'msi posted'), blk(32, 'line-v2 posted')),
    perQueueOverShared: ratio(mq('2 pairs msi trapped'), mq('2 pairs line-v2 trapped')),
  };
}

/** Describes this machine. */
export function seedsMachine(): SeedsMachine {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memory: os.totalmem(),
    os: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    v8: process.versions.v8,
    loadavg1: os.loadavg()[0],
  };
}
