/**
 * Split virtqueue layout (virtio 1.2+, section 2.7 "Split Virtqueues").
 *
 * ```
 * Descriptor Table (16-byte aligned), one 16-byte entry per descriptor:
 *   le64 addr | le32 len | le16 flags | le16 next
 * Available Ring (2-byte aligned):
 *   le16 flags | le16 idx | le16 ring[size] | le16 used_event (EVENT_IDX)
 * Used Ring (4-byte aligned):
 *   le16 flags | le16 idx | { le32 id, le32 len } ring[size] | le16 avail_event (EVENT_IDX)
 * ```
 *
 * @packageDocumentation
 */

/** Descriptor flags (2.7.5). */
export const DescFlag = {
  /** The buffer continues via the `next` field. */
  NEXT: 1,
  /** The buffer is device write-only (otherwise device read-only). */
  WRITE: 2,
  /** The buffer holds a table of indirect descriptors (2.7.5.3). */
  INDIRECT: 4,
} as const;

/** Available ring flags (2.7.6). */
export const AvailFlag = {
  /** The driver does not want used buffer notifications (ignored with EVENT_IDX). */
  NO_INTERRUPT: 1,
} as const;

/** Used ring flags (2.7.8). */
export const UsedFlag = {
  /** The device does not want available buffer notifications (ignored with EVENT_IDX). */
  NO_NOTIFY: 1,
} as const;

/** Size of one descriptor table entry in bytes: addr (le64) + len (le32) + flags + next (le16). */
export const DESC_SIZE = 16;
/** Offset of `addr` within a descriptor. */
export const DESC_ADDR = 0;
/** Offset of `len` within a descriptor. */
export const DESC_LEN = 8;
/** Offset of `flags` within a descriptor. */
export const DESC_FLAGS = 12;
/** Offset of `next` within a descriptor. */
export const DESC_NEXT = 14;

/** Offset of `flags` in the available ring. */
export const AVAIL_FLAGS = 0;
/** Offset of `idx` in the available ring. */
export const AVAIL_IDX = 2;
/** Offset of `ring[0]` in the available ring; entries are le16. */
export const AVAIL_RING = 4;
/** Size of an available ring entry. */
export const AVAIL_ELEM_SIZE = 2;

/** Offset of `flags` in the used ring. */
export const USED_FLAGS = 0;
/** Offset of `idx` in the used ring. */
export const USED_IDX = 2;
/** Offset of `ring[0]` in the used ring; entries are { le32 id, le32 len }. */
export const USED_RING = 4;
/** Size of a used ring element: id (le32) + len (le32). */
export const USED_ELEM_SIZE = 8;

/** Alignment of the descriptor table (2.7: "Descriptor Table 16"). */
export const DESC_TABLE_ALIGN = 16;
/** Alignment of the available ring (2.7: "Available Ring 2"). */
export const AVAIL_RING_ALIGN = 2;
/** Alignment of the used ring (2.7: "Used Ring 4"). */
export const USED_RING_ALIGN = 4;

/** Largest queue size a split ring can have (2.7: "Queue Size ... maximum 32768"). */
export const MAX_QUEUE_SIZE = 32768;

/** Legacy layout: the used ring starts at the next QueueAlign boundary (2.7.2 legacy). */
export const LEGACY_DEFAULT_QUEUE_ALIGN = 4096;

/** Legacy layout: default guest page size used with QueuePFN. */
export const LEGACY_DEFAULT_PAGE_SIZE = 4096;

/**
 * Largest total length of one descriptor chain (2.7.5.2: "Drivers MUST NOT add a descriptor chain
 * longer than 2^32 bytes in total").
 */
export const MAX_CHAIN_BYTES = 2 ** 32;
