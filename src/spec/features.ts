/**
 * Feature bit numbers: the reserved (transport) bits of virtio 1.2+ section 6 "Reserved Feature
 * Bits", and the layout of the feature space as 32-bit words.
 *
 * @packageDocumentation
 */

/** Transport and ring feature bits (virtio 1.2+, section 6). Values are bit numbers. */
export const FeatureBit = {
  /** Legacy only: notify when the available ring runs empty. */
  NOTIFY_ON_EMPTY: 24,
  /** Legacy only: the device accepts arbitrary descriptor layouts. */
  ANY_LAYOUT: 27,
  /** 2.7.5.3: the driver may use indirect descriptor tables. */
  INDIRECT_DESC: 28,
  /** 2.7.7/2.7.10: used_event and avail_event notification suppression. */
  EVENT_IDX: 29,
  /** Compliance with virtio 1.0 or later; modern MMIO devices must offer it (4.2.3.1.1). */
  VERSION_1: 32,
  /** The device is behind a platform IOMMU / access restrictions. */
  ACCESS_PLATFORM: 33,
  /** Packed virtqueue layout. */
  RING_PACKED: 34,
  /** Buffers are used in the order they are made available. */
  IN_ORDER: 35,
  /** Memory accesses are ordered as the platform orders them. */
  ORDER_PLATFORM: 36,
  /** PCI single-root I/O virtualization. */
  SR_IOV: 37,
  /** Available buffer notifications carry extra data (4.2.3.3 for MMIO). */
  NOTIFICATION_DATA: 38,
  /** The driver sends a device-provided value instead of the queue index (virtio 1.2). */
  NOTIF_CONFIG_DATA: 39,
  /** Individual virtqueues can be reset (virtio 1.2; MMIO QueueReset register). */
  RING_RESET: 40,
  /** Administration virtqueue (virtio 1.3; reserved for future use over MMIO). */
  ADMIN_VQ: 41,
  /** Device suspend (virtio 1.4). */
  SUSPEND: 43,
} as const;

/**
 * Number of 32-bit feature words this implementation models (bits 0..127). The spec places
 * device-type bits up to 127; selectors past the last word read as zero.
 */
export const FEATURE_WORDS = 4;

/** First and last transport bits in virtio 1.2 (section 6: "24 to 40"). */
export const TRANSPORT_FEATURE_FIRST = 24;

/** Last transport feature bit in virtio 1.2, inclusive. */
export const TRANSPORT_FEATURE_LAST = 40;
