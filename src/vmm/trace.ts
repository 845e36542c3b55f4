/**
 * Optional tracing of exits, doorbells, injections and interrupt handling, exported in the Chrome
 * trace event JSON format (opens in Perfetto or chrome://tracing). Each thread records into its own
 * preallocated ring (no allocation per event; the oldest events are overwritten when it is full);
 * `ThreadedVm.trace()` gathers the rings and merges them.
 *
 * Timestamps are `performance.timeOrigin + performance.now()` in microseconds: an absolute clock,
 * comparable across threads (each worker has its own `timeOrigin`).
 *
 * ```
 *   record i: events[i * 5 + 0] ts (us)   [1] kind (TraceKind)   [2] duration (us, 0 = instant)
 *             [3] a                        [4] b                  (kind-specific arguments)
 * ```
 *
 * @packageDocumentation
 */

import { performance } from 'node:perf_hooks';

/** What a trace record describes. */
export const TraceKind = {
  /** vCPU: a trapped exit, from posting to the answer (a = op, b = address). */
  EXIT: 1,
  /** vCPU: a halt that slept (a = 1 when woken by an injection). */
  HALT: 2,
  /** vCPU: an interrupt handler run, EOI included (a = vector). */
  IRQ: 3,
  /** vCPU: a doorbell posted (a = address, b = value). */
  DOORBELL: 4,
  /** any thread: an injection (a = target vCPU, b = vector). */
  INJECT: 5,
  /** VMM: an exit served (a = op, b = address). */
  SERVE: 6,
  /** VMM: a doorbell drained (a = address, b = value). */
  DRAIN: 7,
} as const;

const FIELDS = 5;

/** One Chrome trace event. */
export interface TraceEvent {
  readonly name: string;
  readonly cat: string;
  readonly ph: 'X' | 'i' | 'M';
  readonly ts: number;
  readonly dur?: number;
  readonly pid: number;
  readonly tid: number;
  readonly s?: 't';
  readonly args?: Record<string, unknown>;
}

/** The Chrome trace JSON object. */
export interface ChromeTrace {
  readonly traceEvents: TraceEvent[];
  readonly displayTimeUnit: 'ns' | 'ms';
}

const OP_NAMES: Record<number, string> = { 1: 'read', 2: 'write', 3: 'eoi', 4: 'irqchip' };

/** Microseconds on the shared absolute clock. */
export function traceNow(): number {
  return (performance.timeOrigin + performance.now()) * 1000;
}

/** A per-thread ring of trace records. */
export class Tracer {
  private readonly buf: Float64Array;
  private readonly capacity: number;
  private count = 0;

  /** @param capacity - records kept (the newest) */
  constructor(capacity = 1 << 16) {
    this.capacity = capacity;
    this.buf = new Float64Array(capacity * FIELDS);
  }

  /** Records an event that started at `t0` (from {@link traceNow}) and ends now. */
  complete(kind: number, t0: number, a: number, b: number): void {
    this.put(t0, kind, traceNow() - t0, a, b);
  }

  /** Records an instant event. */
  instant(kind: number, a: number, b: number): void {
    this.put(traceNow(), kind, 0, a, b);
  }

  private put(ts: number, kind: number, dur: number, a: number, b: number): void {
    const at = (this.count % this.capacity) * FIELDS;
    const buf = this.buf;
    buf[at] = ts;
    buf[at + 1] = kind;
    buf[at + 2] = dur;
    buf[at + 3] = a;
    buf[at + 4] = b;
    this.count++;
  }

  /** The records as Chrome trace events of thread `tid` named `threadName`, then clears. */
  drain(tid: number, threadName: string): TraceEvent[] {
    const out: TraceEvent[] = [
      { name: 'thread_name', cat: '__metadata', ph: 'M', ts: 0, pid: 1, tid, args: { name: threadName } },
    ];
    const n = Math.min(this.count, this.capacity);
    const first = this.count - n;
    for (let k = 0; k < n; k++) {
      const at = ((first + k) % this.capacity) * FIELDS;
      const b = this.buf;
      out.push(toEvent(b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], tid));
    }
    this.count = 0;
    return out;
  }
}

/** One record as a Chrome trace event. */
function toEvent(ts: number, kind: number, dur: number, a: number, b: number, tid: number): TraceEvent {
  const hexOf = (x: number): string => `0x${x.toString(16)}`;
  switch (kind) {
    case TraceKind.EXIT:
      return {
        name: `exit ${OP_NAMES[a] ?? a}`,
        cat: 'exit',
        ph: 'X',
        ts,
        dur,
        pid: 1,
        tid,
        args: { addr: hexOf(b) },
      };
    case TraceKind.HALT:
      return { name: 'hlt', cat: 'halt', ph: 'X', ts, dur, pid: 1, tid, args: { woken: a === 1 } };
    case TraceKind.IRQ:
      return { name: `irq ${a}`, cat: 'interrupt', ph: 'X', ts, dur, pid: 1, tid, args: { vector: a } };
    case TraceKind.DOORBELL:
      return {
        name: 'doorbell',
        cat: 'doorbell',
        ph: 'i',
        s: 't',
        ts,
        pid: 1,
        tid,
        args: { addr: hexOf(a), value: b },
      };
    case TraceKind.INJECT:
      return {
        name: `inject vcpu${a}`,
        cat: 'interrupt',
        ph: 'i',
        s: 't',
        ts,
        pid: 1,
        tid,
        args: { vcpu: a, vector: b },
      };
    case TraceKind.SERVE:
      return {
        name: `serve ${OP_NAMES[a] ?? a}`,
        cat: 'exit',
        ph: 'X',
        ts,
        dur,
        pid: 1,
        tid,
        args: { addr: hexOf(b) },
      };
    default:
      return {
        name: 'drain doorbell',
        cat: 'doorbell',
        ph: 'X',
        ts,
        dur,
        pid: 1,
        tid,
        args: { addr: hexOf(a), value: b },
      };
  }
}
