import { describe, expect, it } from 'vitest';
import { RngDevice } from '../../device/index.js';
import { DeviceId, MMIO_MAGIC_VALUE, MmioReg } from '../../spec/index.js';
import { MmioTransport } from '../../transport/index.js';
import {
  EmptyMmioSlot,
  missingV86Internals,
  type V86Cpu,
  V86GuestMemory,
  V86IrqLine,
  V86MmioWindows,
  v86Cpu,
} from './adapter.js';

type Handlers = [
  (a: number) => number,
  (a: number, v: number) => void,
  (a: number) => number,
  (a: number, v: number) => void,
];

/** A stand-in for v86's CPU with the same member names, recording what the adapter calls. */
function fakeCpu(ramSize = 0x10000) {
  const ram = new Uint8Array(ramSize);
  const dv = new DataView(ram.buffer);
  const calls: string[] = [];
  const maps: { addr: number; size: number; h: Handlers }[] = [];
  const cpu: V86Cpu = {
    io: {
      mmap_register(addr, size, r8, w8, r32, w32) {
        maps.push({ addr, size, h: [r8, w8, r32, w32] });
      },
    },
    device_raise_irq: (n) => calls.push(`raise ${String(n)}`),
    device_lower_irq: (n) => calls.push(`lower ${String(n)}`),
    mem8: ram,
    memory_size: Uint32Array.of(ramSize),
    write8: (a, v) => {
      calls.push(`write8 ${a.toString(16)}`);
      ram[a] = v;
    },
    write16: (a, v) => {
      calls.push(`write16 ${a.toString(16)}`);
      dv.setUint16(a, v, true);
    },
    write32: (a, v) => {
      calls.push(`write32 ${a.toString(16)}`);
      dv.setInt32(a, v, true);
    },
    write_blob: (b, a) => {
      calls.push(`write_blob ${a.toString(16)} ${String(b.length)}`);
      ram.set(b, a);
    },
    jit_dirty_cache: (s, e) => calls.push(`dirty ${s.toString(16)}-${e.toString(16)}`),
  };
  return { cpu, ram, calls, maps };
}

describe('v86 adapter', () => {
  it('names every missing internal, and accepts a complete cpu', () => {
    expect(missingV86Internals({})).toEqual(['emulator.v86.cpu']);
    expect(missingV86Internals({ v86: { cpu: { io: {} } } })).toEqual([
      'cpu.io.mmap_register',
      'cpu.device_raise_irq',
      'cpu.device_lower_irq',
      'cpu.write8',
      'cpu.write16',
      'cpu.write32',
      'cpu.write_blob',
      'cpu.jit_dirty_cache',
      'cpu.mem8',
      'cpu.memory_size',
    ]);
    expect(() => v86Cpu({ v86: {} })).toThrow(/v86 internals missing: emulator\.v86\.cpu/);
    const { cpu } = fakeCpu();
    expect(missingV86Internals({ v86: { cpu } })).toEqual([]);
    expect(v86Cpu({ v86: { cpu } })).toBe(cpu);
  });

  it('guest memory reads directly and writes through the JIT-coherent calls', () => {
    const { cpu, ram, calls } = fakeCpu();
    const mem = new V86GuestMemory(cpu);
    expect(mem.size).toBe(0x10000);
    mem.write8(0x10, 0x1ab);
    mem.write16(0x20, 0x1beef);
    mem.write32(0x30, 0xdead_beef);
    mem.write64(0x40, 2 ** 40 + 5);
    mem.writeBytes(0x50, Uint8Array.of(1, 2, 3));
    expect(calls).toEqual([
      'write8 10',
      'write16 20',
      'write32 30',
      'write32 40',
      'write32 44',
      'write_blob 50 3',
    ]);
    expect(mem.read8(0x10)).toBe(0xab);
    expect(mem.read16(0x20)).toBe(0xbeef);
    expect(mem.read32(0x30)).toBe(0xdead_beef);
    expect(mem.read64(0x40)).toBe(2 ** 40 + 5);
    const dst = new Uint8Array(3);
    mem.readBytes(0x50, dst);
    expect([...dst]).toEqual([1, 2, 3]);
    calls.length = 0;
    mem.fill(0x100, 16, 0x7f);
    expect(calls).toEqual(['dirty 100-110']);
    expect(ram[0x10f]).toBe(0x7f);
    const view = mem.view(0x200, 8);
    expect(calls).toEqual(['dirty 100-110', 'dirty 200-208']);
    view?.fill(9);
    expect(ram[0x207]).toBe(9);
  });

  it('guest memory rejects accesses outside RAM', () => {
    const { cpu, calls } = fakeCpu(0x1000);
    const mem = new V86GuestMemory(cpu);
    expect(mem.isValid(0xffc, 4)).toBe(true);
    expect(mem.isValid(0xffd, 4)).toBe(false);
    expect(mem.isValid(-1, 1)).toBe(false);
    expect(mem.isValid(Number.NaN, 1)).toBe(false);
    expect(() => mem.read32(0xffe)).toThrow(/0xffe/);
    expect(() => mem.write32(0x1000, 1)).toThrow();
    expect(() => mem.writeBytes(0xfff, new Uint8Array(2))).toThrow();
    expect(() => mem.fill(0xfff, 2, 0)).toThrow();
    expect(mem.view(0xfff, 2)).toBeNull();
    expect(calls).toEqual([]);
  });

  it('drives a free line and refuses lines v86 owns', () => {
    const { cpu, calls } = fakeCpu();
    const irq = new V86IrqLine(cpu, 5);
    irq.setLevel(true);
    irq.setLevel(false);
    expect(calls).toEqual(['raise 5', 'lower 5']);
    expect(irq.raised).toBe(1);
    for (const bad of [0, 4, 9, 14, 16, -1, 2.5])
      expect(() => new V86IrqLine(cpu, bad)).toThrow(/not free in v86/);
  });

  it('maps windows at 128 KiB granularity and dispatches by offset and width', () => {
    const { cpu, maps, calls } = fakeCpu();
    const w = new V86MmioWindows(cpu, 0xd000_0000, 2);
    expect(maps).toHaveLength(1);
    expect(maps[0].addr).toBe(0xd000_0000);
    expect(maps[0].size).toBe(0x2_0000);
    const [r8, w8, r32, w32] = maps[0].h;
    // Empty slots: magic, version 2, device id 0.
    expect(r32(0xd000_0000 + MmioReg.MagicValue)).toBe(MMIO_MAGIC_VALUE);
    expect(r32(0xd000_0200 + MmioReg.DeviceID)).toBe(DeviceId.INVALID);
    expect(r8(0xd000_0000)).toBe(0);
    const transport = new MmioTransport(new RngDevice({ entropy: { fill: (d) => d.fill(1) } }), {
      mem: new V86GuestMemory(cpu),
      irq: new V86IrqLine(cpu, 3),
    });
    w.attach(1, transport);
    expect(w.device(1)).toBe(transport);
    expect(w.windowBase(1)).toBe(0xd000_0200);
    expect(r32(0xd000_0200 + MmioReg.DeviceID)).toBe(DeviceId.ENTROPY);
    // A split 16-bit access to a control register is two byte accesses: a counted guest error.
    expect(r8(0xd000_0200 + MmioReg.DeviceID)).toBe(0);
    expect(transport.guestErrors).toBe(1);
    w32(0xd000_0200 + MmioReg.Status, 1);
    expect(transport.status).toBe(1);
    w8(0xd000_0200 + MmioReg.Status, 0);
    expect(transport.status).toBe(1);
    // Past the 0x400 bytes of windows: stray, read as 0.
    expect(r32(0xd000_0400)).toBe(0);
    w32(0xd001_0000, 5);
    expect(w.strayAccesses).toBe(2);
    w.attach(1, null);
    expect(w.device(1)).toBeInstanceOf(EmptyMmioSlot);
    expect(calls.filter((c) => c.startsWith('raise'))).toEqual([]);
  });

  it('rejects bad window layouts and attachments', () => {
    const { cpu } = fakeCpu();
    expect(() => new V86MmioWindows(cpu, 0xd000_0200, 1)).toThrow(/128 KiB aligned/);
    expect(() => new V86MmioWindows(cpu, 0xd000_0000, 0)).toThrow(/128 KiB aligned/);
    expect(() => new V86MmioWindows(cpu, 0xd000_0000, 1, 0x300)).toThrow(/invalid window stride/);
    expect(() => new V86MmioWindows(cpu, 0xfffe_0000, 1024)).toThrow(/leave 32-bit space/);
    const w = new V86MmioWindows(cpu, 0xd000_0000, 2);
    expect(() => w.attach(2, null)).toThrow(/no v86 mmio window 2/);
    expect(() => w.attach(0, new EmptyMmioSlot(0x400))).toThrow(/exceeds stride/);
  });

  it('an empty slot reads 0 at every other register and ignores writes', () => {
    const s = new EmptyMmioSlot();
    expect(s.read(MmioReg.Version, 4)).toBe(2);
    expect(s.read(MmioReg.MagicValue, 1)).toBe(0);
    s.write(MmioReg.Status, 4, 0xf);
    expect(s.read(MmioReg.Status, 4)).toBe(0);
  });
});
