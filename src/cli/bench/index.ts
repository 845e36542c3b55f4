/**
 * `npm run bench`: micro-benchmarks of the in-process transport, reported (never asserted):
 * register dispatch, device-side chain processing, and 4 KiB blk read round trips through the
 * in-process machine. Prints a table and writes JSON with the machine description.
 *
 * @packageDocumentation
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { BlkDevice, BlkDriver, MemoryBlockBackend, RngDevice } from '../../device/index.js';
import { Machine } from '../../platform/index.js';
import { BLK_SECTOR_SIZE, DeviceStatus, MmioReg } from '../../spec/index.js';
import { formatVmmBench, runVmmBench } from '../../vmm/index.js';
import { type BenchResult, formatRate, type MeasureOptions, machineInfo, measure } from './harness.js';
import { benchChains } from './queueBench.js';

/** Options of {@link runBench}. */
export interface BenchOptions {
  /** Where to write the JSON results. */
  jsonPath: string;
  /** Shorter runs. */
  quick: boolean;
}

/** Register dispatch through the bus into the transport: a read and a write per two accesses. */
function benchRegisters(options: MeasureOptions): BenchResult[] {
  const machine = new Machine({ ramSize: 4 << 20 });
  const slot = machine.addDevice(new RngDevice({ entropy: { fill: (b) => b.fill(0) } }), { name: 'rng0' });
  const base = slot.base;
  const bus = machine.bus;
  bus.write(base + MmioReg.Status, 4, DeviceStatus.ACKNOWLEDGE);
  const t = slot.transport;
  const direct = measure(
    'register read (transport)',
    'accesses/s',
    (n) => {
      for (let i = 0; i < n; i++) t.read(MmioReg.InterruptStatus, 4);
    },
    options,
  );
  const viaBus = measure(
    'register read+write (bus)',
    'accesses/s',
    (n) => {
      for (let i = 0; i < n; i += 2) {
        bus.read(base + MmioReg.Status, 4);
        bus.write(base + MmioReg.QueueSel, 4, 0);
      }
    },
    options,
  );
  return [direct, viaBus];
}

/** 4 KiB blk reads, one request at a time, driver and device in one process. */
function benchBlk(options: MeasureOptions): BenchResult {
  const machine = new Machine({ ramSize: 32 << 20 });
  const backend = new MemoryBlockBackend(new Uint8Array(16 << 20));
  machine.addDevice(new BlkDevice({ backend }), { name: 'blk0' });
  const t = machine.probe('blk0');
  if (t === null) throw new Error('blk0 not found');
  const blk = BlkDriver.probe(t);
  const sectors = 4096 / BLK_SECTOR_SIZE;
  const span = backend.size / 4096;
  let k = 0;
  const r = measure(
    'blk 4 KiB read round trip',
    'requests/s',
    (n) => {
      for (let i = 0; i < n; i++) {
        blk.read((k % span) * sectors, sectors);
        k = (k * 1103515245 + 12345) >>> 0;
      }
    },
    options,
  );
  r.extra = { 'MB/s': (r.mean * 4096) / 1e6 };
  blk.remove();
  return r;
}

/** Runs every micro-benchmark, prints the table and writes the JSON file. */
export async function runBench(options: BenchOptions): Promise<void> {
  const m: MeasureOptions = options.quick
    ? { runs: 3, minRunMs: 50, warmupMs: 50 }
    : { runs: 5, minRunMs: 300, warmupMs: 300 };
  const info = machineInfo();
  console.log(`virtio-mmio micro-benchmarks on ${info.cpu} (${info.cores} cores), node ${info.node}`);
  const results: BenchResult[] = [];
  const run = (r: BenchResult | BenchResult[]): void => {
    for (const x of Array.isArray(r) ? r : [r]) {
      results.push(x);
      const extra = x.extra
        ? `  (${Object.entries(x.extra)
            .map(([k, v]) => `${v.toFixed(1)} ${k}`)
            .join(', ')})`
        : '';
      console.log(`  ${x.name.padEnd(34)} ${formatRate(x)}${extra}`);
    }
  };
  run(benchRegisters(m));
  for (const segs of [1, 16]) for (const indirect of [false, true]) run(benchChains(segs, indirect, m));
  run(benchBlk(m));
  console.log(
    'threaded runtime (src/vmm): a trapped access, a posted doorbell, an injection, beside raw wake-ups',
  );
  const vmm = await runVmmBench({ quick: options.quick });
  for (const line of formatVmmBench(vmm)) console.log(`  ${line}`);
  mkdirSync(dirname(options.jsonPath), { recursive: true });
  writeFileSync(
    options.jsonPath,
    `${JSON.stringify({ machine: info, config: { quick: options.quick, ...m }, results, vmm }, null, 2)}\n`,
  );
  console.log(`results written to ${options.jsonPath}`);
}
