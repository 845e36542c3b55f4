import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileBlockBackend } from '../backend/index.js';
import { BlkDevice, BlkDriver, MemoryBlockBackend, RngDevice, RngDriver } from '../device/index.js';
import { DeviceId, MMIO_DEFAULT_WINDOW_SIZE, MmioReg } from '../spec/index.js';
import { DummyDevice } from '../testing/index.js';
import { Machine } from './machine.js';

const countingEntropy = () => {
  let next = 0;
  return {
    fill: (b: Uint8Array) => {
      for (let i = 0; i < b.length; i++) b[i] = next++ & 0xff;
    },
  };
};

describe('Machine', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('places devices on consecutive windows and lines, microvm style', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    const a = m.addDevice(new RngDevice({ entropy: countingEntropy() }));
    const b = m.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(64 * 512) }));
    expect([a.name, b.name]).toEqual(['rng0', 'blk1']);
    expect(a.base).toBe(0xfeb0_0000);
    expect(b.base).toBe(0xfeb0_0000 + MMIO_DEFAULT_WINDOW_SIZE);
    expect([a.line, b.line]).toEqual([5, 6]);
    expect(m.bus.read(b.base + MmioReg.DeviceID, 4)).toBe(DeviceId.BLOCK);
  });

  it('rejects duplicate names, unknown devices and impossible RAM sizes', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    m.addDevice(new RngDevice({ entropy: countingEntropy() }), { name: 'x' });
    expect(() => m.addDevice(new RngDevice({ entropy: countingEntropy() }), { name: 'x' })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => m.slot('nope')).toThrow(expect.objectContaining({ code: 'DEVICE_NOT_FOUND' }));
    expect(() => m.probe('nope')).toThrow(expect.objectContaining({ code: 'DEVICE_NOT_FOUND' }));
    expect(() => new Machine({ ramSize: 1024 })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => new Machine({ ramSize: 2 ** 40 })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
  });

  it('skips a placeholder slot (DeviceID 0) without touching anything else', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    m.addDevice(new DummyDevice({ deviceId: DeviceId.INVALID }), { name: 'empty' });
    expect(m.probe('empty')).toBeNull();
    const st = m.bus.deviceStats('empty');
    expect(st.writes).toBe(0);
  });

  for (const version of [2, 1] as const) {
    describe(`Version ${version}`, () => {
      it('reads entropy the device produced', () => {
        const m = new Machine({ ramSize: 4 << 20 });
        m.addDevice(new RngDevice({ entropy: countingEntropy() }), { name: 'rng0', version });
        const rng = RngDriver.probe(m.probe('rng0')!);
        expect([...rng.read(8)]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
        rng.remove();
        expect(m.slot('rng0').transport.guestErrors).toBe(0);
      });

      it('writes a file-backed disk that the host file then holds, and reads it back', () => {
        const dir = mkdtempSync(join(tmpdir(), 'vmmio-machine-'));
        dirs.push(dir);
        const path = join(dir, 'disk.img');
        const backend = FileBlockBackend.create(path, 256 * 512);
        const m = new Machine({ ramSize: 8 << 20 });
        m.addDevice(new BlkDevice({ backend }), { name: 'blk0', version });
        const blk = BlkDriver.probe(m.probe('blk0')!);
        const data = new Uint8Array(3 * 4096).map((_, i) => (i * 31 + version) & 0xff);
        blk.write(16, data);
        blk.flush();
        expect(Buffer.compare(readFileSync(path).subarray(16 * 512, 16 * 512 + data.length), data)).toBe(0);
        expect(Buffer.compare(Buffer.from(blk.read(16, data.length / 512)), data)).toBe(0);
        blk.remove();
        backend.close();
        expect(m.slot('blk0').transport.guestErrors).toBe(0);
      });

      it('one used-buffer notification on the standard line costs one InterruptStatus read, one InterruptACK write and one EOI', () => {
        const m = new Machine({ ramSize: 8 << 20 });
        const slot = m.addDevice(new BlkDevice({ backend: new MemoryBlockBackend(256 * 512) }), {
          name: 'blk0',
          version,
        });
        const blk = BlkDriver.probe(m.probe('blk0')!);
        m.bus.resetStats();
        m.irq.resetStats();
        blk.read(0, 8);
        const isr = m.bus.registerStats('blk0', MmioReg.InterruptStatus);
        const ack = m.bus.registerStats('blk0', MmioReg.InterruptACK);
        const notify = m.bus.registerStats('blk0', MmioReg.QueueNotify);
        const line = m.irq.lineStats(slot.line);
        expect(line.deliveries).toBe(1);
        expect(isr.reads).toBe(1);
        expect(ack.writes).toBe(1);
        expect(line.eois).toBe(1);
        expect(notify.writes).toBe(1);
        // Nothing else is touched to complete one request.
        expect(m.bus.deviceStats('blk0').reads + m.bus.deviceStats('blk0').writes).toBe(3);
        blk.remove();
      });
    });
  }
});
