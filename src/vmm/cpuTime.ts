/**
 * CPU time of the calling thread. Node 20 has no per-thread CPU clock (`process.cpuUsage()` is
 * process-wide in a worker too, `process.threadCpuUsage` arrived in Node 23.9, and event-loop
 * utilization counts a thread blocked in `Atomics.wait` inside one task as busy), so on Linux this
 * reads `/proc/thread-self/schedstat`, whose first field is the thread's time on CPU in
 * nanoseconds. Elsewhere it returns -1.
 *
 * @packageDocumentation
 */

import { readFileSync } from 'node:fs';

/** Nanoseconds the calling thread has spent on a CPU, or -1 when the platform cannot tell. */
export function threadCpuNs(): number {
  try {
    const text = readFileSync('/proc/thread-self/schedstat', 'latin1');
    const ns = Number(text.slice(0, text.indexOf(' ')));
    return Number.isFinite(ns) ? ns : -1;
  } catch {
    return -1;
  }
}
