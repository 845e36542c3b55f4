/**
 * An embeddable machine in one process: guest RAM, an MMIO bus, an interrupt controller with level
 * lines, an in-process guest CPU, and virtio-mmio devices placed on the bus, each with its own
 * wired line. Guest drivers run synchronously against it: an MMIO access is a function call, an
 * interrupt is taken when the guest halts.
 *
 * The layout follows QEMU's microvm machine: device windows of 0x200 bytes from `mmioBase`, lines
 * from `firstLine` on. A device may get extra wired lines (the 2014 multi-IRQ RFC) and the seed
 * profile's MSI, whose messages go to the machine's {@link MsiController} (CPU 0 is APIC ID 0).
 *
 * The machine's description of a device, what the guest learns as Linux does from the device tree
 * or the command line (`platform_get_irq(i)`), is {@link DeviceSlot.irqLines}:
 *
 * ```
 * irqLines[0]       the standard line (combined output: every event)     always
 * irqLines[1]       the configuration change line                          lines: 'per-queue' | 'shared'
 * irqLines[2 + i]   queue i's line                                         lines: 'per-queue'
 * irqLines[2]       the line of every queue                                lines: 'shared'
 * ```
 *
 * @packageDocumentation
 */

import type { VirtioDevice } from '../device/index.js';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { hex, MMIO_DEFAULT_WINDOW_SIZE, VirtioError } from '../spec/index.js';
import {
  type DriverInterruptOptions,
  MmioDriver,
  MmioTransport,
  type MmioTransportOptions,
} from '../transport/index.js';
import { MmioBus } from './bus.js';
import { InProcessCpu, type InProcessCpuOptions } from './cpu.js';
import { InterruptController } from './irq.js';
import { allocateDeviceLines, type LineLayout } from './lines.js';
import { MsiController } from './msi.js';

/** Options of a {@link Machine}. */
export interface MachineOptions {
  /** Guest RAM in bytes (default 64 MiB). */
  ramSize?: number;
  /** Back RAM with a SharedArrayBuffer (default false). */
  shared?: boolean;
  /** Guest physical address of the first device window (default 0xfeb00000, as QEMU microvm). */
  mmioBase?: number;
  /** Number of interrupt lines (default 24, as an IOAPIC). */
  lines?: number;
  /** First line given to a device (default 5, as QEMU microvm). */
  firstLine?: number;
  /** Bytes at the bottom of RAM left out of the guest's DMA allocator (default 1 MiB). */
  reservedLow?: number;
  /** Called for every guest error any device's transport reports, with the device name. */
  onGuestError?: (device: string, message: string) => void;
  /** Options of the guest CPU (MSI vector cap, no-MSI CPU, APIC id). */
  cpu?: InProcessCpuOptions;
}

/**
 * Options of {@link Machine.addDevice}: transport options minus what the machine supplies (RAM, the
 * lines, the MSI sink, the error callback). `seed.msi` is wired to {@link Machine.msi}.
 */
export interface AddDeviceOptions
  extends Omit<MmioTransportOptions, 'mem' | 'irq' | 'onGuestError' | 'lines' | 'msiSink'> {
  /** Name on the bus (default `<type><n>`). */
  name?: string;
  /**
   * Wired lines: 'single' (default, the standard line only), 'per-queue' (plus a configuration line
   * and one line per queue) or 'shared' (plus a configuration line and one line for all queues).
   */
  lines?: LineLayout;
}

/** Options of {@link Machine.probe}: what the guest driver is built to use. */
export interface ProbeOptions {
  /**
   * Whether the guest driver knows the seed profile (takes bits 39/40 as MMIO_NOTIFICATION/MMIO_MSI).
   * Default: whether the device was placed with a seed profile, as a guest built for that machine.
   */
  seed?: boolean;
  /** Interrupt modes the driver's cascade may use (default: all). */
  interrupts?: DriverInterruptOptions;
}

/** A device placed on the machine. */
export interface DeviceSlot {
  /** Name on the bus. */
  readonly name: string;
  /** Guest physical address of the register window. */
  readonly base: number;
  /** The standard wired interrupt line (`irqLines[0]`). */
  readonly line: number;
  /** Every wired line of the device, in the machine-description order above. */
  readonly irqLines: readonly number[];
  /** How the lines are laid out. */
  readonly lineLayout: LineLayout;
  /** The device-side transport. */
  readonly transport: MmioTransport;
  /** The device model. */
  readonly device: VirtioDevice;
}

const DEVICE_NAMES: Record<number, string> = { 1: 'net', 2: 'blk', 3: 'console', 4: 'rng' };

/** A single-process virtio-mmio machine: RAM, bus, interrupt controller, CPU and devices. */
export class Machine {
  /** Guest RAM. */
  readonly mem: RamMemory;
  /** The MMIO bus (counts every trapped access per device and register). */
  readonly bus: MmioBus;
  /** The interrupt controller (level lines, EOI). */
  readonly irq: InterruptController;
  /** The MSI controller (x86 address/data decoding); the CPU is APIC ID 0. */
  readonly msi: MsiController;
  /** The guest CPU: takes interrupts when the guest halts. */
  readonly cpu: InProcessCpu;
  /** The guest's DMA allocator, for rings and buffers. */
  readonly dma: GuestAllocator;
  private readonly slots: DeviceSlot[] = [];
  private readonly mmioBase: number;
  private nextLine: number;
  private readonly onGuestError: ((device: string, message: string) => void) | undefined;

  /** @throws VirtioError `INVALID_ARGUMENT` for a RAM size below 2 MiB or past 2 GiB */
  constructor(options: MachineOptions = {}) {
    const ramSize = options.ramSize ?? 64 << 20;
    if (!Number.isSafeInteger(ramSize) || ramSize < 2 << 20 || ramSize > 2 ** 31) {
      throw new VirtioError('INVALID_ARGUMENT', `ram size ${String(ramSize)} outside 2 MiB..2 GiB`);
    }
    const buffer = options.shared ? new SharedArrayBuffer(ramSize) : new ArrayBuffer(ramSize);
    this.mem = new RamMemory(buffer);
    const reserved = options.reservedLow ?? 1 << 20;
    this.dma = new GuestAllocator(reserved, ramSize - reserved);
    this.bus = new MmioBus();
    this.irq = new InterruptController({ lines: options.lines ?? 24 });
    this.cpu = new InProcessCpu(this.irq, options.cpu);
    this.msi = new MsiController([[0, this.cpu]]);
    this.mmioBase = options.mmioBase ?? 0xfeb0_0000;
    this.nextLine = options.firstLine ?? 5;
    this.onGuestError = options.onGuestError;
  }

  /** The devices placed so far, in order. */
  get devices(): readonly DeviceSlot[] {
    return this.slots;
  }

  /**
   * Places `device` behind a new MMIO transport, on the next window and the next free line(s).
   * @throws VirtioError `INVALID_ARGUMENT` for a duplicate name, an unknown line layout or invalid
   *   transport options, `IRQ_INVALID_LINE` when lines run out (nothing is placed then)
   */
  addDevice(device: VirtioDevice, options: AddDeviceOptions = {}): DeviceSlot {
    const index = this.slots.length;
    const name = options.name ?? `${DEVICE_NAMES[device.deviceId] ?? 'dev'}${index}`;
    if (this.slots.some((s) => s.name === name)) {
      throw new VirtioError('INVALID_ARGUMENT', `a device named ${name} already exists`);
    }
    const layout = options.lines ?? 'single';
    const line = this.nextLine;
    const { irqLines, standard, lines } = allocateDeviceLines(
      this.irq,
      line,
      layout,
      device.queueMaxSizes.length,
    );
    const count = irqLines.length;
    const { name: _ignored, lines: _layout, ...transportOptions } = options;
    const onGuestError = this.onGuestError;
    const transport = new MmioTransport(device, {
      ...transportOptions,
      mem: this.mem,
      irq: standard,
      lines,
      msiSink: options.seed?.msi === undefined ? undefined : this.msi,
      onGuestError: onGuestError === undefined ? undefined : (message) => onGuestError(name, message),
    });
    const base = this.nextBase(transport.windowSize);
    this.bus.map(base, transport, name);
    this.nextLine = line + count;
    const slot: DeviceSlot = { name, base, line, irqLines, lineLayout: layout, transport, device };
    this.slots.push(slot);
    return slot;
  }

  /** The next free window base, aligned to the default window size. */
  private nextBase(size: number): number {
    let base = this.mmioBase;
    for (const s of this.slots) base = Math.max(base, s.base + s.transport.windowSize);
    const step = MMIO_DEFAULT_WINDOW_SIZE;
    base = Math.ceil(base / step) * step;
    if (!Number.isSafeInteger(base + size)) {
      throw new VirtioError('BUS_INVALID_RANGE', `no room for a window of ${hex(size)}`);
    }
    return base;
  }

  /** The slot named `name`. @throws VirtioError `DEVICE_NOT_FOUND` */
  slot(name: string): DeviceSlot {
    const s = this.slots.find((x) => x.name === name);
    if (s === undefined) throw new VirtioError('DEVICE_NOT_FOUND', `no device named ${name}`);
    return s;
  }

  /**
   * Guest side: probes the device `name` with the MMIO driver, as the guest kernel would after
   * reading the machine's description (window base and line). Returns null for DeviceID 0.
   */
  probe(name: string, options: ProbeOptions = {}): MmioDriver | null {
    const s = this.slot(name);
    return MmioDriver.probe(this.bus.window(name), {
      mem: this.mem,
      dma: this.dma,
      platform: this.cpu,
      irqLines: s.irqLines,
      name,
      seed: options.seed ?? s.transport.seedProfile,
      interrupts: options.interrupts,
    });
  }
}
