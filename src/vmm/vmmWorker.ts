/**
 * Entry of the VMM worker thread: builds the devices with the setup module, publishes the machine
 * description, then runs the exit loop until stopped. Control-plane messages (stats, reset) arrive
 * on a MessagePort and are drained synchronously with `receiveMessageOnPort` whenever the main
 * thread bumps VMM_CONTROL, because this thread never returns to its event loop while running.
 *
 * @packageDocumentation
 */

import { pathToFileURL } from 'node:url';
import { type MessagePort, receiveMessageOnPort, threadId, workerData } from 'node:worker_threads';
import { threadCpuNs } from './cpuTime.js';
import { Tracer } from './trace.js';
import type { VmmInit } from './types.js';
import { errorInfo } from './types.js';
import { VmmCore } from './vmmCore.js';

/** A control request from the main thread. */
interface ControlRequest {
  readonly id: number;
  readonly op: 'stats' | 'resetStats' | 'trace';
}

/** Resolves a module reference to an importable URL string. */
function moduleUrl(module: string): string {
  return module.startsWith('file:') ? module : pathToFileURL(module).href;
}

async function main(): Promise<void> {
  const { init, port } = workerData as { init: VmmInit; port: MessagePort };
  const errors: string[] = [];
  const core = new VmmCore(init.ctl, init.ram, init.vcpuCount, {
    lines: init.lines,
    spin: init.spin,
    tracer: init.trace ? new Tracer() : null,
    exitModel: init.exitModel,
    onError: (m) => {
      if (errors.length < 100) errors.push(m);
    },
  });
  try {
    if (init.setup !== null) {
      const mod = (await import(moduleUrl(init.setup.module))) as Record<string, unknown>;
      const fn = mod[init.setup.export];
      if (typeof fn !== 'function') {
        throw new TypeError(`setup module ${init.setup.module} has no function ${init.setup.export}`);
      }
      await (fn as (h: VmmCore, a: unknown) => unknown)(core, init.setupArgs);
    }
  } catch (e) {
    port.postMessage({ type: 'failed', error: errorInfo(e) });
    port.close();
    return;
  }
  port.postMessage({ type: 'ready', machine: core.describe() });
  const cpuStart = threadCpuNs();
  let received = 0;
  core.run((count) => {
    // Messages posted before VMM_CONTROL was bumped are already in the port's queue.
    while (received < count) {
      const m = receiveMessageOnPort(port);
      if (m === undefined) break;
      received++;
      const req = m.message as ControlRequest;
      if (req.op === 'stats') {
        port.postMessage({
          type: 'reply',
          id: req.id,
          value: {
            vmm: core.counters(),
            bus: core.bus.stats(),
            irq: core.irq.stats(),
            msi: core.msi.stats(),
            guestErrors: errors.slice(),
            cpuNs: cpuStart < 0 ? -1 : threadCpuNs() - cpuStart,
          },
        });
      } else if (req.op === 'trace') {
        port.postMessage({ type: 'reply', id: req.id, value: core.tracer?.drain(threadId, 'vmm') ?? [] });
      } else if (req.op === 'resetStats') {
        core.resetCounters();
        port.postMessage({ type: 'reply', id: req.id, value: null });
      }
    }
    return received;
  });
  port.postMessage({ type: 'stopped' });
  port.close();
}

void main();
