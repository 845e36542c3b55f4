/**
 * The device interface: what a device model (rng, blk, net, console) gives a transport, and what
 * the transport gives it back once the driver sets DRIVER_OK.
 *
 * Kept small on purpose (type, features, queue sizes, config space, activate, notify, reset): the
 * transport owns the register file, the status machine and the queues' configuration; the device
 * owns its feature bits, its configuration bytes and the work behind each queue. A device never
 * learns which transport or interrupt mechanism it sits behind.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../memory/index.js';
import type { DeviceQueue, QueueError } from '../virtqueue/index.js';
import type { Features } from './features.js';

/**
 * What the transport hands a device when the driver sets DRIVER_OK (cloud-hypervisor's
 * ActivationContext). Valid until the device is reset.
 */
export interface DeviceContext {
  /** Guest RAM, where the rings and buffers live. */
  readonly mem: GuestMemory;
  /** The device's queues, indexed by queue number; only those with `ready` set are live. */
  readonly queues: readonly DeviceQueue[];
  /** The features the driver accepted (FEATURES_OK). */
  readonly features: Features;
  /**
   * Sends a used buffer notification for queue `index` if the driver wants one: checks
   * {@link DeviceQueue.needsNotification} and, if true, signals the interrupt. Returns whether it did.
   */
  notifyUsed(index: number): boolean;
  /**
   * Reports ring corruption on queue `index`: the transport sets DEVICE_NEEDS_RESET and sends a
   * configuration change notification (2.1.2). The queue stays stopped until the driver resets.
   */
  queueFailed(index: number, error: QueueError): void;
  /**
   * The device stopped serving queue `index` with buffers still available (work per notification
   * is bounded): the host delivers another notification for it later, as if the driver had
   * kicked. Needed because the device had already re-enabled notifications, so the driver, which
   * published those buffers before it saw that, will not kick for them (2.7.10). Optional: a host
   * that never serves a queue concurrently with its driver never sees a deferral.
   */
  defer?(index: number): void;
}

/**
 * What the transport offers a device from construction on, independent of the driver: the device
 * uses it to announce configuration changes made by the host (link down, disk resized).
 */
export interface DeviceHost {
  /**
   * The device changed its configuration space: the transport bumps ConfigGeneration and, once the
   * driver is up (DRIVER_OK), sends a configuration change notification (4.2.2, 2.5.1).
   */
  configChanged(): void;
}

/** A virtio device model. Every method called with guest-chosen values must not throw. */
export interface VirtioDevice {
  /** Virtio device type (DeviceId). */
  readonly deviceId: number;
  /** Maximum size of each queue, indexed by queue number (QueueNumMax); powers of two. */
  readonly queueMaxSizes: readonly number[];
  /** Device-specific feature bits offered (transport bits are added by the transport). */
  readonly features: Features;
  /** Size of the device-specific configuration space in bytes. */
  readonly configSize: number;

  /** Called once by the transport that wraps the device. */
  attach?(host: DeviceHost): void;
  /**
   * Checks the driver's accepted features at FEATURES_OK for device-specific dependencies (for
   * example a feature that requires another). Returns false to refuse FEATURES_OK (2.2.2).
   */
  validateFeatures?(accepted: Features): boolean;
  /**
   * Reads `width` (1, 2 or 4) bytes of configuration space at `offset`, little-endian. The
   * transport has checked `offset + width <= configSize`.
   */
  readConfig(offset: number, width: 1 | 2 | 4): number;
  /**
   * Writes configuration space (only some fields are writable; others are ignored). The transport
   * has checked the range. Returns false when the write was refused (a guest error to count).
   */
  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean;
  /** The driver set DRIVER_OK: start serving the queues in `ctx`. */
  activate(ctx: DeviceContext): void;
  /** Available buffer notification for queue `index` (after activation). */
  notify(index: number): void;
  /** Queue `index` was reset by the driver (VIRTIO_F_RING_RESET): drop its in-flight work. */
  resetQueue?(index: number): void;
  /** The device is being reset (status 0): drop the context and all in-flight work. */
  reset(): void;
}
