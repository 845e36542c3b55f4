import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import { DeviceStatus, FeatureBit, InterruptBit, MmioReg } from '../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveToFeaturesOk,
  IrqRecorder,
  mmioRead32,
  mmioWrite32,
  programQueue,
  type TransportHarness,
} from '../testing/index.js';
import {
  MAX_QUEUE_INTERRUPT_BITS,
  MultiLineInterrupt,
  type MultiLineOptions,
  QUEUE_INTERRUPT_SHIFT,
  queueInterruptBit,
} from './interrupts.js';

const VRING = InterruptBit.VRING;
const CONFIG = InterruptBit.CONFIG;

interface LinesHarness extends TransportHarness {
  readonly config: IrqRecorder;
  /** Per-queue lines, or the one shared line. */
  readonly queueLines: IrqRecorder[];
}

/** A live device with `n` queues and per-queue (or shared) lines. */
function live(n: number, shared: boolean): LinesHarness {
  const config = new IrqRecorder();
  const queueLines = shared ? [new IrqRecorder()] : Array.from({ length: n }, () => new IrqRecorder());
  const lines: MultiLineOptions = shared
    ? { config, sharedQueues: queueLines[0] }
    : { config, queues: queueLines };
  const h = createTransportHarness({
    device: { queueMaxSizes: Array.from({ length: n }, () => 8) },
    transport: { lines },
  });
  driveToFeaturesOk(h.t, new Features([FeatureBit.VERSION_1]));
  for (let i = 0; i < n; i++) {
    const at = 0x1000 + i * 0x800;
    programQueue(h.t, i, { size: 8, descTable: at, availRing: at + 0x200, usedRing: at + 0x400 });
  }
  addStatus(h.t, DeviceStatus.DRIVER_OK);
  return { ...h, config, queueLines };
}

function complete(h: TransportHarness, i: number): void {
  h.t.queue(i).addUsed(h.mem, 0, 0);
  h.dev.ctx?.notifyUsed(i);
}

function ack(h: TransportHarness, bits: number): void {
  mmioWrite32(h.t, MmioReg.InterruptACK, bits);
}

function status(h: TransportHarness): number {
  return mmioRead32(h.t, MmioReg.InterruptStatus);
}

describe('multiple wired lines: construction', () => {
  it('refuses a per-queue line count that does not match the queues, more than 30, or a line given twice', () => {
    const a = new IrqRecorder();
    const b = new IrqRecorder();
    const c = new IrqRecorder();
    const bad: Array<() => unknown> = [
      () => new MultiLineInterrupt(a, { config: b, queues: [c] }, 2),
      () => new MultiLineInterrupt(a, { config: b, queues: [] }, 1),
      () =>
        new MultiLineInterrupt(
          a,
          { config: b, queues: Array.from({ length: 31 }, () => new IrqRecorder()) },
          31,
        ),
      () => new MultiLineInterrupt(a, { config: a, sharedQueues: c }, 2),
      () => new MultiLineInterrupt(a, { config: b, sharedQueues: b }, 2),
      () => new MultiLineInterrupt(a, { config: b, queues: [c, c] }, 2),
    ];
    for (const make of bad) expect(make).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    // 30 per-queue lines fit (bits 2..31); a shared line has no limit.
    expect(
      () =>
        new MultiLineInterrupt(
          a,
          { config: b, queues: Array.from({ length: 30 }, () => new IrqRecorder()) },
          30,
        ),
    ).not.toThrow();
    expect(() => new MultiLineInterrupt(a, { config: b, sharedQueues: c }, 64)).not.toThrow();
  });

  it('numbers the per-queue status bits from bit 2', () => {
    expect(queueInterruptBit(0)).toBe(1 << QUEUE_INTERRUPT_SHIFT);
    expect(queueInterruptBit(29)).toBe(0x8000_0000);
    expect(queueInterruptBit(MAX_QUEUE_INTERRUPT_BITS)).toBe(0);
    expect(queueInterruptBit(-1)).toBe(0);
  });
});

describe('multiple wired lines: per-queue layout', () => {
  it('each event raises only its own line and the standard (combined) line', () => {
    const h = live(3, false);
    complete(h, 1);
    expect(h.queueLines.map((l) => l.level)).toEqual([false, true, false]);
    expect(h.config.level).toBe(false);
    expect(h.irq.level).toBe(true);
    expect(status(h)).toBe(VRING | queueInterruptBit(1));
    h.dev.changeConfig(0, [1]);
    expect(h.config.calls).toEqual([true]);
    expect(h.queueLines.map((l) => l.calls)).toEqual([[], [true], []]);
    expect(status(h)).toBe(VRING | CONFIG | queueInterruptBit(1));
    // The standard line changed level once.
    expect(h.irq.calls).toEqual([true]);
  });

  it('per-line acknowledgement lowers only that line; the standard line drops with the last bit', () => {
    const h = live(3, false);
    complete(h, 0);
    complete(h, 2);
    h.dev.changeConfig(0, [1]);
    ack(h, queueInterruptBit(2));
    expect(h.queueLines.map((l) => l.level)).toEqual([true, false, false]);
    expect(status(h)).toBe(VRING | CONFIG | queueInterruptBit(0));
    ack(h, CONFIG);
    expect(h.config.level).toBe(false);
    expect(h.irq.level).toBe(true);
    ack(h, queueInterruptBit(0));
    expect(status(h)).toBe(0);
    expect(h.irq.calls).toEqual([true, false]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('a driver that knows only the standard line acknowledges what it read: every line drops', () => {
    const h = live(3, false);
    complete(h, 0);
    complete(h, 1);
    h.dev.changeConfig(0, [1]);
    ack(h, status(h));
    expect([h.irq.level, h.config.level, ...h.queueLines.map((l) => l.level)]).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
    // Bit 0 alone (a driver masking to the standard bits) acknowledges every queue.
    complete(h, 2);
    complete(h, 0);
    ack(h, VRING);
    expect(h.queueLines.map((l) => l.level)).toEqual([false, false, false]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('an event after the acknowledgement raises the line again (nothing lost)', () => {
    const h = live(2, false);
    complete(h, 1);
    ack(h, queueInterruptBit(1));
    complete(h, 1);
    expect(h.queueLines[1].calls).toEqual([true, false, true]);
  });

  it('InterruptACK bits past the device queues are undefined: guest error, the rest still acknowledged', () => {
    const h = live(2, false);
    complete(h, 0);
    ack(h, queueInterruptBit(0) | queueInterruptBit(2));
    expect(h.t.guestErrorCounts.interrupt).toBe(1);
    expect(h.queueLines[0].level).toBe(false);
  });

  it('device reset lowers every line', () => {
    const h = live(2, false);
    complete(h, 0);
    h.dev.changeConfig(0, [1]);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect([h.irq.level, h.config.level, h.queueLines[0].level]).toEqual([false, false, false]);
    expect(h.t.interruptStatus).toBe(0);
  });
});

describe('multiple wired lines: shared queue line', () => {
  it('every queue raises the shared line; acknowledging bit 0 lowers it', () => {
    const h = live(3, true);
    complete(h, 0);
    complete(h, 2);
    expect(h.queueLines[0].calls).toEqual([true]);
    expect(h.config.level).toBe(false);
    expect(status(h)).toBe(VRING | queueInterruptBit(0) | queueInterruptBit(2));
    ack(h, queueInterruptBit(0));
    expect(h.queueLines[0].level).toBe(true);
    ack(h, VRING);
    expect(h.queueLines[0].calls).toEqual([true, false]);
    expect(h.irq.level).toBe(false);
  });
});

/**
 * A model platform: level lines into a controller with remote IRR and resample on EOI (as
 * platform/irq.ts and KVM's IOAPIC), and a guest that runs one handler per pending line.
 */
class ModelPlatform {
  readonly level: boolean[];
  readonly inService: boolean[];
  readonly pending: boolean[];
  readonly enabled: boolean[];
  constructor(n: number) {
    this.level = new Array(n).fill(false);
    this.inService = new Array(n).fill(false);
    this.pending = new Array(n).fill(false);
    this.enabled = new Array(n).fill(false);
  }
  /** Routes `r`'s level changes to line `i` of the model (and returns it). */
  wire(r: IrqRecorder, i: number): IrqRecorder {
    const set = r.setLevel.bind(r);
    r.setLevel = (asserted: boolean) => {
      set(asserted);
      if (this.level[i] === asserted) throw new Error(`redundant setLevel on line ${i}`);
      this.level[i] = asserted;
      if (asserted && !this.inService[i] && this.enabled[i]) this.fire(i);
    };
    return r;
  }
  fire(i: number): void {
    this.inService[i] = true;
    this.pending[i] = true;
  }
  eoi(i: number): void {
    this.inService[i] = false;
    if (this.level[i] && this.enabled[i]) this.fire(i);
  }
}

/**
 * An event, or the guest taking one pending interrupt. `inject` raises an event after the handler
 * acknowledged and processed, before its EOI (the device completing while the handler runs):
 * 0 none, 1 config, 2 + q queue q.
 */
type Step =
  | { kind: 'queue'; q: number }
  | { kind: 'config' }
  | { kind: 'take'; pick: number; inject: number };

describe('multiple wired lines: no stuck line, no lost event (property)', () => {
  const N = 3;
  const step: fc.Arbitrary<Step> = fc.oneof(
    fc.record({ kind: fc.constant('queue' as const), q: fc.integer({ min: 0, max: N - 1 }) }),
    fc.record({ kind: fc.constant('config' as const) }),
    fc.record({
      kind: fc.constant('take' as const),
      pick: fc.nat(),
      inject: fc.integer({ min: 0, max: N + 1 }),
    }),
  );

  it.each([
    ['per-queue lines', 'per-queue'],
    ['shared queue line', 'shared'],
    ['standard line only (a driver that knows nothing of the extra lines)', 'standard'],
  ] as const)('%s: random events and handler runs', (_name, mode) => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
        // Lines: 0 standard, 1 config, 2.. queues (or the shared line).
        const nLines = mode === 'per-queue' ? 2 + N : 3;
        const p = new ModelPlatform(nLines);
        // Line 0 is the harness's own standard line, wired below.
        const rec = Array.from({ length: nLines }, (_, i) => p.wire(new IrqRecorder(), i));
        const lines: MultiLineOptions =
          mode === 'per-queue'
            ? { config: rec[1], queues: rec.slice(2) }
            : { config: rec[1], sharedQueues: rec[2] };
        const h = createTransportHarness({
          device: { queueMaxSizes: Array.from({ length: N }, () => 8) },
          transport: { lines },
        });
        p.wire(h.irq, 0);
        driveToFeaturesOk(h.t, new Features([FeatureBit.VERSION_1]));
        for (let i = 0; i < N; i++) {
          const at = 0x1000 + i * 0x800;
          programQueue(h.t, i, { size: 8, descTable: at, availRing: at + 0x200, usedRing: at + 0x400 });
        }
        addStatus(h.t, DeviceStatus.DRIVER_OK);
        // The driver requests the lines of its mode (the others stay masked at the controller).
        if (mode === 'standard') p.enabled[0] = true;
        else for (let i = 1; i < nLines; i++) p.enabled[i] = true;

        // Events not yet seen by a handler: [0] config, [1 + q] queue q.
        const unseen = new Array(1 + N).fill(false);
        const handle = (line: number): void => {
          if (mode === 'standard') {
            const s = status(h);
            ack(h, s);
            if ((s & CONFIG) !== 0) unseen[0] = false;
            if ((s & VRING) !== 0) for (let q = 0; q < N; q++) unseen[1 + q] = false;
          } else if (line === 1) {
            ack(h, CONFIG);
            unseen[0] = false;
          } else if (mode === 'shared') {
            // vm_vring_interrupt: acknowledge bit 0, then look at every queue.
            ack(h, VRING);
            for (let q = 0; q < N; q++) unseen[1 + q] = false;
          } else {
            const q = line - 2;
            ack(h, queueInterruptBit(q));
            unseen[1 + q] = false;
          }
        };
        const event = (source: number): void => {
          if (source === 1) h.dev.changeConfig(0, [1]);
          else complete(h, source - 2);
          unseen[source - 1] = true;
        };
        const take = (pick: number, inject: number): boolean => {
          const ready = p.pending.flatMap((x, i) => (x ? [i] : []));
          if (ready.length === 0) return false;
          const line = ready[pick % ready.length];
          p.pending[line] = false;
          handle(line);
          if (inject > 0) event(inject);
          p.eoi(line);
          return true;
        };
        const check = (): void => {
          // Each line's level is exactly the OR of its own pending bits.
          const s = h.t.interruptStatus;
          expect(p.level[0]).toBe(s !== 0);
          expect(p.level[1]).toBe((s & CONFIG) !== 0);
          if (mode === 'per-queue') {
            for (let q = 0; q < N; q++) expect(p.level[2 + q]).toBe((s & queueInterruptBit(q)) !== 0);
          } else {
            expect(p.level[2]).toBe((s & VRING) !== 0);
          }
        };
        for (const st of steps) {
          if (st.kind === 'queue') event(2 + st.q);
          else if (st.kind === 'config') event(1);
          else take(st.pick, st.inject);
          check();
        }
        // Quiescence: the guest takes every pending interrupt.
        let guard = 0;
        while (take(0, 0)) expect(++guard).toBeLessThan(100);
        check();
        expect(unseen).toEqual(new Array(1 + N).fill(false));
        expect(p.level.slice(mode === 'standard' ? 0 : 1)).toEqual(
          new Array(mode === 'standard' ? nLines : nLines - 1).fill(false),
        );
        expect(p.level[0]).toBe(false);
        expect(h.t.guestErrors).toBe(0);
      }),
      { numRuns: 300 },
    );
  });
});
