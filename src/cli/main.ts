#!/usr/bin/env node
/**
 * The `virtio-mmio` command line: `demo` (the default job) and `bench`.
 *
 * @packageDocumentation
 */

import { Presets, SingleBar } from 'cli-progress';
import { Command } from 'commander';
import { printQemuCheck } from '../peers/qemu/index.js';
import { printLinuxCheck } from '../peers/v86/index.js';
import { runBench } from './bench/index.js';
import { formatSeedsTable, runSeedsBench, SEEDS_WORKLOADS, type SeedsWorkload } from './bench/seeds/index.js';
import { openConsoleBackend, runConsoleEcho } from './console.js';
import { runDemo } from './demo.js';

const program = new Command();
program
  .name('virtio-mmio')
  .description('virtio over MMIO in TypeScript: device models, guest drivers, benchmarks');

program
  .command('demo', { isDefault: true })
  .description('probe an rng and a file-backed blk device, Version 2 and legacy, and report what happened')
  // demo is the default command, so commander hands it any unknown command word: name it as such
  // instead of "too many arguments for 'demo'".
  .allowExcessArguments(true)
  .action((_options: unknown, cmd: Command) => {
    if (cmd.args.length > 0) throw new Error(`unknown command '${cmd.args[0]}' (see --help)`);
    for (const line of runDemo()) console.log(line);
  });

program
  .command('bench')
  .description(
    "the seeds' measurements on the threaded runtime: request/response (one flow; two flows on two vCPUs with one or two queue pairs), bulk UDP both ways and 4 KiB block I/O in every interrupt and notification mode, beside the ideal bound",
  )
  .option('--quick', 'the sub-minute headline run', false)
  .option('--json <file>', 'write the results as JSON to this file')
  .option('--out <dir>', 'write results.json, SVG charts and report.md into this directory')
  .option('--no-progress', 'no progress bar')
  .option('--poll', 'also measure the polling rows (default in the full run)')
  .option('--no-poll', 'skip the polling rows')
  .option(
    '--workloads <list>',
    `comma-separated subset of ${SEEDS_WORKLOADS.join(',')}`,
    SEEDS_WORKLOADS.join(','),
  )
  .action(
    async (opts: {
      quick: boolean;
      json?: string;
      out?: string;
      progress: boolean;
      poll?: boolean;
      workloads: string;
    }) => {
      const bar =
        opts.progress && process.stderr.isTTY
          ? new SingleBar(
              { format: ' {bar} {value}/{total} {label}', stream: process.stderr },
              Presets.shades_classic,
            )
          : null;
      let started = false;
      const result = await runSeedsBench({
        quick: opts.quick,
        workloads: opts.workloads.split(',').map((w) => w.trim()) as SeedsWorkload[],
        poll: opts.poll,
        json: opts.json,
        out: opts.out,
        onProgress: (p) => {
          if (bar === null) {
            if (p.done < p.total) console.error(`[${p.done + 1}/${p.total}] ${p.label}`);
            return;
          }
          if (!started) {
            bar.start(p.total, p.done, { label: p.label });
            started = true;
          } else bar.update(p.done, { label: p.label });
        },
      });
      bar?.stop();
      for (const line of formatSeedsTable(result)) console.log(line);
      if (opts.json !== undefined) console.log(`results written to ${opts.json}`);
      if (opts.out !== undefined) console.log(`report written to ${opts.out}/report.md`);
    },
  );

program
  .command('micro')
  .description(
    'micro-benchmarks: register dispatch, chain processing, blk round trips, runtime costs (JSON + table)',
  )
  .option('--json <file>', 'write results as JSON to this file', 'bench-results/micro.json')
  .option('--quick', 'shorter runs', false)
  .action(async (opts: { json: string; quick: boolean }) => {
    await runBench({ jsonPath: opts.json, quick: opts.quick });
  });

program
  .command('console')
  .description(
    'a virtio-console on stdio, a file or a socket, with a guest that echoes lines back upper-cased',
  )
  .option('--backend <spec>', 'stdio | file:OUT[,in=IN] | tcp:PORT (listens on 127.0.0.1)', 'stdio')
  .action(async (opts: { backend: string }) => {
    const backend = await openConsoleBackend(opts.backend);
    const { done } = runConsoleEcho(backend, (line) => console.error(line));
    const { echoed } = await done;
    console.error(`guest echoed ${echoed} lines`);
  });

const check = program
  .command('check')
  .description('conformance checks against reference peers nobody here wrote');

check
  .command('qemu')
  .description("drive QEMU's virtio-mmio devices with our drivers (qtest) and compare register behaviour")
  .option('--sequences <n>', 'generated register sequences per version', '200')
  .option('--seed <n>', 'first seed of the generated sequences')
  .action(async (opts: { sequences: string; seed?: string }) => {
    const sequences = Number(opts.sequences);
    if (!Number.isInteger(sequences) || sequences < 0) {
      throw new Error(`--sequences must be a whole number, not ${opts.sequences}`);
    }
    process.exitCode = await printQemuCheck({
      sequences,
      seed: opts.seed === undefined ? undefined : Number(opts.seed),
    });
  });

check
  .command('linux')
  .description('a real Linux kernel (Debian 12 i386 in v86) drives our rng and blk device models')
  .option('--verbose', 'print the guest console', false)
  .action(async (opts: { verbose: boolean }) => {
    process.exitCode = await printLinuxCheck({ verbose: opts.verbose });
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  const e = err as { code?: string; message?: string };
  console.error(`virtio-mmio: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}`);
  process.exitCode = 1;
});
