// Embedding virtio-mmio in an emulator, without the rest of our machine.
//
// The "emulator" here is a stand-in: its RAM is an ArrayBuffer it owns, it routes MMIO accesses in
// one address range to a handler, and it has interrupt lines it can raise and lower. Replace those
// three pieces with your emulator's own (v86, a RISC-V core in JS, ...).
//
// Run: npm run build && node examples/embed.mjs
import { BlkDevice, MemoryBlockBackend, MmioTransport, RamMemory } from '../dist/index.js';

// --- the emulator's side ------------------------------------------------------------------
const emulatorRam = new ArrayBuffer(16 << 20); // the emulator's own guest RAM
const DEVICE_BASE = 0xd000_0000;
const DEVICE_IRQ = 5;
const irqLevels = new Map();
const log = [];

// 1. Guest memory over the emulator's RAM buffer (no copy: the device reads and writes it in place).
const mem = new RamMemory([{ gpa: 0, buffer: emulatorRam }]);

// 2. A device behind a transport. The transport raises and lowers the wired line through a callback.
const disk = new MemoryBlockBackend(1 << 20);
const transport = new MmioTransport(new BlkDevice({ backend: disk, serial: 'example' }), {
  mem,
  version: 2,
  irq: {
    setLevel(asserted) {
      irqLevels.set(DEVICE_IRQ, asserted);
      log.push(`irq ${DEVICE_IRQ} ${asserted ? 'raised' : 'lowered'}`);
    },
  },
  onGuestError: (message) => log.push(`guest error: ${message}`),
});

// 3. Route the emulator's MMIO accesses in [DEVICE_BASE, DEVICE_BASE + windowSize) to it.
function mmioRead(addr, width) {
  return transport.read(addr - DEVICE_BASE, width);
}
function mmioWrite(addr, width, value) {
  transport.write(addr - DEVICE_BASE, width, value);
}

// --- what a guest kernel would do (normally: the guest OS inside your emulator) ----------------
// Here we play the guest by hand at register level, to show the accesses the device sees. Our own
// guest driver (MmioDriver + BlkDriver) does the full flow; see the README.
const R = { Magic: 0x000, Version: 0x004, DeviceID: 0x008, Status: 0x070 };
const magic = mmioRead(DEVICE_BASE + R.Magic, 4);
const version = mmioRead(DEVICE_BASE + R.Version, 4);
const deviceId = mmioRead(DEVICE_BASE + R.DeviceID, 4);
mmioWrite(DEVICE_BASE + R.Status, 4, 0); // reset
mmioWrite(DEVICE_BASE + R.Status, 4, 1); // ACKNOWLEDGE
mmioRead(DEVICE_BASE + R.Status, 2); // a 16-bit access to a control register: a counted guest error
console.log(
  `magic 0x${magic.toString(16)} version ${version} device ${deviceId} status ${mmioRead(DEVICE_BASE + R.Status, 4)}`,
);
console.log(`guest errors: ${transport.guestErrors}`);
for (const line of log) console.log(line);
