/**
 * Our virtio-console guest driver ({@link ConsoleDriver}, unchanged) against QEMU's
 * `virtio-serial-device` with a `virtconsole` port on a pipe chardev, over qtest: probe,
 * negotiation (MULTIPORT as QEMU offers it, or declined), the control protocol, guest writes
 * arriving at the chardev byte for byte, host writes arriving in the guest, the emergency write.
 *
 * @packageDocumentation
 */

import { ConsoleDriver } from '../../device/index.js';
import { ConsoleFeature, DeviceId, DeviceStatus, FeatureBit, hex, VirtioError } from '../../spec/index.js';
import { attachGuest, QEMU_VENDOR_ID, type QemuScenario } from './scenarios.js';

/** Name QEMU gives the console port (PORT_NAME, MULTIPORT only). */
export const QEMU_CONSOLE_PORT_NAME = 'org.virtio-mmio.qemu';

/** Bytes the guest writes in one go (several of the driver's 4 KiB transmit buffers). */
const GUEST_WRITE_BYTES = 20_000;

/** Bytes the host writes (more than the driver's 8 x 4 KiB receive buffers: they are re-posted). */
const HOST_WRITE_BYTES = 50_000;

/** Every byte value, in a deterministic shuffled order. */
function bytesPattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x ^ i) & 0xff;
  }
  return out;
}

/** Where two byte strings first differ, for messages. */
function difference(got: Uint8Array, want: Uint8Array): string | null {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  if (i === got.length && i === want.length) return null;
  return `${String(got.length)} bytes, want ${String(want.length)}, first difference at ${String(i)} (${hex(got[i] ?? -1)} vs ${hex(want[i] ?? -1)})`;
}

function expectThat(cond: boolean, message: string): void {
  if (!cond) throw new VirtioError('DEVICE_FAILED', message);
}

/**
 * One console scenario. `multiport`: the driver negotiates VIRTIO_CONSOLE_F_MULTIPORT (QEMU offers
 * it whenever max_ports > 1); false: the driver declines it and uses port 0's queues alone.
 */
export function consoleScenario(version: 1 | 2, multiport: boolean): QemuScenario {
  return {
    name: `v${String(version)} console ${multiport ? 'multiport' : 'single port'} both ways`,
    version,
    devices: [{ kind: 'console', name: QEMU_CONSOLE_PORT_NAME }],
    run(vm) {
      const ch = vm.console;
      if (ch === null) throw new VirtioError('DEVICE_NOT_FOUND', 'no console chardev');
      const g = attachGuest(vm, 'console');
      const t = g.t;
      expectThat(t.deviceId === DeviceId.CONSOLE, `device id ${String(t.deviceId)}`);
      expectThat(t.vendorId === QEMU_VENDOR_ID, `vendor ${hex(t.vendorId)}`);
      t.reset();
      const offered = t.getFeatures();
      expectThat(offered.has(ConsoleFeature.MULTIPORT), 'qemu did not offer MULTIPORT (max_ports 31)');
      expectThat(offered.has(ConsoleFeature.EMERG_WRITE), 'qemu did not offer EMERG_WRITE');
      expectThat(!offered.has(ConsoleFeature.SIZE), 'qemu offered SIZE');
      expectThat(
        offered.has(FeatureBit.VERSION_1) === (version === 2),
        `VERSION_1 offered: ${offered.toString()}`,
      );

      // 5.3.5.1: "The device MUST allow a write to emerg_wr, even on an unconfigured device."
      expectThat(ConsoleDriver.emergencyWrite(t, 0x45), 'emergency write refused');
      const early = ch.readAtLeast(1, 2000);
      expectThat(
        difference(early, Uint8Array.of(0x45)) === null,
        `emergency write before init: got ${hex(early[0] ?? -1)} (${String(early.length)} bytes)`,
      );

      const d = ConsoleDriver.probe(t, { multiport });
      const live =
        DeviceStatus.ACKNOWLEDGE |
        DeviceStatus.DRIVER |
        DeviceStatus.DRIVER_OK |
        (version === 2 ? DeviceStatus.FEATURES_OK : 0);
      expectThat(t.getStatus() === live, `status ${hex(t.getStatus())} after probe`);
      expectThat(d.isMultiport === multiport, `multiport negotiated: ${String(d.isMultiport)}`);
      expectThat(d.size === null, 'a size without SIZE');
      const ports = d.portList;
      expectThat(ports.length === 1 && ports[0].id === 0, `ports ${JSON.stringify(ports)}`);
      const p0 = ports[0];
      expectThat(p0.console && p0.hostOpen && !p0.removed, `port 0 ${JSON.stringify(p0)}`);
      // PORT_NAME exists only in the control protocol. QEMU sends the name with its NUL terminator
      // (docs/qemu-departures.md, port-name-nul), which our driver keeps as part of the name.
      expectThat(
        p0.name === (multiport ? QEMU_CONSOLE_PORT_NAME : null),
        `port 0 name ${JSON.stringify(p0.name)}`,
      );
      expectThat(d.deviceErrors === 0, `${String(d.deviceErrors)} bad control messages from qemu`);

      // Guest to host: several transmit buffers, every byte value.
      const out = bytesPattern(GUEST_WRITE_BYTES, 0xc0de + version);
      d.write(out);
      const got = ch.readAtLeast(out.length, 5000);
      const outDiff = difference(got, out);
      expectThat(outDiff === null, `guest write at the chardev: ${String(outDiff)}`);

      // Host to guest: more than the posted receive buffers hold.
      const input = bytesPattern(HOST_WRITE_BYTES, 0xfeed + version);
      ch.write(input);
      const back = d.readExactly(input.length);
      const inDiff = difference(back, input);
      expectThat(inDiff === null, `host write in the guest: ${String(inDiff)}`);
      expectThat(d.read().length === 0, 'more input than the host wrote');
      // Input that arrives while the driver is halted: taken from the interrupt.
      const runs = g.platform.handlerRuns;
      const line = new TextEncoder().encode('late line from the host\n');
      ch.writeLater(line, 200);
      const lateIn = d.readExactly(line.length);
      expectThat(difference(lateIn, line) === null, 'late host write differs in the guest');
      expectThat(g.platform.handlerRuns > runs, 'late host write arrived without an interrupt');

      // The emergency write after DRIVER_OK, then byte 0.
      d.emergencyWrite(0x21);
      d.emergencyWrite(0x00);
      const late = ch.readAtLeast(2, 500);
      // QEMU's set_config skips a zero emerg_wr word (docs/qemu-departures.md, emerg-wr-zero).
      expectThat(
        difference(late, Uint8Array.of(0x21)) === null,
        `emergency writes after init: ${Array.from(late, (b) => hex(b)).join(' ')}`,
      );
      expectThat(d.inFlight() === 0, `${String(d.inFlight())} transmit buffers not returned`);
      const negotiated = d.features.toString();
      d.remove();
      expectThat(t.getStatus() === 0, 'status not 0 after remove');
      expectThat(!vm.qtest.irqLevel(g.gsi), 'line left raised');
      return `features ${negotiated}, port 0 ${p0.name === null ? 'unnamed' : JSON.stringify(p0.name)}, ${String(out.length)} bytes out, ${String(input.length)} in, ${String(g.platform.handlerRuns)} interrupts`;
    },
  };
}

/** Name of the generic port (a `virtserialport`, port 1) in the two-port scenario. */
export const QEMU_SERIAL_PORT_NAME = 'org.virtio-mmio.port1';

/**
 * Two ports through the control protocol: the console (port 0) and a generic `virtserialport`
 * (port 1) on its own chardev; data both ways on both, interleaved, each on its own chardev.
 */
export function twoPortScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} console + virtserialport both ways`,
    version,
    devices: [{ kind: 'console', name: QEMU_CONSOLE_PORT_NAME, serialPort: QEMU_SERIAL_PORT_NAME }],
    run(vm) {
      const c0 = vm.console;
      const c1 = vm.serialPort;
      if (c0 === null || c1 === null) throw new VirtioError('DEVICE_NOT_FOUND', 'no chardevs');
      const g = attachGuest(vm, 'console');
      const d = ConsoleDriver.probe(g.t);
      expectThat(d.isMultiport, 'MULTIPORT not negotiated');
      const ports = d.portList;
      expectThat(ports.length === 2, `ports ${JSON.stringify(ports)}`);
      const [p0, p1] = ports;
      expectThat(p0.id === 0 && p0.console && p0.hostOpen, `port 0 ${JSON.stringify(p0)}`);
      expectThat(
        p1.id === 1 && !p1.console && p1.hostOpen && p1.name === QEMU_SERIAL_PORT_NAME,
        `port 1 ${JSON.stringify(p1)}`,
      );
      const out0 = bytesPattern(9000, 1);
      const out1 = bytesPattern(11_000, 2);
      d.write(out0.subarray(0, 4500), 0);
      d.write(out1.subarray(0, 5500), 1);
      d.write(out0.subarray(4500), 0);
      d.write(out1.subarray(5500), 1);
      const got0 = c0.readAtLeast(out0.length, 5000);
      const got1 = c1.readAtLeast(out1.length, 5000);
      expectThat(difference(got0, out0) === null, `port 0 at its chardev: ${String(difference(got0, out0))}`);
      expectThat(difference(got1, out1) === null, `port 1 at its chardev: ${String(difference(got1, out1))}`);
      const in0 = bytesPattern(30_000, 3);
      const in1 = bytesPattern(45_000, 4);
      c0.write(in0);
      c1.write(in1);
      const back1 = d.readExactly(in1.length, 1);
      const back0 = d.readExactly(in0.length, 0);
      expectThat(difference(back0, in0) === null, `port 0 in the guest: ${String(difference(back0, in0))}`);
      expectThat(difference(back1, in1) === null, `port 1 in the guest: ${String(difference(back1, in1))}`);
      expectThat(d.read(0).length === 0 && d.read(1).length === 0, 'more input than the host wrote');
      expectThat(d.deviceErrors === 0, `${String(d.deviceErrors)} bad control messages from qemu`);
      d.remove();
      expectThat(g.t.getStatus() === 0, 'status not 0 after remove');
      return `ports 0 (console) and 1 ${JSON.stringify(p1.name)}: ${String(out0.length + out1.length)} bytes out, ${String(in0.length + in1.length)} in, ${String(g.platform.handlerRuns)} interrupts`;
    },
  };
}

/** The console scenarios: multiport v2 and v1, v2 with MULTIPORT declined, two ports v2. */
export function qemuConsoleScenarios(): QemuScenario[] {
  return [consoleScenario(2, true), consoleScenario(1, true), consoleScenario(2, false), twoPortScenario(2)];
}
