/**
 * An embeddable machine in one process: guest RAM, an MMIO bus, an interrupt controller with level
 * lines, an in-process guest CPU, and virtio-mmio devices placed on the bus, each with its own
 * wired line. Guest drivers run synchronously against it: an MMIO access is a function call, an
 * interrupt is taken when the guest halts.
 *
 * The layout follows QEMU's microvm machine: device windows of 0x200 bytes from `mmioBase`, lines
 * from `firstLine` on.
 *
 * @packageDocumentation
 */

import type { VirtioDevice } from '../device/index.js';
import { GuestAllocator, RamMemory } from '../memory/index.js';
import { hex, MMIO_DEFAULT_WINDOW_SIZE, VirtioError } from '../spec/index.js';
import { MmioDriver, MmioTransport, type MmioTransportOptions } from '../transport/index.js';
import { MmioBus } from './bus.js';
import { InProcessCpu } from './cpu.js';
import { InterruptController } from './irq.js';

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
}

/** Options of {@link Machine.addDevice}: transport options minus what the machine supplies. */
export interface AddDeviceOptions extends Omit<MmioTransportOptions, 'mem' | 'irq' | 'onGuestError'> {
  /** Name on the bus (default `<type><n>`). */
  name?: string;
}

/** A device placed on the machine. */
export interface DeviceSlot {
  /** Name on the bus. */
  readonly name: string;
  /** Guest physical address of the register window. */
  readonly base: number;
  /** Wired interrupt line. */
  readonly line: number;
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
  /** The guest CPU: takes interrupts when the guest halts. */
  readonly cpu: InProcessCpu;
  /** The guest's DMA allocator, for rings and buffers. */
  readonly dma: GuestAllocator;
  private readonly slots: DeviceSlot[] = [];
  private readonly mmioBase: number;
  private readonly firstLine: number;
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
    this.cpu = new InProcessCpu(this.irq);
    this.mmioBase = options.mmioBase ?? 0xfeb0_0000;
    this.firstLine = options.firstLine ?? 5;
    this.onGuestError = options.onGuestError;
  }

  /** The devices placed so far, in order. */
  get devices(): readonly DeviceSlot[] {
    return this.slots;
  }

  /**
   * Places `device` behind a new MMIO transport, on the next window and the next line.
   * @throws VirtioError `INVALID_ARGUMENT` for a duplicate name, `IRQ_INVALID_LINE` when lines run out
   */
  addDevice(device: VirtioDevice, options: AddDeviceOptions = {}): DeviceSlot {
    const index = this.slots.length;
    const name = options.name ?? `${DEVICE_NAMES[device.deviceId] ?? 'dev'}${index}`;
    if (this.slots.some((s) => s.name === name)) {
      throw new VirtioError('INVALID_ARGUMENT', `a device named ${name} already exists`);
    }
    const line = this.firstLine + index;
    const irqLine = this.irq.line(line);
    const { name: _ignored, ...transportOptions } = options;
    const onGuestError = this.onGuestError;
    const transport = new MmioTransport(device, {
      ...transportOptions,
      mem: this.mem,
      irq: irqLine,
      onGuestError: onGuestError === undefined ? undefined : (message) => onGuestError(name, message),
    });
    const base = this.nextBase(transport.windowSize);
    this.bus.map(base, transport, name);
    const slot: DeviceSlot = { name, base, line, transport, device };
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
  probe(name: string): MmioDriver | null {
    const s = this.slot(name);
    return MmioDriver.probe(this.bus.window(name), {
      mem: this.mem,
      dma: this.dma,
      platform: this.cpu,
      irqLines: [s.line],
      name,
    });
  }
}
