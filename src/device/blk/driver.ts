/**
 * The guest driver of virtio-blk (virtio 1.2+, 5.2), in the manner of Linux `virtio_blk`: each
 * request is one descriptor chain
 *
 * ```
 * device-readable:  header (le32 type, le32 reserved, le64 sector)
 *                   | data segments (OUT, DISCARD, WRITE_ZEROES)
 * device-writable:  data segments (IN, GET_ID) | u8 status
 * ```
 *
 * with data split into segments of at most the maximum segment size (VIRTIO_BLK_F_SIZE_MAX) and at
 * most `seg_max` of them (VIRTIO_BLK_F_SEG_MAX). Larger transfers are split into several requests.
 *
 * Two ways to issue requests: synchronous helpers ({@link BlkDriver.read}, {@link BlkDriver.write},
 * ...) that submit and wait for the interrupt, and {@link BlkDriver.submit} with
 * {@link BlkDriver.poll} / {@link BlkDriver.wait} to keep several requests in flight. Each request
 * in flight owns a reusable DMA slot (header + status, and a data buffer grown on demand).
 *
 * The driver sees only the transport-neutral {@link VirtioTransportDriver} and {@link DriverQueue}.
 *
 * @packageDocumentation
 */

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
  DeviceStatus,
  FeatureBit,
  VirtioError,
} from '../../spec/index.js';
import type { DriverQueue, Segment } from '../../virtqueue/index.js';
import {
  abandonDevice,
  beginInit,
  failDevice,
  finishInit,
  type QueueRequest,
  readConfig64,
  readConfigConsistent,
  removeDevice,
  type VirtioTransportDriver,
  waitUntil,
} from '../driverApi.js';
import { Features } from '../features.js';

/** Options of {@link BlkDriver.probe}. */
export interface BlkDriverOptions {
  /** Request queues to use (capped by `num_queues` with VIRTIO_BLK_F_MQ, else 1). Default 1. */
  queues?: number;
  /** Queue size wanted (a power of two); default the device maximum. */
  queueSize?: number;
  /** Longest data segment in bytes (a multiple of 512); capped by `size_max`. Default 65536. */
  maxSegmentSize?: number;
  /** Most data bytes in one request (a multiple of 512); capped by seg_max * segment size. Default 1 MiB. */
  maxRequestBytes?: number;
}

/** A discard or write-zeroes range. */
export interface BlkRange {
  /** First sector. */
  readonly sector: number;
  /** Number of sectors (1 up to the device's per-segment limit). */
  readonly sectors: number;
  /** Write zeroes only: the device may deallocate the range (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP). */
  readonly unmap?: boolean;
}

/** One request for {@link BlkDriver.submit}. */
export type BlkRequest =
  | {
      /** VIRTIO_BLK_T_IN. */
      readonly op: 'read';
      /** First sector. */
      readonly sector: number;
      /** Sectors to read. */
      readonly sectors: number;
      /** Where the data goes (`sectors * 512` bytes); default a new array. */
      readonly into?: Uint8Array;
    }
  | {
      /** VIRTIO_BLK_T_OUT. */
      readonly op: 'write';
      /** First sector. */
      readonly sector: number;
      /** The data: a non-empty multiple of 512 bytes. */
      readonly data: Uint8Array;
    }
  | {
      /** VIRTIO_BLK_T_FLUSH or VIRTIO_BLK_T_GET_ID. */
      readonly op: 'flush' | 'getId';
    }
  | {
      /** VIRTIO_BLK_T_DISCARD or VIRTIO_BLK_T_WRITE_ZEROES. */
      readonly op: 'discard' | 'writeZeroes';
      /** The ranges, at most the device's segment limit. */
      readonly ranges: readonly BlkRange[];
    };

/** The operation of a {@link BlkRequest}. */
export type BlkOp = BlkRequest['op'];

/** A finished request, as {@link BlkDriver.poll} returns it. */
export interface BlkCompletion {
  /** The id {@link BlkDriver.submit} returned. */
  readonly id: number;
  /** The operation. */
  readonly op: BlkOp;
  /** The status byte (VIRTIO_BLK_S_*; 0xff when the device never wrote it). */
  readonly status: number;
  /** `read`: the data (the caller's `into` or a new array); `getId`: the 20 ID bytes; else null. */
  readonly data: Uint8Array | null;
}

/** Default longest data segment (Linux's default maximum segment size). */
export const BLK_DRIVER_MAX_SEGMENT_SIZE = 65536;

/** Default most data bytes per request. */
export const BLK_DRIVER_MAX_REQUEST_BYTES = 1 << 20;

/** Status byte value written before submission: a device that never writes the status is caught. */
const STATUS_UNSET = 0xff;

/** Bytes of a slot's control area: the 16-byte header, then the status byte. */
const SLOT_CONTROL_BYTES = 32;

/** Offset of the status byte in a slot's control area. */
const STATUS_OFFSET = BLK_REQ_HEADER_SIZE;

/** Granularity of data buffer growth. */
const DATA_GRANULE = 4096;

/** Request types by operation. */
const REQ_TYPE: Record<BlkOp, number> = {
  read: BlkReqType.IN,
  write: BlkReqType.OUT,
  flush: BlkReqType.FLUSH,
  getId: BlkReqType.GET_ID,
  discard: BlkReqType.DISCARD,
  writeZeroes: BlkReqType.WRITE_ZEROES,
};

/** The status byte's name for messages. */
function statusName(status: number): string {
  if (status === BlkStatus.IOERR) return 'IOERR';
  if (status === BlkStatus.UNSUPP) return 'UNSUPP';
  if (status === BlkStatus.OK) return 'OK';
  return `0x${status.toString(16)}`;
}

/** Device-specific and ring features the driver understands. */
const BLK_WANTED = new Features([
  BlkFeature.SIZE_MAX,
  BlkFeature.SEG_MAX,
  BlkFeature.RO,
  BlkFeature.BLK_SIZE,
  BlkFeature.FLUSH,
  BlkFeature.CONFIG_WCE,
  BlkFeature.MQ,
  BlkFeature.DISCARD,
  BlkFeature.WRITE_ZEROES,
  FeatureBit.VERSION_1,
  FeatureBit.EVENT_IDX,
  FeatureBit.INDIRECT_DESC,
]);

/** A reusable request slot: its DMA areas and the request it carries. */
interface Slot {
  /** Control area: header at 0, status at {@link STATUS_OFFSET}. */
  readonly control: number;
  /** Data buffer, or -1. */
  data: number;
  /** Bytes of the data buffer. */
  dataCap: number;
  /** Id of the request in flight. */
  id: number;
  op: BlkOp;
  /** Bytes the device writes into the data buffer (read, getId). */
  inBytes: number;
  /** Destination of a read. */
  into: Uint8Array | null;
}

/** Limits of the discard or write-zeroes command. */
interface SegmentLimits {
  readonly maxSectors: number;
  readonly maxSegments: number;
}

/** What the configuration space told the driver at probe. */
interface BlkConfigSnapshot {
  capacity: number;
  blkSize: number;
  segMax: number;
  sizeMax: number;
  numQueues: number;
  writeback: number;
  discard: SegmentLimits | null;
  writeZeroes: SegmentLimits | null;
  writeZeroesMayUnmap: boolean;
}

/** Checks a positive multiple-of-512 option. */
function sectorMultiple(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < BLK_SECTOR_SIZE || value % BLK_SECTOR_SIZE !== 0) {
    throw new VirtioError(
      'INVALID_ARGUMENT',
      `blk: ${name} ${String(value)} is not a positive multiple of 512`,
    );
  }
  return value;
}

/** The guest side of a block device. */
export class BlkDriver {
  /** The transport the driver runs over. */
  readonly transport: VirtioTransportDriver;
  /** The negotiated features. */
  readonly features: Features;
  /** Capacity in 512-byte sectors; re-read on every configuration change. */
  capacity: number;
  /** `blk_size` (512 without VIRTIO_BLK_F_BLK_SIZE). */
  readonly blkSize: number;
  /** Longest data segment in bytes. */
  readonly maxSegmentSize: number;
  /** VIRTIO_BLK_F_RO negotiated: writes are refused before they reach the device. */
  readonly readOnly: boolean;
  /** Discard limits, or null without VIRTIO_BLK_F_DISCARD. */
  readonly discardLimits: SegmentLimits | null;
  /** Write-zeroes limits, or null without VIRTIO_BLK_F_WRITE_ZEROES. */
  readonly writeZeroesLimits: SegmentLimits | null;
  /** `write_zeroes_may_unmap`. */
  readonly writeZeroesMayUnmap: boolean;
  /** Configuration change notifications handled (DEVICE_NEEDS_RESET ones included). */
  configChanges = 0;

  private writebackMode: boolean;
  private segLimit: number;
  private requestLimit: number;
  private queues: DriverQueue<Slot>[] = [];
  private readonly slots: Slot[] = [];
  private readonly freeSlots: Slot[] = [];
  private readonly completions = new Map<number, BlkCompletion>();
  private nextId = 0;
  private needsReset = false;
  private failure: string | null = null;
  private removed = false;
  private capacityListener: ((capacity: number) => void) | null = null;

  private constructor(
    t: VirtioTransportDriver,
    features: Features,
    c: BlkConfigSnapshot,
    options: BlkDriverOptions,
  ) {
    this.transport = t;
    this.features = features;
    this.capacity = c.capacity;
    this.blkSize = c.blkSize;
    this.readOnly = features.has(BlkFeature.RO);
    this.writebackMode = c.writeback !== 0;
    this.discardLimits = c.discard;
    this.writeZeroesLimits = c.writeZeroes;
    this.writeZeroesMayUnmap = c.writeZeroesMayUnmap;
    let segSize = sectorMultiple('max segment size', options.maxSegmentSize ?? BLK_DRIVER_MAX_SEGMENT_SIZE);
    if (c.sizeMax > 0) segSize = Math.min(segSize, Math.floor(c.sizeMax / BLK_SECTOR_SIZE) * BLK_SECTOR_SIZE);
    this.maxSegmentSize = segSize;
    this.segLimit = c.segMax;
    const maxReq = sectorMultiple(
      'max request bytes',
      options.maxRequestBytes ?? BLK_DRIVER_MAX_REQUEST_BYTES,
    );
    this.requestLimit = Math.min(maxReq, c.segMax * segSize);
  }

  /**
   * Initializes the device (3.1.1), reads its configuration (2.4.1 generation loop), sets up the
   * request queues and sets DRIVER_OK. On failure after negotiation the device is marked FAILED and
   * everything set up is released.
   * @throws VirtioError `DEVICE_REJECTED` when the device is not a block device or its
   *   configuration is unusable (blk_size not a power of two from 512, size_max below 512)
   * @throws VirtioError `INVALID_ARGUMENT` for invalid options
   * @throws VirtioError whatever negotiation or queue setup throws
   */
  static probe(t: VirtioTransportDriver, options: BlkDriverOptions = {}): BlkDriver {
    if (t.deviceId !== DeviceId.BLOCK) {
      throw new VirtioError('DEVICE_REJECTED', `device id ${String(t.deviceId)} is not a block device`);
    }
    const wantedQueues = options.queues ?? 1;
    if (!Number.isInteger(wantedQueues) || wantedQueues < 1 || wantedQueues > 0xffff) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk: queue count ${String(wantedQueues)} is not in 1..65535`,
      );
    }
    // Options are checked before the device is touched.
    sectorMultiple('max segment size', options.maxSegmentSize ?? BLK_DRIVER_MAX_SEGMENT_SIZE);
    sectorMultiple('max request bytes', options.maxRequestBytes ?? BLK_DRIVER_MAX_REQUEST_BYTES);
    const features = beginInit(t, BLK_WANTED);
    let d: BlkDriver | null = null;
    try {
      const c = readConfigConsistent(t, () => BlkDriver.readConfig(t, features));
      // The queue size is known only after setup; without indirect descriptors a request (header,
      // data, status) must fit the ring, so seg_max is capped once the queues exist.
      d = new BlkDriver(t, features, c, options);
      const driver = d;
      t.onConfigChange(() => driver.configChanged());
      const count = features.has(BlkFeature.MQ) ? Math.min(wantedQueues, Math.max(1, c.numQueues)) : 1;
      const requests: QueueRequest[] = [];
      for (let i = 0; i < count; i++) {
        requests.push({ index: i, callback: () => driver.harvest(i), size: options.queueSize });
      }
      driver.queues = t.setupQueues(requests) as DriverQueue<Slot>[];
      driver.capSegments();
      finishInit(t);
    } catch (e) {
      if (d !== null) d.abort();
      else {
        try {
          failDevice(t);
        } catch {
          // Keep the original error.
        }
      }
      throw e;
    }
    return d;
  }

  /** Reads the configuration fields the negotiated features make valid (5.2.4). */
  private static readConfig(t: VirtioTransportDriver, f: Features): BlkConfigSnapshot {
    const u32 = (off: number): number => t.readConfig(off, 4);
    const c: BlkConfigSnapshot = {
      capacity: readConfig64(t, BlkConfig.capacity),
      blkSize: BLK_SECTOR_SIZE,
      segMax: 1,
      sizeMax: 0,
      numQueues: 1,
      writeback: 0,
      discard: null,
      writeZeroes: null,
      writeZeroesMayUnmap: false,
    };
    if (f.has(BlkFeature.BLK_SIZE)) {
      const v = u32(BlkConfig.blkSize);
      if (v < BLK_SECTOR_SIZE || (v & (v - 1)) !== 0) {
        throw new VirtioError('DEVICE_REJECTED', `blk: blk_size ${String(v)} is not a power of two from 512`);
      }
      c.blkSize = v;
    }
    // Linux: without SEG_MAX (or with 0), one data segment per request.
    if (f.has(BlkFeature.SEG_MAX)) c.segMax = Math.max(1, u32(BlkConfig.segMax));
    if (f.has(BlkFeature.SIZE_MAX)) {
      const v = u32(BlkConfig.sizeMax);
      if (v < BLK_SECTOR_SIZE) {
        throw new VirtioError('DEVICE_REJECTED', `blk: size_max ${String(v)} is below one sector`);
      }
      c.sizeMax = v;
    }
    if (f.has(BlkFeature.MQ)) c.numQueues = t.readConfig(BlkConfig.numQueues, 2);
    if (f.has(BlkFeature.CONFIG_WCE)) c.writeback = t.readConfig(BlkConfig.writeback, 1);
    else if (f.has(BlkFeature.FLUSH)) c.writeback = 1;
    // A zero limit is read as "no limit" for sectors and "one" for segments, as Linux does.
    if (f.has(BlkFeature.DISCARD)) {
      c.discard = {
        maxSectors: u32(BlkConfig.maxDiscardSectors) || 0xffff_ffff,
        maxSegments: u32(BlkConfig.maxDiscardSeg) || 1,
      };
    }
    if (f.has(BlkFeature.WRITE_ZEROES)) {
      c.writeZeroes = {
        maxSectors: u32(BlkConfig.maxWriteZeroesSectors) || 0xffff_ffff,
        maxSegments: u32(BlkConfig.maxWriteZeroesSeg) || 1,
      };
      c.writeZeroesMayUnmap = t.readConfig(BlkConfig.writeZeroesMayUnmap, 1) !== 0;
    }
    return c;
  }

  /**
   * Without VIRTIO_F_INDIRECT_DESC a request takes header + data + status descriptors from the ring
   * (2.7.5.3.1: no chain longer than the queue size), so seg_max is capped at queue size - 2.
   */
  private capSegments(): void {
    if (this.features.has(FeatureBit.INDIRECT_DESC)) return;
    let smallest = Number.POSITIVE_INFINITY;
    for (const q of this.queues) smallest = Math.min(smallest, q.size);
    const cap = Math.max(1, smallest - 2);
    if (cap < this.segLimit) {
      this.segLimit = cap;
      this.requestLimit = Math.min(this.requestLimit, cap * this.maxSegmentSize);
    }
  }

  /** Undoes a failed probe. Never throws. */
  private abort(): void {
    abandonDevice(this.transport, () => {
      this.queues = [];
      this.releaseSlots();
    });
  }

  /** Most data segments per request (seg_max, capped by the queue without indirect descriptors). */
  get segMax(): number {
    return this.segLimit;
  }

  /** Most data bytes per request (a multiple of 512). */
  get maxRequestBytes(): number {
    return this.requestLimit;
  }

  /** Number of request queues in use. */
  get numQueues(): number {
    return this.queues.length;
  }

  /** Whether the device cache is in writeback mode (the `writeback` field, or FLUSH without CONFIG_WCE). */
  get writeback(): boolean {
    return this.writebackMode;
  }

  /** Requests submitted and not yet completed. */
  get inFlight(): number {
    return this.slots.length - this.freeSlots.length;
  }

  /** Registers a listener for capacity changes (5.2.4: the device may resize and notify). */
  onCapacityChange(listener: (capacity: number) => void): void {
    this.capacityListener = listener;
  }

  // ---------------------------------------------------------------------------------------------
  // Interrupt side.

  /** Queue callback (from the interrupt handler): completes every used request of queue `i`. */
  private harvest(i: number): void {
    const q = this.queues[i];
    if (q === undefined) return;
    for (let u = q.getUsed(); u !== null; u = q.getUsed()) this.complete(u.token);
  }

  /** Records the completion of `slot` and frees it. */
  private complete(slot: Slot): void {
    const mem = this.transport.mem;
    const status = mem.read8(slot.control + STATUS_OFFSET);
    let data: Uint8Array | null = null;
    if (slot.op === 'read' || slot.op === 'getId') {
      data = slot.into ?? new Uint8Array(slot.inBytes);
      if (status === BlkStatus.OK) mem.readBytes(slot.data, data);
    }
    this.completions.set(slot.id, { id: slot.id, op: slot.op, status, data });
    slot.into = null;
    this.freeSlots.push(slot);
  }

  /**
   * Configuration change: DEVICE_NEEDS_RESET (2.1.2) stops the driver; otherwise the capacity is
   * re-read (a resize).
   */
  private configChanged(): void {
    this.configChanges++;
    const t = this.transport;
    if ((t.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) !== 0) {
      this.needsReset = true;
      return;
    }
    try {
      const capacity = readConfig64(t, BlkConfig.capacity);
      if (capacity !== this.capacity) {
        this.capacity = capacity;
        this.capacityListener?.(capacity);
      }
    } catch (e) {
      // A generation that never settles: the device is broken.
      this.needsReset = true;
      this.failure ??= e instanceof Error ? e.message : String(e);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Submission.

  /** Throws unless requests may be issued. */
  private checkUsable(): void {
    if (this.removed || this.queues.length === 0)
      throw new VirtioError('INVALID_STATE', 'blk: driver removed');
    if (this.failure !== null) throw new VirtioError('DEVICE_FAILED', `blk: ${this.failure}`);
    const reason = this.brokenReason();
    if (reason !== null) throw this.giveUp(reason);
  }

  /** Why the device cannot be used any more, or null. */
  private brokenReason(): string | null {
    if (this.needsReset) return 'device needs reset';
    for (const q of this.queues) if (q.broken !== null) return `queue ${String(q.index)}: ${q.broken}`;
    return null;
  }

  /** Gives up on the device: FAILED status, and every later request refused. */
  private giveUp(reason: string): VirtioError {
    if (this.failure === null) {
      this.failure = reason;
      failDevice(this.transport);
    }
    return new VirtioError('DEVICE_FAILED', `blk: ${this.failure}`);
  }

  /** Checks `[sector, sector + sectors)` against the capacity (5.2.6.1). */
  private checkRange(what: string, sector: number, sectors: number, maxSectors: number): void {
    if (!Number.isSafeInteger(sector) || sector < 0 || !Number.isSafeInteger(sectors) || sectors < 1) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk: invalid ${what} of ${String(sectors)} sectors at ${String(sector)}`,
      );
    }
    if (sectors > maxSectors) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk: ${what} of ${String(sectors)} sectors exceeds ${String(maxSectors)}`,
      );
    }
    // 5.2.6.1: "A driver MUST NOT submit a request which would cause a read or write beyond capacity."
    if (sector + sectors > this.capacity) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk: ${what} of ${String(sectors)} sectors at ${String(sector)} runs past capacity ${String(this.capacity)}`,
      );
    }
  }

  /** Throws when `op` cannot be sent to this device. */
  private checkOp(op: BlkOp): SegmentLimits | null {
    if ((op === 'write' || op === 'discard' || op === 'writeZeroes') && this.readOnly) {
      throw new VirtioError('INVALID_STATE', `blk: ${op} on a read-only device`);
    }
    if (op === 'flush' && !this.features.has(BlkFeature.FLUSH)) {
      throw new VirtioError('INVALID_STATE', 'blk: flush is not negotiated');
    }
    if (op === 'discard') {
      if (this.discardLimits === null)
        throw new VirtioError('INVALID_STATE', 'blk: discard is not negotiated');
      return this.discardLimits;
    }
    if (op === 'writeZeroes') {
      if (this.writeZeroesLimits === null) {
        throw new VirtioError('INVALID_STATE', 'blk: write zeroes is not negotiated');
      }
      return this.writeZeroesLimits;
    }
    return null;
  }

  /** A free slot whose data buffer holds at least `bytes`. */
  private takeSlot(bytes: number): Slot {
    const dma = this.transport.dma;
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      slot = {
        control: dma.alloc(SLOT_CONTROL_BYTES, 16),
        data: -1,
        dataCap: 0,
        id: -1,
        op: 'flush',
        inBytes: 0,
        into: null,
      };
      this.slots.push(slot);
    }
    if (bytes > slot.dataCap) {
      const cap = Math.ceil(bytes / DATA_GRANULE) * DATA_GRANULE;
      let gpa: number;
      try {
        gpa = dma.alloc(cap, 64);
      } catch (e) {
        this.freeSlots.push(slot);
        throw e;
      }
      if (slot.data >= 0) dma.release(slot.data);
      slot.data = gpa;
      slot.dataCap = cap;
    }
    return slot;
  }

  /** Splits `[addr, addr + bytes)` into segments of at most the maximum segment size. */
  private dataSegments(addr: number, bytes: number): Segment[] {
    const segs: Segment[] = [];
    for (let off = 0; off < bytes; off += this.maxSegmentSize) {
      segs.push({ addr: addr + off, len: Math.min(this.maxSegmentSize, bytes - off) });
    }
    return segs;
  }

  /**
   * Submits one request on queue `queue` without waiting. Returns its id, or null when the queue
   * has no free descriptors (harvest completions first).
   * @throws VirtioError `INVALID_ARGUMENT` for a request past the capacity, over a limit, of a bad
   *   length, or a queue number out of range
   * @throws VirtioError `INVALID_STATE` for an operation the device did not negotiate (or a write
   *   to a read-only device), or after {@link BlkDriver.remove}
   * @throws VirtioError `DEVICE_FAILED` when the device was given up on
   */
  submit(request: BlkRequest, queue = 0): number | null {
    this.checkUsable();
    const q = this.queues[queue];
    if (!Number.isInteger(queue) || q === undefined) {
      throw new VirtioError('INVALID_ARGUMENT', `blk: no request queue ${String(queue)}`);
    }
    const limits = this.checkOp(request.op);
    const maxSectors = this.maxRequestBytes / BLK_SECTOR_SIZE;
    let sector = 0;
    let dataBytes = 0;
    let inBytes = 0;
    switch (request.op) {
      case 'read':
        this.checkRange('read', request.sector, request.sectors, maxSectors);
        sector = request.sector;
        dataBytes = inBytes = request.sectors * BLK_SECTOR_SIZE;
        if (request.into !== undefined && request.into.length !== inBytes) {
          throw new VirtioError(
            'INVALID_ARGUMENT',
            `blk: read destination of ${String(request.into.length)} bytes for ${String(inBytes)}`,
          );
        }
        break;
      case 'write':
        if (request.data.length % BLK_SECTOR_SIZE !== 0) {
          throw new VirtioError(
            'INVALID_ARGUMENT',
            `blk: write of ${String(request.data.length)} bytes is not a multiple of 512`,
          );
        }
        this.checkRange('write', request.sector, request.data.length / BLK_SECTOR_SIZE, maxSectors);
        sector = request.sector;
        dataBytes = request.data.length;
        break;
      case 'getId':
        dataBytes = inBytes = BLK_ID_BYTES;
        break;
      case 'discard':
      case 'writeZeroes': {
        const l = limits as SegmentLimits;
        const n = request.ranges.length;
        if (n < 1 || n > l.maxSegments) {
          throw new VirtioError(
            'INVALID_ARGUMENT',
            `blk: ${request.op} of ${String(n)} ranges (1..${String(l.maxSegments)})`,
          );
        }
        for (const r of request.ranges) this.checkRange(request.op, r.sector, r.sectors, l.maxSectors);
        dataBytes = n * BLK_DISCARD_SEGMENT_SIZE;
        break;
      }
      case 'flush':
        break;
    }
    if (q.numFree < 1) return null;
    const slot = this.takeSlot(dataBytes);
    const mem = this.transport.mem;
    // 5.2.6: le32 type, le32 reserved, le64 sector; 5.2.6.1: sector 0 for everything but IN/OUT.
    mem.write32(slot.control, REQ_TYPE[request.op]);
    mem.write32(slot.control + 4, 0);
    mem.write64(slot.control + 8, sector);
    mem.write8(slot.control + STATUS_OFFSET, STATUS_UNSET);
    const header: Segment = { addr: slot.control, len: BLK_REQ_HEADER_SIZE };
    const status: Segment = { addr: slot.control + STATUS_OFFSET, len: 1 };
    let out: Segment[];
    let inSegs: Segment[];
    switch (request.op) {
      case 'read':
      case 'getId':
        out = [header];
        inSegs = this.dataSegments(slot.data, inBytes);
        inSegs.push(status);
        break;
      case 'write':
        mem.writeBytes(slot.data, request.data);
        out = [header, ...this.dataSegments(slot.data, dataBytes)];
        inSegs = [status];
        break;
      case 'discard':
      case 'writeZeroes':
        // 5.2.6: struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags }.
        for (let k = 0; k < request.ranges.length; k++) {
          const r = request.ranges[k];
          const e = slot.data + k * BLK_DISCARD_SEGMENT_SIZE;
          mem.write64(e, r.sector);
          mem.write32(e + 8, r.sectors);
          // 5.2.6.1: "the driver MUST NOT set the unmap flag" for discard.
          mem.write32(
            e + 12,
            request.op === 'writeZeroes' && r.unmap === true ? BLK_WRITE_ZEROES_FLAG_UNMAP : 0,
          );
        }
        out = [header, { addr: slot.data, len: dataBytes }];
        inSegs = [status];
        break;
      default:
        out = [header];
        inSegs = [status];
    }
    slot.id = this.nextId;
    this.nextId = (this.nextId + 1) % Number.MAX_SAFE_INTEGER;
    slot.op = request.op;
    slot.inBytes = inBytes;
    slot.into = request.op === 'read' ? (request.into ?? null) : null;
    if (!q.add(out, inSegs, slot)) {
      this.freeSlots.push(slot);
      return null;
    }
    if (q.kickPrepare()) this.transport.notify(q);
    return slot.id;
  }

  /**
   * Takes every completed request without waiting: harvests the used rings directly (polling),
   * then returns what the interrupt handler and this call collected, in completion order.
   * @throws VirtioError `DEVICE_FAILED` when the device returned nonsense or needs a reset
   */
  poll(): BlkCompletion[] {
    if (this.removed) throw new VirtioError('INVALID_STATE', 'blk: driver removed');
    for (let i = 0; i < this.queues.length; i++) this.harvest(i);
    const reason = this.brokenReason();
    if (reason !== null) throw this.giveUp(reason);
    const out = [...this.completions.values()];
    this.completions.clear();
    return out;
  }

  /**
   * Halts until at least one request completes (or none is in flight), then returns like
   * {@link BlkDriver.poll}.
   * @throws VirtioError `DEVICE_FAILED` as poll; `TIMEOUT` when no completion can arrive (the
   *   device is then marked FAILED)
   */
  wait(): BlkCompletion[] {
    this.checkUsable();
    this.halt(() => this.completions.size > 0 || this.inFlight === 0, 'blk wait');
    return this.poll();
  }

  /** waitUntil with failure detection; a timeout gives up on the device. */
  private halt(done: () => boolean, what: string): void {
    try {
      waitUntil(this.transport.platform, () => done() || this.brokenReason() !== null, what);
    } catch (e) {
      if (e instanceof VirtioError && e.code === 'TIMEOUT') this.giveUp(`no completion: ${e.message}`);
      throw e;
    }
    const reason = this.brokenReason();
    if (reason !== null) throw this.giveUp(reason);
  }

  /**
   * Submits and waits for one request (the synchronous path); a full queue waits for completions
   * of other requests first (they stay available to {@link BlkDriver.poll}).
   * @throws VirtioError `BACKEND_IO` when the status is not OK, with the status name
   */
  private run(request: BlkRequest, what: string): BlkCompletion {
    let id = this.submit(request);
    while (id === null) {
      const before = this.completions.size;
      this.halt(() => this.completions.size > before, what);
      id = this.submit(request);
    }
    const wanted = id;
    this.halt(() => this.completions.has(wanted), what);
    const c = this.completions.get(wanted) as BlkCompletion;
    this.completions.delete(wanted);
    if (c.status !== BlkStatus.OK) {
      throw new VirtioError('BACKEND_IO', `blk: ${what} failed with status ${statusName(c.status)}`);
    }
    return c;
  }

  // ---------------------------------------------------------------------------------------------
  // Synchronous helpers.

  /**
   * Reads `count` sectors from `sector` (split into requests of at most
   * {@link BlkDriver.maxRequestBytes}).
   * @throws VirtioError `INVALID_ARGUMENT` past the capacity; `BACKEND_IO` for a failed request;
   *   `DEVICE_FAILED` / `TIMEOUT` for a misbehaving device
   */
  read(sector: number, count: number): Uint8Array {
    this.checkUsable();
    this.checkRange('read', sector, count, Number.MAX_SAFE_INTEGER);
    const out = new Uint8Array(count * BLK_SECTOR_SIZE);
    const step = this.maxRequestBytes / BLK_SECTOR_SIZE;
    for (let done = 0; done < count; done += step) {
      const n = Math.min(step, count - done);
      const into = out.subarray(done * BLK_SECTOR_SIZE, (done + n) * BLK_SECTOR_SIZE);
      this.run(
        { op: 'read', sector: sector + done, sectors: n, into },
        `read of ${String(n)} sectors at ${String(sector + done)}`,
      );
    }
    return out;
  }

  /**
   * Writes `data` (a non-empty multiple of 512 bytes) at `sector`.
   * @throws VirtioError `INVALID_ARGUMENT` for a bad length or past the capacity; `INVALID_STATE`
   *   on a read-only device; `BACKEND_IO` for a failed request
   */
  write(sector: number, data: Uint8Array): void {
    this.checkUsable();
    this.checkOp('write');
    if (data.length === 0 || data.length % BLK_SECTOR_SIZE !== 0) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `blk: write of ${String(data.length)} bytes is not a non-empty multiple of 512`,
      );
    }
    const count = data.length / BLK_SECTOR_SIZE;
    this.checkRange('write', sector, count, Number.MAX_SAFE_INTEGER);
    const step = this.maxRequestBytes / BLK_SECTOR_SIZE;
    for (let done = 0; done < count; done += step) {
      const n = Math.min(step, count - done);
      const part = data.subarray(done * BLK_SECTOR_SIZE, (done + n) * BLK_SECTOR_SIZE);
      this.run(
        { op: 'write', sector: sector + done, data: part },
        `write of ${String(n)} sectors at ${String(sector + done)}`,
      );
    }
  }

  /**
   * Makes completed writes durable (VIRTIO_BLK_T_FLUSH). Without VIRTIO_BLK_F_FLUSH the device is
   * write-through and there is nothing to send.
   * @throws VirtioError `BACKEND_IO` for a failed flush
   */
  flush(): void {
    this.checkUsable();
    if (!this.features.has(BlkFeature.FLUSH)) return;
    this.run({ op: 'flush' }, 'flush');
  }

  /**
   * The device ID string (VIRTIO_BLK_T_GET_ID: up to 20 bytes, NUL-padded ASCII).
   * @throws VirtioError `BACKEND_IO` when the device fails or does not support the request
   */
  getId(): string {
    this.checkUsable();
    const c = this.run({ op: 'getId' }, 'get id');
    const bytes = c.data as Uint8Array;
    let end = bytes.indexOf(0);
    if (end < 0) end = bytes.length;
    let s = '';
    for (let i = 0; i < end; i++) s += String.fromCharCode(bytes[i]);
    return s;
  }

  /** Splits `[sector, sector + count)` into requests of ranges within `limits` and runs them. */
  private ranges(
    op: 'discard' | 'writeZeroes',
    sector: number,
    count: number,
    limits: SegmentLimits,
    unmap: boolean,
  ): void {
    this.checkRange(op, sector, count, Number.MAX_SAFE_INTEGER);
    let at = sector;
    const end = sector + count;
    while (at < end) {
      const ranges: BlkRange[] = [];
      while (at < end && ranges.length < limits.maxSegments) {
        const n = Math.min(limits.maxSectors, end - at);
        ranges.push({ sector: at, sectors: n, unmap });
        at += n;
      }
      this.run(
        { op, ranges },
        `${op === 'discard' ? 'discard' : 'write zeroes'} at ${String(ranges[0].sector)}`,
      );
    }
  }

  /**
   * Discards `count` sectors from `sector` (VIRTIO_BLK_T_DISCARD), split by the device's limits.
   * The alignment hint `discard_sector_alignment` is not applied.
   * @throws VirtioError `INVALID_STATE` without VIRTIO_BLK_F_DISCARD or on a read-only device;
   *   `INVALID_ARGUMENT` past the capacity; `BACKEND_IO` for a failed request
   */
  discard(sector: number, count: number): void {
    this.checkUsable();
    const limits = this.checkOp('discard') as SegmentLimits;
    this.ranges('discard', sector, count, limits, false);
  }

  /**
   * Writes zeroes to `count` sectors from `sector` (VIRTIO_BLK_T_WRITE_ZEROES), split by the
   * device's limits; `unmap` lets the device deallocate the range.
   * @throws VirtioError `INVALID_STATE` without VIRTIO_BLK_F_WRITE_ZEROES or on a read-only
   *   device; `INVALID_ARGUMENT` past the capacity; `BACKEND_IO` for a failed request
   */
  writeZeroes(sector: number, count: number, unmap = false): void {
    this.checkUsable();
    const limits = this.checkOp('writeZeroes') as SegmentLimits;
    this.ranges('writeZeroes', sector, count, limits, unmap);
  }

  /**
   * Switches the cache between writeback (true) and writethrough (false) through the `writeback`
   * configuration field (5.2.6.1, needs VIRTIO_BLK_F_CONFIG_WCE), then reads it back.
   * @throws VirtioError `INVALID_STATE` without VIRTIO_BLK_F_CONFIG_WCE; `BACKEND_IO` when the
   *   device keeps the other mode
   */
  setWriteback(on: boolean): void {
    this.checkUsable();
    if (!this.features.has(BlkFeature.CONFIG_WCE)) {
      throw new VirtioError('INVALID_STATE', 'blk: config_wce is not negotiated');
    }
    const t = this.transport;
    t.writeConfig(BlkConfig.writeback, 1, on ? 1 : 0);
    const now = t.readConfig(BlkConfig.writeback, 1);
    this.writebackMode = now !== 0;
    if (this.writebackMode !== on) {
      throw new VirtioError('BACKEND_IO', `blk: device kept writeback ${String(now)}`);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Teardown.

  private releaseSlots(): void {
    const dma = this.transport.dma;
    for (const s of this.slots) {
      dma.release(s.control);
      if (s.data >= 0) dma.release(s.data);
    }
    this.slots.length = 0;
    this.freeSlots.length = 0;
    this.completions.clear();
  }

  /**
   * Unbinds the driver: resets the device, releases the queues and every DMA slot. Requests still
   * in flight are dropped. Everything is released even when the device misbehaves; calling it
   * again does nothing.
   * @throws VirtioError `DEVICE_FAILED` when the device did not reset or kept a queue live
   */
  remove(): void {
    if (this.removed) return;
    this.removed = true;
    removeDevice(this.transport, () => {
      this.queues = [];
      this.releaseSlots();
    });
  }
}
