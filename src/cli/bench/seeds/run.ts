/**
 * Runs the seeds' benchmark on the threaded runtime: the request/response workload (netperf
 * TCP_RR 32/1024 B-like) through virtio-net in every mode, the ideal bound (the same loop with
 * no device) in the same run, and the block workload (fio-like 4 KiB random read/write at queue
 * depth 1 and 32), with the counts per operation.
 *
 * @packageDocumentation
 */

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioError } from '../../../spec/index.js';
import type { RrRunResult } from '../../../vmm/benchPrograms.js';
import { type ModuleRef, ThreadedVm, vmmModule } from '../../../vmm/index.js';
import { BLK_QUEUE_DEPTHS, blkModes, type RrMode, rrModes } from './modes.js';
import { measureMqMode, mqModes } from './mq.js';
import { writeSeedsOutputs } from './report.js';
import {
  computeRatios,
  median,
  POLL_SUFFIX,
  SEEDS_BENCH_SCHEMA,
  type SeedsBenchResult,
  type SeedsConfig,
  type SeedsResultEntry,
  seedsMachine,
} from './results.js';
import { Tally } from './tally.js';

/** Progress of a run, reported before each step and once at the end. */
export interface SeedsProgress {
  /** Steps finished. */
  readonly done: number;
  /** Steps in all. */
  readonly total: number;
  /** What the next step measures (`done` at the end). */
  readonly label: string;
}

/** Options of {@link runSeedsBench}. */
export interface SeedsBenchOptions {
  /** The sub-minute headline run (fewer modes, shorter runs). */
  readonly quick: boolean;
  /** Write the JSON result to this file. */
  readonly json?: string;
  /** Write `results.json` and `report.md` into this directory. */
  readonly out?: string;
  /** Called before each step and once at the end (for a progress bar). */
  readonly onProgress?: (p: SeedsProgress) => void;
  /**
   * Workloads to run (default all: `rr` request/response, `mq` two flows on two vCPUs with one or
   * two queue pairs, `bulk` iperf-like UDP throughput both ways, `blk` 4 KiB random I/O at QD1 and
   * QD32).
   */
  readonly workloads?: readonly SeedsWorkload[];
  /** Only these modes (by name, every workload; `ideal` is always measured with `rr`). Default: all of the run. */
  readonly modes?: readonly string[];
  /**
   * Also measure the polling rows (default: in the full run, not in the quick one: polling needs
   * idle cores, and on a loaded machine a spinning thread starves the one it waits for).
   */
  readonly poll?: boolean;
  /** Overrides of the run's configuration (tests use tiny runs). */
  readonly overrides?: Partial<
    Pick<SeedsConfig, 'runs' | 'warmup' | 'durationMs' | 'maxTransactions' | 'wait'>
  >;
}

const B = (name: string): ModuleRef => vmmModule('benchPrograms', name);

/** Per-run timeout: a loaded machine can be far slower than an idle one. */
const RUN_TIMEOUT_MS = 120_000;

/** This package's version (from package.json, four levels up from src/ and dist/ alike). */
function packageVersion(): string {
  try {
    const text = readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8');
    return String((JSON.parse(text) as { version?: unknown }).version ?? 'unknown');
  } catch {
    return 'unknown';
  }
}

/** The configuration of a run. */
export function seedsConfig(options: Pick<SeedsBenchOptions, 'quick' | 'overrides'>): SeedsConfig {
  const o = options.overrides ?? {};
  const quick = options.quick;
  return {
    schema: SEEDS_BENCH_SCHEMA,
    version: packageVersion(),
    date: new Date().toISOString(),
    quick,
    runs: o.runs ?? (quick ? 3 : 5),
    // JIT warm-up: each mode runs in fresh worker isolates; 200 transactions left the first timed
    // runs 2-3x slower than the later ones, 2000 makes them agree within noise.
    warmup: o.warmup ?? (quick ? 2000 : 5000),
    durationMs: o.durationMs ?? (quick ? 150 : 1000),
    maxTransactions: o.maxTransactions ?? 1_000_000,
    requestSize: 32,
    responseSize: 1024,
    wait: { vcpuSpin: o.wait?.vcpuSpin ?? 0, vmmSpin: o.wait?.vmmSpin ?? 0 },
    // Polling rows: every thread spins this many loads before it blocks (KVM halt polling; the
    // VMM's poll budget is the ioeventfd thread busy-polling). ~0.1-0.5 ms on this machine.
    pollWait: { vcpuSpin: POLL_SPIN, vmmSpin: POLL_SPIN },
    workloads: ['rr', 'mq', 'bulk', 'blk'],
  };
}

/** Loads each thread polls before blocking in the `... poll` rows. */
export const POLL_SPIN = 200_000;

/**
 * The request/response modes also measured under the polling policy: quick, the headline three
 * (line-v2 trapped, msi trapped, msi posted); full, every layout with EVENT_IDX, trapped and posted.
 */
export function pollModes(quick: boolean): RrMode[] {
  const all = rrModes(false).filter((m) => m.eventIdx);
  if (!quick) return all;
  const names = new Set(['line-v2 trapped', 'msi trapped', 'msi posted']);
  // (the blocking rows of the same names are in every quick run)
  return all.filter((m) => names.has(m.name));
}

/** Median latency percentiles over runs. */
function latency(runs: readonly RrRunResult[]): SeedsResultEntry['latencyUs'] {
  return {
    p50: median(runs.map((r) => r.p50Us)),
    p90: median(runs.map((r) => r.p90Us)),
    p99: median(runs.map((r) => r.p99Us)),
  };
}

/** Thread CPU over wall time, or -1 when a reading is unknown. */
function cores(cpuNs: readonly number[], wallNs: number): number {
  if (cpuNs.some((c) => c < 0) || !(wallNs > 0)) return -1;
  return cpuNs.reduce((a, b) => a + b, 0) / wallNs;
}

/** The VMM thread's CPU nanoseconds since start. */
async function vmmCpuNs(vm: ThreadedVm): Promise<number> {
  return ((await vm.vmmStats()) as { cpuNs: number }).cpuNs;
}

/** One workload in one mode on a fresh machine (see {@link measureDevice}). */
export interface DeviceMeasurement {
  /** `workload` of the result entry. */
  readonly workload: string;
  /** `mode` of the result entry. */
  readonly mode: string;
  /** `metric` of the result entry. */
  readonly metric: string;
  /** VMM setup export of benchPrograms and its arguments. */
  readonly setup: string;
  readonly setupArgs: unknown;
  /** Notification writes trapped or posted. */
  readonly notify: RrMode['notify'];
  /** Guest init export (returns the interrupt mode) and the mode it must return. */
  readonly init: string;
  readonly allow: RrMode['allow'];
  readonly expect: string;
  /** Guest loop export (returns an {@link RrRunResult}) and its arguments besides warmup/count/duration. */
  readonly loop: string;
  readonly loopArgs: Record<string, unknown>;
  /** The device whose handler registers are counted. */
  readonly device: string;
  /** Multiplies the loop's operations per second into `value` (default 1; bulk: bytes to MB). */
  readonly scale?: number;
}

/**
 * Measures one workload in one mode: a fresh machine, the driver probed with the cascade
 * restricted to the mode, a warm-up run, then `config.runs` timed runs (counters reset before
 * each).
 * @throws VirtioError `DEVICE_FAILED` when the driver did not end up in the mode's interrupt mode
 */
export async function measureDevice(m: DeviceMeasurement, config: SeedsConfig): Promise<SeedsResultEntry> {
  const vm = await ThreadedVm.start({
    vcpus: 1,
    setup: B(m.setup),
    setupArgs: m.setupArgs,
    notify: m.notify,
    wait: config.wait,
  });
  try {
    const got = await vm.run(0, B(m.init), { args: { allow: m.allow }, timeoutMs: RUN_TIMEOUT_MS });
    if (got !== m.expect) {
      throw new VirtioError('DEVICE_FAILED', `mode ${m.mode}: driver chose ${String(got)}, not ${m.expect}`);
    }
    if (config.warmup > 0) {
      await vm.run(0, B(m.loop), {
        args: { ...m.loopArgs, warmup: config.warmup, count: 0, durationMs: 0 },
        timeoutMs: RUN_TIMEOUT_MS,
      });
    }
    const tally = new Tally();
    const runs: RrRunResult[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < config.runs; i++) {
      await vm.resetStats();
      const vmm0 = await vmmCpuNs(vm);
      const r = (await vm.run(0, B(m.loop), {
        args: { ...m.loopArgs, warmup: 0, count: config.maxTransactions, durationMs: config.durationMs },
        timeoutMs: RUN_TIMEOUT_MS,
      })) as RrRunResult;
      const s = vm.vcpuStats(0);
      const vmm1 = await vmmCpuNs(vm);
      tally.add(s, m.device, r.operations);
      runs.push(r);
      cpu.push(cores([s.cpuNs, vmm0 < 0 ? -1 : vmm1 - vmm0], s.wallNs));
    }
    const scale = m.scale ?? 1;
    return {
      workload: m.workload,
      mode: m.mode,
      metric: m.metric,
      value: median(runs.map((r) => r.transPerSec * scale)),
      runs: runs.map((r) => r.transPerSec * scale),
      cpuCores: median(cpu),
      latencyUs: latency(runs),
      interruptMode: String(got),
      ...tally.entry(),
    };
  } finally {
    await vm.stop();
  }
}

/** Measures the request/response workload in one mode ({@link measureDevice} with virtio-net). */
export function measureRrMode(mode: RrMode, config: SeedsConfig): Promise<SeedsResultEntry> {
  return measureDevice(
    {
      workload: 'rr',
      mode: mode.name,
      metric: 'trans/s',
      setup: 'setupNetRr',
      setupArgs: { ...mode.setup, responseSize: config.responseSize },
      notify: mode.notify,
      init: 'netRrInit',
      allow: mode.allow,
      expect: mode.expect,
      loop: 'netRrLoop',
      loopArgs: { requestSize: config.requestSize, responseSize: config.responseSize },
      device: 'net0',
    },
    config,
  );
}

/** Bulk directions: `tx` guest to peer, `rx` peer to guest. */
export type BulkDirection = 'tx' | 'rx';

/** UDP payload bytes of each bulk datagram (1514-byte Ethernet frames). */
export const BULK_DATAGRAM_BYTES = 1472;

/**
 * Measures the bulk workload (iperf-like, UDP 1472-byte datagrams) in one mode and direction:
 * MB/s of UDP payload (10^6 bytes), counts per datagram.
 */
export function measureBulkMode(
  mode: RrMode,
  direction: BulkDirection,
  config: SeedsConfig,
): Promise<SeedsResultEntry> {
  return measureDevice(
    {
      workload: `bulk-${direction}`,
      mode: mode.name,
      metric: 'MB/s',
      setup: 'setupNetRr',
      setupArgs: { ...mode.setup, responseSize: config.responseSize },
      notify: mode.notify,
      init: 'netRrInit',
      allow: mode.allow,
      expect: mode.expect,
      loop: direction === 'tx' ? 'netBulkTxLoop' : 'netBulkRxLoop',
      loopArgs: { size: BULK_DATAGRAM_BYTES, batch: 64 },
      device: 'net0',
      scale: BULK_DATAGRAM_BYTES / 1e6,
    },
    config,
  );
}

/**
 * Measures the block workload in one mode at queue depth `qd`: fio-like 4 KiB random I/O, 50 %
 * reads, against a sparse image file in the OS temporary directory (removed afterwards).
 */
export async function measureBlkMode(
  mode: RrMode,
  qd: number,
  config: SeedsConfig,
): Promise<SeedsResultEntry> {
  const dir = mkdtempSync(join(tmpdir(), 'virtio-mmio-bench-'));
  try {
    return await measureDevice(
      {
        workload: `blk-qd${qd}`,
        mode: mode.name,
        metric: 'IOPS',
        setup: 'setupBlkFio',
        setupArgs: { ...mode.setup, path: join(dir, 'disk.img'), size: 64 << 20 },
        notify: mode.notify,
        init: 'blkFioInit',
        allow: mode.allow,
        expect: mode.expect,
        loop: 'blkFioLoop',
        loopArgs: { qd, readPercent: 50, blockSize: 4096 },
        device: 'blk0',
      },
      config,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Measures the ideal bound: the request/response loop between two threads (two vCPU workers of a
 * machine with no device) through a SharedArrayBuffer, 32 B request and 1024 B response copied,
 * with the same waiting policy as the device modes.
 */
export async function measureRrIdeal(config: SeedsConfig, name = 'ideal'): Promise<SeedsResultEntry> {
  const vm = await ThreadedVm.start({ vcpus: 2, wait: config.wait });
  const spin = config.wait.vcpuSpin;
  const once = async (warmup: number, count: number, durationMs: number): Promise<RrRunResult> => {
    const sab = new SharedArrayBuffer(64 + config.requestSize + config.responseSize);
    const common = {
      sab,
      spin,
      requestSize: config.requestSize,
      responseSize: config.responseSize,
      warmup,
      count,
      durationMs,
    };
    const [r] = await Promise.all([
      vm.run(0, B('rrIdeal'), { args: { ...common, side: 1 }, timeoutMs: RUN_TIMEOUT_MS }),
      vm.run(1, B('rrIdeal'), { args: { ...common, side: 0 }, timeoutMs: RUN_TIMEOUT_MS }),
    ]);
    return r as RrRunResult;
  };
  try {
    if (config.warmup > 0) await once(config.warmup, 0, 0);
    const tally = new Tally();
    const runs: RrRunResult[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < config.runs; i++) {
      await vm.resetStats();
      const r = await once(0, config.maxTransactions, config.durationMs);
      const c = vm.vcpuStats(0);
      const s = vm.vcpuStats(1);
      tally.add(c, null, r.operations);
      runs.push(r);
      cpu.push(cores([c.cpuNs, s.cpuNs], c.wallNs));
    }
    return {
      workload: 'rr',
      mode: name,
      metric: 'trans/s',
      value: median(runs.map((r) => r.transPerSec)),
      runs: runs.map((r) => r.transPerSec),
      cpuCores: median(cpu),
      latencyUs: latency(runs),
      interruptMode: 'none',
      ...tally.entry(),
    };
  } finally {
    await vm.stop();
  }
}

/** Workloads {@link runSeedsBench} can run. */
export type SeedsWorkload = 'rr' | 'mq' | 'bulk' | 'blk';

/** Every {@link SeedsWorkload}, in run order. */
export const SEEDS_WORKLOADS: readonly SeedsWorkload[] = ['rr', 'mq', 'bulk', 'blk'];

/**
 * Runs the seeds' benchmark and returns the result (and writes it when `json` / `out` are given).
 * `quick` measures the headline modes in well under a minute on an idle 2-core machine.
 * @throws VirtioError `INVALID_ARGUMENT` for an unknown mode or workload name
 */
export async function runSeedsBench(options: SeedsBenchOptions): Promise<SeedsBenchResult> {
  const workloads = options.workloads ?? SEEDS_WORKLOADS;
  for (const w of workloads) {
    if (!SEEDS_WORKLOADS.includes(w))
      throw new VirtioError('INVALID_ARGUMENT', `unknown bench workload ${String(w)}`);
  }
  const config = { ...seedsConfig(options), workloads: workloads.slice() };
  const machine = seedsMachine();
  let modes = rrModes(options.quick);
  let blk = blkModes(options.quick);
  let mq = mqModes(options.quick);
  if (options.modes !== undefined) {
    const wanted = new Set(options.modes);
    const known = new Set([...rrModes(false), ...mqModes(false)].map((m) => m.name));
    for (const m of wanted) {
      if (m !== 'ideal' && !known.has(m))
        throw new VirtioError('INVALID_ARGUMENT', `unknown bench mode ${m}`);
    }
    modes = rrModes(false).filter((m) => wanted.has(m.name));
    blk = blkModes(false).filter((m) => wanted.has(m.name));
    mq = mqModes(false).filter((m) => wanted.has(m.name));
  }
  const steps: Array<{ label: string; run: () => Promise<SeedsResultEntry> }> = [];
  if (workloads.includes('rr')) {
    steps.push({ label: 'rr ideal', run: () => measureRrIdeal(config) });
    for (const mode of modes)
      steps.push({ label: `rr ${mode.name}`, run: () => measureRrMode(mode, config) });
    if ((options.poll ?? !options.quick) && config.pollWait !== undefined) {
      const pollConfig: SeedsConfig = { ...config, wait: config.pollWait };
      const names = new Set(modes.map((m) => m.name));
      steps.push({
        label: `rr ideal${POLL_SUFFIX}`,
        run: () => measureRrIdeal(pollConfig, `ideal${POLL_SUFFIX}`),
      });
      for (const mode of pollModes(options.quick)) {
        if (!names.has(mode.name)) continue;
        const polled = { ...mode, name: `${mode.name}${POLL_SUFFIX}` };
        steps.push({ label: `rr ${polled.name}`, run: () => measureRrMode(polled, pollConfig) });
      }
    }
  }
  if (workloads.includes('mq')) {
    for (const mode of mq)
      steps.push({ label: `rr-mq ${mode.name}`, run: () => measureMqMode(mode, config) });
  }
  if (workloads.includes('bulk')) {
    for (const direction of ['tx', 'rx'] as const) {
      for (const mode of blk) {
        steps.push({
          label: `bulk-${direction} ${mode.name}`,
          run: () => measureBulkMode(mode, direction, config),
        });
      }
    }
  }
  if (workloads.includes('blk')) {
    for (const qd of BLK_QUEUE_DEPTHS) {
      for (const mode of blk) {
        steps.push({ label: `blk-qd${qd} ${mode.name}`, run: () => measureBlkMode(mode, qd, config) });
      }
    }
  }
  const results: SeedsResultEntry[] = [];
  const total = steps.length;
  for (let done = 0; done < total; done++) {
    options.onProgress?.({ done, total, label: steps[done].label });
    results.push(await steps[done].run());
  }
  options.onProgress?.({ done: total, total, label: 'done' });
  const result: SeedsBenchResult = { machine, config, results, ratios: computeRatios(results) };
  await writeSeedsOutputs(result, { json: options.json, out: options.out });
  return result;
}
