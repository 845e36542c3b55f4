/**
 * The virtio-mmio register layout (virtio 1.2+, section 4.2.2 "MMIO Device Register Layout"),
 * the legacy (Version 1) additions (section 4.2.4 "Legacy interface"), and the interrupt status
 * bits. Constants only: no logic lives in `spec`.
 *
 * All control registers are 32 bits wide, little-endian, and accessed with 32-bit aligned
 * accesses only (4.2.2.2: "The driver MUST only use 32 bit wide and aligned reads and writes to
 * access the control registers"). Device-specific configuration starts at {@link MmioReg.Config}
 * and takes 8, 16 and 32-bit accesses.
 *
 * @packageDocumentation
 */

/** "virt" in little-endian: the value of the MagicValue register (4.2.2). */
export const MMIO_MAGIC_VALUE = 0x74726976;

/** The Version register of a modern (virtio 1.0+) device (4.2.2). */
export const MMIO_VERSION_MODERN = 2;

/** The Version register of a legacy device (4.2.4). */
export const MMIO_VERSION_LEGACY = 1;

/**
 * Register offsets of the standard (Version 2) layout, named as the spec names them.
 * Directions (R / W / RW) are given per register.
 */
export const MmioReg = {
  /** R: 0x74726976. */
  MagicValue: 0x000,
  /** R: 2 (modern) or 1 (legacy). */
  Version: 0x004,
  /** R: the virtio device type; 0 means a placeholder with no device. */
  DeviceID: 0x008,
  /** R: subsystem vendor ID. */
  VendorID: 0x00c,
  /** R: 32 feature bits selected by DeviceFeaturesSel (legacy: HostFeatures). */
  DeviceFeatures: 0x010,
  /** W: selects which 32-bit word of the device features DeviceFeatures shows. */
  DeviceFeaturesSel: 0x014,
  /** W: 32 feature bits accepted by the driver, word selected by DriverFeaturesSel. */
  DriverFeatures: 0x020,
  /** W: selects which 32-bit word DriverFeatures writes. */
  DriverFeaturesSel: 0x024,
  /** W: selects the virtqueue that the Queue* registers address. */
  QueueSel: 0x030,
  /** R: maximum queue size of the selected queue; 0 means the queue is not available. */
  QueueNumMax: 0x034,
  /** W: queue size the driver will use. */
  QueueNum: 0x038,
  /** RW: writing 1 makes the queue live; reading tells whether it is. */
  QueueReady: 0x044,
  /** W: available buffer notification; value is the queue index, or notification data. */
  QueueNotify: 0x050,
  /** R: bit 0 used buffer notification, bit 1 configuration change. */
  InterruptStatus: 0x060,
  /** W: clears the interrupt status bits written as 1. */
  InterruptACK: 0x064,
  /** RW: device status; writing 0 resets the device. */
  Status: 0x070,
  /** W: low 32 bits of the Descriptor Area address. */
  QueueDescLow: 0x080,
  /** W: high 32 bits of the Descriptor Area address. */
  QueueDescHigh: 0x084,
  /** W: low 32 bits of the Driver Area (available ring) address. */
  QueueDriverLow: 0x090,
  /** W: high 32 bits of the Driver Area address. */
  QueueDriverHigh: 0x094,
  /** W: low 32 bits of the Device Area (used ring) address. */
  QueueDeviceLow: 0x0a0,
  /** W: high 32 bits of the Device Area address. */
  QueueDeviceHigh: 0x0a4,
  /** W: selects a shared memory region (virtio 1.2). */
  SHMSel: 0x0ac,
  /** R: low 32 bits of the selected region's length; all ones when there is none. */
  SHMLenLow: 0x0b0,
  /** R: high 32 bits of the selected region's length. */
  SHMLenHigh: 0x0b4,
  /** R: low 32 bits of the selected region's base; all ones when there is none. */
  SHMBaseLow: 0x0b8,
  /** R: high 32 bits of the selected region's base. */
  SHMBaseHigh: 0x0bc,
  /** RW: writing 1 resets the selected queue (needs VIRTIO_F_RING_RESET, virtio 1.2). */
  QueueReset: 0x0c0,
  /** R: changes whenever the device configuration space may have changed. */
  ConfigGeneration: 0x0fc,
  /** RW: first byte of the device-specific configuration space. */
  Config: 0x100,
} as const;

/** Legacy (Version 1) registers that do not exist in the modern layout (4.2.4). */
export const MmioLegacyReg = {
  /** W: the guest page size in bytes, used to turn QueuePFN into an address. */
  GuestPageSize: 0x028,
  /** W: used ring alignment in bytes (a power of two). */
  QueueAlign: 0x03c,
  /** RW: guest physical page number of the queue; 0 stops using the queue. */
  QueuePFN: 0x040,
} as const;

/** Size of the register window QEMU and crosvm give each device, and our default. */
export const MMIO_DEFAULT_WINDOW_SIZE = 0x200;

/** Bits of InterruptStatus / InterruptACK (4.2.2). */
export const InterruptBit = {
  /** The device used a buffer in at least one of the active virtqueues. */
  VRING: 1 << 0,
  /** The configuration of the device has changed. */
  CONFIG: 1 << 1,
} as const;

/** Value of QueueReset while a queue reset is in progress and after a write of 1 (4.2.2). */
export const QUEUE_RESET_IN_PROGRESS = 1;
