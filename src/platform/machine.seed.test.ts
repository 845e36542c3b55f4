import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import {
  DeviceStatus,
  FeatureBit,
  MMIO_DEFAULT_WINDOW_SIZE,
  MmioReg,
  MsiCmd,
  SeedFeatureBit,
  SeedMmioReg,
} from '../spec/index.js';
import { addStatus, DummyDevice, driveToFeaturesOk, mmioWrite32, programQueue } from '../testing/index.js';
import { queueInterruptBit } from '../transport/index.js';
import { type DeviceSlot, Machine } from './machine.js';
import { composeMsiMessage } from './msi.js';

/** Negotiates `features` on the slot's transport, readies every queue in RAM, sets DRIVER_OK. */
function bringUp(m: Machine, slot: DeviceSlot, features: Features): void {
  const t = slot.transport;
  driveToFeaturesOk(t, features);
  for (let i = 0; i < t.numQueues; i++) {
    const at = m.dma.alloc(0x1000, 0x1000);
    programQueue(t, i, { size: 8, descTable: at, availRing: at + 0x400, usedRing: at + 0x800 });
  }
  addStatus(t, DeviceStatus.DRIVER_OK);
}

function complete(m: Machine, slot: DeviceSlot, i: number): void {
  slot.transport.queue(i).addUsed(m.mem, 0, 0);
  (slot.device as DummyDevice).ctx?.notifyUsed(i);
}

describe('Machine: several wired lines per device', () => {
  it('allocates the standard line, a config line and the queue lines, in description order', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    const a = m.addDevice(new DummyDevice({ queueMaxSizes: [8, 8] }), { lines: 'per-queue' });
    const b = m.addDevice(new DummyDevice({ queueMaxSizes: [8, 8, 8] }), { lines: 'shared' });
    const c = m.addDevice(new DummyDevice());
    expect([a.irqLines, a.lineLayout, a.line]).toEqual([[5, 6, 7, 8], 'per-queue', 5]);
    expect([b.irqLines, b.lineLayout]).toEqual([[9, 10, 11], 'shared']);
    expect([c.irqLines, c.lineLayout, c.line]).toEqual([[12], 'single', 12]);
  });

  it('refuses an unknown layout, and places nothing when the lines run out', () => {
    const m = new Machine({ ramSize: 4 << 20, lines: 8 });
    expect(() => m.addDevice(new DummyDevice(), { lines: 'many' as never })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => m.addDevice(new DummyDevice({ queueMaxSizes: [8, 8] }), { lines: 'per-queue' })).toThrow(
      expect.objectContaining({ code: 'IRQ_INVALID_LINE' }),
    );
    expect(m.devices).toHaveLength(0);
    expect(m.addDevice(new DummyDevice()).line).toBe(5);
  });

  it('an event raises its own line and the standard line at the interrupt controller', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    const s = m.addDevice(new DummyDevice({ queueMaxSizes: [8, 8] }), { lines: 'per-queue' });
    bringUp(m, s, new Features([FeatureBit.VERSION_1]));
    complete(m, s, 1);
    expect(s.irqLines.map((l) => m.irq.isAsserted(l))).toEqual([true, false, false, true]);
    mmioWrite32(s.transport, MmioReg.InterruptACK, queueInterruptBit(1));
    expect(s.irqLines.map((l) => m.irq.isAsserted(l))).toEqual([false, false, false, false]);
  });
});

describe('Machine: seed profile MSI wired to the MSI controller', () => {
  it('a configured, enabled vector reaches the CPU as the programmed vector; no wired line moves', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    const dev = new DummyDevice({ queueMaxSizes: [8] });
    const s = m.addDevice(dev, { seed: { msi: { vectors: 2, sharing: false } } });
    expect(s.transport.msi).not.toBeNull();
    bringUp(m, s, new Features([FeatureBit.VERSION_1, SeedFeatureBit.MMIO_MSI]));
    const t = s.transport;
    for (const [v, vector] of [
      [0, 0x60],
      [1, 0x61],
    ]) {
      const msg = composeMsiMessage(0, vector);
      mmioWrite32(t, SeedMmioReg.MsiVecSel, v);
      mmioWrite32(t, SeedMmioReg.MsiAddrLow, msg.addressLow);
      mmioWrite32(t, SeedMmioReg.MsiAddrHigh, msg.addressHigh);
      mmioWrite32(t, SeedMmioReg.MsiData, msg.data);
      mmioWrite32(t, SeedMmioReg.MsiCommand, MsiCmd.CONFIGURE);
    }
    mmioWrite32(t, SeedMmioReg.MsiCommand, MsiCmd.ENABLE);
    dev.changeConfig(0, [1]);
    complete(m, s, 0);
    expect(m.cpu.isPending(0x60)).toBe(true);
    expect(m.cpu.isPending(0x61)).toBe(true);
    expect(m.msi.stats()).toMatchObject({ messages: 2, delivered: 2, dropped: 0 });
    expect(m.irq.isAsserted(s.line)).toBe(false);
    // A vector programmed to a CPU that does not exist: dropped at the controller.
    const lost = composeMsiMessage(9, 0x62);
    mmioWrite32(t, SeedMmioReg.MsiVecSel, 0);
    mmioWrite32(t, SeedMmioReg.MsiAddrLow, lost.addressLow);
    mmioWrite32(t, SeedMmioReg.MsiData, lost.data);
    mmioWrite32(t, SeedMmioReg.MsiCommand, MsiCmd.CONFIGURE);
    dev.changeConfig(0, [2]);
    expect(m.msi.stats().droppedBy.destination).toBe(1);
  });

  it('a notification-only seed device gets a larger window; the next window starts after it', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    const a = m.addDevice(new DummyDevice(), { seed: { notification: { base: 0x400 } } });
    const b = m.addDevice(new DummyDevice());
    expect(a.transport.windowSize).toBe(3 * MMIO_DEFAULT_WINDOW_SIZE);
    expect(b.base).toBe(a.base + a.transport.windowSize);
    expect(a.transport.msi).toBeNull();
  });
});
