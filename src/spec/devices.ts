/**
 * Device type IDs (virtio 1.2+, section 5 "Device Types") and the device-specific constants of
 * the devices this package implements.
 *
 * @packageDocumentation
 */

/** Virtio device IDs (section 5). 0 is reserved: an MMIO slot with no device behind it. */
export const DeviceId = {
  /** No device; drivers must ignore the slot (4.2.3.1.1). */
  INVALID: 0,
  /** Network card (5.1). */
  NET: 1,
  /** Block device (5.2). */
  BLOCK: 2,
  /** Console (5.3). */
  CONSOLE: 3,
  /** Entropy source (5.4). */
  ENTROPY: 4,
} as const;

/** virtio-blk feature bits (5.2.3). */
export const BlkFeature = {
  /** Maximum size of any single segment is in `size_max`. */
  SIZE_MAX: 1,
  /** Maximum number of segments in a request is in `seg_max`. */
  SEG_MAX: 2,
  /** Disk-style geometry specified in `geometry`. */
  GEOMETRY: 4,
  /** Device is read-only. */
  RO: 5,
  /** Block size of disk is in `blk_size`. */
  BLK_SIZE: 6,
  /** Cache flush command support. */
  FLUSH: 9,
  /** Device exports information on optimal I/O alignment. */
  TOPOLOGY: 10,
  /** Device can toggle its cache between writeback and writethrough modes. */
  CONFIG_WCE: 11,
  /** Device supports multiqueue; `num_queues` is valid. */
  MQ: 12,
  /** Device can support discard command. */
  DISCARD: 13,
  /** Device can support write zeroes command. */
  WRITE_ZEROES: 14,
} as const;

/** virtio-blk request types (5.2.6). */
export const BlkReqType = {
  /** Read sectors. */
  IN: 0,
  /** Write sectors. */
  OUT: 1,
  /** Flush the write cache. */
  FLUSH: 4,
  /** Get the device ID string (20 bytes). */
  GET_ID: 8,
  /** Discard sectors. */
  DISCARD: 11,
  /** Write zeroes to sectors. */
  WRITE_ZEROES: 13,
} as const;

/** virtio-blk request status byte (5.2.6). */
export const BlkStatus = {
  /** Success. */
  OK: 0,
  /** Device or driver error. */
  IOERR: 1,
  /** Request unsupported by the device. */
  UNSUPP: 2,
} as const;

/** virtio-blk sector size: offsets in requests are always in 512-byte units (5.2.6). */
export const BLK_SECTOR_SIZE = 512;

/** Length of the GET_ID answer (5.2.6: "VIRTIO_BLK_ID_BYTES 20"). */
export const BLK_ID_BYTES = 20;

/** Size of a blk request header: le32 type, le32 reserved, le64 sector (5.2.6). */
export const BLK_REQ_HEADER_SIZE = 16;

/** Size of one discard / write-zeroes segment: le64 sector, le32 num_sectors, le32 flags. */
export const BLK_DISCARD_SEGMENT_SIZE = 16;

/** Flag in a write-zeroes segment: the device may unmap the range (5.2.6). */
export const BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** Offsets of virtio-blk configuration fields (5.2.4 `struct virtio_blk_config`). */
export const BlkConfig = {
  /** le64 capacity in 512-byte sectors. */
  capacity: 0,
  /** le32 maximum segment size (SIZE_MAX). */
  sizeMax: 8,
  /** le32 maximum number of segments (SEG_MAX). */
  segMax: 12,
  /** le16 cylinders (GEOMETRY). */
  geometryCylinders: 16,
  /** u8 heads (GEOMETRY). */
  geometryHeads: 18,
  /** u8 sectors (GEOMETRY). */
  geometrySectors: 19,
  /** le32 block size (BLK_SIZE). */
  blkSize: 20,
  /** u8 physical_block_exp (TOPOLOGY). */
  physicalBlockExp: 24,
  /** u8 alignment_offset (TOPOLOGY). */
  alignmentOffset: 25,
  /** le16 min_io_size (TOPOLOGY). */
  minIoSize: 26,
  /** le32 opt_io_size (TOPOLOGY). */
  optIoSize: 28,
  /** u8 writeback (CONFIG_WCE). */
  writeback: 32,
  /** u8 unused0. */
  unused0: 33,
  /** le16 num_queues (MQ). */
  numQueues: 34,
  /** le32 max_discard_sectors (DISCARD). */
  maxDiscardSectors: 36,
  /** le32 max_discard_seg (DISCARD). */
  maxDiscardSeg: 40,
  /** le32 discard_sector_alignment (DISCARD). */
  discardSectorAlignment: 44,
  /** le32 max_write_zeroes_sectors (WRITE_ZEROES). */
  maxWriteZeroesSectors: 48,
  /** le32 max_write_zeroes_seg (WRITE_ZEROES). */
  maxWriteZeroesSeg: 52,
  /** u8 write_zeroes_may_unmap (WRITE_ZEROES). */
  writeZeroesMayUnmap: 56,
  /** Size of the configuration structure up to and including write_zeroes_may_unmap, padded. */
  size: 60,
} as const;
