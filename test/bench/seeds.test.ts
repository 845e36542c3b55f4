import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  blkModes,
  computeRatios,
  formatSeedsTable,
  measureBlkMode,
  measureBulkMode,
  measureMqMode,
  measureRrMode,
  median,
  mqMode,
  mqModes,
  POLL_SPIN,
  pollModes,
  rrMode,
  rrModes,
  runSeedsBench,
  type SeedsBenchResult,
  type SeedsResultEntry,
  seedsChartSpecs,
  seedsConfig,
} from '../../src/cli/bench/seeds/index.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A tiny configuration: one run of a few hundred transactions, counts only. */
const tiny = seedsConfig({
  quick: true,
  overrides: { runs: 1, warmup: 20, durationMs: 0, maxTransactions: 300 },
});

function entry(mode: string, value: number, workload = 'rr'): SeedsResultEntry {
  return {
    workload,
    mode,
    metric: 'trans/s',
    value,
    runs: [value],
    exits: 0,
    doorbells: 0,
    interrupts: 0,
    cpuCores: 1,
    handlerAccesses: 0,
    hltWakeups: 0,
    exitDetail: { read: 0, write: 0, eoi: 0, irqchip: 0 },
    latencyUs: { p50: 1, p90: 2, p99: 3 },
    interruptMode: 'line',
    operations: 1,
  };
}

describe('seeds bench: statistics and ratios', () => {
  it('median of odd and even counts, NaN for none', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([7])).toBe(7);
    expect(median([])).toBeNaN();
  });

  it('ratios come from the medians of the named modes', () => {
    const r = computeRatios([
      entry('ideal', 30_000),
      entry('line-v2 trapped', 2_000),
      entry('msi trapped', 5_000),
      entry('line-v2 posted', 4_000),
      entry('msi posted', 12_000),
      entry('msi-shared posted', 15_000),
      entry('ideal poll', 60_000),
      entry('msi posted poll', 45_000),
      entry('line-v2 trapped poll', 20_000),
      entry('msi posted', 8_000, 'blk-qd1'),
      entry('line-v2 posted', 4_000, 'blk-qd1'),
      entry('msi posted', 30_000, 'blk-qd32'),
      entry('line-v2 posted', 20_000, 'blk-qd32'),
      entry('2 pairs msi trapped', 9_000, 'rr-mq'),
      entry('2 pairs line-v2 trapped', 6_000, 'rr-mq'),
      entry('2 pairs msi-shared trapped', 60_000, 'rr-mq'),
    ]);
    expect(r.msiOverLine).toBe(2.5);
    expect(r.msiOverLinePosted).toBe(3);
    expect(r.bestOverIdeal).toBe(0.5);
    // Blocking rows against the blocking ideal, polling rows against the polling ideal.
    expect(r.bestMode).toBe('msi-shared posted');
    expect(r.bestOverIdealPoll).toBe(0.75);
    expect(r.bestModePoll).toBe('msi posted poll');
    expect(r.blkMsiOverLineQd1).toBe(2);
    expect(r.blkMsiOverLineQd32).toBe(1.5);
    expect(r.perQueueOverShared).toBe(1.5);
  });

  it('a ratio whose side is missing or zero is null', () => {
    const r = computeRatios([
      entry('msi trapped', 5_000),
      entry('line-v2 posted', 0),
      entry('msi posted', 10),
    ]);
    expect(r.msiOverLine).toBeNull();
    expect(r.msiOverLinePosted).toBeNull();
    expect(r.bestOverIdeal).toBeNull();
    expect(r.bestMode).toBeNull();
    expect(r.perQueueOverShared).toBeNull();
    expect(computeRatios([])).toEqual({
      blkMsiOverLineQd1: null,
      blkMsiOverLineQd32: null,
      msiOverLine: null,
      msiOverLinePosted: null,
      bestOverIdeal: null,
      bestMode: null,
      bestOverIdealPoll: null,
      bestModePoll: null,
      perQueueOverShared: null,
    });
  });
});

describe('seeds bench: modes', () => {
  it('full: every layout x notification x EVENT_IDX; quick: EVENT_IDX on, posted for line-v2 and msi only', () => {
    const full = rrModes(false).map((m) => m.name);
    expect(full).toHaveLength(28);
    expect(new Set(full).size).toBe(28);
    expect(full).toContain('msi-notify posted no-event-idx');
    const quick = rrModes(true).map((m) => m.name);
    expect(quick).toEqual([
      'line-v2 trapped',
      'line-v2 posted',
      'line-v1 trapped',
      'lines-per-queue trapped',
      'lines-shared trapped',
      'msi trapped',
      'msi posted',
      'msi-shared trapped',
      'msi-shared posted',
    ]);
  });

  it('a mode forces its interrupt mode and carries the device options', () => {
    const m = rrMode('line-v1', 'posted', false);
    expect(m).toMatchObject({
      name: 'line-v1 posted no-event-idx',
      notify: 'posted',
      eventIdx: false,
      allow: ['line'],
      expect: 'line',
      setup: { version: 1, eventIdx: false },
    });
    expect(rrMode('msi-shared', 'trapped').setup).toEqual({ msi: 'sharing', eventIdx: true });
  });

  it('rejects an unknown mode or workload name', async () => {
    await expect(runSeedsBench({ quick: true, modes: ['msi turbo'] })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    await expect(
      runSeedsBench({ quick: true, workloads: ['iperf' as 'rr'], modes: ['msi posted'] }),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('block and bulk modes: standard line and seed MSI, trapped and posted; quick, posted only', () => {
    expect(blkModes().map((m) => m.name)).toEqual([
      'line-v2 trapped',
      'line-v2 posted',
      'msi trapped',
      'msi posted',
    ]);
    expect(blkModes(true).map((m) => m.name)).toEqual(['line-v2 posted', 'msi posted']);
  });
});

describe('seeds bench: counts per transaction (tiny runs, never timing)', () => {
  it('seed MSI + posted notification: no synchronous exit, one doorbell, no handler access', async () => {
    const e = await measureRrMode(rrMode('msi', 'posted'), tiny);
    expect(e.interruptMode).toBe('msi-per-queue');
    expect(e.operations).toBe(300);
    expect(e.exits).toBe(0);
    expect(e.exitDetail).toEqual({ read: 0, write: 0, eoi: 0, irqchip: 0 });
    expect(e.doorbells).toBe(1);
    expect(e.handlerAccesses).toBe(0);
    expect(e.interrupts).toBeGreaterThan(0);
  });

  it('standard line, trapped: notify write, InterruptStatus read, InterruptACK write, EOI', async () => {
    const e = await measureRrMode(rrMode('line-v2', 'trapped'), tiny);
    expect(e.interruptMode).toBe('line');
    expect(e.exitDetail).toEqual({ read: 1, write: 2, eoi: 1, irqchip: 0 });
    expect(e.exits).toBe(4);
    expect(e.doorbells).toBe(0);
    expect(e.interrupts).toBe(1);
    expect(e.handlerAccesses).toBe(3);
  });

  it('seed MSI, trapped: only the notification exits; only the receive vector interrupts (tx reclaimed on send)', async () => {
    const e = await measureRrMode(rrMode('msi', 'trapped'), tiny);
    expect(e.exitDetail).toEqual({ read: 0, write: 1, eoi: 0, irqchip: 0 });
    expect(e.interrupts).toBe(1);
    expect(e.handlerAccesses).toBe(0);
  });

  it('config + shared line, trapped: no status read (the line says which), ACK and EOI remain', async () => {
    const e = await measureRrMode(rrMode('lines-shared', 'trapped'), tiny);
    expect(e.interruptMode).toBe('lines-shared');
    expect(e.exitDetail).toEqual({ read: 0, write: 2, eoi: 1, irqchip: 0 });
    expect(e.handlerAccesses).toBe(2);
  });
});

describe('seeds bench: multiqueue, two vCPUs (tiny runs, counts only)', () => {
  it('modes: one pair (line, msi) and two pairs (line, msi-shared, msi); full adds posted', () => {
    expect(mqModes(true).map((m) => m.name)).toEqual([
      '1 pair line-v2 trapped',
      '1 pair msi trapped',
      '2 pairs line-v2 trapped',
      '2 pairs msi trapped',
    ]);
    const full = mqModes(false).map((m) => m.name);
    expect(full).toHaveLength(10);
    expect(full).toContain('2 pairs msi posted');
  });

  it('2 pairs, per-queue MSI: each vCPU takes its own pair interrupt, nothing is forwarded', async () => {
    const e = await measureMqMode(mqMode(2, 'msi', 'trapped'), tiny);
    expect(e.workload).toBe('rr-mq');
    expect(e.interruptMode).toBe('msi-per-queue');
    // One timed run per vCPU of up to 300 transactions each.
    expect(e.operations).toBe(600);
    expect(e.exitDetail).toEqual({ read: 0, write: 1, eoi: 0, irqchip: 0 });
    // One interrupt per transaction, plus at most the two rendezvous wake-ups of each vCPU per run.
    expect(e.interrupts).toBeGreaterThanOrEqual(1);
    expect(e.interrupts).toBeLessThanOrEqual(1 + 4 / e.operations);
    expect(e.handlerAccesses).toBe(0);
    expect(e.ipis).toBe(0);
  });

  it('2 pairs, one shared line: vCPU 0 takes every interrupt and forwards pair 1 completions by IPI', async () => {
    const e = await measureMqMode(mqMode(2, 'line-v2', 'trapped'), tiny);
    expect(e.interruptMode).toBe('line');
    expect(e.operations).toBe(600);
    // Half of the transactions are pair 1's; an interrupt may carry both pairs' completions.
    expect(e.ipis).toBeGreaterThan(0);
    expect(e.ipis).toBeLessThanOrEqual(0.5);
    expect(e.handlerAccesses).toBeGreaterThan(0);
    expect(e.exitDetail.read).toBeGreaterThan(0);
    expect(e.exitDetail.eoi).toBe(e.exitDetail.read);
  });

  it('2 pairs, posted notifications: the control command answered after the doorbell wakes the prober; no exit', async () => {
    // Selecting 2 pairs goes through the control queue; with a posted doorbell the device answers on
    // the VMM thread after the write returned, so the halted vCPU needs that queue's interrupt.
    const e = await measureMqMode(mqMode(2, 'msi', 'posted'), tiny);
    expect(e.operations).toBe(600);
    expect(e.exits).toBe(0);
    expect(e.ipis).toBe(0);
  });

  it('1 pair: both flows on vCPU 0, the standard line costs its three handler accesses per interrupt', async () => {
    const e = await measureMqMode(mqMode(1, 'line-v2', 'trapped'), tiny);
    expect(e.interruptMode).toBe('line');
    expect(e.operations).toBe(300);
    expect(e.ipis).toBe(0);
    expect(e.handlerAccesses).toBeCloseTo(3 * e.interrupts, 10);
  });
});

describe('seeds bench: bulk (iperf-like), counts per datagram (tiny runs)', () => {
  it('transmit, seed MSI, posted: no exit, one doorbell per batch of 64, no interrupt, every frame consumed', async () => {
    const e = await measureBulkMode(rrMode('msi', 'posted'), 'tx', tiny);
    expect(e.workload).toBe('bulk-tx');
    expect(e.metric).toBe('MB/s');
    expect(e.operations).toBe(300);
    expect(e.exits).toBe(0);
    expect(e.doorbells).toBeGreaterThan(0);
    expect(e.doorbells).toBeLessThanOrEqual(6 / 300);
    expect(e.interrupts).toBe(0);
  });

  it('receive, standard line, trapped: one request per 64 datagrams, every datagram checked in order', async () => {
    const e = await measureBulkMode(rrMode('line-v2', 'trapped'), 'rx', tiny);
    expect(e.workload).toBe('bulk-rx');
    // Whole requests of 64: the first multiple of 64 at or past 300.
    expect(e.operations).toBe(320);
    expect(e.exitDetail.write).toBeGreaterThan(0);
    expect(e.interrupts).toBeGreaterThan(0);
    expect(e.interrupts).toBeLessThanOrEqual(1);
  });
});

describe('seeds bench: per-queue notification addresses', () => {
  it('seed MSI + per-queue notification addresses, trapped: one write exit (to the queue address), nothing else', async () => {
    const e = await measureRrMode(rrMode('msi-notify', 'trapped'), tiny);
    expect(e.interruptMode).toBe('msi-per-queue');
    expect(e.exitDetail).toEqual({ read: 0, write: 1, eoi: 0, irqchip: 0 });
    expect(e.handlerAccesses).toBe(0);
  });
});

describe('seeds bench: block counts per I/O (tiny runs, never timing)', () => {
  it('queue depth 1, standard line, trapped: notify, status read, ACK, EOI per I/O', async () => {
    const e = await measureBlkMode(rrMode('line-v2', 'trapped'), 1, tiny);
    expect(e.workload).toBe('blk-qd1');
    expect(e.metric).toBe('IOPS');
    expect(e.operations).toBe(300);
    expect(e.exitDetail).toEqual({ read: 1, write: 2, eoi: 1, irqchip: 0 });
    expect(e.interrupts).toBe(1);
    expect(e.handlerAccesses).toBe(3);
  });

  it('queue depth 1, seed MSI, posted: no exit, one doorbell per I/O', async () => {
    const e = await measureBlkMode(rrMode('msi', 'posted'), 1, tiny);
    expect(e.interruptMode).toBe('msi-per-queue');
    expect(e.exits).toBe(0);
    expect(e.doorbells).toBe(1);
    expect(e.handlerAccesses).toBe(0);
  });

  it('queue depth 32, seed MSI, trapped: every I/O still completes (timed + drained)', async () => {
    const e = await measureBlkMode(rrMode('msi', 'trapped'), 32, tiny);
    expect(e.workload).toBe('blk-qd32');
    expect(e.operations).toBeGreaterThanOrEqual(300);
    expect(e.exitDetail.read).toBe(0);
    expect(e.exitDetail.eoi).toBe(0);
    expect(e.handlerAccesses).toBe(0);
  });
});

describe('seeds bench: the JSON shape', () => {
  it('every documented field is present with its type, and the table names every mode', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'seeds-bench-'));
    dirs.push(dir);
    const json = join(dir, 'r.json');
    const seen: number[] = [];
    const result = await runSeedsBench({
      quick: true,
      json,
      out: join(dir, 'out'),
      workloads: ['rr'],
      modes: ['msi posted'],
      poll: false,
      overrides: { runs: 2, warmup: 10, durationMs: 0, maxTransactions: 200 },
      onProgress: (p) => seen.push(p.done),
    });
    expect(seen).toEqual([0, 1, 2]);
    const parsed = JSON.parse(readFileSync(json, 'utf8')) as SeedsBenchResult;
    expect(parsed).toEqual(JSON.parse(readFileSync(join(dir, 'out', 'results.json'), 'utf8')));
    const report = readFileSync(join(dir, 'out', 'report.md'), 'utf8');
    expect(report).toContain('msiOverLine');
    for (const f of ['rr-transactions.svg', 'rr-exits.svg', 'rr-latency.svg']) {
      expect(report).toContain(`(${f})`);
      expect(readFileSync(join(dir, 'out', f), 'utf8')).toMatch(/^<svg /);
    }
    expect(Object.keys(parsed).sort()).toEqual(['config', 'machine', 'ratios', 'results']);
    const m = parsed.machine;
    for (const k of ['cpu', 'os', 'node', 'v8'] as const) expect(typeof m[k]).toBe('string');
    for (const k of ['cores', 'memory', 'loadavg1'] as const) expect(typeof m[k]).toBe('number');
    const c = parsed.config;
    expect(c).toMatchObject({
      schema: 1,
      quick: true,
      runs: 2,
      warmup: 10,
      requestSize: 32,
      responseSize: 1024,
    });
    expect(typeof c.version).toBe('string');
    expect(typeof c.date).toBe('string');
    expect(c.wait).toEqual({ vcpuSpin: 0, vmmSpin: 0 });
    expect(c.workloads).toEqual(['rr']);
    expect(parsed.results.map((r) => r.mode)).toEqual(['ideal', 'msi posted']);
    for (const r of parsed.results) {
      expect(r.workload).toBe('rr');
      expect(r.metric).toBe('trans/s');
      expect(r.runs).toHaveLength(2);
      for (const x of r.runs) expect(typeof x).toBe('number');
      expect(r.value).toBe(median(r.runs));
      for (const k of [
        'exits',
        'doorbells',
        'interrupts',
        'cpuCores',
        'handlerAccesses',
        'hltWakeups',
        'operations',
      ] as const) {
        expect(typeof r[k]).toBe('number');
      }
      expect(r.operations).toBe(400);
      expect(Object.keys(r.exitDetail).sort()).toEqual(['eoi', 'irqchip', 'read', 'write']);
      expect(Object.keys(r.latencyUs).sort()).toEqual(['p50', 'p90', 'p99']);
      expect(r.latencyUs.p50).toBeLessThanOrEqual(r.latencyUs.p99);
      expect(typeof r.interruptMode).toBe('string');
    }
    expect(parsed.results[0]).toMatchObject({ mode: 'ideal', exits: 0, doorbells: 0, interrupts: 0 });
    expect(Object.keys(parsed.ratios).sort()).toEqual([
      'bestMode',
      'bestModePoll',
      'bestOverIdeal',
      'bestOverIdealPoll',
      'blkMsiOverLineQd1',
      'blkMsiOverLineQd32',
      'msiOverLine',
      'msiOverLinePosted',
      'perQueueOverShared',
    ]);
    expect(parsed.ratios.msiOverLine).toBeNull();
    expect(parsed.ratios.bestMode).toBe('msi posted');
    expect(parsed.ratios.bestOverIdeal).toBeCloseTo(parsed.results[1].value / parsed.results[0].value, 10);
    const table = formatSeedsTable(result).join('\n');
    expect(table).toContain('ideal');
    expect(table).toContain('msi posted');
    expect(table).toContain('msiOverLine');
    expect(table).toContain('bestOverIdeal');
  });
});

describe('seeds bench: polling rows', () => {
  it('the same modes under the polling policy, beside their own ideal, named with " poll"', async () => {
    const result = await runSeedsBench({
      quick: true,
      workloads: ['rr'],
      modes: ['msi posted'],
      poll: true,
      overrides: { runs: 1, warmup: 10, durationMs: 0, maxTransactions: 100 },
    });
    expect(result.results.map((r) => r.mode)).toEqual([
      'ideal',
      'msi posted',
      'ideal poll',
      'msi posted poll',
    ]);
    expect(result.config.pollWait).toEqual({ vcpuSpin: POLL_SPIN, vmmSpin: POLL_SPIN });
    expect(result.ratios.bestMode).toBe('msi posted');
    expect(result.ratios.bestModePoll).toBe('msi posted poll');
    expect(pollModes(true).map((m) => m.name)).toEqual(['line-v2 trapped', 'msi trapped', 'msi posted']);
    expect(pollModes(false).every((m) => m.eventIdx)).toBe(true);
    expect(pollModes(false)).toHaveLength(14);
  });
});

describe('seeds bench: charts', () => {
  it('one spec per chart the data allows: rr charts without blk entries, blk chart with them', () => {
    const base = { machine: {} as SeedsBenchResult['machine'], config: tiny, ratios: computeRatios([]) };
    const rrOnly = seedsChartSpecs({ ...base, results: [entry('ideal', 1), entry('msi posted', 2)] });
    expect(rrOnly.map((c) => c.file)).toEqual(['rr-transactions.svg', 'rr-exits.svg', 'rr-latency.svg']);
    const blkOnly = seedsChartSpecs({ ...base, results: [entry('msi posted', 2, 'blk-qd1')] });
    expect(blkOnly.map((c) => c.file)).toEqual(['blk-iops.svg']);
    expect(seedsChartSpecs({ ...base, results: [] })).toEqual([]);
  });
});
