import { describe, expect, it } from 'vitest';
import { BlkDevice, BlkDriver, MemoryBlockBackend } from '../device/index.js';
import { MmioReg } from '../spec/index.js';
import type { InterruptMode } from '../transport/index.js';
import { type AddDeviceOptions, Machine } from './machine.js';

/**
 * One blk read per interrupt mode, end to end through Machine.probe: the mode the cascade picks,
 * and what one used-buffer notification costs the guest in trapped accesses (counted, not timed).
 */
interface Case {
  mode: InterruptMode;
  device: AddDeviceOptions;
  isrReads: number;
  ackWrites: number;
  ioapicEois: number;
  /** blk queues (per-queue lines only differ from shared ones with several queues). */
  queues?: number;
}

const CASES: Case[] = [
  { mode: 'line', device: {}, isrReads: 1, ackWrites: 1, ioapicEois: 1 },
  {
    mode: 'lines-per-queue',
    device: { lines: 'per-queue' },
    queues: 2,
    isrReads: 0,
    ackWrites: 1,
    ioapicEois: 1,
  },
  { mode: 'lines-shared', device: { lines: 'shared' }, isrReads: 0, ackWrites: 1, ioapicEois: 1 },
  {
    mode: 'msi-per-queue',
    device: { seed: { msi: { vectors: 4, sharing: false } }, ringReset: false },
    isrReads: 0,
    ackWrites: 0,
    ioapicEois: 0,
  },
  {
    mode: 'msi-shared',
    device: { seed: { msi: { vectors: 2, sharing: true } }, ringReset: false },
    isrReads: 0,
    ackWrites: 0,
    ioapicEois: 0,
  },
];

describe('Machine: the driver cascade picks the best mode the device and platform offer', () => {
  for (const c of CASES) {
    it(`${c.mode}: ${c.isrReads} InterruptStatus reads, ${c.ackWrites} InterruptACK writes, ${c.ioapicEois} IO-APIC EOIs per request`, () => {
      const m = new Machine({ ramSize: 8 << 20 });
      const slot = m.addDevice(
        new BlkDevice({ backend: new MemoryBlockBackend(64 * 512), queueCount: c.queues ?? 1 }),
        {
          name: 'blk0',
          ...c.device,
        },
      );
      const t = m.probe('blk0')!;
      const blk = BlkDriver.probe(t);
      expect(t.interruptMode).toBe(c.mode);
      m.bus.resetStats();
      m.irq.resetStats();
      m.cpu.resetStats();
      blk.read(0, 8);
      expect(m.bus.registerStats('blk0', MmioReg.InterruptStatus).reads).toBe(c.isrReads);
      expect(m.bus.registerStats('blk0', MmioReg.InterruptACK).writes).toBe(c.ackWrites);
      const eois = slot.irqLines.reduce((n, l) => n + m.irq.lineStats(l).eois, 0);
      expect(eois).toBe(c.ioapicEois);
      expect(m.cpu.stats().interrupts).toBe(1);
      expect(slot.transport.guestErrors).toBe(0);
      blk.remove();
      expect(slot.transport.guestErrors).toBe(0);
    });
  }

  it('a driver with the extensions disabled uses the standard line on a seed device', () => {
    const m = new Machine({ ramSize: 8 << 20 });
    m.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(64 * 512) }), {
      name: 'blk0',
      seed: { msi: { vectors: 4, sharing: false } },
      ringReset: false,
    });
    const t = m.probe('blk0', { seed: false })!;
    const blk = BlkDriver.probe(t);
    expect(t.interruptMode).toBe('line');
    expect(blk.read(0, 1)).toHaveLength(512);
    blk.remove();
  });
});
