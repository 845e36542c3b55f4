import { describe, expect, it } from 'vitest';
import {
  InterruptBit,
  MMIO_DEFAULT_WINDOW_SIZE,
  MmioReg,
  VirtioError,
  type VirtioErrorCode,
} from '../spec/index.js';
import type { AccessWidth, InterruptLine, MmioDevice } from '../transport/index.js';
import { MmioBus } from './bus.js';
import { InProcessCpu, MAX_HANDLER_RUNS_PER_HALT } from './cpu.js';
import { InterruptController } from './irq.js';

function expectVirtioError(fn: () => unknown, code: VirtioErrorCode, what = ''): VirtioError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, what).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code, what).toBe(code);
  return err as VirtioError;
}

/**
 * A tiny device with the virtio-mmio interrupt pair: a write to QueueNotify completes at once
 * (synchronously, inside the write) and sets InterruptStatus.VRING; InterruptACK clears bits and the
 * line follows `status != 0`.
 */
class FakeIrqDevice implements MmioDevice {
  readonly windowSize = MMIO_DEFAULT_WINDOW_SIZE;
  status = 0;

  constructor(private readonly irq: InterruptLine) {}

  read(offset: number, _width: AccessWidth): number {
    return offset === MmioReg.InterruptStatus ? this.status : 0;
  }

  write(offset: number, _width: AccessWidth, value: number): void {
    if (offset === MmioReg.QueueNotify) this.raise(InterruptBit.VRING);
    else if (offset === MmioReg.InterruptACK) this.update(this.status & ~value);
  }

  raise(bits: number): void {
    this.update(this.status | bits);
  }

  private update(next: number): void {
    const was = this.status !== 0;
    this.status = next;
    if (was !== (next !== 0)) this.irq.setLevel(next !== 0);
  }
}

function setup(lines = 4): { ic: InterruptController; cpu: InProcessCpu } {
  const ic = new InterruptController({ lines });
  return { ic, cpu: new InProcessCpu(ic) };
}

describe('InProcessCpu construction and handler binding', () => {
  it('connects as the controller target and masks every line until a handler is requested', () => {
    const { ic, cpu } = setup(3);
    expect([0, 1, 2].map((n) => ic.isMasked(n))).toEqual([true, true, true]);
    ic.line(1).setLevel(true);
    expect(cpu.isPending(33)).toBe(false);
    cpu.requestIrq(1, () => {});
    expect(ic.isMasked(1)).toBe(false);
    expect(cpu.isPending(33)).toBe(true); // unmasking a high line delivers
    expect(ic.isInService(1)).toBe(true);
  });

  it('rejects a second CPU on the same controller and a bad storm bound', () => {
    const { ic } = setup(1);
    expectVirtioError(() => new InProcessCpu(ic), 'INVALID_STATE');
    for (const max of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expectVirtioError(
        () => new InProcessCpu(new InterruptController({ lines: 1 }), { maxHandlerRunsPerHalt: max }),
        'INVALID_ARGUMENT',
        String(max),
      );
    }
  });

  it('rejects requestIrq on a missing line or a line that already has a handler, and freeIrq on a missing line', () => {
    const { cpu } = setup(2);
    for (const n of [-1, 2, 0.5, Number.NaN]) {
      expectVirtioError(() => cpu.requestIrq(n, () => {}), 'IRQ_INVALID_LINE', `request ${n}`);
      expectVirtioError(() => cpu.freeIrq(n), 'IRQ_INVALID_LINE', `free ${n}`);
    }
    cpu.requestIrq(1, () => {});
    expect(expectVirtioError(() => cpu.requestIrq(1, () => {}), 'IRQ_INVALID_LINE').message).toBe(
      'interrupt line 1 (vector 33) already has a handler',
    );
    cpu.freeIrq(1);
    cpu.freeIrq(1); // no handler: no-op
    expect(() => cpu.requestIrq(1, () => {})).not.toThrow();
  });

  it('freeIrq masks the line so a later raise is not delivered', () => {
    const { ic, cpu } = setup(1);
    cpu.requestIrq(0, () => {});
    cpu.freeIrq(0);
    expect(ic.isMasked(0)).toBe(true);
    ic.line(0).setLevel(true);
    expect(cpu.isPending(32)).toBe(false);
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
  });

  it('rejects delivery of a vector outside 0..255 and merges a vector delivered twice', () => {
    const { cpu } = setup(1);
    for (const v of [-1, 256, 1.5, Number.NaN])
      expectVirtioError(() => cpu.deliver(v), 'INVALID_ARGUMENT', String(v));
    cpu.deliver(200);
    cpu.deliver(200);
    expect(cpu.isPending(200)).toBe(true);
    expect(cpu.stats().coalesced).toBe(1);
    expect([cpu.isPending(-1), cpu.isPending(256), cpu.isPending(0.5)]).toEqual([false, false, false]);
  });
});

describe('InProcessCpu.halt', () => {
  it('throws TIMEOUT when nothing is pending: the guest would halt forever', () => {
    const { cpu } = setup(1);
    cpu.requestIrq(0, () => {});
    const err = expectVirtioError(() => cpu.halt(), 'TIMEOUT');
    expect(err.message).toBe(
      'halt with no interrupt pending: the guest would halt forever (in-process, nothing else can raise an interrupt)',
    );
    expect(cpu.stats().halts).toBe(0);
  });

  it('takes every pending vector lowest first, each cleared before its handler runs', () => {
    const { ic, cpu } = setup(4);
    const order: number[] = [];
    for (const n of [0, 1, 2, 3]) {
      cpu.requestIrq(n, () => {
        expect(cpu.isPending(ic.vectorOf(n))).toBe(false);
        order.push(n);
        ic.line(n).setLevel(false);
      });
    }
    for (const n of [3, 0, 2]) ic.line(n).setLevel(true);
    cpu.halt();
    expect(order).toEqual([0, 2, 3]);
    expect(cpu.stats()).toMatchObject({
      halts: 1,
      interrupts: 3,
      spurious: 0,
      eois: 3,
      vectors: [
        { vector: 32, taken: 1 },
        { vector: 34, taken: 1 },
        { vector: 35, taken: 1 },
      ],
    });
  });

  it('sends the EOI after the handler returns; a line still high is taken again in the same halt', () => {
    const { ic, cpu } = setup(1);
    const seen: Array<[boolean, number]> = [];
    let runs = 0;
    cpu.requestIrq(0, () => {
      runs++;
      seen.push([ic.isInService(0), ic.lineStats(0).eois]);
      if (runs === 2) ic.line(0).setLevel(false); // acknowledged on the second run
    });
    ic.line(0).setLevel(true);
    cpu.halt();
    expect(seen).toEqual([
      [true, 0],
      [true, 1],
    ]);
    expect(ic.isInService(0)).toBe(false);
    expect(ic.lineStats(0)).toMatchObject({ deliveries: 2, eois: 2, redeliveries: 1, spuriousEois: 0 });
    expect(cpu.takenCount(32)).toBe(2);
    expect(cpu.stats().halts).toBe(1);
  });

  it('never nests handlers: an interrupt raised inside a handler runs after it, in the same halt', () => {
    const ic = new InterruptController({ lines: 2 });
    const cpu = new InProcessCpu(ic);
    const bus = new MmioBus();
    const devA = new FakeIrqDevice(ic.line(0));
    const devB = new FakeIrqDevice(ic.line(1));
    bus.map(0x1000_0000, devA, 'a');
    bus.map(0x1000_0000 + MMIO_DEFAULT_WINDOW_SIZE, devB, 'b');
    const a = bus.window('a');
    const b = bus.window('b');
    const log: string[] = [];
    let depth = 0;
    const handler = (name: string, w: typeof a, other: typeof a | null) => () => {
      depth++;
      log.push(`${name} enter depth ${depth}`);
      const isr = w.read32(MmioReg.InterruptStatus);
      w.write32(MmioReg.InterruptACK, isr);
      // Kick the other device: it completes synchronously inside this write and raises its line.
      if (other !== null) other.write32(MmioReg.QueueNotify, 0);
      log.push(`${name} leave`);
      depth--;
    };
    cpu.requestIrq(0, handler('a', a, b));
    cpu.requestIrq(1, handler('b', b, null));
    a.write32(MmioReg.QueueNotify, 0);
    cpu.halt();
    expect(log).toEqual(['a enter depth 1', 'a leave', 'b enter depth 1', 'b leave']);
    expect([devA.status, devB.status]).toEqual([0, 0]);
    expect(bus.registerStats('a', MmioReg.InterruptACK).writes).toBe(1);
    expect(bus.registerStats('b', MmioReg.InterruptACK).writes).toBe(1);
    expect(ic.stats().totals).toMatchObject({ deliveries: 2, eois: 2, redeliveries: 0, spuriousEois: 0 });
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
  });

  it('takes a lower vector raised by a handler before higher ones already pending', () => {
    const { ic, cpu } = setup(3);
    const order: number[] = [];
    cpu.requestIrq(0, () => {
      order.push(0);
      ic.line(0).setLevel(false);
    });
    cpu.requestIrq(1, () => {
      order.push(1);
      ic.line(1).setLevel(false);
      ic.line(0).setLevel(true);
    });
    cpu.requestIrq(2, () => {
      order.push(2);
      ic.line(2).setLevel(false);
    });
    ic.line(1).setLevel(true);
    ic.line(2).setLevel(true);
    cpu.halt();
    expect(order).toEqual([1, 0, 2]);
  });

  it('stops an interrupt storm after the bound with TIMEOUT', () => {
    const { ic, cpu } = setup(1);
    let runs = 0;
    cpu.requestIrq(0, () => {
      runs++; // never acknowledges: the level line is resampled high on every EOI
    });
    ic.line(0).setLevel(true);
    const err = expectVirtioError(() => cpu.halt(), 'TIMEOUT');
    expect(err.message).toBe(
      `interrupt storm: ${MAX_HANDLER_RUNS_PER_HALT} interrupts taken in one halt and vector 32 is pending again`,
    );
    expect(runs).toBe(MAX_HANDLER_RUNS_PER_HALT);
    expect(cpu.isPending(32)).toBe(true);
    // The CPU is usable afterwards: once the device lowers the line the next halt drains it.
    ic.line(0).setLevel(false);
    cpu.halt();
    expect(runs).toBe(MAX_HANDLER_RUNS_PER_HALT + 1);
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
  });

  it('honours a configured storm bound exactly', () => {
    const ic = new InterruptController({ lines: 1 });
    const cpu = new InProcessCpu(ic, { maxHandlerRunsPerHalt: 3 });
    let runs = 0;
    cpu.requestIrq(0, () => {
      runs++;
      if (runs === 3) ic.line(0).setLevel(false);
    });
    ic.line(0).setLevel(true);
    cpu.halt(); // exactly 3 runs drain it: no storm
    expect(runs).toBe(3);
    runs = 0;
    cpu.freeIrq(0);
    cpu.requestIrq(0, () => {
      runs++;
    });
    ic.line(0).setLevel(true);
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
    expect(runs).toBe(3);
  });

  it('counts a pending vector with no handler as spurious and still EOIs it', () => {
    const { ic, cpu } = setup(2);
    cpu.requestIrq(0, () => {
      cpu.freeIrq(1); // vector 33 is already latched at the CPU
      ic.line(0).setLevel(false);
    });
    cpu.requestIrq(1, () => {
      throw new Error('freed handler must not run');
    });
    ic.line(0).setLevel(true);
    ic.line(1).setLevel(true);
    cpu.deliver(200); // an edge vector no controller line owns (e.g. a future MSI)
    cpu.halt();
    expect(cpu.stats()).toMatchObject({ interrupts: 3, spurious: 2, eois: 3 });
    // Line 1 was EOI'd at the controller; still high but masked, so no resample.
    expect(ic.lineStats(1)).toMatchObject({ asserted: true, inService: false, eois: 1, redeliveries: 0 });
    // Vector 200 is not broadcast to the wired controller (edge-triggered, like MSI).
    expect(ic.stats().unownedEois).toBe(0);
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
  });

  it('takes a vector latched before freeIrq as spurious and EOIs it at the controller', () => {
    const { ic, cpu } = setup(1);
    cpu.requestIrq(0, () => {});
    ic.line(0).setLevel(true);
    cpu.freeIrq(0);
    expect(cpu.isPending(32)).toBe(true);
    cpu.halt();
    expect(cpu.stats()).toMatchObject({ interrupts: 1, spurious: 1, eois: 1 });
    expect(ic.isInService(0)).toBe(false);
    expect(ic.lineStats(0)).toMatchObject({ eois: 1, redeliveries: 0 }); // masked: no resample
    expectVirtioError(() => cpu.halt(), 'TIMEOUT');
  });

  it('refuses halt from inside a handler and recovers afterwards', () => {
    const { ic, cpu } = setup(1);
    let inner: unknown;
    cpu.requestIrq(0, () => {
      try {
        cpu.halt();
      } catch (e) {
        inner = e;
      }
      ic.line(0).setLevel(false);
    });
    ic.line(0).setLevel(true);
    cpu.halt();
    expect(inner).toBeInstanceOf(VirtioError);
    expect((inner as VirtioError).code).toBe('INVALID_STATE');
    ic.line(0).setLevel(true);
    expect(() => cpu.halt()).not.toThrow();
  });

  it('EOIs the vector of a handler that throws, propagates the error, and leaves other vectors pending', () => {
    const { ic, cpu } = setup(2);
    const boom = new Error('handler failed');
    cpu.requestIrq(0, () => {
      ic.line(0).setLevel(false);
      throw boom;
    });
    let ran1 = 0;
    cpu.requestIrq(1, () => {
      ran1++;
      ic.line(1).setLevel(false);
    });
    ic.line(0).setLevel(true);
    ic.line(1).setLevel(true);
    expect(() => cpu.halt()).toThrow(boom);
    expect(ic.isInService(0)).toBe(false);
    expect(cpu.isPending(33)).toBe(true);
    expect(ran1).toBe(0);
    cpu.halt();
    expect(ran1).toBe(1);
  });
});

describe('InProcessCpu counters', () => {
  it('counts halts, interrupts per vector and EOIs, and resets them without touching pending vectors', () => {
    const { ic, cpu } = setup(2);
    cpu.requestIrq(0, () => ic.line(0).setLevel(false));
    cpu.requestIrq(1, () => ic.line(1).setLevel(false));
    ic.line(0).setLevel(true);
    cpu.halt();
    ic.line(0).setLevel(true);
    ic.line(1).setLevel(true);
    cpu.halt();
    expect(cpu.stats()).toEqual({
      halts: 2,
      interrupts: 3,
      spurious: 0,
      coalesced: 0,
      eois: 3,
      levelEois: 3,
      edgeEois: 0,
      msiVectorsAllocated: 0,
      msiHandlers: 0,
      msiAllocFailures: 0,
      vectors: [
        { vector: 32, taken: 2 },
        { vector: 33, taken: 1 },
      ],
    });
    expect([cpu.takenCount(32), cpu.takenCount(33), cpu.takenCount(34), cpu.takenCount(-1)]).toEqual([
      2, 1, 0, 0,
    ]);
    cpu.deliver(40);
    cpu.resetStats();
    expect(cpu.stats()).toMatchObject({
      halts: 0,
      interrupts: 0,
      spurious: 0,
      coalesced: 0,
      eois: 0,
      vectors: [],
    });
    expect(cpu.isPending(40)).toBe(true);
  });
});
