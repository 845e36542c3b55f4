import { describe, expect, it } from 'vitest';
import type { InterruptTarget } from './irq.js';
import { composeMsiMessage, MSI_ADDRESS_BASE, MSI_DEST_SHIFT, MSI_MIN_VECTOR, MsiController } from './msi.js';

class RecordingCpu implements InterruptTarget {
  readonly vectors: number[] = [];
  deliver(vector: number): void {
    this.vectors.push(vector);
  }
}

describe('MsiController: x86 decoding', () => {
  it('composes 0xfee00000 | apic id << 12 with the vector in the data', () => {
    expect(composeMsiMessage(0, 0x40)).toEqual({ addressLow: MSI_ADDRESS_BASE, addressHigh: 0, data: 0x40 });
    expect(composeMsiMessage(3, 0xeb)).toEqual({ addressLow: 0xfee0_3000, addressHigh: 0, data: 0xeb });
    expect(composeMsiMessage(255, 16).addressLow).toBe(0xfeef_f000);
    for (const [id, v] of [
      [-1, 0x40],
      [256, 0x40],
      [0.5, 0x40],
      [0, 15],
      [0, 256],
      [0, 1.5],
    ]) {
      expect(() => composeMsiMessage(id, v)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
  });

  it('delivers the vector to the CPU named by the destination, and counts per vector', () => {
    const cpu0 = new RecordingCpu();
    const cpu2 = new RecordingCpu();
    const c = new MsiController([[0, cpu0]]);
    c.addTarget(2, cpu2);
    const to = (id: number, v: number) => {
      const m = composeMsiMessage(id, v);
      c.send(m.addressLow, m.addressHigh, m.data);
    };
    to(0, 0x41);
    to(2, 0x50);
    to(2, 0x50);
    // Address bits 11..0 and data bits 15..8 are not decoded.
    c.send(MSI_ADDRESS_BASE | (2 << MSI_DEST_SHIFT) | 0x00c, 0, 0xc042);
    expect(cpu0.vectors).toEqual([0x41]);
    expect(cpu2.vectors).toEqual([0x50, 0x50, 0x42]);
    expect(c.deliveredCount(0x50)).toBe(2);
    expect(c.deliveredCount(-1)).toBe(0);
    expect(c.stats()).toEqual({
      messages: 4,
      delivered: 4,
      deliveredByVector: [
        { vector: 0x41, count: 1 },
        { vector: 0x42, count: 1 },
        { vector: 0x50, count: 2 },
      ],
      dropped: 0,
      droppedBy: { address: 0, destination: 0, vector: 0 },
    });
    expect(c.hasTarget(2)).toBe(true);
    expect(c.hasTarget(1)).toBe(false);
  });

  it('drops what nobody decodes: other addresses, a high half, an absent CPU, an illegal vector', () => {
    const cpu = new RecordingCpu();
    const c = new MsiController([[0, cpu]]);
    c.send(0xfed0_0000, 0, 0x40); // below the range
    c.send(0xfef0_0000, 0, 0x40); // above it
    c.send(0, 0, 0x40); // a vector never programmed (address 0)
    c.send(MSI_ADDRESS_BASE, 1, 0x40); // 64-bit address outside the range
    c.send(MSI_ADDRESS_BASE | (7 << MSI_DEST_SHIFT), 0, 0x40); // no CPU 7
    c.send(MSI_ADDRESS_BASE, 0, MSI_MIN_VECTOR - 1);
    c.send(MSI_ADDRESS_BASE, 0, 0x100); // vector 0 in the low byte
    expect(cpu.vectors).toEqual([]);
    expect(c.stats()).toMatchObject({
      messages: 7,
      delivered: 0,
      dropped: 7,
      droppedBy: { address: 4, destination: 1, vector: 2 },
    });
    c.resetStats();
    expect(c.stats()).toMatchObject({ messages: 0, dropped: 0, deliveredByVector: [] });
  });

  it('refuses a bad or taken APIC id when adding a CPU', () => {
    const c = new MsiController();
    c.addTarget(0, new RecordingCpu());
    expect(() => c.addTarget(0, new RecordingCpu())).toThrow(
      expect.objectContaining({ code: 'INVALID_STATE' }),
    );
    for (const id of [-1, 256, 1.5]) {
      expect(() => c.addTarget(id, new RecordingCpu())).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      );
    }
  });
});
