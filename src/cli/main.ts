#!/usr/bin/env node
/**
 * The `virtio-mmio` command line: `demo` (the default job) and `bench`.
 *
 * @packageDocumentation
 */

import { Command } from 'commander';
import { runBench } from './bench/index.js';
import { runDemo } from './demo.js';

const program = new Command();
program
  .name('virtio-mmio')
  .description('virtio over MMIO in TypeScript: device models, guest drivers, benchmarks');

program
  .command('demo', { isDefault: true })
  .description('probe an rng and a file-backed blk device, Version 2 and legacy, and report what happened')
  .action(() => {
    for (const line of runDemo()) console.log(line);
  });

program
  .command('bench')
  .description('micro-benchmarks: register dispatch, chain processing, blk round trips (JSON + table)')
  .option('--json <file>', 'write results as JSON to this file', 'bench-results/micro.json')
  .option('--quick', 'shorter runs (for CI)', false)
  .action((opts: { json: string; quick: boolean }) => {
    runBench({ jsonPath: opts.json, quick: opts.quick });
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  const e = err as { code?: string; message?: string };
  console.error(`virtio-mmio: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}`);
  process.exitCode = 1;
});
