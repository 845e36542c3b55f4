import { describe, expect, it } from 'vitest';
import { VirtioError, type VirtioErrorCode } from '../spec/index.js';
import { FIRST_DEVICE_VECTOR, InterruptController, type InterruptTarget } from './irq.js';

/** A CPU stand-in that records delivered vectors. */
class Recorder implements InterruptTarget {
  readonly vectors: number[] = [];
  deliver(vector: number): void {
    this.vectors.push(vector);
  }
}

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

function setup(lines = 4, vectorBase?: number): { ic: InterruptController; cpu: Recorder } {
  const cpu = new Recorder();
  return { ic: new InterruptController({ lines, vectorBase, target: cpu }), cpu };
}

describe('InterruptController construction and line mapping', () => {
  it('maps line n to vector 32 + n by default, or to vectorBase + n', () => {
    const { ic } = setup(4);
    expect([0, 1, 2, 3].map((n) => ic.vectorOf(n))).toEqual([32, 33, 34, 35]);
    expect(ic.lineOf(FIRST_DEVICE_VECTOR + 2)).toBe(2);
    expect([31, 36, 0, 255, 32.5, Number.NaN].map((v) => ic.lineOf(v))).toEqual([-1, -1, -1, -1, -1, -1]);
    const custom = setup(2, 0x40).ic;
    expect([custom.vectorOf(0), custom.vectorOf(1)]).toEqual([0x40, 0x41]);
    expect(custom.lineOf(0x41)).toBe(1);
    const top = setup(224).ic; // 32..255: every device vector
    expect(top.vectorOf(223)).toBe(255);
  });

  it('hands out one fixed handle per line', () => {
    const { ic } = setup(2);
    expect(ic.line(1)).toBe(ic.line(1));
    expect(ic.line(0)).not.toBe(ic.line(1));
  });

  it('rejects bad line counts and vector ranges', () => {
    const cases: Array<[string, number, number | undefined]> = [
      ['zero lines', 0, undefined],
      ['negative lines', -1, undefined],
      ['fractional lines', 1.5, undefined],
      ['NaN lines', Number.NaN, undefined],
      ['exception vectors', 1, 31],
      ['past vector 255', 2, 255],
      ['too many lines', 225, undefined],
      ['fractional base', 1, 40.5],
    ];
    for (const [what, lines, vectorBase] of cases) {
      expectVirtioError(() => new InterruptController({ lines, vectorBase }), 'INVALID_ARGUMENT', what);
    }
  });

  it('rejects every out-of-range line number in every per-line method', () => {
    const { ic } = setup(4);
    for (const n of [-1, 4, 1.5, Number.NaN, 1000]) {
      const calls: Array<[string, () => unknown]> = [
        ['line', () => ic.line(n)],
        ['vectorOf', () => ic.vectorOf(n)],
        ['setLevel', () => ic.setLevel(n, true)],
        ['mask', () => ic.mask(n)],
        ['unmask', () => ic.unmask(n)],
        ['isAsserted', () => ic.isAsserted(n)],
        ['isInService', () => ic.isInService(n)],
        ['isMasked', () => ic.isMasked(n)],
        ['lineStats', () => ic.lineStats(n)],
      ];
      for (const [what, fn] of calls) expectVirtioError(fn, 'IRQ_INVALID_LINE', `${what}(${n})`);
    }
    expect(expectVirtioError(() => ic.line(4), 'IRQ_INVALID_LINE').message).toBe(
      'no interrupt line 4 (controller has 4)',
    );
  });
});

describe('InterruptController level semantics', () => {
  it('delivers once when a line goes high and marks it in service', () => {
    const { ic, cpu } = setup();
    ic.line(1).setLevel(true);
    expect(cpu.vectors).toEqual([33]);
    expect(ic.isAsserted(1)).toBe(true);
    expect(ic.isInService(1)).toBe(true);
    expect(ic.lineStats(1)).toMatchObject({ raises: 1, deliveries: 1, eois: 0 });
  });

  it('raising twice delivers once and counts the redundant call', () => {
    const { ic, cpu } = setup();
    ic.line(0).setLevel(true);
    ic.line(0).setLevel(true);
    expect(cpu.vectors).toEqual([32]);
    expect(ic.lineStats(0)).toMatchObject({ raises: 1, redundantLevels: 1, deliveries: 1 });
  });

  it('lowering never delivers, even when the line is not in service', () => {
    const { ic, cpu } = setup();
    ic.line(2).setLevel(false); // already low: redundant
    ic.line(2).setLevel(true);
    ic.line(2).setLevel(false);
    ic.eoi(34);
    ic.line(2).setLevel(false);
    expect(cpu.vectors).toEqual([34]);
    expect(ic.lineStats(2)).toMatchObject({ raises: 1, lowers: 1, redundantLevels: 2, deliveries: 1 });
  });

  it('lowered before EOI: the EOI clears in service and does not deliver again', () => {
    const { ic, cpu } = setup();
    ic.line(0).setLevel(true);
    ic.line(0).setLevel(false);
    ic.eoi(32);
    expect(cpu.vectors).toEqual([32]);
    expect(ic.isInService(0)).toBe(false);
    expect(ic.lineStats(0)).toMatchObject({ eois: 1, redeliveries: 0, spuriousEois: 0 });
  });

  it('still high at EOI: delivers again (resample), and again on each EOI until lowered', () => {
    const { ic, cpu } = setup();
    ic.line(3).setLevel(true);
    ic.eoi(35);
    expect(cpu.vectors).toEqual([35, 35]);
    expect(ic.isInService(3)).toBe(true);
    ic.eoi(35);
    ic.line(3).setLevel(false);
    ic.eoi(35);
    expect(cpu.vectors).toEqual([35, 35, 35]);
    expect(ic.lineStats(3)).toMatchObject({
      raises: 1,
      deliveries: 3,
      eois: 3,
      redeliveries: 2,
      spuriousEois: 0,
    });
  });

  it('a raise while in service does not deliver; the EOI then finds the line high and delivers', () => {
    const { ic, cpu } = setup();
    ic.line(0).setLevel(true);
    ic.line(0).setLevel(false);
    ic.line(0).setLevel(true);
    expect(cpu.vectors).toEqual([32]);
    ic.eoi(32);
    expect(cpu.vectors).toEqual([32, 32]);
    expect(ic.lineStats(0)).toMatchObject({ raises: 2, lowers: 1, deliveries: 2, redeliveries: 1 });
  });

  it('counts an EOI for a line not in service as spurious and one for an unowned vector as unowned', () => {
    const { ic, cpu } = setup(2);
    ic.eoi(33);
    ic.line(0).setLevel(true);
    ic.line(0).setLevel(false);
    ic.eoi(32);
    ic.eoi(32);
    for (const v of [0, 31, 34, 255, -1, 32.5, Number.NaN]) expect(() => ic.eoi(v), String(v)).not.toThrow();
    expect(cpu.vectors).toEqual([32]);
    expect(ic.lineStats(0)).toMatchObject({ eois: 2, spuriousEois: 1, redeliveries: 0 });
    expect(ic.lineStats(1)).toMatchObject({ eois: 1, spuriousEois: 1, deliveries: 0 });
    expect(ic.stats().unownedEois).toBe(7);
    expect(ic.stats().totals.spuriousEois).toBe(2);
  });

  it('keeps lines independent', () => {
    const { ic, cpu } = setup();
    ic.line(0).setLevel(true);
    ic.line(2).setLevel(true);
    ic.eoi(32);
    ic.line(2).setLevel(false);
    ic.eoi(34);
    expect(cpu.vectors).toEqual([32, 34, 32]);
    expect([0, 1, 2, 3].map((n) => ic.isInService(n))).toEqual([true, false, false, false]);
  });
});

describe('InterruptController masking', () => {
  it('remembers a raise on a masked line and delivers it on unmask', () => {
    const { ic, cpu } = setup();
    ic.mask(1);
    ic.line(1).setLevel(true);
    expect(cpu.vectors).toEqual([]);
    expect(ic.isMasked(1)).toBe(true);
    ic.unmask(1);
    ic.unmask(1); // already unmasked: nothing
    expect(cpu.vectors).toEqual([33]);
    expect(ic.lineStats(1)).toMatchObject({ raises: 1, deliveries: 1, redeliveries: 0, masked: false });
  });

  it('does not deliver on unmask when the line is low or in service', () => {
    const { ic, cpu } = setup();
    ic.mask(0);
    ic.unmask(0);
    ic.line(1).setLevel(true);
    ic.mask(1);
    ic.unmask(1);
    expect(cpu.vectors).toEqual([33]);
  });

  it('an EOI on a masked line clears in service without delivering; unmask delivers if still high', () => {
    const { ic, cpu } = setup();
    ic.line(2).setLevel(true);
    ic.mask(2);
    ic.eoi(34);
    expect(ic.isInService(2)).toBe(false);
    expect(cpu.vectors).toEqual([34]);
    ic.unmask(2);
    expect(cpu.vectors).toEqual([34, 34]);
  });

  it('starts every line masked when asked', () => {
    const cpu = new Recorder();
    const ic = new InterruptController({ lines: 2, target: cpu, startMasked: true });
    expect([ic.isMasked(0), ic.isMasked(1)]).toEqual([true, true]);
    ic.line(0).setLevel(true);
    expect(cpu.vectors).toEqual([]);
  });
});

describe('InterruptController target', () => {
  it('refuses to deliver with no target, and to connect a second target', () => {
    const ic = new InterruptController({ lines: 1 });
    expect(expectVirtioError(() => ic.line(0).setLevel(true), 'INVALID_STATE').message).toBe(
      'line 0 fired with no interrupt target connected',
    );
    const cpu = new Recorder();
    ic.connect(cpu);
    ic.connect(cpu); // the same target again is fine
    expectVirtioError(() => ic.connect(new Recorder()), 'INVALID_STATE');
    // The line is high and was never delivered: unmask-style re-evaluation happens on the next EOI
    // or level change, not on connect.
    ic.line(0).setLevel(false);
    ic.line(0).setLevel(true);
    expect(cpu.vectors).toEqual([32]);
  });
});

describe('InterruptController counters', () => {
  it('sums every line into totals and resets counters without touching state', () => {
    const { ic } = setup(3);
    ic.line(0).setLevel(true);
    ic.eoi(32);
    ic.line(0).setLevel(false);
    ic.eoi(32);
    ic.line(2).setLevel(true);
    ic.eoi(34);
    ic.eoi(33);
    ic.eoi(200);
    const s = ic.stats();
    expect(s.totals).toEqual({
      raises: 2,
      lowers: 1,
      redundantLevels: 0,
      deliveries: 4,
      eois: 4,
      redeliveries: 2,
      spuriousEois: 1,
    });
    expect(s.unownedEois).toBe(1);
    expect(s.lines.map((l) => [l.line, l.vector, l.asserted, l.inService])).toEqual([
      [0, 32, false, false],
      [1, 33, false, false],
      [2, 34, true, true],
    ]);
    ic.resetStats();
    const r = ic.stats();
    expect(Object.values(r.totals).every((v) => v === 0)).toBe(true);
    expect(r.unownedEois).toBe(0);
    expect(ic.lineStats(2)).toMatchObject({ asserted: true, inService: true, deliveries: 0 });
  });
});
