/**
 * Device status field bits (virtio 1.2+, section 2.1 "Device Status Field").
 *
 * @packageDocumentation
 */

/** Bits of the device status field, written by the driver through the Status register. */
export const DeviceStatus = {
  /** The guest OS has found the device and recognized it as a valid virtio device. */
  ACKNOWLEDGE: 1,
  /** The guest OS knows how to drive the device. */
  DRIVER: 2,
  /** The driver is set up and ready to drive the device. */
  DRIVER_OK: 4,
  /** The driver has acknowledged all the features it understands; negotiation is complete. */
  FEATURES_OK: 8,
  /** The device has experienced an error from which it cannot recover (set by the device). */
  DEVICE_NEEDS_RESET: 64,
  /** Something went wrong in the guest and it has given up on the device. */
  FAILED: 128,
} as const;

/** The status value after reset (2.1: "zero ... indicates a reset"). */
export const STATUS_RESET = 0;
