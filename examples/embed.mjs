// Embedding virtio-mmio in an emulator, without the rest of our machine.
//
// The "emulator" here is a stand-in for yours (v86, a RISC-V core in JS, ...): it owns its guest
// RAM as an ArrayBuffer, routes MMIO accesses in one address range to a handler, and has
// interrupt lines it raises and lowers. Those three connection points are all the library needs.
//
// Run: npm run build && node examples/embed.mjs
import {
  BlkDevice,
  BlkDriver,
  GuestAllocator,
  MemoryBlockBackend,
  MmioDriver,
  MmioReg,
  MmioTransport,
  RamMemory,
} from '../dist/index.js';

// ---- the emulator's side: what an emulator author writes ----------------------------------
const emulatorRam = new ArrayBuffer(16 << 20); // the emulator's own guest RAM
const DEVICE_BASE = 0xd000_0000;
const DEVICE_IRQ = 5;
const irqLevel = new Map(); // line -> asserted

// 1. Guest memory over the emulator's RAM (no copy: devices read and write it in place).
const mem = new RamMemory([{ gpa: 0, buffer: emulatorRam }]);

// 2. A device model behind an MMIO transport; the wired line comes back through a callback.
const disk = new MemoryBlockBackend(1 << 20);
const transport = new MmioTransport(new BlkDevice({ backend: disk, serial: 'example-disk' }), {
  mem,
  version: 2,
  irq: { setLevel: (asserted) => irqLevel.set(DEVICE_IRQ, asserted) },
  onGuestError: (message) => console.log(`  guest error: ${message}`),
});

// 3. Route the emulator's MMIO reads and writes for [DEVICE_BASE, DEVICE_BASE + windowSize).
const mmio = {
  read: (addr, width) => transport.read(addr - DEVICE_BASE, width),
  write: (addr, width, value) => transport.write(addr - DEVICE_BASE, width, value),
};

// ---- the guest's side ----------------------------------------------------------------------
// Normally the guest OS inside your emulator drives the device. Here our own guest driver plays
// that part, through the same three connection points: MMIO accesses, RAM, and the line.
const access = {
  read32: (off) => mmio.read(DEVICE_BASE + off, 4),
  write32: (off, v) => mmio.write(DEVICE_BASE + off, 4, v),
  read16: (off) => mmio.read(DEVICE_BASE + off, 2),
  write16: (off, v) => mmio.write(DEVICE_BASE + off, 2, v),
  read8: (off) => mmio.read(DEVICE_BASE + off, 1),
  write8: (off, v) => mmio.write(DEVICE_BASE + off, 1, v),
};
const handlers = new Map();
let interrupts = 0;
const platform = {
  requestIrq: (line, handler) => handlers.set(line, handler),
  freeIrq: (line) => handlers.delete(line),
  // The guest halts until an interrupt; our device completes synchronously, so the line is
  // already up when the driver halts.
  halt() {
    if (!irqLevel.get(DEVICE_IRQ)) throw new Error('guest would halt forever: no interrupt pending');
    interrupts++;
    handlers.get(DEVICE_IRQ)();
  },
};

console.log(`device window: magic 0x${mmio.read(DEVICE_BASE + MmioReg.MagicValue, 4).toString(16)}`);
const t = MmioDriver.probe(access, {
  mem,
  dma: new GuestAllocator(1 << 20, 15 << 20),
  platform,
  irqLines: [DEVICE_IRQ],
});
const blk = BlkDriver.probe(t);
console.log(`guest: blk with ${blk.capacity} sectors, serial "${blk.getId()}"`);
const data = new TextEncoder().encode('hello from the guest'.padEnd(512, '.'));
blk.write(0, data);
const back = new TextDecoder().decode(blk.read(0, 1)).slice(0, 20);
console.log(`guest: wrote sector 0 and read back "${back}"`);
console.log(`host: the backing store holds "${new TextDecoder().decode(disk.bytes.subarray(0, 20))}"`);
console.log(`interrupts taken: ${interrupts}; guest errors: ${transport.guestErrors}`);
blk.remove();
