import { describe, expect, it } from 'vitest';
import { Machine } from '../../platform/index.js';
import {
  ConsoleControlEvent,
  ConsoleFeature,
  DESC_LEN,
  DESC_SIZE,
  DeviceId,
  DeviceStatus,
  VirtioError,
} from '../../spec/index.js';
import { RngDevice } from '../rng/index.js';
import { MemoryConsoleBackend } from './backend.js';
import { ConsoleDevice, type ConsoleDeviceOptions } from './device.js';
import { ConsoleDriver, type ConsoleDriverOptions } from './driver.js';

function pattern(n: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed + i * 13 + (i >> 9)) & 0xff);
}

function rig(
  options: Partial<ConsoleDeviceOptions> = {},
  driverOptions: ConsoleDriverOptions = {},
  version: 1 | 2 = 2,
) {
  const backend = new MemoryConsoleBackend();
  const guestErrors: string[] = [];
  const m = new Machine({ ramSize: 8 << 20, onGuestError: (_d, msg) => guestErrors.push(msg) });
  const dev = new ConsoleDevice({ ...(options.ports === undefined ? { backend } : {}), ...options });
  const slot = m.addDevice(dev, { name: 'console0', version });
  const t = m.probe('console0');
  if (t === null) throw new Error('no device');
  const baseline = m.dma.used;
  const drv = ConsoleDriver.probe(t, driverOptions);
  return { m, dev, backend, slot, t, drv, guestErrors, baseline };
}

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(VirtioError);
    expect((e as VirtioError).code).toBe(code);
    return;
  }
  throw new Error('did not throw');
}

describe('ConsoleDriver over a Machine, single port', () => {
  for (const version of [2, 1] as const) {
    it(`guest writes reach the host byte for byte, split by buffer size (version ${version})`, () => {
      const { drv, backend, dev, slot } = rig({}, { bufferSize: 512, transmitBuffers: 4 }, version);
      const data = pattern(100_000, version);
      drv.write(data);
      drv.write('héllo\n');
      expect(backend.output()).toEqual(Uint8Array.from([...data, ...Buffer.from('héllo\n')]));
      // 196 buffers of 512 (the last 160) for the pattern, one for the text.
      expect(dev.counters.txChains).toBe(197);
      expect(drv.inFlight()).toBe(0);
      expect(slot.transport.guestErrors).toBe(0);
    });
  }

  it('host input reaches the guest in order, including input sent before the driver probed', () => {
    const backend = new MemoryConsoleBackend();
    const m = new Machine({ ramSize: 8 << 20 });
    const dev = new ConsoleDevice({ backend });
    m.addDevice(dev, { name: 'console0' });
    backend.push('early ');
    const drv = ConsoleDriver.probe(m.probe('console0')!, { bufferSize: 64, receiveBuffers: 4 });
    expect(new TextDecoder().decode(drv.read())).toBe('early ');
    const data = pattern(5000, 7);
    backend.push(data.subarray(0, 1000));
    backend.push(data.subarray(1000));
    // 4 buffers of 64 at a time: the rest waits in the device and follows as buffers come back.
    const got = drv.readExactly(5000);
    expect(got).toEqual(data);
    expect(drv.read()).toEqual(new Uint8Array(0));
    expect(dev.counters.inputDropped).toBe(0);
    expect(dev.port(0).pendingInput).toBe(0);
  });

  it('echoes: what the host sends back after reading the guest output arrives intact', () => {
    const { drv, backend } = rig();
    for (let i = 0; i < 50; i++) {
      const line = `line ${i} ${'x'.repeat(i * 37)}\n`;
      drv.write(line);
      backend.push(backend.take());
      expect(new TextDecoder().decode(drv.readExactly(line.length))).toBe(line);
    }
  });

  it('stops re-posting receive buffers past maxUnread, and re-posts them as input is read', () => {
    const { drv, backend, dev } = rig(
      { inputBufferBytes: 1024 },
      { bufferSize: 16, receiveBuffers: 4, maxUnread: 32 },
    );
    const data = pattern(200);
    backend.push(data);
    // The four posted buffers took 64 bytes; the rest waits in the device. On harvest, buffers
    // past 32 unread bytes are parked instead of re-posted.
    expect(dev.port(0).pendingInput).toBe(200 - 64);
    // Exact reads take what is there and leave the rest for the next read.
    const a = drv.readExactly(10);
    const b = drv.readExactly(190);
    expect([...a, ...b]).toEqual([...data]);
    expect(dev.counters.inputDropped).toBe(0);
    expectCode(() => drv.readExactly(-1), 'INVALID_ARGUMENT');
  });

  it('reports a resize through a configuration change: new generation, handler called with the size', () => {
    const { drv, dev, t, m } = rig({ size: { cols: 80, rows: 25 } });
    expect(drv.size).toEqual({ cols: 80, rows: 25 });
    const seen: Array<[number, number, number]> = [];
    drv.onResize((s, port) => seen.push([s.cols, s.rows, port]));
    const gen = t.configGeneration();
    const before = m.cpu.stats().halts;
    dev.resize(120, 40);
    expect(t.configGeneration()).not.toBe(gen);
    // The configuration interrupt is taken at the next halt.
    m.cpu.halt();
    expect(m.cpu.stats().halts).toBe(before + 1);
    expect(drv.configChanges).toBe(1);
    expect(seen).toEqual([[120, 40, 0]]);
    expect(drv.size).toEqual({ cols: 120, rows: 40 });
  });

  it('writes emergency bytes before and after initialization', () => {
    const backend = new MemoryConsoleBackend();
    const m = new Machine({ ramSize: 4 << 20 });
    m.addDevice(new ConsoleDevice({ backend }), { name: 'c' });
    const t = m.probe('c')!;
    expect(ConsoleDriver.emergencyWrite(t, 0x50)).toBe(true);
    const drv = ConsoleDriver.probe(t);
    expect(drv.features.has(ConsoleFeature.EMERG_WRITE)).toBe(true);
    expect(drv.emergencyWrite(0x121)).toBe(true);
    expect(backend.text()).toBe('P!');
    const m2 = new Machine({ ramSize: 4 << 20 });
    const b2 = new MemoryConsoleBackend();
    m2.addDevice(new ConsoleDevice({ backend: b2, emergWrite: false }), { name: 'c' });
    expect(ConsoleDriver.emergencyWrite(m2.probe('c')!, 0x50)).toBe(false);
    expect(b2.writes).toBe(0);
  });

  it('queues only what free buffers take while the host is congested, and finishes after it drains', () => {
    const { drv, backend, m } = rig({}, { bufferSize: 100, transmitBuffers: 3 });
    backend.setWritable(false);
    const data = pattern(1000);
    expect(drv.writeSome(data)).toBe(300);
    expect(drv.inFlight()).toBe(3);
    expect(drv.writeSome(data.subarray(300))).toBe(0);
    expectCode(() => drv.write(data.subarray(300)), 'TIMEOUT');
    backend.setWritable(true);
    m.cpu.halt();
    expect(drv.inFlight()).toBe(0);
    drv.write(data.subarray(300));
    expect(backend.output()).toEqual(data);
  });

  it('releases every buffer and queue on remove, and refuses use afterwards', () => {
    const { drv, m, baseline, backend } = rig({ size: { cols: 1, rows: 1 } });
    drv.write('x');
    backend.push('y');
    drv.remove();
    expect(m.dma.used).toBe(baseline);
    drv.remove();
    expectCode(() => drv.write('x'), 'INVALID_STATE');
    expectCode(() => drv.read(), 'INVALID_STATE');
    expectCode(() => drv.emergencyWrite(1), 'INVALID_STATE');
  });

  it('rejects other devices, bad options and ports that do not exist', () => {
    const m = new Machine({ ramSize: 4 << 20 });
    m.addDevice(new RngDevice({ entropy: { fill: () => {} } }), { name: 'rng' });
    expectCode(() => ConsoleDriver.probe(m.probe('rng')!), 'DEVICE_REJECTED');
    expect(ConsoleDriver.emergencyWrite(m.probe('rng')!, 1)).toBe(false);
    const { t, drv } = rig();
    for (const o of [
      { bufferSize: 0 },
      { receiveBuffers: 0 },
      { transmitBuffers: 1.5 },
      { maxPorts: 0 },
      { maxUnread: -1 },
    ]) {
      expectCode(() => ConsoleDriver.probe(t, o), 'INVALID_ARGUMENT');
    }
    expect(t.deviceId).toBe(DeviceId.CONSOLE);
    expectCode(() => drv.write('x', 1), 'INVALID_STATE');
    expectCode(() => drv.read(3), 'INVALID_STATE');
  });

  it('marks the device failed when a ring breaks and reports DEVICE_FAILED', () => {
    const { drv, m, slot, backend } = rig();
    drv.write('ok');
    // A buffer waits in the ring while the host is congested; the guest then corrupts the
    // descriptor table (every length 0) and the device finds it when the host drains.
    backend.setWritable(false);
    drv.write('more');
    const queues = (drv as unknown as { queues: Array<{ size: number; rings: { descTable: number } }> })
      .queues;
    for (let i = 0; i < queues[1].size; i++)
      m.mem.write32(queues[1].rings.descTable + i * DESC_SIZE + DESC_LEN, 0);
    backend.setWritable(true);
    expect(slot.transport.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    // The configuration interrupt reports DEVICE_NEEDS_RESET.
    m.cpu.halt();
    expectCode(() => drv.write('more'), 'DEVICE_FAILED');
    expectCode(() => drv.read(), 'DEVICE_FAILED');
    expect(drv.transport.getStatus() & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });
});

describe('ConsoleDriver multiport', () => {
  function multiRig(driverOptions: ConsoleDriverOptions = {}) {
    const backends = [0, 1, 2].map(() => new MemoryConsoleBackend());
    const m = new Machine({ ramSize: 16 << 20 });
    const dev = new ConsoleDevice({
      ports: [
        { backend: backends[0] },
        { backend: backends[1], name: 'org.qemu.guest_agent.0' },
        { backend: backends[2] },
      ],
      size: { cols: 80, rows: 24 },
    });
    const slot = m.addDevice(dev, { name: 'serial0' });
    const baseline = m.dma.used;
    const drv = ConsoleDriver.probe(m.probe('serial0')!, driverOptions);
    return { m, dev, backends, drv, slot, baseline };
  }

  it('sets up every announced port with its name, console flag and host state', () => {
    const { drv, dev, slot } = multiRig();
    expect(drv.isMultiport).toBe(true);
    expect(drv.portList).toEqual([
      { id: 0, name: null, console: true, hostOpen: true, removed: false },
      { id: 1, name: 'org.qemu.guest_agent.0', console: false, hostOpen: true, removed: false },
      { id: 2, name: null, console: false, hostOpen: true, removed: false },
    ]);
    expect(dev.port(0)).toMatchObject({ added: true, guestReady: true, guestOpen: true });
    expect(dev.port(1)).toMatchObject({ added: true, guestReady: true, guestOpen: true });
    expect(dev.counters.guestErrors).toBe(0);
    expect(drv.deviceErrors).toBe(0);
    expect(slot.transport.guestErrors).toBe(0);
  });

  it('keeps each port separate in both directions', () => {
    const { drv, backends } = multiRig();
    drv.write('zero', 0);
    drv.write('one', 1);
    drv.write('two', 2);
    expect(backends.map((b) => b.text())).toEqual(['zero', 'one', 'two']);
    backends[2].push('to two');
    backends[1].push('to one');
    expect(new TextDecoder().decode(drv.readExactly(6, 2))).toBe('to two');
    expect(new TextDecoder().decode(drv.read(1))).toBe('to one');
    expect(drv.read(0)).toEqual(new Uint8Array(0));
  });

  it('takes a resize of the console port from a RESIZE control message', () => {
    const { drv, dev, m } = multiRig();
    const seen: Array<[number, number, number]> = [];
    drv.onResize((s, port) => seen.push([s.cols, s.rows, port]));
    dev.resize(100, 50);
    m.cpu.halt();
    // Both the configuration change and the RESIZE message report it; the size is the same.
    expect(seen).toContainEqual([100, 50, 0]);
    expect(drv.size).toEqual({ cols: 100, rows: 50 });
  });

  it('refuses ports past maxPorts with PORT_READY 0, and runs single-port when multiport is declined', () => {
    const capped = multiRig({ maxPorts: 2 });
    expect(capped.drv.portList.map((p) => p.id)).toEqual([0, 1]);
    expect(capped.dev.counters.driverFailures).toBe(1);
    const single = multiRig({ multiport: false });
    expect(single.drv.isMultiport).toBe(false);
    expect(single.drv.portList.map((p) => p.id)).toEqual([0]);
    single.drv.write('plain');
    expect(single.backends[0].text()).toBe('plain');
  });

  it('counts control messages from the device that make no sense, and handles DEVICE_REMOVE', () => {
    const { drv, dev, backends, m } = multiRig();
    // Messages a well-behaved device would not send, injected through the device's own queue.
    const inject = dev as unknown as {
      queueControl(id: number, event: number, value: number, extra: Uint8Array | null): void;
      flushControl(): void;
    };
    inject.queueControl(9, ConsoleControlEvent.PORT_OPEN, 1, null); // unknown port
    inject.queueControl(0, 99, 0, null); // unknown event
    inject.queueControl(0, ConsoleControlEvent.RESIZE, 0, Uint8Array.from([1, 0])); // short resize
    inject.queueControl(0, ConsoleControlEvent.DEVICE_ADD, 0, null); // port that exists: refused
    // A rename with a trailing NUL, as QEMU sends it (5.3.6.2 says no terminator): cut at the NUL.
    inject.queueControl(2, ConsoleControlEvent.PORT_NAME, 1, Uint8Array.from([0x68, 0x76, 0x63, 0]));
    inject.queueControl(2, ConsoleControlEvent.PORT_OPEN, 0, null); // host closed port 2
    inject.queueControl(1, ConsoleControlEvent.DEVICE_REMOVE, 0, null);
    inject.flushControl();
    // The driver handles them from the control receiveq interrupt.
    m.cpu.halt();
    expect(drv.deviceErrors).toBe(3);
    // The refused DEVICE_ADD was answered with PORT_READY 0.
    expect(dev.counters.driverFailures).toBe(1);
    expect(drv.portList[2]).toEqual({ id: 2, name: 'hvc', console: false, hostOpen: false, removed: false });
    expect(drv.portList[1]).toMatchObject({ removed: true, hostOpen: false });
    expectCode(() => drv.write('x', 1), 'INVALID_STATE');
    drv.write('still', 2);
    expect(backends[2].text()).toBe('still');
  });

  it('releases everything on remove', () => {
    const { drv, m, baseline } = multiRig();
    drv.write('x', 1);
    drv.remove();
    expect(m.dma.used).toBe(baseline);
  });
});
