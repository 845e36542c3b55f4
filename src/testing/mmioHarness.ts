/**
 * Register-level helpers for transport tests: 32-bit accesses by register name, a recording
 * interrupt line, and a harness that wraps a {@link DummyDevice} in an {@link MmioTransport} over
 * fresh RAM. The steps mirror the Linux driver (`vm_finalize_features`, `vm_setup_vq`), so tests
 * read as the driver protocol.
 *
 * ```
 * const h = createTransportHarness();
 * driveToFeaturesOk(h.t);
 * programQueue(h.t, 0, { size: 16, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 });
 * mmioWrite32(h.t, MmioReg.Status, mmioRead32(h.t, MmioReg.Status) | DeviceStatus.DRIVER_OK);
 * ```
 *
 * @packageDocumentation
 */

import { Features } from '../device/index.js';
import { RamMemory } from '../memory/index.js';
import { DeviceStatus, FEATURE_WORDS, MmioLegacyReg, MmioReg } from '../spec/index.js';
import {
  type InterruptLine,
  type MmioDevice,
  MmioTransport,
  type MmioTransportOptions,
} from '../transport/index.js';
import { DummyDevice, type DummyDeviceOptions } from './dummyDevice.js';

/** 32-bit read of a control register. */
export function mmioRead32(dev: MmioDevice, offset: number): number {
  return dev.read(offset, 4);
}

/** 32-bit write of a control register. */
export function mmioWrite32(dev: MmioDevice, offset: number, value: number): void {
  dev.write(offset, 4, value);
}

/** An {@link InterruptLine} that records every level change it is given. */
export class IrqRecorder implements InterruptLine {
  /** Current level. */
  level = false;
  /** Every setLevel argument, in order. */
  readonly calls: boolean[] = [];

  setLevel(asserted: boolean): void {
    this.calls.push(asserted);
    this.level = asserted;
  }
}

/** What {@link createTransportHarness} builds. */
export interface TransportHarness {
  /** The transport under test. */
  readonly t: MmioTransport;
  /** The device behind it. */
  readonly dev: DummyDevice;
  /** The recorded interrupt line. */
  readonly irq: IrqRecorder;
  /** Guest RAM (64 KiB by default). */
  readonly mem: RamMemory;
  /** Every guest error message, in order. */
  readonly errors: string[];
}

/** Options of {@link createTransportHarness}. */
export interface TransportHarnessOptions {
  /** Device options. */
  device?: DummyDeviceOptions;
  /** Transport options other than mem, irq and onGuestError. */
  transport?: Omit<Partial<MmioTransportOptions>, 'mem' | 'irq' | 'onGuestError'>;
  /** RAM size in bytes; default 64 KiB. */
  memSize?: number;
}

/** A {@link DummyDevice} behind an {@link MmioTransport} over fresh RAM, recording errors and levels. */
export function createTransportHarness(options: TransportHarnessOptions = {}): TransportHarness {
  const mem = new RamMemory(new ArrayBuffer(options.memSize ?? 0x1_0000));
  const irq = new IrqRecorder();
  const dev = new DummyDevice(options.device);
  const errors: string[] = [];
  const t = new MmioTransport(dev, {
    ...options.transport,
    mem,
    irq,
    onGuestError: (message) => errors.push(message),
  });
  return { t, dev, irq, mem, errors };
}

/** Writes every modelled word of `features` through DriverFeaturesSel / DriverFeatures. */
export function writeDriverFeatures(t: MmioDevice, features: Features): void {
  for (let sel = 0; sel < FEATURE_WORDS; sel++) {
    mmioWrite32(t, MmioReg.DriverFeaturesSel, sel);
    mmioWrite32(t, MmioReg.DriverFeatures, features.word(sel));
  }
}

/** Reads the offered features through DeviceFeaturesSel / DeviceFeatures. */
export function readDeviceFeatures(t: MmioDevice): Features {
  const words: number[] = [];
  for (let sel = 0; sel < FEATURE_WORDS; sel++) {
    mmioWrite32(t, MmioReg.DeviceFeaturesSel, sel);
    words.push(mmioRead32(t, MmioReg.DeviceFeatures));
  }
  return Features.fromWords(words);
}

/** Adds `bits` to the device status the way Linux `virtio_add_status` does (read, or, write). */
export function addStatus(t: MmioDevice, bits: number): void {
  mmioWrite32(t, MmioReg.Status, mmioRead32(t, MmioReg.Status) | bits);
}

/**
 * 3.1.1 steps 1-6 on a modern transport: reset, ACKNOWLEDGE, DRIVER, accept `features` (default:
 * everything offered), FEATURES_OK. Returns the status read back.
 */
export function driveToFeaturesOk(t: MmioDevice, features?: Features): number {
  mmioWrite32(t, MmioReg.Status, 0);
  addStatus(t, DeviceStatus.ACKNOWLEDGE);
  addStatus(t, DeviceStatus.DRIVER);
  writeDriverFeatures(t, features ?? readDeviceFeatures(t));
  addStatus(t, DeviceStatus.FEATURES_OK);
  return mmioRead32(t, MmioReg.Status);
}

/**
 * 3.1.2 on a legacy transport: reset, ACKNOWLEDGE, DRIVER, features written (default: everything
 * offered). DRIVER_OK is left to the caller.
 */
export function driveLegacyToDriver(t: MmioDevice, features?: Features): void {
  mmioWrite32(t, MmioReg.Status, 0);
  addStatus(t, DeviceStatus.ACKNOWLEDGE);
  addStatus(t, DeviceStatus.DRIVER);
  writeDriverFeatures(t, features ?? readDeviceFeatures(t));
}

/** A modern queue configuration. */
export interface QueueConfig {
  /** QueueNum. */
  size: number;
  /** Descriptor Area address. */
  descTable: number;
  /** Driver Area address. */
  availRing: number;
  /** Device Area address. */
  usedRing: number;
}

/** Writes a 64-bit address into a Low / High register pair. */
function write64(t: MmioDevice, low: number, high: number, value: number): void {
  mmioWrite32(t, low, value % 2 ** 32);
  mmioWrite32(t, high, Math.floor(value / 2 ** 32));
}

/**
 * 4.2.3.2 steps 1, 5, 6, 7 (Linux `vm_setup_vq`): QueueSel, QueueNum, the three address pairs,
 * QueueReady = 1. Returns QueueReady as read back.
 */
export function programQueue(t: MmioDevice, index: number, q: QueueConfig): number {
  mmioWrite32(t, MmioReg.QueueSel, index);
  mmioWrite32(t, MmioReg.QueueNum, q.size);
  write64(t, MmioReg.QueueDescLow, MmioReg.QueueDescHigh, q.descTable);
  write64(t, MmioReg.QueueDriverLow, MmioReg.QueueDriverHigh, q.availRing);
  write64(t, MmioReg.QueueDeviceLow, MmioReg.QueueDeviceHigh, q.usedRing);
  mmioWrite32(t, MmioReg.QueueReady, 1);
  return mmioRead32(t, MmioReg.QueueReady);
}

/**
 * 4.2.4 legacy queue setup: QueueSel, QueueNum, QueueAlign (when given), QueuePFN. Returns QueuePFN
 * as read back.
 */
export function programLegacyQueue(
  t: MmioDevice,
  index: number,
  q: { size: number; pfn: number; align?: number },
): number {
  mmioWrite32(t, MmioReg.QueueSel, index);
  mmioWrite32(t, MmioReg.QueueNum, q.size);
  if (q.align !== undefined) mmioWrite32(t, MmioLegacyReg.QueueAlign, q.align);
  mmioWrite32(t, MmioLegacyReg.QueuePFN, q.pfn);
  return mmioRead32(t, MmioLegacyReg.QueuePFN);
}
