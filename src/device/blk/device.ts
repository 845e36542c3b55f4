/**
 * virtio-blk, the block device (virtio 1.2+, 5.2).
 *
 * A request is one descriptor chain (5.2.6):
 *
 * ```
 * device-readable:  le32 type | le32 reserved | le64 sector | data[] (OUT, DISCARD, WRITE_ZEROES)
 * device-writable:  data[] (IN, GET_ID) | u8 status      <- status is the LAST writable byte
 * ```
 *
 * Framing is never assumed (2.6.4): the header may span descriptors or share one with data, and
 * the status byte may share the last writable descriptor with data. Data moves between guest RAM
 * and the backend one descriptor at a time, through zero-copy views of guest memory where the
 * memory offers them; nothing is allocated in proportion to a length the guest claims.
 *
 * A chain that is valid ring-wise but malformed as a block request (short header, bad length,
 * range past the capacity, over a limit) completes with VIRTIO_BLK_S_IOERR (or UNSUPP where
 * 5.2.6.2 says so) and counts as a guest error; a chain with no writable byte, where no status can
 * be written, completes with used length 0. Backend failures complete with IOERR and are counted.
 * Nothing a guest sends makes `notify` throw.
 *
 * Configuration space (5.2.4, offsets in {@link BlkConfig}): read-only except `writeback`, which
 * the driver may toggle when VIRTIO_BLK_F_CONFIG_WCE is offered.
 *
 * @packageDocumentation
 */

import type { GuestMemory } from '../../memory/index.js';
import {
  BLK_DISCARD_SEGMENT_SIZE,
  BLK_ID_BYTES,
  BLK_REQ_HEADER_SIZE,
  BLK_SECTOR_SIZE,
  BLK_WRITE_ZEROES_FLAG_UNMAP,
  BlkConfig,
  BlkFeature,
  BlkReqType,
  BlkStatus,
  DeviceId,
  VirtioError,
} from '../../spec/index.js';
import { DescriptorChain, isPowerOfTwo, MAX_INDIRECT_DESCRIPTORS } from '../../virtqueue/index.js';
import { readConfigLe } from '../configSpace.js';
import { Features } from '../features.js';
import { MAX_PASSES_PER_NOTIFY, ServeOutcome, serveQueue } from '../serveQueue.js';
import type { DeviceContext, VirtioDevice } from '../virtioDevice.js';
import type { BlockBackend } from './backend.js';

/** Limits of VIRTIO_BLK_T_DISCARD (5.2.4 `max_discard_sectors`, `max_discard_seg`, `discard_sector_alignment`). */
export interface BlkDiscardOptions {
  /** Most sectors in one segment. Default {@link BLK_DEFAULT_MAX_DISCARD_SECTORS}. */
  maxSectors?: number;
  /** Most segments in one request. Default 1 (as QEMU). */
  maxSegments?: number;
  /** Alignment hint in sectors for the driver when splitting (not enforced). Default blkSize / 512. */
  sectorAlignment?: number;
}

/** Limits of VIRTIO_BLK_T_WRITE_ZEROES (5.2.4 `max_write_zeroes_sectors`, ...). */
export interface BlkWriteZeroesOptions {
  /** Most sectors in one segment. Default {@link BLK_DEFAULT_MAX_DISCARD_SECTORS}. */
  maxSectors?: number;
  /** Most segments in one request. Default 1. */
  maxSegments?: number;
  /**
   * `write_zeroes_may_unmap`: whether a write zeroes with the unmap flag may deallocate. Default
   * false: the bundled backends always write zeroes.
   */
  mayUnmap?: boolean;
}

/** Options of a {@link BlkDevice}. */
export interface BlkDeviceOptions {
  /** The storage. The capacity is `floor(backend.size / 512)` sectors. */
  backend: BlockBackend;
  /** Number of request queues; more than 1 offers VIRTIO_BLK_F_MQ. Default 1, at most 65535. */
  queueCount?: number;
  /** QueueNumMax of every request queue: a power of two up to 32768. Default 256. */
  queueSize?: number;
  /** Offer VIRTIO_BLK_F_RO and fail every write. Also implied by `backend.readOnly`. */
  readOnly?: boolean;
  /** Device ID string for VIRTIO_BLK_T_GET_ID: printable ASCII, up to 20 bytes. Default empty. */
  serial?: string;
  /** `seg_max`: most data segments per request. Default `queueSize - 2` (at least 1). */
  segMax?: number;
  /**
   * `size_max`: longest data segment in bytes; offers VIRTIO_BLK_F_SIZE_MAX when set. Linux raises
   * values below its page size to the page size, so keep it at 4096 or more for Linux guests.
   */
  sizeMax?: number;
  /** `blk_size`: a power of two from 512 (default 512). Units in requests stay 512 bytes. */
  blkSize?: number;
  /** Offer VIRTIO_BLK_F_FLUSH (default true). Without it writes are never made durable (5.2.6.2 note). */
  flush?: boolean;
  /** Offer VIRTIO_BLK_F_CONFIG_WCE (default: same as `flush`; requires `flush`, 5.2.5.2). */
  configWce?: boolean;
  /** Cache mode after reset: true = writeback (default when `flush`), false = writethrough. */
  writeback?: boolean;
  /** Offer VIRTIO_BLK_F_DISCARD with these limits, or `false` not to. Default enabled (not when read-only). */
  discard?: BlkDiscardOptions | false;
  /** Offer VIRTIO_BLK_F_WRITE_ZEROES with these limits, or `false` not to. Default enabled (not when read-only). */
  writeZeroes?: BlkWriteZeroesOptions | false;
  /** Receives one lowercase line per guest error or backend failure (QEMU LOG_GUEST_ERROR). */
  log?: (message: string) => void;
}

/** Counters of a {@link BlkDevice}, absolute since construction, over all queues. */
export interface BlkCounters {
  /** Chains completed. */
  requests: number;
  /** Bytes read from the backend into guest buffers (successful IN). */
  readBytes: number;
  /** Bytes written from guest buffers to the backend (successful OUT). */
  writeBytes: number;
  /** Backend flushes: FLUSH requests, and writes in writethrough mode. */
  flushes: number;
  /** Successful DISCARD requests. */
  discards: number;
  /** Successful WRITE_ZEROES requests. */
  writeZeroes: number;
  /** Requests completed with UNSUPP. */
  unsupported: number;
  /** Malformed or out-of-limit requests, notifications for absent or idle queues. */
  guestErrors: number;
  /** Backend calls that threw (completed with IOERR). */
  backendErrors: number;
  /** Notifications that stopped at the work bound with chains still pending. */
  deferred: number;
}

/** Default QueueNumMax of each request queue. */
export const BLK_DEFAULT_QUEUE_SIZE = 256;

/**
 * Default `max_discard_sectors` and `max_write_zeroes_sectors`: 32 MiB per segment, which bounds
 * the synchronous work one request asks of a zero-filling backend.
 */
export const BLK_DEFAULT_MAX_DISCARD_SECTORS = 65536;

/** Passes per notification (the shared bound, {@link MAX_PASSES_PER_NOTIFY}). */
export const BLK_MAX_PASSES = MAX_PASSES_PER_NOTIFY;

/** Chunk for copying through host memory when guest memory offers no view. */
const BOUNCE_BYTES = 64 * 1024;

/** Largest value of a le32 field. */
const U32_MAX = 0xffff_ffff;

/** Resolved limits of one of the two segment commands. */
interface SegmentLimits {
  readonly maxSectors: number;
  readonly maxSegments: number;
}

/** Checks an option that lands in a le32 config field. */
function u32Option(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min || value > U32_MAX) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `blk ${name} ${String(value)} is not an integer in ${min}..${U32_MAX}`,
    );
  }
  return value;
}

/** The virtio block device. */
export class BlkDevice implements VirtioDevice {
  /** Device type 2 (5.2.1). */
  readonly deviceId = DeviceId.BLOCK;
  /** `queueCount` request queues (5.2.2). */
  readonly queueMaxSizes: readonly number[];
  /** The offered device feature bits (5.2.3). */
  readonly features: Features;
  /** Bytes of `struct virtio_blk_config` up to `write_zeroes_may_unmap`, padded (5.2.4). */
  readonly configSize = BlkConfig.size;
  /** Counters, absolute since construction (not reset with the device). */
  readonly counters: BlkCounters = {
    requests: 0,
    readBytes: 0,
    writeBytes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    unsupported: 0,
    guestErrors: 0,
    backendErrors: 0,
    deferred: 0,
  };
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  /** True when writes fail (VIRTIO_BLK_F_RO offered). */
  readonly readOnly: boolean;

  private readonly backend: BlockBackend;
  /** `capacity * 512`: the reachable bytes of the backend. */
  private readonly capacityBytes: number;
  private readonly segMax: number;
  /** 0 when SIZE_MAX is not offered. */
  private readonly sizeMax: number;
  private readonly discardLimits: SegmentLimits | null;
  private readonly writeZeroesLimits: SegmentLimits | null;
  private readonly initialWriteback: number;
  private readonly log: ((message: string) => void) | undefined;
  /** The configuration bytes, little-endian, as the driver reads them. */
  private readonly config = new Uint8Array(BlkConfig.size);
  private readonly configView = new DataView(this.config.buffer);
  /** The 20-byte, NUL-padded device ID. */
  private readonly id = new Uint8Array(BLK_ID_BYTES);
  /** Request header, then each discard/write-zeroes segment: 16 bytes, read into once per use. */
  private readonly hdr = new Uint8Array(BLK_REQ_HEADER_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);
  private readonly statusByte = new Uint8Array(1);
  /** Made on first need, for guest memory that offers no views. */
  private bounce: Uint8Array | null = null;
  /** Data bytes written into the current chain's writable part (for the used length). */
  private dataWritten = 0;
  private ctx: DeviceContext | null = null;
  private chain: DescriptorChain;

  /**
   * @param options - backend, queues, limits and features
   * @throws VirtioError `INVALID_ARGUMENT` for an option outside its range (see each option)
   */
  constructor(options: BlkDeviceOptions) {
    const backend = options.backend;
    const queueCount = options.queueCount ?? 1;
    if (!Number.isInteger(queueCount) || queueCount < 1 || queueCount > 0xffff) {
      throw new VirtioError('INVALID_ARGUMENT', `blk queue count ${String(queueCount)} is not in 1..65535`);
    }
    const queueSize = options.queueSize ?? BLK_DEFAULT_QUEUE_SIZE;
    if (!isPowerOfTwo(queueSize) || queueSize > 32768) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk queue size ${String(queueSize)} is not a power of two up to 32768`,
      );
    }
    const blkSize = options.blkSize ?? BLK_SECTOR_SIZE;
    if (!isPowerOfTwo(blkSize) || blkSize < BLK_SECTOR_SIZE) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk block size ${String(blkSize)} is not a power of two from 512`,
      );
    }
    if (!Number.isSafeInteger(backend.size) || backend.size < 0) {
      throw new VirtioError('INVALID_ARGUMENT', `blk backend size ${String(backend.size)} is invalid`);
    }
    this.segMax = u32Option('seg_max', options.segMax ?? Math.max(1, queueSize - 2), 1);
    this.sizeMax =
      options.sizeMax === undefined ? 0 : u32Option('size_max', options.sizeMax, BLK_SECTOR_SIZE);
    const flush = options.flush ?? true;
    const configWce = options.configWce ?? flush;
    if (configWce && !flush) {
      // 5.2.5.2: "Devices ... MUST offer [VIRTIO_BLK_F_FLUSH] if they offer VIRTIO_BLK_F_CONFIG_WCE."
      throw new VirtioError('INVALID_ARGUMENT', 'blk config_wce requires flush');
    }
    const writeback = options.writeback ?? flush;
    if (writeback && !flush) {
      throw new VirtioError('INVALID_ARGUMENT', 'blk writeback cache requires flush');
    }
    this.readOnly = (options.readOnly ?? false) || backend.readOnly;
    this.serialToId(options.serial ?? '');

    // Discard and write zeroes change data: not offered on a read-only device.
    const discard = this.readOnly || options.discard === false ? null : (options.discard ?? {});
    const wz = this.readOnly || options.writeZeroes === false ? null : (options.writeZeroes ?? {});
    this.discardLimits =
      discard === null
        ? null
        : {
            maxSectors: u32Option(
              'max_discard_sectors',
              discard.maxSectors ?? BLK_DEFAULT_MAX_DISCARD_SECTORS,
              1,
            ),
            maxSegments: u32Option('max_discard_seg', discard.maxSegments ?? 1, 1),
          };
    this.writeZeroesLimits =
      wz === null
        ? null
        : {
            maxSectors: u32Option(
              'max_write_zeroes_sectors',
              wz.maxSectors ?? BLK_DEFAULT_MAX_DISCARD_SECTORS,
              1,
            ),
            maxSegments: u32Option('max_write_zeroes_seg', wz.maxSegments ?? 1, 1),
          };

    this.backend = backend;
    this.log = options.log;
    this.capacity = Math.floor(backend.size / BLK_SECTOR_SIZE);
    this.capacityBytes = this.capacity * BLK_SECTOR_SIZE;
    this.queueMaxSizes = new Array<number>(queueCount).fill(queueSize);
    this.chain = new DescriptorChain(Math.max(queueSize, MAX_INDIRECT_DESCRIPTORS));
    this.initialWriteback = writeback ? 1 : 0;

    const f = new Features([BlkFeature.SEG_MAX, BlkFeature.BLK_SIZE]);
    if (this.sizeMax > 0) f.set(BlkFeature.SIZE_MAX);
    if (this.readOnly) f.set(BlkFeature.RO);
    if (flush) f.set(BlkFeature.FLUSH);
    if (configWce) f.set(BlkFeature.CONFIG_WCE);
    if (queueCount > 1) f.set(BlkFeature.MQ);
    if (this.discardLimits !== null) f.set(BlkFeature.DISCARD);
    if (this.writeZeroesLimits !== null) f.set(BlkFeature.WRITE_ZEROES);
    this.features = f;

    const c = this.configView;
    // Capacity below 2^44 sectors (backend size is a safe integer): split into two exact halves.
    c.setUint32(BlkConfig.capacity, this.capacity % 2 ** 32, true);
    c.setUint32(BlkConfig.capacity + 4, Math.floor(this.capacity / 2 ** 32), true);
    c.setUint32(BlkConfig.sizeMax, this.sizeMax, true);
    c.setUint32(BlkConfig.segMax, this.segMax, true);
    c.setUint32(BlkConfig.blkSize, blkSize, true);
    c.setUint8(BlkConfig.writeback, this.initialWriteback);
    c.setUint16(BlkConfig.numQueues, queueCount, true);
    if (this.discardLimits !== null) {
      const align = u32Option(
        'discard_sector_alignment',
        (discard as BlkDiscardOptions).sectorAlignment ?? blkSize / BLK_SECTOR_SIZE,
        1,
      );
      c.setUint32(BlkConfig.maxDiscardSectors, this.discardLimits.maxSectors, true);
      c.setUint32(BlkConfig.maxDiscardSeg, this.discardLimits.maxSegments, true);
      c.setUint32(BlkConfig.discardSectorAlignment, align, true);
    }
    if (this.writeZeroesLimits !== null) {
      c.setUint32(BlkConfig.maxWriteZeroesSectors, this.writeZeroesLimits.maxSectors, true);
      c.setUint32(BlkConfig.maxWriteZeroesSeg, this.writeZeroesLimits.maxSegments, true);
      c.setUint8(BlkConfig.writeZeroesMayUnmap, (wz as BlkWriteZeroesOptions).mayUnmap ? 1 : 0);
    }
  }

  /** Encodes the serial into the NUL-padded ID (5.2.6: "NUL-padded ASCII string up to 20 bytes"). */
  private serialToId(serial: string): void {
    if (serial.length > BLK_ID_BYTES) {
      throw new VirtioError('INVALID_ARGUMENT', `blk serial is longer than ${BLK_ID_BYTES} bytes`);
    }
    for (let i = 0; i < serial.length; i++) {
      const ch = serial.charCodeAt(i);
      if (ch < 0x20 || ch > 0x7e) {
        throw new VirtioError('INVALID_ARGUMENT', `blk serial has a non-printable-ascii character at ${i}`);
      }
      this.id[i] = ch;
    }
  }

  /** True between {@link BlkDevice.activate} and {@link BlkDevice.reset}. */
  get isActivated(): boolean {
    return this.ctx !== null;
  }

  /** Current cache mode: 1 writeback, 0 writethrough (the `writeback` config byte). */
  get writeback(): number {
    return this.config[BlkConfig.writeback];
  }

  /**
   * At FEATURES_OK. 5.2.5.2: "If VIRTIO_BLK_F_CONFIG_WCE is negotiated but VIRTIO_BLK_F_FLUSH is
   * not, the device MUST initialize writeback to 0." Never refuses.
   */
  validateFeatures(accepted: Features): boolean {
    if (accepted.has(BlkFeature.CONFIG_WCE) && !accepted.has(BlkFeature.FLUSH)) {
      this.config[BlkConfig.writeback] = 0;
    }
    return true;
  }

  /** Little-endian read of the configuration bytes; outside them reads 0. */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    return readConfigLe(this.configView, BlkConfig.size, offset, width);
  }

  /**
   * Only `writeback` is writable, one byte, 0 or 1, and only when VIRTIO_BLK_F_CONFIG_WCE is
   * offered (5.2.6.1: "the driver MAY switch to writethrough or writeback mode by writing
   * respectively 0 and 1"). Everything else is refused.
   */
  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean {
    if (
      offset !== BlkConfig.writeback ||
      width !== 1 ||
      !this.features.has(BlkFeature.CONFIG_WCE) ||
      (value !== 0 && value !== 1)
    ) {
      return false;
    }
    this.config[BlkConfig.writeback] = value;
    return true;
  }

  /** Keeps the context; sizes the reusable chain for the largest queue the transport built. */
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    let limit = this.chain.capacity;
    for (const q of ctx.queues) limit = Math.max(limit, q.chainLimit);
    if (limit > this.chain.capacity) this.chain = new DescriptorChain(limit);
  }

  /** Drops the context and restores the cache mode chosen at construction. */
  reset(): void {
    this.ctx = null;
    this.config[BlkConfig.writeback] = this.initialWriteback;
  }

  /**
   * Serves request queue `index`: handles each popped chain, puts it in the used ring, and sends
   * one used buffer notification per batch. A corrupt ring is reported once through
   * {@link DeviceContext.queueFailed} and processing of that queue stops.
   */
  notify(index: number): void {
    const ctx = this.ctx;
    if (ctx === null || !Number.isInteger(index) || index < 0 || index >= this.queueMaxSizes.length) {
      this.guestError(
        `notification for queue ${String(index)} ${ctx === null ? 'before activation' : 'that does not exist'}`,
      );
      return;
    }
    const q = ctx.queues[index];
    if (q === undefined || !q.ready) {
      this.guestError(`notification for queue ${String(index)} that is not ready`);
      return;
    }
    // Already reported through queueFailed: stays stopped until reset (2.1.2).
    if (q.error !== null) return;
    const mem = ctx.mem;
    const features = ctx.features;
    if (serveQueue(ctx, index, this.chain, (c) => this.serve(mem, c, features)) === ServeOutcome.DEFERRED) {
      // Work bound reached with chains pending; they are served at the next notification.
      this.counters.deferred++;
    }
  }

  /** Handles one request; returns the used length (bytes written, status included). */
  private serve(mem: GuestMemory, chain: DescriptorChain, features: Features): number {
    this.counters.requests++;
    this.dataWritten = 0;
    if (chain.writableBytes === 0) {
      // No room for the status byte: nothing can be reported, so nothing is written.
      this.guestError(`request ${String(chain.head)} has no writable status byte`);
      return 0;
    }
    let status: number;
    if (chain.readableBytes < BLK_REQ_HEADER_SIZE) {
      status = this.reject(`request header of ${String(chain.readableBytes)} bytes is shorter than 16`);
    } else {
      chain.readFrom(mem, 0, this.hdr);
      const h = this.hdrView;
      const type = h.getUint32(0, true);
      // Exact below 2^53; larger values round, and every such value is past any capacity.
      const sector = h.getUint32(12, true) * 2 ** 32 + h.getUint32(8, true);
      status = this.execute(mem, chain, features, type, sector);
    }
    this.statusByte[0] = status;
    chain.writeTo(mem, chain.writableBytes - 1, this.statusByte);
    return this.dataWritten + 1;
  }

  private execute(
    mem: GuestMemory,
    chain: DescriptorChain,
    features: Features,
    type: number,
    sector: number,
  ): number {
    switch (type) {
      case BlkReqType.IN:
        return this.readRequest(mem, chain, sector);
      case BlkReqType.OUT:
        return this.writeRequest(mem, chain, features, sector);
      case BlkReqType.FLUSH:
        return this.flushRequest();
      case BlkReqType.GET_ID:
        return this.getIdRequest(mem, chain);
      case BlkReqType.DISCARD:
        return this.segmentRequest(mem, chain, features, false);
      case BlkReqType.WRITE_ZEROES:
        return this.segmentRequest(mem, chain, features, true);
      default:
        // GET_LIFETIME, SECURE_ERASE, zoned and legacy SCSI commands are not implemented.
        this.counters.unsupported++;
        return BlkStatus.UNSUPP;
    }
  }

  /** VIRTIO_BLK_T_IN: sectors into the writable part before the status byte. */
  private readRequest(mem: GuestMemory, chain: DescriptorChain, sector: number): number {
    const len = chain.writableBytes - 1;
    const bad = this.checkData('read', chain, chain.readableCount, chain.count, 0, len, sector);
    if (bad !== null) return this.reject(bad);
    const backend = this.backend;
    let pos = sector * BLK_SECTOR_SIZE;
    let left = len;
    try {
      for (let i = chain.readableCount; i < chain.count && left > 0; i++) {
        const gpa = chain.addr[i];
        const n = Math.min(chain.len[i], left);
        const view = mem.view(gpa, n);
        if (view !== null) {
          backend.read(pos, view);
        } else {
          const bounce = this.bounceBuffer();
          for (let k = 0; k < n; k += bounce.length) {
            const part = bounce.subarray(0, Math.min(bounce.length, n - k));
            backend.read(pos + k, part);
            mem.writeBytes(gpa + k, part);
          }
        }
        pos += n;
        left -= n;
        this.dataWritten += n;
      }
    } catch (e) {
      return this.backendError('read', e);
    }
    this.counters.readBytes += len;
    return BlkStatus.OK;
  }

  /** VIRTIO_BLK_T_OUT: the readable part after the header onto sectors. */
  private writeRequest(mem: GuestMemory, chain: DescriptorChain, features: Features, sector: number): number {
    if (this.readOnly) {
      // 5.2.6.2: "A device MUST set the status byte to VIRTIO_BLK_S_IOERR for a write request if
      // the VIRTIO_BLK_F_RO feature if offered, and MUST NOT write any data."
      return this.reject('write to a read-only device');
    }
    const len = chain.readableBytes - BLK_REQ_HEADER_SIZE;
    const bad = this.checkData('write', chain, 0, chain.readableCount, BLK_REQ_HEADER_SIZE, len, sector);
    if (bad !== null) return this.reject(bad);
    const backend = this.backend;
    let pos = sector * BLK_SECTOR_SIZE;
    let skip = BLK_REQ_HEADER_SIZE;
    try {
      for (let i = 0; i < chain.readableCount; i++) {
        const segLen = chain.len[i];
        if (skip >= segLen) {
          skip -= segLen;
          continue;
        }
        const gpa = chain.addr[i] + skip;
        const n = segLen - skip;
        skip = 0;
        const view = mem.view(gpa, n);
        if (view !== null) {
          backend.write(pos, view);
        } else {
          const bounce = this.bounceBuffer();
          for (let k = 0; k < n; k += bounce.length) {
            const part = bounce.subarray(0, Math.min(bounce.length, n - k));
            mem.readBytes(gpa + k, part);
            backend.write(pos + k, part);
          }
        }
        pos += n;
      }
      if (this.writethrough(features)) this.backendFlush();
    } catch (e) {
      return this.backendError('write', e);
    }
    this.counters.writeBytes += len;
    return BlkStatus.OK;
  }

  /** VIRTIO_BLK_T_FLUSH: commit every completed write (5.2.6.2 case 3). */
  private flushRequest(): number {
    try {
      this.backendFlush();
    } catch (e) {
      return this.backendError('flush', e);
    }
    return BlkStatus.OK;
  }

  /** VIRTIO_BLK_T_GET_ID: the 20-byte NUL-padded ID, as much of it as fits before the status byte. */
  private getIdRequest(mem: GuestMemory, chain: DescriptorChain): number {
    const n = Math.min(BLK_ID_BYTES, chain.writableBytes - 1);
    this.dataWritten = chain.writeTo(mem, 0, n === BLK_ID_BYTES ? this.id : this.id.subarray(0, n));
    return BlkStatus.OK;
  }

  /**
   * VIRTIO_BLK_T_DISCARD and VIRTIO_BLK_T_WRITE_ZEROES: every segment is checked before any is
   * executed, flags first, since 5.2.6.2 makes UNSUPP mandatory for them: "The device MUST set the
   * status byte to VIRTIO_BLK_S_UNSUPP for discard, secure erase and write zeroes commands if any
   * unknown flag is set. Furthermore, the device MUST set the status byte to VIRTIO_BLK_S_UNSUPP
   * for discard commands if the unmap flag is set."
   */
  private segmentRequest(
    mem: GuestMemory,
    chain: DescriptorChain,
    features: Features,
    zeroes: boolean,
  ): number {
    const what = zeroes ? 'write zeroes' : 'discard';
    const limits = zeroes ? this.writeZeroesLimits : this.discardLimits;
    if (limits === null || !features.has(zeroes ? BlkFeature.WRITE_ZEROES : BlkFeature.DISCARD)) {
      this.counters.unsupported++;
      return BlkStatus.UNSUPP;
    }
    const len = chain.readableBytes - BLK_REQ_HEADER_SIZE;
    // 5.2.6.1: "The length of data MUST be a multiple of the size of struct
    // virtio_blk_discard_write_zeroes".
    if (len === 0 || len % BLK_DISCARD_SEGMENT_SIZE !== 0) {
      return this.reject(`${what} data of ${String(len)} bytes is not a non-empty multiple of 16`);
    }
    const count = len / BLK_DISCARD_SEGMENT_SIZE;
    if (count > limits.maxSegments) {
      return this.reject(`${what} of ${String(count)} segments exceeds ${String(limits.maxSegments)}`);
    }
    const h = this.hdrView;
    let bad: string | null = null;
    for (let k = 0; k < count; k++) {
      chain.readFrom(mem, BLK_REQ_HEADER_SIZE + k * BLK_DISCARD_SEGMENT_SIZE, this.hdr);
      const flags = h.getUint32(12, true);
      if ((flags & ~BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0 || (!zeroes && flags !== 0)) {
        this.counters.unsupported++;
        this.guestError(`${what} segment ${String(k)} has flags ${String(flags)}`);
        return BlkStatus.UNSUPP;
      }
      if (bad === null) bad = this.checkSegment(what, k, limits);
    }
    if (bad !== null) return this.reject(bad);
    try {
      for (let k = 0; k < count; k++) {
        chain.readFrom(mem, BLK_REQ_HEADER_SIZE + k * BLK_DISCARD_SEGMENT_SIZE, this.hdr);
        // Checked again: another vCPU may have rewritten the segment since the first pass.
        const again = this.checkSegment(what, k, limits);
        if (again !== null) return this.reject(again);
        const offset = (h.getUint32(4, true) * 2 ** 32 + h.getUint32(0, true)) * BLK_SECTOR_SIZE;
        const bytes = h.getUint32(8, true) * BLK_SECTOR_SIZE;
        if (zeroes) this.backend.writeZeroes(offset, bytes);
        else this.backend.discard(offset, bytes);
      }
      if (this.writethrough(features)) this.backendFlush();
    } catch (e) {
      return this.backendError(what, e);
    }
    if (zeroes) this.counters.writeZeroes++;
    else this.counters.discards++;
    return BlkStatus.OK;
  }

  /** Checks the segment in `hdr`: sector count within the limit, range within the capacity. */
  private checkSegment(what: string, k: number, limits: SegmentLimits): string | null {
    const h = this.hdrView;
    const sector = h.getUint32(4, true) * 2 ** 32 + h.getUint32(0, true);
    const sectors = h.getUint32(8, true);
    if (sectors > limits.maxSectors) {
      return `${what} segment ${String(k)} of ${String(sectors)} sectors exceeds ${String(limits.maxSectors)}`;
    }
    // sectors < 2^32, so sectors * 512 < 2^41 is exact.
    if (!this.inRange(sector, sectors * BLK_SECTOR_SIZE)) {
      return `${what} segment ${String(k)} at sector ${String(sector)} runs past capacity ${String(this.capacity)}`;
    }
    return null;
  }

  /**
   * Checks the data of an IN or OUT request: a multiple of 512 bytes (5.2.6.1), inside the
   * capacity, at most `seg_max` segments of at most `size_max` bytes. The data is `len` bytes
   * starting `skip` bytes into descriptors `first` to `end - 1`. Returns why not, or null.
   */
  private checkData(
    what: string,
    chain: DescriptorChain,
    first: number,
    end: number,
    skip: number,
    len: number,
    sector: number,
  ): string | null {
    if (len % BLK_SECTOR_SIZE !== 0) {
      return `${what} of ${String(len)} bytes is not a multiple of 512`;
    }
    if (!this.inRange(sector, len)) {
      return `${what} of ${String(len)} bytes at sector ${String(sector)} runs past capacity ${String(this.capacity)}`;
    }
    let segments = 0;
    let left = len;
    for (let i = first; i < end && left > 0; i++) {
      const segLen = chain.len[i];
      if (skip >= segLen) {
        skip -= segLen;
        continue;
      }
      const n = Math.min(segLen - skip, left);
      skip = 0;
      left -= n;
      segments++;
      if (segments > this.segMax) return `${what} has more than ${String(this.segMax)} data segments`;
      if (this.sizeMax !== 0 && n > this.sizeMax) {
        return `${what} segment of ${String(n)} bytes exceeds size_max ${String(this.sizeMax)}`;
      }
    }
    return null;
  }

  /**
   * True when `bytes` from `sector` fit in the capacity (5.2.6.1: "A driver MUST NOT submit a
   * request which would cause a read or write beyond capacity"). `sector` may be a rounded value
   * above 2^53: the first test rejects it, after which `sector * 512 <= capacityBytes < 2^53` is
   * exact and the subtraction cannot go negative.
   */
  private inRange(sector: number, bytes: number): boolean {
    if (!(sector <= this.capacity)) return false;
    return bytes <= this.capacityBytes - sector * BLK_SECTOR_SIZE;
  }

  /**
   * Whether a completed write must be durable before it is reported (5.2.6.2, "A write becomes
   * stable once it is completed and ... (1) neither VIRTIO_BLK_F_CONFIG_WCE nor VIRTIO_BLK_F_FLUSH
   * feature were negotiated, but VIRTIO_BLK_F_FLUSH was offered by the device; (2) the
   * VIRTIO_BLK_F_CONFIG_WCE feature was negotiated and the writeback field ... was 0").
   * Without FLUSH offered the device never syncs: that is what not offering it means.
   */
  private writethrough(features: Features): boolean {
    if (!this.features.has(BlkFeature.FLUSH)) return false;
    if (features.has(BlkFeature.CONFIG_WCE)) return this.config[BlkConfig.writeback] === 0;
    return !features.has(BlkFeature.FLUSH);
  }

  private backendFlush(): void {
    this.backend.flush();
    this.counters.flushes++;
  }

  private bounceBuffer(): Uint8Array {
    if (this.bounce === null) this.bounce = new Uint8Array(BOUNCE_BYTES);
    return this.bounce;
  }

  /** A malformed request: counted, logged, IOERR. */
  private reject(message: string): number {
    this.guestError(message);
    return BlkStatus.IOERR;
  }

  /** A backend failure: counted, logged, IOERR. */
  private backendError(what: string, e: unknown): number {
    this.counters.backendErrors++;
    this.log?.(`blk: backend ${what} failed: ${e instanceof Error ? e.message : String(e)}`);
    return BlkStatus.IOERR;
  }

  private guestError(message: string): void {
    this.counters.guestErrors++;
    this.log?.(`blk: ${message}`);
  }
}
