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

// ---------------------------------------------------------------------------------------------
// virtio-console (5.3).

/** virtio-console feature bits (5.3.3). */
export const ConsoleFeature = {
  /** Configuration `cols` and `rows` are valid. */
  SIZE: 0,
  /** Device has support for multiple ports; `max_nr_ports` is valid and control virtqueues are used. */
  MULTIPORT: 1,
  /** Device has support for emergency write; configuration field `emerg_wr` is valid. */
  EMERG_WRITE: 2,
} as const;

/** Offsets of virtio-console configuration fields (5.3.4 `struct virtio_console_config`). */
export const ConsoleConfig = {
  /** le16 cols (SIZE). */
  cols: 0,
  /** le16 rows (SIZE). */
  rows: 2,
  /** le32 max_nr_ports (MULTIPORT). */
  maxNrPorts: 4,
  /** le32 emerg_wr (EMERG_WRITE): the driver writes a character, the device emits its lower byte. */
  emergWr: 8,
  /** Size of the configuration structure. */
  size: 12,
} as const;

/** Queue numbers of virtio-console (5.3.2): port 0, the control pair, then a pair per further port. */
export const ConsoleQueue = {
  /** receiveq(port0): device to driver data of port 0. */
  RECEIVEQ0: 0,
  /** transmitq(port0): driver to device data of port 0. */
  TRANSMITQ0: 1,
  /** control receiveq (c_ivq): device to driver control messages (MULTIPORT). */
  CONTROL_RECEIVEQ: 2,
  /** control transmitq (c_ovq): driver to device control messages (MULTIPORT). */
  CONTROL_TRANSMITQ: 3,
  /** receiveq(port1); port `n >= 1` uses `2 + 2 * n` (receive) and `3 + 2 * n` (transmit). */
  RECEIVEQ1: 4,
} as const;

/** Values of `event` in `struct virtio_console_control` (5.3.6.2). */
export const ConsoleControlEvent = {
  /** Driver: ready to receive control messages (value 1 success, 0 failure; id unused). */
  DEVICE_READY: 0,
  /** Device: create port `id` (Linux calls it VIRTIO_CONSOLE_PORT_ADD). */
  DEVICE_ADD: 1,
  /** Device: remove port `id` (Linux VIRTIO_CONSOLE_PORT_REMOVE). */
  DEVICE_REMOVE: 2,
  /** Driver: port `id` is ready (value 1 success, 0 failure). */
  PORT_READY: 3,
  /** Device: nominate port `id` as a console port. */
  CONSOLE_PORT: 4,
  /** Device: console size change, followed by `struct virtio_console_resize` (le16 cols, le16 rows). */
  RESIZE: 5,
  /** Both: port `id` opened (value 1) or closed (value 0). */
  PORT_OPEN: 6,
  /** Device: tag of port `id`, followed by its UTF-8 name without a NUL terminator. */
  PORT_NAME: 7,
} as const;

/** Size of `struct virtio_console_control`: le32 id, le16 event, le16 value (5.3.6.2). */
export const CONSOLE_CONTROL_SIZE = 8;

/** Size of `struct virtio_console_resize` following a RESIZE control message: le16 cols, le16 rows. */
export const CONSOLE_RESIZE_SIZE = 4;

/** Port id the driver puts in messages without a port (Linux VIRTIO_CONSOLE_BAD_ID, ~0). */
export const CONSOLE_BAD_ID = 0xffff_ffff;

// -------------------------------------------------------------------------------------------------
// virtio-net (5.1)

/** virtio-net feature bits (5.1.3). */
export const NetFeature = {
  /** Device handles packets with partial checksum (checksum offload). */
  CSUM: 0,
  /** Driver handles packets with partial checksum. */
  GUEST_CSUM: 1,
  /** Control channel offloads reconfiguration support. */
  CTRL_GUEST_OFFLOADS: 2,
  /** Device maximum MTU reporting: `mtu` is valid. */
  MTU: 3,
  /** Device has given MAC address: `mac` is valid. */
  MAC: 5,
  /** Driver can receive TSOv4. */
  GUEST_TSO4: 7,
  /** Driver can receive TSOv6. */
  GUEST_TSO6: 8,
  /** Driver can receive TSO with ECN. */
  GUEST_ECN: 9,
  /** Driver can receive UFO. */
  GUEST_UFO: 10,
  /** Device can receive TSOv4. */
  HOST_TSO4: 11,
  /** Device can receive TSOv6. */
  HOST_TSO6: 12,
  /** Device can receive TSO with ECN. */
  HOST_ECN: 13,
  /** Device can receive UFO. */
  HOST_UFO: 14,
  /** Driver can merge receive buffers: `num_buffers` in the header is valid. */
  MRG_RXBUF: 15,
  /** Configuration status field is available. */
  STATUS: 16,
  /** Control channel is available. */
  CTRL_VQ: 17,
  /** Control channel RX mode support. */
  CTRL_RX: 18,
  /** Control channel VLAN filtering. */
  CTRL_VLAN: 19,
  /** Driver can send gratuitous packets. */
  GUEST_ANNOUNCE: 21,
  /** Device supports multiqueue with automatic receive steering: `max_virtqueue_pairs` is valid. */
  MQ: 22,
  /** Set MAC address through the control channel. */
  CTRL_MAC_ADDR: 23,
  /** Device reports `speed` and `duplex`. */
  SPEED_DUPLEX: 63,
} as const;

/** Bits of the virtio-net `status` configuration field (5.1.4). */
export const NetStatus = {
  /** The link is up. */
  LINK_UP: 1,
  /** The driver should send a gratuitous announcement (GUEST_ANNOUNCE). */
  ANNOUNCE: 2,
} as const;

/** Offsets of virtio-net configuration fields (5.1.4 `struct virtio_net_config`). */
export const NetConfig = {
  /** u8 mac[6] (MAC). */
  mac: 0,
  /** le16 status (STATUS). */
  status: 6,
  /** le16 max_virtqueue_pairs (MQ). */
  maxVirtqueuePairs: 8,
  /** le16 mtu (MTU). */
  mtu: 10,
  /** le32 speed in Mbit/s, 0xffffffff unknown (SPEED_DUPLEX). */
  speed: 12,
  /** u8 duplex: 0 half, 1 full, 0xff unknown (SPEED_DUPLEX). */
  duplex: 16,
  /** u8 rss_max_key_size (RSS, HASH_REPORT). */
  rssMaxKeySize: 17,
  /** le16 rss_max_indirection_table_length (RSS). */
  rssMaxIndirectionTableLength: 18,
  /** le32 supported_hash_types (RSS, HASH_REPORT). */
  supportedHashTypes: 20,
  /** Size of the structure up to and including supported_hash_types. */
  size: 24,
} as const;

/** Bytes of the MAC address. */
export const NET_MAC_BYTES = 6;

/**
 * Offsets in `struct virtio_net_hdr` (5.1.6): u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size,
 * le16 csum_start, le16 csum_offset, le16 num_buffers.
 */
export const NetHdr = {
  /** u8 flags (VIRTIO_NET_HDR_F_*). */
  flags: 0,
  /** u8 gso_type (VIRTIO_NET_HDR_GSO_*). */
  gsoType: 1,
  /** le16 hdr_len. */
  hdrLen: 2,
  /** le16 gso_size. */
  gsoSize: 4,
  /** le16 csum_start. */
  csumStart: 6,
  /** le16 csum_offset. */
  csumOffset: 8,
  /** le16 num_buffers: valid with VERSION_1 or MRG_RXBUF. */
  numBuffers: 10,
} as const;

/** Header size with VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF (5.1.6.1). */
export const NET_HDR_SIZE = 12;

/** Header size of a legacy device without VIRTIO_NET_F_MRG_RXBUF (no num_buffers). */
export const NET_HDR_SIZE_LEGACY = 10;

/** `flags` bits of the header (5.1.6). */
export const NetHdrFlag = {
  /** The packet needs a checksum computed (CSUM). */
  NEEDS_CSUM: 1,
  /** The checksum is already validated (GUEST_CSUM). */
  DATA_VALID: 2,
  /** RSC information in the header (RSC_EXT). */
  RSC_INFO: 4,
} as const;

/** `gso_type` values of the header (5.1.6). */
export const NetGso = {
  /** No segmentation. */
  NONE: 0,
  /** TCPv4 segmentation. */
  TCPV4: 1,
  /** UDP fragmentation. */
  UDP: 3,
  /** TCPv6 segmentation. */
  TCPV6: 4,
  /** UDP segmentation (USO). */
  UDP_L4: 5,
  /** ECN bit, or-ed with a type. */
  ECN: 0x80,
} as const;

/** Control queue classes (5.1.6.5). */
export const NetCtrlClass = {
  /** Receive filtering (CTRL_RX). */
  RX: 0,
  /** MAC address filtering (CTRL_RX, CTRL_MAC_ADDR). */
  MAC: 1,
  /** VLAN filtering (CTRL_VLAN). */
  VLAN: 2,
  /** Gratuitous packet acknowledgement (GUEST_ANNOUNCE). */
  ANNOUNCE: 3,
  /** Multiqueue (MQ, RSS, HASH_REPORT). */
  MQ: 4,
  /** Offload state (CTRL_GUEST_OFFLOADS). */
  GUEST_OFFLOADS: 5,
} as const;

/** Commands of the VIRTIO_NET_CTRL_MQ class (5.1.6.5.5). */
export const NetCtrlMq = {
  /** le16 virtqueue_pairs: how many queue pairs the device uses. */
  VQ_PAIRS_SET: 0,
  /** RSS configuration (RSS). */
  RSS_CONFIG: 1,
  /** Hash reporting configuration (HASH_REPORT). */
  HASH_CONFIG: 2,
} as const;

/** Smallest `virtqueue_pairs` (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN). */
export const NET_CTRL_MQ_VQ_PAIRS_MIN = 1;

/** Largest `virtqueue_pairs` and `max_virtqueue_pairs` (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX). */
export const NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

/** The `ack` byte of a control command (5.1.6.5). */
export const NetCtrlAck = {
  /** Command succeeded. */
  OK: 0,
  /** Command failed or is unknown. */
  ERR: 1,
} as const;

/** Bounds of the `mtu` field (5.1.4.1: "between 68 and 65535 inclusive"). */
export const NET_MIN_MTU = 68;

/** Largest `mtu`. */
export const NET_MAX_MTU = 65535;

/** Ethernet header bytes (destination, source, ethertype). */
export const ETH_HLEN = 14;

/** Bytes of one 802.1Q tag, allowed on top of the MTU (as Linux's receive buffer sizing). */
export const VLAN_HLEN = 4;
