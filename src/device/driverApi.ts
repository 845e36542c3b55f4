/**
 * The guest side: the transport-neutral interface a guest device driver (rng, blk, ...) sees, in
 * the spirit of Linux's `virtio_config_ops`, plus the generic initialization sequence of 3.1.1
 * "Driver Requirements: Device Initialization" that the virtio core runs for every driver.
 *
 * Guest device drivers import only this module and the virtqueue's {@link DriverQueue}; they never
 * see MMIO registers, interrupt lines or MSI vectors.
 *
 * @packageDocumentation
 */

import type { GuestAllocator, GuestMemory } from '../memory/index.js';
import { DeviceStatus, FeatureBit, VirtioError } from '../spec/index.js';
import type { DriverQueue } from '../virtqueue/index.js';
import type { Features } from './features.js';

/** What the guest platform (CPU and interrupt plumbing) offers drivers. */
export interface GuestPlatform {
  /**
   * Waits until an interrupt arrives and runs its handler (x86 `sti; hlt`). Must not return
   * without having run at least one handler, or without progress the caller can observe.
   * @throws VirtioError `TIMEOUT` when no interrupt can ever arrive (the guest would hang)
   */
  halt(): void;
}

/** A queue a driver asks for in {@link VirtioTransportDriver.setupQueues}. */
export interface QueueRequest {
  /** Queue number. */
  readonly index: number;
  /**
   * Called from the interrupt handler when the device used buffers in this queue; null for a queue
   * whose completions the driver polls (the transport may then route no interrupt to it).
   */
  readonly callback: (() => void) | null;
  /** Queue size wanted; defaults to the device maximum (capped by the transport). */
  readonly size?: number;
  /**
   * The queue is serviced on another CPU, which allocated an interrupt vector there and handles
   * it: a transport that gives each queue its own message-signalled vector programs this message
   * for the queue instead of a vector of the probing CPU (Linux: the affinity of a per-queue MSI-X
   * vector). Under shared routing (one vector or one line for every queue) `callback` still runs
   * on the probing CPU and forwards the work.
   */
  readonly msiMessage?: MsiMessageData;
}

/** An MSI message as plain data (the transport's MsiMessage has the same shape). */
export interface MsiMessageData {
  /** Message address, low 32 bits. */
  readonly addressLow: number;
  /** Message address, high 32 bits. */
  readonly addressHigh: number;
  /** Message data. */
  readonly data: number;
}

/**
 * Where an available buffer notification for one queue goes, for code that notifies a queue
 * set up by another CPU: a 32-bit write at `offset` of the device's register window, whose value
 * is the queue index, or with `withData` (VIRTIO_F_NOTIFICATION_DATA) the index in bits 0..15 and
 * the next available index in bits 16..31 (4.2.3.3).
 */
export interface NotifyLocation {
  /** Window offset of the write. */
  readonly offset: number;
  /** The value carries notification data. */
  readonly withData: boolean;
}

/**
 * The transport, as a guest device driver sees it. Implemented by the MMIO guest driver; the same
 * device drivers would run over any other transport implementing it.
 */
export interface VirtioTransportDriver {
  /** Virtio device type. */
  readonly deviceId: number;
  /** Guest memory as the guest sees it. */
  readonly mem: GuestMemory;
  /** Allocator for buffers the device reads and writes (DMA memory). */
  readonly dma: GuestAllocator;
  /** The guest platform, for waiting on interrupts. */
  readonly platform: GuestPlatform;
  /** How interrupts reach this driver (e.g. `line`), for reports. */
  readonly interruptMode: string;
  /** Reads the device status. */
  getStatus(): number;
  /** Writes the device status (never 0: use {@link VirtioTransportDriver.reset}). */
  setStatus(status: number): void;
  /** Resets the device and waits until it reads back 0 (4.2.3.1). */
  reset(): void;
  /** The features the device offers. */
  getFeatures(): Features;
  /**
   * Writes the features the driver accepts. The transport keeps only the transport bits it
   * implements (like Linux `vring_transport_features`) and refuses a modern device without
   * VIRTIO_F_VERSION_1. Returns what was written.
   */
  finalizeFeatures(accepted: Features): Features;
  /** The negotiated features (valid after {@link VirtioTransportDriver.finalizeFeatures}). */
  readonly features: Features;
  /**
   * Sets up the requested queues and their interrupt routing (Linux `find_vqs`). All or nothing: on
   * failure everything set up so far is released and the error is thrown.
   */
  setupQueues(requests: readonly QueueRequest[]): DriverQueue[];
  /** Releases every queue and its interrupt routing (the device must be reset first). */
  deleteQueues(): void;
  /** Sends an available buffer notification for `queue`. */
  notify(queue: DriverQueue): void;
  /**
   * Where notifications of queue `index` (set up here) go, for a queue handed to another CPU.
   * @throws VirtioError `INVALID_ARGUMENT` for a queue not set up
   */
  notifyLocation(index: number): NotifyLocation;
  /** Reads device configuration space. */
  readConfig(offset: number, width: 1 | 2 | 4): number;
  /** Writes device configuration space. */
  writeConfig(offset: number, width: 1 | 2 | 4, value: number): void;
  /** The configuration generation (4.2.2 ConfigGeneration; legacy devices return 0). */
  configGeneration(): number;
  /** Registers the configuration change handler (called from the interrupt handler). */
  onConfigChange(handler: () => void): void;
}

/**
 * The value of an available buffer notification for queue `index` (4.2.3.3): the index, or with
 * VIRTIO_F_NOTIFICATION_DATA the index in bits 0..15 and, for a split ring, the next available
 * index in bits 16..31 (next_off = its 15 low bits, next_wrap = bit 15). Allocation-free.
 */
export function notificationValue(index: number, availIndex: number, withData: boolean): number {
  return withData ? ((index & 0xffff) | ((availIndex & 0xffff) << 16)) >>> 0 : index;
}

/** Bound on retries of a configuration read racing device changes (2.4.1). */
const CONFIG_READ_RETRIES = 100;

/**
 * Reads configuration fields consistently (2.4.1: "Drivers MUST NOT assume reads from fields
 * greater than 32 bits wide are atomic, nor are reads from multiple fields: drivers SHOULD read
 * device configuration space fields like so: ... while (before != after)").
 * @throws VirtioError `DEVICE_FAILED` when the generation keeps changing (a broken device)
 */
export function readConfigConsistent<R>(t: VirtioTransportDriver, read: () => R): R {
  for (let i = 0; i < CONFIG_READ_RETRIES; i++) {
    const before = t.configGeneration();
    const value = read();
    if (t.configGeneration() === before) return value;
  }
  throw new VirtioError(
    'DEVICE_FAILED',
    `configuration generation never settled after ${CONFIG_READ_RETRIES} reads`,
  );
}

/** Reads a 64-bit configuration field as two 32-bit halves under the generation check. */
export function readConfig64(t: VirtioTransportDriver, offset: number): number {
  return readConfigConsistent(t, () => t.readConfig(offset + 4, 4) * 2 ** 32 + t.readConfig(offset, 4));
}

/**
 * The generic initialization of 3.1.1, steps 1 to 6: reset, ACKNOWLEDGE, DRIVER, negotiate
 * features (the device's offer intersected with `wanted`), FEATURES_OK and the check that the
 * device kept it. Returns the negotiated features. The driver then sets up its queues and calls
 * {@link finishInit}.
 * @throws VirtioError `FEATURES_REJECTED` when the device clears FEATURES_OK (the device is then
 *   marked FAILED)
 */
export function beginInit(t: VirtioTransportDriver, wanted: Features): Features {
  t.reset();
  t.setStatus(DeviceStatus.ACKNOWLEDGE);
  t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  const offered = t.getFeatures();
  const accepted = t.finalizeFeatures(offered.and(wanted));
  // Legacy devices have no FEATURES_OK (3.1.2): negotiation ends with the write of the features.
  if (!accepted.has(FeatureBit.VERSION_1)) return accepted;
  t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  // 3.1.1 step 6: "Re-read device status to ensure the FEATURES_OK bit is still set".
  if ((t.getStatus() & DeviceStatus.FEATURES_OK) === 0) {
    t.setStatus(t.getStatus() | DeviceStatus.FAILED);
    throw new VirtioError('FEATURES_REJECTED', `device refused features ${accepted.toString()}`);
  }
  return accepted;
}

/** 3.1.1 step 8: sets DRIVER_OK; the device is live. */
export function finishInit(t: VirtioTransportDriver): void {
  t.setStatus(t.getStatus() | DeviceStatus.DRIVER_OK);
}

/** Marks the device FAILED (3.1.1: "If any of these steps go irrecoverably wrong"). */
export function failDevice(t: VirtioTransportDriver): void {
  t.setStatus(t.getStatus() | DeviceStatus.FAILED);
}

/** Upper bound of halts a driver waits for one completion before declaring the device dead. */
export const MAX_HALTS_PER_WAIT = 10_000;

/**
 * Halts until `done()` holds. Each halt runs at least one interrupt handler.
 * @throws VirtioError `TIMEOUT` after {@link MAX_HALTS_PER_WAIT} interrupts without completion
 */
export function waitUntil(platform: GuestPlatform, done: () => boolean, what: string): void {
  for (let i = 0; i < MAX_HALTS_PER_WAIT; i++) {
    if (done()) return;
    platform.halt();
  }
  if (done()) return;
  throw new VirtioError('TIMEOUT', `${what}: no completion after ${MAX_HALTS_PER_WAIT} interrupts`);
}

/**
 * Unbinds a driver from its device (Linux `remove` + `del_vqs`): resets the device, releases the
 * queues, then runs `release` for the driver's own buffers — each step even when an earlier one
 * threw, so nothing leaks from a misbehaving device. The first error is rethrown.
 */
export function removeDevice(t: VirtioTransportDriver, release: () => void): void {
  try {
    t.reset();
  } finally {
    try {
      t.deleteQueues();
    } finally {
      release();
    }
  }
}

/**
 * Gives up on a device after a failed probe (3.1.1: "the driver SHOULD set the FAILED status
 * bit"): marks it FAILED, releases the queues, then runs `release` for the driver's buffers. Never
 * throws, so the error that made the driver give up is the one its caller sees.
 */
export function abandonDevice(t: VirtioTransportDriver, release: () => void): void {
  try {
    failDevice(t);
  } catch {
    // The device is being given up on; the original error is the one to report.
  }
  try {
    t.deleteQueues();
  } catch {
    // Same: keep the original error.
  }
  release();
}
