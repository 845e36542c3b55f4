/**
 * The demo behind `npm run demo`: a machine with a virtio-rng and a file-backed virtio-blk, driven by
 * our guest drivers, Version 2 and Version 1 (legacy) side by side. It prints what happened: the
 * features negotiated, the requests, the interrupts and the trapped accesses, per device and register.
 *
 * @packageDocumentation
 */

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockBackend, nodeEntropy } from '../backend/index.js';
import { BlkDevice, BlkDriver, MemoryBlockBackend, RngDevice, RngDriver } from '../device/index.js';
import { type AddDeviceOptions, Machine } from '../platform/index.js';
import { BLK_SECTOR_SIZE, BlkFeature, DeviceId, FeatureBit, MmioLegacyReg, MmioReg } from '../spec/index.js';

/** Inverts a name → number table. */
function namesOf(table: Record<string, number>): Record<number, string> {
  return Object.fromEntries(Object.entries(table).map(([k, v]) => [v, k]));
}

const TRANSPORT_FEATURES = namesOf(FeatureBit);
const DEVICE_FEATURES: Record<number, Record<number, string>> = { [DeviceId.BLOCK]: namesOf(BlkFeature) };
const REGISTER_NAMES: Record<number, string> = { ...namesOf(MmioLegacyReg), ...namesOf(MmioReg) };

/** Feature bits by name: device-type bits by the device's names, transport bits by the spec's. */
function describeFeatures(deviceId: number, bits: number[]): string {
  const own = DEVICE_FEATURES[deviceId] ?? {};
  return bits.map((b) => (b < 24 ? own[b] : TRANSPORT_FEATURES[b]) ?? `bit${b}`).join(' ');
}

/** A register name, or `config+N` inside configuration space. */
function registerName(offset: number): string {
  return offset >= MmioReg.Config
    ? `config+${offset - MmioReg.Config}`
    : (REGISTER_NAMES[offset] ?? `0x${offset.toString(16)}`);
}

/** Runs the demo and returns its report as lines (the CLI prints them). */
export function runDemo(): string[] {
  const out: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'virtio-mmio-demo-'));
  try {
    for (const version of [2, 1] as const) {
      out.push(`== virtio-mmio Version ${version}${version === 1 ? ' (legacy)' : ''}`);
      const machine = new Machine({ ramSize: 16 << 20 });
      const diskPath = join(dir, `disk-v${version}.img`);
      const backend = FileBlockBackend.create(diskPath, 1 << 20);
      machine.addDevice(new RngDevice({ entropy: nodeEntropy }), { name: 'rng0', version });
      machine.addDevice(new BlkDevice({ backend, serial: `demo-disk-v${version}` }), {
        name: 'blk0',
        version,
      });

      const rngT = machine.probe('rng0');
      const blkT = machine.probe('blk0');
      if (rngT === null || blkT === null) throw new Error('probe found no device');
      const rng = RngDriver.probe(rngT);
      const blk = BlkDriver.probe(blkT);
      out.push(`rng0: negotiated ${describeFeatures(DeviceId.ENTROPY, rngT.features.bits())}`);
      out.push(`blk0: negotiated ${describeFeatures(DeviceId.BLOCK, blkT.features.bits())}`);
      out.push(`blk0: capacity ${blk.capacity} sectors, serial "${blk.getId()}"`);

      const entropy = rng.read(32);
      out.push(`rng0: read ${entropy.length} bytes of entropy: ${Buffer.from(entropy).toString('hex')}`);

      const pattern = new Uint8Array(64 * 1024);
      for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + version) & 0xff;
      blk.write(8, pattern);
      blk.flush();
      const back = blk.read(8, pattern.length / BLK_SECTOR_SIZE);
      const same = Buffer.compare(Buffer.from(back), Buffer.from(pattern)) === 0;
      const onDisk = readFileSync(diskPath).subarray(
        8 * BLK_SECTOR_SIZE,
        8 * BLK_SECTOR_SIZE + pattern.length,
      );
      const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex').slice(0, 16);
      out.push(
        `blk0: wrote 64 KiB at sector 8, flushed, read back: ${same ? 'identical' : 'DIFFERENT'}; ` +
          `sha256 guest ${sha(back)} file ${sha(onDisk)}`,
      );

      rng.remove();
      blk.remove();
      backend.close();

      for (const slot of machine.devices) {
        const st = machine.bus.deviceStats(slot.name);
        const line = machine.irq.lineStats(slot.line);
        const reg = (offset: number): { reads: number; writes: number } =>
          st.registers.find((r) => r.offset === offset) ?? { reads: 0, writes: 0 };
        out.push(
          `${slot.name}: ${st.reads + st.writes} trapped accesses (${st.reads} reads, ${st.writes} writes), ` +
            `${reg(MmioReg.QueueNotify).writes} notifications, ${line.deliveries} interrupts on line ${slot.line}, ` +
            `guest errors ${slot.transport.guestErrors}`,
        );
        out.push(
          `  interrupt path: ${reg(MmioReg.InterruptStatus).reads} InterruptStatus reads + ` +
            `${reg(MmioReg.InterruptACK).writes} InterruptACK writes + ${line.eois} EOIs ` +
            `for ${line.deliveries} interrupts (the three exits per interrupt the seeds remove with MSI)`,
        );
        const busiest = [...st.registers]
          .sort((a, b) => b.reads + b.writes - (a.reads + a.writes))
          .slice(0, 5)
          .map((r) => `${registerName(r.offset)} ${r.reads}r/${r.writes}w`);
        out.push(`  busiest registers: ${busiest.join(', ')}`);
      }
      out.push('');
    }
    out.push(...interruptModes());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

/** Device placements that make the driver's cascade stop at each interrupt mode. */
const MODE_SETUPS: ReadonlyArray<{ label: string; options: AddDeviceOptions; queues: number }> = [
  { label: 'standard single line', options: {}, queues: 1 },
  { label: 'config line + line per queue (2014 RFC)', options: { lines: 'per-queue' }, queues: 2 },
  { label: 'config line + shared queue line (2014 RFC)', options: { lines: 'shared' }, queues: 1 },
  {
    label: 'seed v2 MSI, vector per queue (non-standard, opt-in)',
    options: { seed: { msi: { vectors: 4, sharing: false } }, ringReset: false },
    queues: 1,
  },
  {
    label: 'seed v2 MSI, sharing mode (non-standard, opt-in)',
    options: { seed: { msi: { vectors: 2, sharing: true } }, ringReset: false },
    queues: 1,
  },
];

/**
 * The guest's cost of one used-buffer notification in each interrupt mode, counted (not timed):
 * the trapped accesses the interrupt handler makes, and the EOIs that reach the IO-APIC.
 */
function interruptModes(): string[] {
  const out = ['== interrupt delivery: what one 4 KiB blk read costs the guest, per mode the driver chose'];
  for (const setup of MODE_SETUPS) {
    const machine = new Machine({ ramSize: 8 << 20 });
    const slot = machine.addDevice(
      new BlkDevice({ backend: new MemoryBlockBackend(1 << 20), queueCount: setup.queues }),
      { name: 'blk0', ...setup.options },
    );
    const t = machine.probe('blk0');
    if (t === null) throw new Error('probe found no device');
    const blk = BlkDriver.probe(t);
    machine.bus.resetStats();
    machine.irq.resetStats();
    machine.cpu.resetStats();
    blk.read(0, 8);
    const lapicOnly = machine.cpu.stats().edgeEois;
    const reg = (offset: number) => machine.bus.registerStats('blk0', offset);
    const eois = slot.irqLines.reduce((n, l) => n + machine.irq.lineStats(l).eois, 0);
    const exits = reg(MmioReg.InterruptStatus).reads + reg(MmioReg.InterruptACK).writes + eois;
    out.push(
      `${setup.label.padEnd(54)} mode ${t.interruptMode.padEnd(16)} ` +
        `${reg(MmioReg.InterruptStatus).reads} status read, ${reg(MmioReg.InterruptACK).writes} ack, ` +
        `${eois} IO-APIC EOI = ${exits} trapped accesses per interrupt` +
        (lapicOnly > 0 ? ` (+${lapicOnly} LAPIC EOI, a trap only without APICv)` : ''),
    );
    blk.remove();
  }
  out.push('');
  return out;
}
