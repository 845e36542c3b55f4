import { afterEach, describe, expect, it } from 'vitest';
import { BlkDevice, BlkDriver, MemoryBlockBackend } from '../../src/device/index.js';
import { Machine } from '../../src/platform/index.js';
import { MmioReg } from '../../src/spec/index.js';
import {
  GuestProgramError,
  type ModuleRef,
  ThreadedVm,
  type ThreadedVmOptions,
  vmmModule,
} from '../../src/vmm/index.js';

// The workers and the guest programs are the compiled modules under dist/ (npm test builds them).
const P = (name: string): ModuleRef => vmmModule('programs', name);

const live: ThreadedVm[] = [];

async function start(options: ThreadedVmOptions = {}): Promise<ThreadedVm> {
  const vm = await ThreadedVm.start({ setup: P('setupRngBlk'), ...options });
  live.push(vm);
  return vm;
}

afterEach(async () => {
  while (live.length > 0) await live.pop()?.stop();
});

/** Resources that would keep the process alive because of workers. */
function workerHandles(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'MessagePort' || r === 'Worker').length;
}

describe('threaded vm: exits of one blk request under the standard line', () => {
  it('counts exactly 1 read, 2 writes, 1 eoi and no halt with trapped notification, on every run', async () => {
    const vm = await start();
    await vm.run(0, P('blkInit'));
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('blkRead'), { args: { sector: round, sectors: 1 } });
      const s = vm.vcpuStats(0);
      expect(s.exits).toEqual({ read: 1, write: 2, eoi: 1, hltWakeup: 0, irqchip: 0 });
      expect(s.doorbells).toBe(0);
      expect(s.halts).toBe(0);
      expect(s.interrupts).toBe(1);
      // The device completes inside the QueueNotify exit: the interrupt is taken when it returns.
      expect(s.takenAtExit).toBe(1);
      expect(s.spurious).toBe(0);
      expect(s.registers).toEqual([
        { device: 'blk0', offset: MmioReg.QueueNotify, reads: 0, writes: 1, posted: 0, local: 0 },
        { device: 'blk0', offset: MmioReg.InterruptStatus, reads: 1, writes: 0, posted: 0, local: 0 },
        { device: 'blk0', offset: MmioReg.InterruptACK, reads: 0, writes: 1, posted: 0, local: 0 },
      ]);
      const vmm = (await vm.vmmStats()) as {
        vmm: { exits: number; doorbells: number };
        irq: { lines: Array<{ line: number; deliveries: number; eois: number; redeliveries: number }> };
      };
      expect(vmm.vmm.exits).toBe(4);
      expect(vmm.vmm.doorbells).toBe(0);
      const line = vmm.irq.lines.find((l) => l.line === vm.machine.devices[1].line);
      expect(line).toMatchObject({ deliveries: 1, eois: 1, redeliveries: 0 });
    }
  });

  it('keeps the same exit counts under a polling waiting policy', async () => {
    const vm = await start({ wait: { vcpuSpin: 2000, vmmSpin: 2000 } });
    await vm.run(0, P('blkInit'));
    await vm.resetStats();
    await vm.run(0, P('blkRead'), { args: { sector: 0, sectors: 1 } });
    const s = vm.vcpuStats(0);
    expect(s.exits).toEqual({ read: 1, write: 2, eoi: 1, hltWakeup: 0, irqchip: 0 });
    // Each of the 4 exits was answered either while the vCPU polled or after it slept.
    expect(s.exitPollHits).toBeLessThanOrEqual(4);
    expect(s.cpuNs === -1 || s.cpuNs > 0).toBe(true);
  });

  it('matches the exit profile of the same devices and drivers in the in-process machine', async () => {
    const m = new Machine({ ramSize: 16 << 20 });
    m.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(1 << 20), serial: 'vmm-disk' }), {
      name: 'blk0',
    });
    const t = m.probe('blk0');
    if (t === null) throw new Error('no blk0');
    const blk = BlkDriver.probe(t);
    m.bus.resetStats();
    m.irq.resetStats();
    blk.read(0, 1);
    const reg = (o: number) => m.bus.registerStats('blk0', o);
    expect(reg(MmioReg.QueueNotify).writes).toBe(1);
    expect(reg(MmioReg.InterruptStatus).reads).toBe(1);
    expect(reg(MmioReg.InterruptACK).writes).toBe(1);
    expect(m.bus.stats().totalReads + m.bus.stats().totalWrites).toBe(3);
    expect(m.irq.stats().totals.eois).toBe(1);
  });

  it('posts the notification to the doorbell ring instead of trapping it', async () => {
    const vm = await start({ notify: 'posted' });
    await vm.run(0, P('blkInit'));
    for (let round = 0; round < 3; round++) {
      await vm.resetStats();
      await vm.run(0, P('blkRead'), { args: { sector: round, sectors: 1 } });
      const s = vm.vcpuStats(0);
      // QueueNotify no longer exits; the completion arrives asynchronously and is taken in halt.
      expect({
        read: s.exits.read,
        write: s.exits.write,
        eoi: s.exits.eoi,
        irqchip: s.exits.irqchip,
      }).toEqual({
        read: 1,
        write: 1,
        eoi: 1,
        irqchip: 0,
      });
      expect(s.doorbells).toBe(1);
      expect(s.ringFull).toBe(0);
      expect(s.interrupts).toBe(1);
      expect(s.takenAtExit).toBe(0);
      expect(s.halts).toBe(1);
      // Either the interrupt was already pending at the halt, or the halt slept and was woken once.
      expect(s.exits.hltWakeup).toBeLessThanOrEqual(1);
      expect(vm.registerStats(0, 'blk0', MmioReg.QueueNotify)).toEqual({
        device: 'blk0',
        offset: MmioReg.QueueNotify,
        reads: 0,
        writes: 0,
        posted: 1,
        local: 0,
      });
      const vmm = (await vm.vmmStats()) as { vmm: { exits: number; doorbells: number } };
      expect(vmm.vmm).toMatchObject({ exits: 3, doorbells: 1 });
    }
  });

  it('moves data correctly through trapped and posted notification alike', async () => {
    for (const notify of ['trapped', 'posted'] as const) {
      const vm = await start({ notify });
      await vm.run(0, P('blkInit'));
      await vm.run(0, P('blkWrite'), { args: { sector: 4, sectors: 16, seed: 3 } });
      const r = (await vm.run(0, P('blkRead'), { args: { sector: 4, sectors: 16 } })) as { head: number[] };
      expect(r.head).toEqual([3, 10, 17, 24, 31, 38, 45, 52]);
      await vm.run(0, P('blkRemove'));
    }
  });

  it('counts the line unmask and mask of driver probe and removal as irqchip exits', async () => {
    const vm = await start();
    await vm.run(0, P('blkInit'));
    expect(vm.vcpuStats(0).exits.irqchip).toBe(1);
    await vm.resetStats();
    await vm.run(0, P('blkRemove'));
    expect(vm.vcpuStats(0).exits.irqchip).toBe(1);
  });
});

describe('threaded vm: interrupts', () => {
  it('loses no wake-up over 100k inject/halt cycles between two vcpus', async () => {
    const vm = await start({ vcpus: 2, setup: null });
    const count = 100_000;
    const [seen] = await Promise.all([
      vm.run(0, P('ipiResponder'), { args: { count, peer: 1 }, timeoutMs: 110_000 }),
      vm.run(1, P('ipiInitiator'), { args: { count, peer: 0, warmup: 0 }, timeoutMs: 110_000 }),
    ]);
    expect(seen).toBe(count);
    const s0 = vm.vcpuStats(0);
    const s1 = vm.vcpuStats(1);
    expect(s0.interrupts).toBe(count);
    expect(s1.interrupts).toBe(count);
    // Ping-pong: a vector is never posted twice before it is taken.
    expect(s0.coalesced + s1.coalesced).toBe(0);
    expect(s0.injects).toBe(count);
    // No exit at all: IPI vectors are edge-triggered (no EOI exit) and posted without a trap.
    expect(s0.exits).toMatchObject({ read: 0, write: 0, eoi: 0 });
  }, 120_000);

  it('injects from the host thread into a halted vcpu', async () => {
    const vm = await start({ vcpus: 1, setup: null });
    const run = vm.run(0, P('ipiResponder'), { args: { count: 3, peer: 0 } });
    // The responder answers to itself (peer 0): its own PONG vector is unbound and taken as spurious.
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 20));
      vm.inject(0, 0x40);
    }
    expect(await run).toBe(3);
    expect(vm.vcpuStats(0).exits.hltWakeup).toBeGreaterThanOrEqual(1);
  });

  it('refuses a wired line on a vcpu other than 0', async () => {
    const vm = await start({ vcpus: 2 });
    const e = await vm.run(1, P('blkInit')).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GuestProgramError);
    expect((e as GuestProgramError).vcpu).toBe(1);
    expect((e as GuestProgramError).guestError?.code).toBe('IRQ_INVALID_LINE');
  });

  it('refuses every bad call of the guest platform with the right error, without an exit', async () => {
    const vm = await start({ vcpus: 1 });
    const r = (await vm.run(0, P('platformRejections'))) as Array<[string, string, string]>;
    expect(r).toEqual([
      ['requestIrq line 99', 'IRQ_INVALID_LINE', 'no interrupt line 99 (controller has 24)'],
      ['requestIrq line -1', 'IRQ_INVALID_LINE', 'no interrupt line -1 (controller has 24)'],
      ['freeIrq line 24', 'IRQ_INVALID_LINE', 'no interrupt line 24 (controller has 24)'],
      ['requestVector 31', 'INVALID_ARGUMENT', 'vector 31 is not in 32..255'],
      ['requestVector 256', 'INVALID_ARGUMENT', 'vector 256 is not in 32..255'],
      ['requestVector of line 5', 'INVALID_ARGUMENT', 'vector 37 belongs to a wired line'],
      ['sendIpi vcpu 9', 'INVALID_ARGUMENT', 'no vcpu 9'],
      ['sendIpi vector 20', 'INVALID_ARGUMENT', 'vector 20 is not in 32..255'],
      ['allocMsiVectors 0', 'INVALID_ARGUMENT', 'msi vector count 0 is not a positive integer'],
      ['allocMsiVectors 1.5', 'INVALID_ARGUMENT', 'msi vector count 1.5 is not a positive integer'],
      ['allocMsiVectors 1000', 'ok', ''],
      ['msiMessage unallocated', 'INVALID_STATE', 'vector 80 is not an allocated msi vector'],
      ['setMsiHandler unallocated', 'INVALID_STATE', 'vector 80 is not an allocated msi vector'],
      ['msiMessage allocated', 'ok', ''],
      ['setMsiHandler twice', 'INVALID_STATE', 'msi vector 56 already has a handler'],
      ['msiMessage freed', 'INVALID_STATE', 'vector 56 is not an allocated msi vector'],
      ['requestIrq line 5', 'ok', ''],
      ['requestIrq line 5 again', 'IRQ_INVALID_LINE', 'interrupt line 5 (vector 37) already has a handler'],
      ['halt inside a handler', 'INVALID_STATE', 'halt called from inside an interrupt handler'],
    ]);
    // Only the successful requestIrq / freeIrq pair reached the controller.
    expect(vm.vcpuStats(0).exits).toEqual({ read: 0, write: 0, eoi: 0, hltWakeup: 0, irqchip: 2 });
  });

  it('refuses bad injections from the host', async () => {
    const vm = await start({ setup: null });
    expect(() => vm.inject(1, 0x40)).toThrow(/no vcpu 1/);
    expect(() => vm.inject(0, 31)).toThrow(/not in 32..255/);
    expect(() => vm.inject(0, 256)).toThrow(/not in 32..255/);
    expect(() => vm.inject(0.5, 0x40)).toThrow(/no vcpu/);
  });
});

describe('threaded vm: lifecycle', () => {
  it('runs programs on the vcpu asked for and passes arguments', async () => {
    const vm = await start({ vcpus: 2 });
    expect(await vm.run(0, P('echo'), { args: { x: 1 } })).toEqual({ vcpu: 0, args: { x: 1 } });
    expect(await vm.run(1, P('echo'), { args: [2] })).toEqual({ vcpu: 1, args: [2] });
    expect(vm.machine.devices.map((d) => [d.name, d.line])).toEqual([
      ['rng0', 5],
      ['blk0', 6],
    ]);
  });

  it('reports a throwing guest program with its vcpu and keeps the vcpu usable', async () => {
    const vm = await start({ vcpus: 2 });
    const e = await vm.run(1, P('throwsError')).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(GuestProgramError);
    expect(e).toMatchObject({ vcpu: 1, failure: 'threw' });
    expect((e as GuestProgramError).guestError).toMatchObject({
      name: 'VirtioError',
      code: 'DEVICE_FAILED',
      message: 'deliberate guest failure',
    });
    expect((e as Error).message).toMatch(/^vcpu 1: guest program threw VirtioError DEVICE_FAILED/);
    expect(await vm.run(1, P('echo'))).toEqual({ vcpu: 1, args: undefined });
  });

  it('stops a spinning and a sleeping guest program by timeout and reports the vcpu', async () => {
    const vm = await start({ vcpus: 3 });
    const [spin, sleep] = await Promise.all([
      vm.run(1, P('spinsForever'), { timeoutMs: 200 }).catch((x: unknown) => x),
      vm.run(2, P('haltsForever'), { timeoutMs: 200 }).catch((x: unknown) => x),
    ]);
    expect(spin).toMatchObject({ vcpu: 1, failure: 'timeout' });
    expect(sleep).toMatchObject({ vcpu: 2, failure: 'timeout' });
    expect((spin as Error).message).toBe('vcpu 1: guest program still running after 200 ms');
    await expect(vm.run(1, P('echo'))).rejects.toThrow(/vcpu 1 is dead/);
    expect(await vm.run(0, P('echo'))).toEqual({ vcpu: 0, args: undefined });
    await vm.stop();
    expect(vm.state).toBe('stopped');
  });

  it('gives a halt with nothing to wake it a TIMEOUT when asked to', async () => {
    const vm = await start();
    const e = await vm.run(0, P('haltsForever'), { haltTimeoutMs: 30 }).catch((x: unknown) => x);
    expect(e).toMatchObject({ vcpu: 0, failure: 'threw' });
    expect((e as GuestProgramError).guestError?.code).toBe('TIMEOUT');
  });

  it('joins every worker on stop and leaves no handle behind', async () => {
    const before = workerHandles();
    const vm = await ThreadedVm.start({ vcpus: 2, setup: P('setupRngBlk') });
    expect(workerHandles()).toBeGreaterThan(before);
    await vm.run(0, P('blkInit'));
    await vm.stop();
    await new Promise((r) => setImmediate(r));
    expect(vm.state).toBe('stopped');
    expect(workerHandles()).toBe(before);
    await vm.stop(); // idempotent
    await expect(vm.run(0, P('echo'))).rejects.toThrow(/machine is stopped/);
    await expect(vm.vmmStats()).rejects.toThrow(/machine is stopped/);
  });

  it('stops while a program runs: the run rejects as stopped', async () => {
    const before = workerHandles();
    const vm = await ThreadedVm.start({ vcpus: 1, setup: null });
    const run = vm.run(0, P('haltsForever')).catch((x: unknown) => x);
    await new Promise((r) => setTimeout(r, 50));
    await vm.stop();
    expect(await run).toMatchObject({ vcpu: 0, failure: 'stopped' });
    await new Promise((r) => setImmediate(r));
    expect(workerHandles()).toBe(before);
  });

  it('rejects bad options, a busy vcpu, a missing export and a failing setup', async () => {
    await expect(ThreadedVm.start({ vcpus: 0 })).rejects.toThrow(/vcpus must be in 1..64/);
    await expect(ThreadedVm.start({ vcpus: 65 })).rejects.toThrow(/vcpus must be in 1..64/);
    await expect(ThreadedVm.start({ ramSize: 1 << 20 })).rejects.toThrow(/ram size/);
    await expect(ThreadedVm.start({ reservedLow: 16 << 20 })).rejects.toThrow(/reserved low ram/);
    await expect(ThreadedVm.start({ notify: 'fast' as 'posted' })).rejects.toThrow(/notify mode fast/);
    await expect(ThreadedVm.start({ wait: { vcpuSpin: -1 } })).rejects.toThrow(/vcpuSpin/);
    await expect(ThreadedVm.start({ wait: { vmmSpin: 1.5 } })).rejects.toThrow(/vmmSpin/);
    await expect(ThreadedVm.start({ setup: P('setupThrows') })).rejects.toThrow(
      /machine setup failed: deliberate setup failure/,
    );
    await expect(ThreadedVm.start({ setup: P('noSuchSetup') })).rejects.toThrow(
      /has no function noSuchSetup/,
    );
    const vm = await start({ vcpus: 1 });
    await expect(vm.run(1, P('echo'))).rejects.toThrow(/no vcpu 1/);
    const long = vm.run(0, P('haltsForever'), { timeoutMs: 100 }).catch((x: unknown) => x);
    await expect(vm.run(0, P('echo'))).rejects.toThrow(/already running/);
    await long;
    const vm2 = await start({ vcpus: 1 });
    const e = await vm2.run(0, P('noSuchProgram')).catch((x: unknown) => x);
    expect(e).toMatchObject({ vcpu: 0, failure: 'threw' });
    expect((e as Error).message).toMatch(/has no function noSuchProgram/);
  });
});

describe('threaded vm: tracing', () => {
  it('writes exits, doorbells, injections, halts and handlers as Chrome trace events', async () => {
    const vm = await start({ trace: true, notify: 'posted' });
    await vm.run(0, P('blkInit'));
    await vm.trace(); // drop the probe's events
    await vm.run(0, P('blkRead'), { args: { sector: 0, sectors: 1 } });
    const t = await vm.trace();
    const names = t.traceEvents.filter((e) => e.ph !== 'M').map((e) => e.name);
    expect(names).toEqual(
      expect.arrayContaining([
        'doorbell',
        'drain doorbell',
        'inject vcpu0',
        'exit read',
        'serve read',
        'irq 38',
      ]),
    );
    expect(names.filter((n) => n.startsWith('exit '))).toEqual(['exit read', 'exit write', 'exit eoi']);
    for (const e of t.traceEvents) {
      expect(Number.isFinite(e.ts)).toBe(true);
      if (e.ph === 'X') expect(e.dur).toBeGreaterThanOrEqual(0);
    }
    expect(t.traceEvents.filter((e) => e.ph === 'M').map((e) => e.args?.name)).toEqual(['vmm', 'vcpu 0']);
    expect(() => JSON.parse(JSON.stringify(t))).not.toThrow();
    // Drained: a second call has only the thread names.
    expect((await vm.trace()).traceEvents.every((e) => e.ph === 'M')).toBe(true);
  });

  it('records nothing without the trace option', async () => {
    const vm = await start({});
    await vm.run(0, P('blkInit'));
    expect((await vm.trace()).traceEvents).toEqual([]);
  });
});
