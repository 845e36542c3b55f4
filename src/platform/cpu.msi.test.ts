import { describe, expect, it } from 'vitest';
import { VirtioError, type VirtioErrorCode } from '../spec/index.js';
import { InProcessCpu, MSI_LAST_VECTOR } from './cpu.js';
import { FIRST_DEVICE_VECTOR, InterruptController } from './irq.js';
import { MSI_ADDRESS_BASE } from './msi.js';

function expectVirtioError(fn: () => unknown, code: VirtioErrorCode): VirtioError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(VirtioError);
  expect((err as VirtioError).code).toBe(code);
  return err as VirtioError;
}

function setup(lines = 4, options: ConstructorParameters<typeof InProcessCpu>[1] = {}) {
  const ic = new InterruptController({ lines });
  return { ic, cpu: new InProcessCpu(ic, options) };
}

describe('InProcessCpu MSI vector allocator', () => {
  it('hands out the lowest free vectors past the ones the wired lines own', () => {
    const { cpu } = setup(4);
    expect(cpu.msi).toBe(cpu);
    // Lines 0..3 own vectors 32..35.
    expect(cpu.allocMsiVectors(3)).toEqual([36, 37, 38]);
    expect(cpu.allocMsiVectors(1)).toEqual([39]);
    expect(cpu.msiVectorsAllocated).toBe(4);
    cpu.freeMsiVectors([37]);
    expect(cpu.allocMsiVectors(2)).toEqual([37, 40]);
    expect(cpu.stats().msiVectorsAllocated).toBe(5);
  });

  it('is all or nothing: running out half-way gives back what it took', () => {
    const { cpu } = setup(4, { maxMsiVectors: 3 });
    expect(cpu.allocMsiVectors(2)).toEqual([36, 37]);
    expect(cpu.allocMsiVectors(2)).toBeNull();
    expect(cpu.msiVectorsAllocated).toBe(2);
    expect(cpu.stats().msiAllocFailures).toBe(1);
    // The one vector left is still there.
    expect(cpu.allocMsiVectors(1)).toEqual([38]);
    expect(cpu.allocMsiVectors(1)).toBeNull();
  });

  it('stops at the last device vector when the range runs out', () => {
    const { cpu } = setup(4);
    const available = MSI_LAST_VECTOR - FIRST_DEVICE_VECTOR + 1 - 4;
    expect(cpu.allocMsiVectors(available + 1)).toBeNull();
    expect(cpu.msiVectorsAllocated).toBe(0);
    const all = cpu.allocMsiVectors(available) as number[];
    expect(all.length).toBe(available);
    expect(all[all.length - 1]).toBe(MSI_LAST_VECTOR);
    expect(cpu.allocMsiVectors(1)).toBeNull();
  });

  it('rejects counts that are not positive integers', () => {
    const { cpu } = setup();
    for (const n of [0, -1, 1.5, Number.NaN])
      expectVirtioError(() => cpu.allocMsiVectors(n), 'INVALID_ARGUMENT');
  });

  it('composes the x86 message: 0xfee00000 | apic id << 12, data = vector (edge, fixed)', () => {
    const { cpu } = setup(4, { apicId: 3 });
    const [v] = cpu.allocMsiVectors(1) as number[];
    expect(cpu.msiMessage(v)).toEqual({
      addressLow: (MSI_ADDRESS_BASE | (3 << 12)) >>> 0,
      addressHigh: 0,
      data: v,
    });
    expect(cpu.msiMessage(v).addressLow).toBe(0xfee0_3000);
    expectVirtioError(() => cpu.msiMessage(v + 1), 'INVALID_STATE');
    expectVirtioError(() => cpu.msiMessage(32), 'INVALID_STATE'); // a line's vector
    expectVirtioError(() => cpu.msiMessage(-1), 'INVALID_STATE');
  });

  it('runs the handler of a delivered MSI vector; its EOI never reaches the wired controller', () => {
    const { ic, cpu } = setup(4);
    const [v] = cpu.allocMsiVectors(1) as number[];
    let runs = 0;
    cpu.setMsiHandler(v, () => runs++);
    expect(cpu.stats().msiHandlers).toBe(1);
    cpu.deliver(v);
    cpu.halt();
    expect(runs).toBe(1);
    const s = cpu.stats();
    expect([s.eois, s.edgeEois, s.levelEois, s.spurious]).toEqual([1, 1, 0, 0]);
    expect(ic.stats().unownedEois).toBe(0);
    expect(ic.stats().totals.eois).toBe(0);
  });

  it('refuses handlers on vectors not allocated or already attached, and detaches with null', () => {
    const { cpu } = setup(4);
    const [v] = cpu.allocMsiVectors(1) as number[];
    expectVirtioError(() => cpu.setMsiHandler(v + 1, () => {}), 'INVALID_STATE');
    expectVirtioError(() => cpu.setMsiHandler(32, () => {}), 'INVALID_STATE');
    cpu.setMsiHandler(v, () => {});
    expectVirtioError(() => cpu.setMsiHandler(v, () => {}), 'INVALID_STATE');
    cpu.setMsiHandler(v, null);
    expect(cpu.stats().msiHandlers).toBe(0);
    cpu.setMsiHandler(v, () => {});
  });

  it('frees vectors with their handlers; a vector latched before the free is taken as spurious', () => {
    const { cpu } = setup(4);
    const [v] = cpu.allocMsiVectors(1) as number[];
    let runs = 0;
    cpu.setMsiHandler(v, () => runs++);
    cpu.deliver(v);
    cpu.freeMsiVectors([v, v, 200, -3, 1.5]);
    expect(cpu.msiVectorsAllocated).toBe(0);
    cpu.halt();
    expect(runs).toBe(0);
    expect(cpu.stats().spurious).toBe(1);
    expectVirtioError(() => cpu.setMsiHandler(v, () => {}), 'INVALID_STATE');
  });

  it('keeps line vectors and MSI vectors apart: a line handler blocks nothing, an MSI vector is never a line', () => {
    const { cpu } = setup(2);
    cpu.requestIrq(0, () => {});
    const vs = cpu.allocMsiVectors(2) as number[];
    expect(vs).toEqual([34, 35]);
    expectVirtioError(() => cpu.setMsiHandler(32, () => {}), 'INVALID_STATE');
  });

  it('can be built without MSI, and rejects bad apic ids and caps', () => {
    const { cpu } = setup(2, { msi: false });
    expect(cpu.msi).toBeUndefined();
    for (const apicId of [-1, 256, 1.5]) {
      expectVirtioError(
        () => new InProcessCpu(new InterruptController({ lines: 1 }), { apicId }),
        'INVALID_ARGUMENT',
      );
    }
    for (const maxMsiVectors of [-1, 1.5, Number.NaN]) {
      expectVirtioError(
        () => new InProcessCpu(new InterruptController({ lines: 1 }), { maxMsiVectors }),
        'INVALID_ARGUMENT',
      );
    }
    const { cpu: none } = setup(2, { maxMsiVectors: 0 });
    expect(none.allocMsiVectors(1)).toBeNull();
  });
});
