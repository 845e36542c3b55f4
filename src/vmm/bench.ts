/**
 * Benchmarks of the threaded runtime (reported, never asserted): the cost of one trapped access,
 * one posted doorbell and one interrupt injection into a halted vCPU, each beside the raw
 * cross-thread wake-up latency measured on the same worker threads in the same run, as a ratio.
 * Returns plain objects; the CLI prints them.
 *
 * @packageDocumentation
 */

import { PING_VECTOR } from './programs.js';
import { ThreadedVm, type ThreadedVmOptions, vmmModule } from './threadedVm.js';
import type { WaitPolicy } from './types.js';

/** Options of {@link runVmmBench}. */
export interface VmmBenchOptions {
  /** Fewer iterations (about a second in all). */
  readonly quick?: boolean;
  /** Waiting policies to measure; default block at once and poll 2000 times first. */
  readonly policies?: readonly WaitPolicy[];
}

/** One measured mechanism. */
export interface VmmBenchRow {
  /** What was measured. */
  readonly name: string;
  /** Operations timed. */
  readonly ops: number;
  /** Wall nanoseconds per operation, as the vCPU sees it. */
  readonly nsPerOp: number;
  /** The raw figure it is set beside. */
  readonly baseline: 'raw round trip' | 'raw one-way wake';
  /** `nsPerOp / baseline`. */
  readonly ratio: number;
  /** Thread CPU nanoseconds per operation: the timing vCPU, the VMM thread (-1: unknown). */
  readonly vcpuCpuNsPerOp: number;
  readonly vmmCpuNsPerOp: number;
}

/** The results under one waiting policy. */
export interface VmmBenchPolicyResult {
  /** The policy. */
  readonly policy: WaitPolicy;
  /** Raw Atomics ping-pong between the two vCPU threads: one round trip, ns. */
  readonly rawRoundTripNs: number;
  /** Half of it: one cross-thread wake, ns. */
  readonly rawOneWayNs: number;
  /** The mechanisms. */
  readonly rows: readonly VmmBenchRow[];
}

/** Everything {@link runVmmBench} measured. */
export interface VmmBenchResult {
  /** The command to reproduce (for reports). */
  readonly command: string;
  /** One entry per waiting policy. */
  readonly results: readonly VmmBenchPolicyResult[];
}

const P = (name: string) => vmmModule('programs', name);

/**
 * Per-run timeout: polling policies on a loaded 2-core machine can be 100x slower than on an idle
 * one (a spinning thread starves its peer), so the bench waits long rather than failing.
 */
const RUN_TIMEOUT_MS = 300_000;

/** The VMM thread's CPU nanoseconds so far. */
async function vmmCpu(vm: ThreadedVm): Promise<number> {
  const s = (await vm.vmmStats()) as { cpuNs: number };
  return s.cpuNs;
}

/** Per-op CPU, or -1 when either reading is unknown. */
function perOp(ns: number, ops: number): number {
  return ns < 0 ? -1 : ns / ops;
}

/** Measures one policy. */
async function measurePolicy(policy: WaitPolicy, quick: boolean): Promise<VmmBenchPolicyResult> {
  const n = quick ? 2000 : 10_000;
  const warmup = quick ? 500 : 1000;
  const spin = policy.vcpuSpin ?? 0;
  const rows: VmmBenchRow[] = [];
  const trapped = await ThreadedVm.start({ vcpus: 2, setup: P('setupRngBlk'), wait: policy });
  let rawRtt: number;
  try {
    // The physical limit: raw ping-pong over a word of guest RAM, same threads, same spin budget.
    const word = 0x1000;
    const [, rawTotal] = await Promise.all([
      trapped.run(0, P('rawPingPong'), {
        timeoutMs: RUN_TIMEOUT_MS,
        args: { word, count: n, side: 0, spin, warmup },
      }),
      trapped.run(1, P('rawPingPong'), {
        timeoutMs: RUN_TIMEOUT_MS,
        args: { word, count: n, side: 1, spin, warmup },
      }),
    ]);
    rawRtt = (rawTotal as number) / n;

    let cpu0 = await vmmCpu(trapped);
    const readNs = (await trapped.run(0, P('trappedReadLoop'), {
      args: { device: 'rng0', count: n, warmup },
    })) as number;
    let vcpuCpu = trapped.vcpuStats(0).cpuNs;
    let vmmDelta = (await vmmCpu(trapped)) - cpu0;
    rows.push({
      name: 'trapped access (MagicValue read)',
      ops: n + warmup,
      nsPerOp: readNs / n,
      baseline: 'raw round trip',
      ratio: readNs / n / rawRtt,
      vcpuCpuNsPerOp: perOp(vcpuCpu, n + warmup),
      vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : vmmDelta, n + warmup),
    });

    await trapped.run(0, P('rngInit'), { timeoutMs: RUN_TIMEOUT_MS });
    cpu0 = await vmmCpu(trapped);
    const notify = (await trapped.run(0, P('notifyLoop'), {
      args: { device: 'rng0', count: n, warmup },
    })) as { issueNs: number };
    vcpuCpu = trapped.vcpuStats(0).cpuNs;
    vmmDelta = (await vmmCpu(trapped)) - cpu0;
    rows.push({
      name: 'trapped notification (QueueNotify write)',
      ops: n,
      nsPerOp: notify.issueNs / n,
      baseline: 'raw round trip',
      ratio: notify.issueNs / n / rawRtt,
      vcpuCpuNsPerOp: perOp(vcpuCpu, n + warmup),
      vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : vmmDelta, n + warmup),
    });

    cpu0 = await vmmCpu(trapped);
    const [, ipiTotal] = await Promise.all([
      trapped.run(0, P('ipiResponder'), { timeoutMs: RUN_TIMEOUT_MS, args: { count: n + warmup, peer: 1 } }),
      trapped.run(1, P('ipiInitiator'), { timeoutMs: RUN_TIMEOUT_MS, args: { count: n, peer: 0, warmup } }),
    ]);
    const oneWay = (ipiTotal as number) / n / 2;
    rows.push({
      name: `interrupt injection into a halted vcpu (vector ${PING_VECTOR} ping-pong / 2)`,
      ops: 2 * n,
      nsPerOp: oneWay,
      baseline: 'raw one-way wake',
      ratio: oneWay / (rawRtt / 2),
      vcpuCpuNsPerOp: perOp(trapped.vcpuStats(1).cpuNs, 2 * (n + warmup)),
      vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : (await vmmCpu(trapped)) - cpu0, 2 * (n + warmup)),
    });
  } finally {
    await trapped.stop();
  }

  const posted = await ThreadedVm.start({
    vcpus: 1,
    setup: P('setupRngBlk'),
    wait: policy,
    notify: 'posted',
  });
  try {
    await posted.run(0, P('rngInit'), { timeoutMs: RUN_TIMEOUT_MS });
    const cpu0 = await vmmCpu(posted);
    const r = (await posted.run(0, P('notifyLoop'), {
      timeoutMs: RUN_TIMEOUT_MS,
      args: { device: 'rng0', count: n, warmup },
    })) as {
      issueNs: number;
      drainedNs: number;
    };
    const vcpuCpu = posted.vcpuStats(0).cpuNs;
    const vmmDelta = (await vmmCpu(posted)) - cpu0;
    rows.push({
      name: 'posted doorbell (QueueNotify write, vcpu side)',
      ops: n,
      nsPerOp: r.issueNs / n,
      baseline: 'raw round trip',
      ratio: r.issueNs / n / rawRtt,
      vcpuCpuNsPerOp: perOp(vcpuCpu, n + warmup),
      vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : vmmDelta, n + warmup),
    });
    rows.push({
      name: 'posted doorbell, until the vmm drained it',
      ops: n,
      nsPerOp: r.drainedNs / n,
      baseline: 'raw round trip',
      ratio: r.drainedNs / n / rawRtt,
      vcpuCpuNsPerOp: perOp(vcpuCpu, n + warmup),
      vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : vmmDelta, n + warmup),
    });
  } finally {
    await posted.stop();
  }
  // One whole request (16-byte entropy, trapped notification) per interrupt path: what the
  // number of exits costs at this exit price, and what serving the status registers on the vCPU
  // (exit model 'local') or MSI saves.
  const paths: Array<[string, Partial<ThreadedVmOptions>]> = [
    ['entropy request, standard line, trapped InterruptStatus/ACK/EOI', { setup: P('setupRngBlk') }],
    ['entropy request, standard line, exit model local', { setup: P('setupRngBlk'), exitModel: 'local' }],
    ['entropy request, seed msi', { setup: P('setupMsi') }],
    ['entropy request, seed msi, posted notification', { setup: P('setupMsi'), notify: 'posted' }],
  ];
  const m = Math.max(200, Math.floor(n / 4));
  for (const [name, opts] of paths) {
    const vm = await ThreadedVm.start({ vcpus: 1, wait: policy, ...opts });
    try {
      await vm.run(0, P('rawEntropyInit'), { timeoutMs: RUN_TIMEOUT_MS, args: { device: 'rng0' } });
      const cpu0 = await vmmCpu(vm);
      const total = (await vm.run(0, P('rawEntropyLoop'), {
        timeoutMs: RUN_TIMEOUT_MS,
        args: { device: 'rng0', count: m, warmup: Math.floor(m / 4) },
      })) as number;
      const ops = m + Math.floor(m / 4);
      rows.push({
        name,
        ops: m,
        nsPerOp: total / m,
        baseline: 'raw round trip',
        ratio: total / m / rawRtt,
        vcpuCpuNsPerOp: perOp(vm.vcpuStats(0).cpuNs, ops),
        vmmCpuNsPerOp: perOp(cpu0 < 0 ? -1 : (await vmmCpu(vm)) - cpu0, ops),
      });
    } finally {
      await vm.stop();
    }
  }
  return { policy, rawRoundTripNs: rawRtt, rawOneWayNs: rawRtt / 2, rows };
}

/**
 * Runs the threaded-runtime benchmarks under each waiting policy. Takes a few seconds (quick: about
 * one). Start and stop its own machines; leaves no worker behind.
 */
export async function runVmmBench(options: VmmBenchOptions = {}): Promise<VmmBenchResult> {
  const policies = options.policies ?? [{}, { vcpuSpin: 2000, vmmSpin: 2000 }];
  const results: VmmBenchPolicyResult[] = [];
  for (const p of policies) results.push(await measurePolicy(p, options.quick === true));
  return { command: 'npm run bench (runVmmBench from dist/vmm/bench.js)', results };
}

/** Formats {@link VmmBenchResult} as table lines. */
export function formatVmmBench(r: VmmBenchResult): string[] {
  const out: string[] = [];
  for (const res of r.results) {
    out.push(
      `policy vcpuSpin=${res.policy.vcpuSpin ?? 0} vmmSpin=${res.policy.vmmSpin ?? 0}: raw round trip ` +
        `${(res.rawRoundTripNs / 1000).toFixed(2)} us, raw one-way ${(res.rawOneWayNs / 1000).toFixed(2)} us`,
    );
    for (const row of res.rows) {
      out.push(
        `  ${row.name.padEnd(72)} ${(row.nsPerOp / 1000).toFixed(3).padStart(9)} us  ` +
          `x${row.ratio.toFixed(2)} of ${row.baseline}; cpu/op vcpu ${(row.vcpuCpuNsPerOp / 1000).toFixed(2)} us ` +
          `vmm ${(row.vmmCpuNsPerOp / 1000).toFixed(2)} us`,
      );
    }
  }
  return out;
}
