/**
 * Entry of a vCPU worker thread: builds the vCPU runtime over the shared control block and guest
 * RAM, then runs guest programs on request. A program runs synchronously on this thread (its MMIO
 * accesses block it in `Atomics.wait`); between programs the worker idles in its event loop.
 *
 * @packageDocumentation
 */

import { pathToFileURL } from 'node:url';
import { type MessagePort, threadId, workerData } from 'node:worker_threads';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { VirtioError } from '../spec/index.js';
import { MmioDriver } from '../transport/index.js';
import { threadCpuNs } from './cpuTime.js';
import { VcpuCounter } from './layout.js';
import { Tracer } from './trace.js';
import { errorInfo, type ModuleRef, type VcpuInit } from './types.js';
import { type GuestEnv, TrappedWindow, VcpuPlatform, VcpuRuntime } from './vcpu.js';

/** A run request from the main thread. */
interface RunRequest {
  readonly type: 'run';
  readonly id: number;
  readonly program: ModuleRef;
  readonly args: unknown;
  readonly haltTimeoutMs?: number;
}

const { init, port } = workerData as { init: VcpuInit; port: MessagePort };
const rt = new VcpuRuntime(
  init.ctl,
  init.counters,
  init.vcpu,
  init.vcpuCount,
  init.machine,
  init.notify,
  init.spin,
  init.trace ? new Tracer() : null,
  init.exitModel,
);
const mem = new RamMemory(init.ram);
const dma = new GuestAllocator(init.dmaBase, init.dmaSize);
const windows = new Map<string, TrappedWindow>();

function deviceInfo(name: string) {
  const d = init.machine.devices.find((x) => x.name === name);
  if (d === undefined) throw new VirtioError('DEVICE_NOT_FOUND', `no device named ${name}`);
  return d;
}

function windowOf(name: string): TrappedWindow {
  let w = windows.get(name);
  if (w === undefined) {
    const d = deviceInfo(name);
    w = new TrappedWindow(rt, d.base, d.index, d.notify);
    windows.set(name, w);
  }
  return w;
}

/** One platform for every run: drivers probed in one run keep it (and its MSI vectors). */
const platform = new VcpuPlatform(rt);

async function run(req: RunRequest): Promise<void> {
  platform.haltTimeoutMs = req.haltTimeoutMs;
  const env: GuestEnv = {
    vcpu: init.vcpu,
    vcpuCount: init.vcpuCount,
    mem,
    ram: init.ram,
    dma,
    platform,
    devices: init.machine.devices,
    runtime: rt,
    args: req.args,
    mmio: windowOf,
    device: deviceInfo,
    probe: (name, options = {}) => {
      const d = deviceInfo(name);
      return MmioDriver.probe(windowOf(name), {
        mem,
        dma,
        platform,
        irqLines: d.irqLines,
        name,
        seed: options.seed ?? d.seed,
        interrupts: options.interrupts,
      });
    },
  };
  const cpu0 = threadCpuNs();
  const t0 = process.hrtime();
  try {
    const url = req.program.module.startsWith('file:')
      ? req.program.module
      : pathToFileURL(req.program.module).href;
    const mod = (await import(url)) as Record<string, unknown>;
    const fn = mod[req.program.export];
    if (typeof fn !== 'function') {
      throw new TypeError(`module ${req.program.module} has no function ${req.program.export}`);
    }
    const value = await (fn as (e: GuestEnv) => unknown)(env);
    record(cpu0, t0);
    port.postMessage({ type: 'result', id: req.id, ok: true, value });
  } catch (e) {
    record(cpu0, t0);
    port.postMessage({ type: 'result', id: req.id, ok: false, error: errorInfo(e) });
  }
}

function record(cpu0: number, t0: [number, number]): void {
  const [s, ns] = process.hrtime(t0);
  rt.setCounter(VcpuCounter.WALL_NS, s * 1e9 + ns);
  rt.setCounter(VcpuCounter.CPU_NS, cpu0 < 0 ? -1 : threadCpuNs() - cpu0);
}

port.on('message', (m: RunRequest | { type: 'exit' } | { type: 'trace'; id: number }) => {
  if (m.type === 'run') void run(m);
  else if (m.type === 'trace') {
    port.postMessage({
      type: 'trace',
      id: m.id,
      events: rt.tracer?.drain(threadId, `vcpu ${init.vcpu}`) ?? [],
    });
  } else port.close();
});
port.postMessage({ type: 'ready' });
