import { afterEach, describe, expect, it } from 'vitest';
import { MmioReg } from '../../src/spec/index.js';
import { type ModuleRef, ThreadedVm, type ThreadedVmOptions, vmmModule } from '../../src/vmm/index.js';

const P = (name: string): ModuleRef => vmmModule('programs', name);
const live: ThreadedVm[] = [];

async function start(options: ThreadedVmOptions): Promise<ThreadedVm> {
  const vm = await ThreadedVm.start(options);
  live.push(vm);
  return vm;
}

afterEach(async () => {
  while (live.length > 0) await live.pop()?.stop();
});

interface MsiStats {
  msi: { delivered: number; deliveredByVector: Array<{ vector: number; count: number }>; dropped: number };
}

describe('threaded vm: one entropy request, standard line vs seed MSI', () => {
  it('standard line: the notification, InterruptStatus, InterruptACK and EOI exit', async () => {
    const vm = await start({ vcpus: 1, setup: P('setupRngBlk') });
    expect(await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } })).toBe('line');
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } });
      const s = vm.vcpuStats(0);
      expect(s.exits).toEqual({ read: 1, write: 2, eoi: 1, hltWakeup: 0, irqchip: 0 });
      expect(s.interrupts).toBe(1);
    }
  });

  it('MSI, trapped notification: only the notification exits; no status read, ACK or EOI', async () => {
    const vm = await start({ vcpus: 1, setup: P('setupMsi') });
    expect(await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } })).toBe('msi-per-queue');
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } });
      const s = vm.vcpuStats(0);
      expect(s.exits).toEqual({ read: 0, write: 1, eoi: 0, hltWakeup: 0, irqchip: 0 });
      expect(s.interrupts).toBe(1);
      expect(s.registers).toEqual([
        { device: 'rng0', offset: MmioReg.QueueNotify, reads: 0, writes: 1, posted: 0, local: 0 },
      ]);
      const st = (await vm.vmmStats()) as MsiStats;
      expect(st.msi.delivered).toBe(1);
      expect(st.msi.dropped).toBe(0);
    }
  });

  it('MSI, posted notification: no exit at all besides the halt wake-up', async () => {
    const vm = await start({ vcpus: 1, setup: P('setupMsi'), notify: 'posted' });
    await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } });
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } });
      const s = vm.vcpuStats(0);
      expect({ read: s.exits.read, write: s.exits.write, eoi: s.exits.eoi }).toEqual({
        read: 0,
        write: 0,
        eoi: 0,
      });
      expect(s.doorbells).toBe(1);
      expect(s.halts).toBe(1);
      expect(s.interrupts).toBe(1);
    }
  });

  it('posts the seed per-queue notification address like QueueNotify', async () => {
    const vm = await start({
      vcpus: 1,
      setup: P('setupMsi'),
      setupArgs: { notification: true },
      notify: 'posted',
    });
    const rng0 = vm.machine.devices[0];
    expect(rng0.seed).toBe(true);
    expect(rng0.notify).not.toBeNull();
    await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } });
    await vm.resetStats();
    await vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } });
    const s = vm.vcpuStats(0);
    expect(s.doorbells).toBe(1);
    expect(s.exits.write).toBe(0);
    expect(s.registers).toEqual([
      { device: 'rng0', offset: rng0.notify?.start ?? -1, reads: 0, writes: 0, posted: 1, local: 0 },
    ]);
  });
});

describe('threaded vm: one entropy request with extra wired lines (2014 multi-irq rfc)', () => {
  it('skips the InterruptStatus read: the notification, the ACK of its own bit and the EOI exit', async () => {
    const vm = await start({ vcpus: 1, setup: P('setupPerQueueLines') });
    expect(vm.machine.devices[0].irqLines).toEqual([5, 6, 7]);
    expect(await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } })).toMatch(/^lines-/);
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } });
      const s = vm.vcpuStats(0);
      expect(s.exits).toEqual({ read: 0, write: 2, eoi: 1, hltWakeup: 0, irqchip: 0 });
      expect(s.registers.map((r) => [r.offset, r.reads, r.writes])).toEqual([
        [MmioReg.QueueNotify, 0, 1],
        [MmioReg.InterruptACK, 0, 1],
      ]);
    }
  });
});

describe('threaded vm: MSI affinity over two vcpus', () => {
  it('delivers each device vector to the vcpu whose driver programmed it', async () => {
    const vm = await start({ vcpus: 2, setup: P('setupMsi') });
    await vm.run(0, P('rawEntropyInit'), { args: { device: 'rng0' } });
    await vm.run(1, P('rawEntropyInit'), { args: { device: 'rng1' } });
    await vm.resetStats();
    await Promise.all([
      vm.run(0, P('rawEntropyRequest'), { args: { device: 'rng0' } }),
      vm.run(1, P('rawEntropyRequest'), { args: { device: 'rng1' } }),
    ]);
    await vm.run(1, P('rawEntropyRequest'), { args: { device: 'rng1' } });
    const s0 = vm.vcpuStats(0);
    const s1 = vm.vcpuStats(1);
    expect([s0.interrupts, s1.interrupts]).toEqual([1, 2]);
    expect([s0.injects, s1.injects]).toEqual([1, 2]);
    expect([s0.spurious, s1.spurious]).toEqual([0, 0]);
    expect(s0.registers.map((r) => r.device)).toEqual(['rng0']);
    expect(s1.registers.map((r) => r.device)).toEqual(['rng1']);
    const st = (await vm.vmmStats()) as MsiStats;
    expect(st.msi.delivered).toBe(3);
  });
});
