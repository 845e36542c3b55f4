/**
 * The multiqueue workload of the seeds' benchmark (`rr-mq`): two vCPUs, two request/response
 * flows, one virtio-net device with one or two queue pairs, and the interrupt routing that decides
 * whether each vCPU takes its own pair's interrupts (per-queue MSI vectors aimed at it) or one vCPU
 * takes them all and forwards (one shared line, or one shared MSI vector). The guest side is
 * src/vmm/mqPrograms.ts.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../../spec/index.js';
import type { InterruptMode } from '../../../transport/index.js';
import { type ModuleRef, type NotifyMode, ThreadedVm, vmmModule } from '../../../vmm/index.js';
import type { MqInitResult, MqLoopResult, MqReservation } from '../../../vmm/mqPrograms.js';
import type { IrqLayout } from './modes.js';
import { median, type SeedsConfig, type SeedsResultEntry } from './results.js';
import { Tally } from './tally.js';

const M = (name: string): ModuleRef => vmmModule('mqPrograms', name);
const B = (name: string): ModuleRef => vmmModule('benchPrograms', name);

/** Per-run timeout (a loaded machine can be far slower than an idle one). */
const RUN_TIMEOUT_MS = 120_000;

/** One mode of the multiqueue workload. */
export interface MqMode {
  /** Stable name (`<n> pair(s) <layout> <notify>`), e.g. `2 pairs msi trapped`. */
  readonly name: string;
  /** Queue pairs the guest uses. */
  readonly pairs: 1 | 2;
  /** Interrupt layout (line-v2, msi-shared or msi). */
  readonly layout: Extract<IrqLayout, 'line-v2' | 'msi' | 'msi-shared'>;
  /** Notification writes trapped or posted. */
  readonly notify: NotifyMode;
}

const LAYOUT: Record<MqMode['layout'], { setup: Record<string, unknown>; allow: InterruptMode[] }> = {
  'line-v2': { setup: { version: 2 }, allow: ['line'] },
  msi: { setup: { msi: 'non-sharing' }, allow: ['msi-per-queue'] },
  'msi-shared': { setup: { msi: 'sharing' }, allow: ['msi-shared'] },
};

/** Builds one mode. */
export function mqMode(pairs: 1 | 2, layout: MqMode['layout'], notify: NotifyMode): MqMode {
  return { name: `${pairs} ${pairs === 1 ? 'pair' : 'pairs'} ${layout} ${notify}`, pairs, layout, notify };
}

/**
 * The modes of one run, notifications trapped: one pair on the line and with MSI, two pairs on one
 * shared line and with per-queue MSI vectors; full adds two pairs on one shared MSI vector, and
 * the same with posted notifications.
 */
export function mqModes(quick: boolean): MqMode[] {
  const out: MqMode[] = [];
  for (const notify of quick ? (['trapped'] as const) : (['trapped', 'posted'] as const)) {
    out.push(mqMode(1, 'line-v2', notify), mqMode(1, 'msi', notify), mqMode(2, 'line-v2', notify));
    if (!quick) out.push(mqMode(2, 'msi-shared', notify));
    out.push(mqMode(2, 'msi', notify));
  }
  return out;
}

/**
 * Measures one multiqueue mode on a fresh 2-vCPU machine: vCPU 1 reserves its vector, vCPU 0
 * probes (2 pairs: hands pair 1 over), vCPU 1 adopts it; a warm-up, then `config.runs` timed runs
 * of both loops started together. The value is the sum of both vCPUs' transactions per second.
 * @throws VirtioError `DEVICE_FAILED` when the driver did not end up in the mode's routing
 */
export async function measureMqMode(mode: MqMode, config: SeedsConfig): Promise<SeedsResultEntry> {
  const l = LAYOUT[mode.layout];
  const vm = await ThreadedVm.start({
    vcpus: 2,
    setup: B('setupNetRr'),
    setupArgs: { ...l.setup, queuePairs: 2, responseSize: config.responseSize },
    notify: mode.notify,
    wait: config.wait,
  });
  const opts = (args: unknown) => ({ args, timeoutMs: RUN_TIMEOUT_MS });
  try {
    const reservation = (await vm.run(1, M('mqReserve'), opts(undefined))) as MqReservation;
    const init = (await vm.run(
      0,
      M('mqInit'),
      opts({ allow: l.allow, pairs: mode.pairs, reservation }),
    )) as MqInitResult;
    if (init.mode !== l.allow[0]) {
      throw new VirtioError(
        'DEVICE_FAILED',
        `mode ${mode.name}: driver chose ${init.mode}, not ${l.allow[0]}`,
      );
    }
    if (mode.pairs === 2) await vm.run(1, M('mqAdopt'), opts({ handoff: init.handoff }));
    const loops = async (warmup: number, count: number, durationMs: number): Promise<MqLoopResult[]> => {
      const parties = mode.pairs;
      const barrier = new SharedArrayBuffer(8);
      const common = {
        warmup,
        count,
        durationMs,
        barrier,
        parties,
        requestSize: config.requestSize,
        responseSize: config.responseSize,
      };
      const runs = [vm.run(0, M('mqLoop'), opts({ ...common, flows: mode.pairs === 1 ? 2 : 1 }))];
      if (parties === 2) runs.push(vm.run(1, M('mqLoop'), opts({ ...common, flows: 1 })));
      return (await Promise.all(runs)) as MqLoopResult[];
    };
    if (config.warmup > 0) await loops(config.warmup, 0, 0);
    const tally = new Tally();
    const values: number[] = [];
    const p50: number[] = [];
    const p90: number[] = [];
    const p99: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < config.runs; i++) {
      await vm.resetStats();
      const v0 = ((await vm.vmmStats()) as { cpuNs: number }).cpuNs;
      const rs = await loops(0, config.maxTransactions, config.durationMs);
      const v1 = ((await vm.vmmStats()) as { cpuNs: number }).cpuNs;
      let perSec = 0;
      let ops = 0;
      for (const r of rs) {
        perSec += r.transPerSec;
        ops += r.operations;
        tally.ipis += r.ipisSent;
      }
      const s0 = vm.vcpuStats(0);
      const s1 = vm.vcpuStats(1);
      tally.add(s0, 'net0', ops);
      tally.add(s1, 'net0', 0);
      values.push(perSec);
      // Latency of the slower vCPU's flows (the one the forwarding mode penalizes).
      p50.push(Math.max(...rs.map((r) => r.p50Us)));
      p90.push(Math.max(...rs.map((r) => r.p90Us)));
      p99.push(Math.max(...rs.map((r) => r.p99Us)));
      const wall = Math.max(...rs.map((r) => r.elapsedNs));
      const known = s0.cpuNs >= 0 && s1.cpuNs >= 0 && v0 >= 0 && v1 >= 0 && wall > 0;
      cpu.push(known ? (s0.cpuNs + s1.cpuNs + (v1 - v0)) / wall : -1);
    }
    await vm.run(0, M('mqRemove'), opts(undefined));
    await vm.run(1, M('mqRemove'), opts(undefined));
    return {
      workload: 'rr-mq',
      mode: mode.name,
      metric: 'trans/s',
      value: median(values),
      runs: values,
      cpuCores: median(cpu),
      latencyUs: { p50: median(p50), p90: median(p90), p99: median(p99) },
      interruptMode: init.mode,
      ...tally.entry(),
      ipis: tally.per(tally.ipis),
    };
  } finally {
    await vm.stop();
  }
}
