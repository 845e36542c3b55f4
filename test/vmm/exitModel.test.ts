import { afterEach, describe, expect, it } from 'vitest';
import { MmioReg } from '../../src/spec/index.js';
import { type ModuleRef, ThreadedVm, type ThreadedVmOptions, vmmModule } from '../../src/vmm/index.js';

const P = (name: string): ModuleRef => vmmModule('programs', name);
const live: ThreadedVm[] = [];

async function start(options: ThreadedVmOptions): Promise<ThreadedVm> {
  const vm = await ThreadedVm.start({ setup: P('setupRngBlk'), ...options });
  live.push(vm);
  return vm;
}

afterEach(async () => {
  while (live.length > 0) await live.pop()?.stop();
});

interface LineStats {
  vmm: { exits: number; doorbells: number };
  irq: { totals: { deliveries: number; eois: number; redeliveries: number; spuriousEois: number } };
}

describe("threaded vm: exit model 'local' (InterruptStatus, InterruptACK, EOI on the vcpu thread)", () => {
  it('serves the same accesses of one blk request with a single exit', async () => {
    const vm = await start({ exitModel: 'local' });
    await vm.run(0, P('blkInit'));
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('blkRead'), { args: { sector: round, sectors: 1 } });
      const s = vm.vcpuStats(0);
      expect(s.exits).toEqual({ read: 0, write: 1, eoi: 0, hltWakeup: 0, irqchip: 0 });
      expect(s.local).toEqual({ reads: 1, writes: 1, eois: 1 });
      expect(s.interrupts).toBe(1);
      expect(s.registers).toEqual([
        { device: 'blk0', offset: MmioReg.QueueNotify, reads: 0, writes: 1, posted: 0, local: 0 },
        { device: 'blk0', offset: MmioReg.InterruptStatus, reads: 0, writes: 0, posted: 0, local: 1 },
        { device: 'blk0', offset: MmioReg.InterruptACK, reads: 0, writes: 0, posted: 0, local: 1 },
      ]);
      // The posted ACK and EOI reach the device and the controller: one delivery, one EOI, the
      // line low again, no resample.
      const st = (await vm.vmmStats()) as LineStats;
      expect(st.vmm).toMatchObject({ exits: 1, doorbells: 2 });
      expect(st.irq.totals).toMatchObject({ deliveries: 1, eois: 1, redeliveries: 0, spuriousEois: 0 });
    }
  });

  it('with posted notification too, one blk request makes no exit at all', async () => {
    const vm = await start({ exitModel: 'local', notify: 'posted' });
    await vm.run(0, P('blkInit'));
    await vm.resetStats();
    await vm.run(0, P('blkRead'), { args: { sector: 0, sectors: 1 } });
    const s = vm.vcpuStats(0);
    expect({ read: s.exits.read, write: s.exits.write, eoi: s.exits.eoi }).toEqual({
      read: 0,
      write: 0,
      eoi: 0,
    });
    expect(s.local).toEqual({ reads: 1, writes: 1, eois: 1 });
    expect(s.doorbells).toBe(1);
  });

  it('moves data correctly and tears the driver down cleanly', async () => {
    const vm = await start({ exitModel: 'local' });
    await vm.run(0, P('blkInit'));
    await vm.run(0, P('blkWrite'), { args: { sector: 4, sectors: 16, seed: 9 } });
    for (let i = 0; i < 20; i++) {
      const r = (await vm.run(0, P('blkRead'), { args: { sector: 4, sectors: 16 } })) as { head: number[] };
      expect(r.head).toEqual([9, 16, 23, 30, 37, 44, 51, 58]);
    }
    await vm.run(0, P('blkRemove'));
    const st = (await vm.vmmStats()) as LineStats & { guestErrors: string[] };
    expect(st.guestErrors).toEqual([]);
    expect(st.irq.totals.spuriousEois).toBe(0);
  });

  it('rejects an unknown exit model', async () => {
    await expect(ThreadedVm.start({ exitModel: 'fast' as 'local' })).rejects.toThrow(/exit model fast/);
  });
});
