/**
 * The guest side of virtio over MMIO (virtio 1.2+, 4.2.3 "Driver Requirements"): what a guest
 * kernel's virtio-mmio platform driver does, following the flow of Linux
 * `drivers/virtio/virtio_mmio.c` (written from the spec and that flow, not from its code).
 *
 * ```
 * probe     MagicValue, Version (1 or 2), DeviceID (0: empty slot), VendorID; legacy: GuestPageSize
 * features  DeviceFeaturesSel/DeviceFeatures x4 words; DriverFeaturesSel/DriverFeatures x4 words
 * queues    request the wired line, then per queue: QueueSel, QueueReady == 0 (legacy QueuePFN),
 *           QueueNumMax, rings from the DMA allocator, QueueNum, Desc/Driver/Device Low/High,
 *           QueueReady = 1 (legacy: QueueAlign, QueuePFN)
 * interrupt InterruptStatus -> InterruptACK, config handler for bit 1, every queue for bit 0
 * notify    QueueNotify = queue index, or the 32-bit notification data (VIRTIO_F_NOTIFICATION_DATA)
 * ```
 *
 * Device drivers see only {@link VirtioTransportDriver}; this class is the one place that knows the
 * register layout. It counts nothing itself: the platform bus counts every access.
 *
 * @packageDocumentation
 */

import { Features, type QueueRequest, type VirtioTransportDriver } from '../device/index.js';
import type { GuestAllocator, GuestMemory } from '../memory/index.js';
import {
  AVAIL_RING_ALIGN,
  DESC_TABLE_ALIGN,
  DeviceStatus,
  FEATURE_WORDS,
  FeatureBit,
  hex,
  InterruptBit,
  LEGACY_DEFAULT_PAGE_SIZE,
  MAX_QUEUE_SIZE,
  MMIO_MAGIC_VALUE,
  MMIO_VERSION_LEGACY,
  MMIO_VERSION_MODERN,
  MmioLegacyReg,
  MmioReg,
  USED_RING_ALIGN,
  VirtioError,
} from '../spec/index.js';
import {
  DriverQueue,
  isPowerOfTwo,
  legacyLayout,
  legacyRingBytes,
  type RingAddresses,
} from '../virtqueue/index.js';
import type { GuestIrqPlatform, MmioAccess } from './types.js';

/** Options of {@link MmioDriver.probe}: what the machine description tells the guest. */
export interface MmioDriverOptions {
  /** Guest memory as the guest sees it. */
  mem: GuestMemory;
  /** The guest's DMA allocator, for rings and (through the drivers) buffers. */
  dma: GuestAllocator;
  /** The guest platform: wired interrupt lines and halting. */
  platform: GuestIrqPlatform;
  /**
   * The device's interrupt lines from the machine description (Linux `platform_get_irq(pdev, i)`).
   * The standard transport uses `irqLines[0]` only.
   */
  irqLines: readonly number[];
  /** Name for messages (default `virtio-mmio`). */
  name?: string;
  /** Legacy (Version 1): the guest page size written to GuestPageSize; a power of two, default 4096. */
  pageSize?: number;
}

/** Status reads after a reset before the device is declared dead (2.4.2: wait for 0). */
export const MMIO_RESET_POLL_LIMIT = 1000;

/** QueueReset reads after a queue reset before the device is declared dead (2.6.1, 4.2.2.1). */
export const MMIO_QUEUE_RESET_POLL_LIMIT = 1000;

/** 2^32, to split 64-bit addresses into register halves without BigInt. */
const TWO_POW_32 = 2 ** 32;

/** The interrupt status bits the driver understands and acknowledges (4.2.2). */
const KNOWN_INTERRUPT_BITS = InterruptBit.VRING | InterruptBit.CONFIG;

/**
 * Transport bits this driver implements, as Linux `vring_transport_features` plus RING_RESET (which
 * Linux implements only for virtio-pci). Everything else in 24..49 is cleared before it is written.
 */
const MODERN_TRANSPORT_BITS: readonly number[] = [
  FeatureBit.INDIRECT_DESC,
  FeatureBit.EVENT_IDX,
  FeatureBit.VERSION_1,
  FeatureBit.RING_RESET,
  FeatureBit.NOTIFICATION_DATA,
];

/**
 * Transport bits over the legacy layout: the ring features only. The legacy register file has no
 * QueueReset, and notification data is a virtio 1.x mechanism.
 */
const LEGACY_TRANSPORT_BITS: readonly number[] = [FeatureBit.INDIRECT_DESC, FeatureBit.EVENT_IDX];

/** First bit past the transport range that drivers may still use for device types (section 6). */
const DEVICE_BITS_HIGH_FIRST = 50;

/** Last device-type bit of the low range (section 6: "0 to 23"). */
const DEVICE_BITS_LOW_LAST = 23;

/** One set-up queue: the driver-side ring, its callback and the DMA allocations behind it. */
interface QueueSlot {
  /** Queue number. */
  readonly index: number;
  /** The driver-side ring (null while being set up); replaced by {@link MmioDriver.resetQueue}. */
  queue: DriverQueue | null;
  /** Called from the interrupt handler for a used buffer notification; null when polled. */
  readonly callback: (() => void) | null;
  /** Guest physical addresses to release to the DMA allocator. */
  readonly allocations: number[];
  /** Queue size. */
  readonly size: number;
  /** Where the areas are (null until allocated). */
  rings: RingAddresses | null;
}

/** Largest power of two not above `n` (n >= 1). */
function floorPowerOfTwo(n: number): number {
  return 2 ** Math.floor(Math.log2(n));
}

/**
 * The guest-side virtio-mmio driver of one device window: a {@link VirtioTransportDriver} over an
 * {@link MmioAccess}. Create it with {@link MmioDriver.probe}.
 */
export class MmioDriver implements VirtioTransportDriver {
  /** Virtio device type (DeviceID). */
  readonly deviceId: number;
  /** VendorID register value. */
  readonly vendorId: number;
  /** Register layout version: 2 (modern) or 1 (legacy). */
  readonly version: 1 | 2;
  /** Guest memory as the guest sees it. */
  readonly mem: GuestMemory;
  /** The guest's DMA allocator. */
  readonly dma: GuestAllocator;
  /** The guest platform. */
  readonly platform: GuestIrqPlatform;
  /** Interrupts arrive on one wired line. */
  readonly interruptMode = 'line';
  /** Name for messages. */
  readonly name: string;
  /** Legacy: the guest page size (QueuePFN unit and QueueAlign). */
  readonly pageSize: number;

  private readonly access: MmioAccess;
  private readonly irqLines: readonly number[];
  private readonly legacy: boolean;
  private negotiated = new Features();
  /** Cached negotiated bits used on hot paths. */
  private notificationData = false;
  private ringReset = false;
  private eventIdx = false;
  private indirectDesc = false;
  /** Set-up queues in setup order (the interrupt handler walks this array; no allocation). */
  private readonly slots: QueueSlot[] = [];
  /** Set-up queues by queue number. */
  private readonly byIndex = new Map<number, QueueSlot>();
  /** The line whose handler is installed, or -1. */
  private irqLine = -1;
  private configHandler: (() => void) | null = null;
  /** The interrupt handler, bound once. */
  private readonly interruptHandler: () => void;

  private constructor(
    access: MmioAccess,
    options: MmioDriverOptions,
    version: 1 | 2,
    deviceId: number,
    vendorId: number,
    pageSize: number,
    name: string,
  ) {
    this.access = access;
    this.mem = options.mem;
    this.dma = options.dma;
    this.platform = options.platform;
    this.irqLines = options.irqLines;
    this.version = version;
    this.legacy = version === MMIO_VERSION_LEGACY;
    this.deviceId = deviceId;
    this.vendorId = vendorId;
    this.pageSize = pageSize;
    this.name = name;
    this.interruptHandler = () => this.handleInterrupt();
  }

  /**
   * Probes the window behind `access` (Linux `virtio_mmio_probe`): checks MagicValue and Version,
   * returns null for DeviceID 0 (4.2.3.1.1: "if its value is zero (0x0) MUST abort initialization
   * and MUST NOT access any other register": an empty slot), and for a legacy device writes
   * GuestPageSize (4.2.4).
   * @throws VirtioError `DEVICE_REJECTED` for a wrong MagicValue or a Version other than 1 or 2
   * @throws VirtioError `INVALID_ARGUMENT` for a page size that is not a power of two from 4096 up
   */
  static probe(access: MmioAccess, options: MmioDriverOptions): MmioDriver | null {
    const name = options.name ?? 'virtio-mmio';
    const pageSize = options.pageSize ?? LEGACY_DEFAULT_PAGE_SIZE;
    if (!isPowerOfTwo(pageSize) || pageSize < LEGACY_DEFAULT_PAGE_SIZE) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${name}: page size ${String(pageSize)} is not a power of two from 4096`,
      );
    }
    // 4.2.3.1.1: "The driver MUST ignore a device with MagicValue which is not 0x74726976".
    const magic = access.read32(MmioReg.MagicValue);
    if (magic !== MMIO_MAGIC_VALUE) {
      throw new VirtioError('DEVICE_REJECTED', `${name}: wrong magic value ${hex(magic)}`);
    }
    // 4.2.3.1.1: "The driver MUST ignore a device with Version which is not 0x2" (legacy drivers
    // accept 1 as well, as Linux does).
    const version = access.read32(MmioReg.Version);
    if (version !== MMIO_VERSION_MODERN && version !== MMIO_VERSION_LEGACY) {
      throw new VirtioError('DEVICE_REJECTED', `${name}: version ${String(version)} not supported`);
    }
    // 4.2.3.1.1: DeviceID zero: "MUST abort initialization and MUST NOT access any other register".
    const deviceId = access.read32(MmioReg.DeviceID);
    if (deviceId === 0) return null;
    const vendorId = access.read32(MmioReg.VendorID);
    if (version === MMIO_VERSION_LEGACY) {
      // 4.2.4: "The driver MUST write the guest page size in bytes to GuestPageSize" before using
      // QueuePFN; written once at probe, as Linux does.
      access.write32(MmioLegacyReg.GuestPageSize, pageSize);
    }
    return new MmioDriver(access, options, version, deviceId, vendorId, pageSize, name);
  }

  // ---------------------------------------------------------------------------------------------
  // Status and features.

  /** The device status (the low 8 bits of the Status register). */
  getStatus(): number {
    return this.access.read32(MmioReg.Status) & 0xff;
  }

  /**
   * Writes the device status.
   * @throws VirtioError `INVALID_ARGUMENT` for 0 (a reset: use {@link MmioDriver.reset}) or a value
   *   outside 1..255
   */
  setStatus(status: number): void {
    if (!Number.isInteger(status) || status <= 0 || status > 0xff) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${this.name}: status ${String(status)} is not in 1..255 (use reset for 0)`,
      );
    }
    this.access.write32(MmioReg.Status, status);
  }

  /**
   * Resets the device: writes 0 to Status and reads it back until it is 0 (2.4.2: "After writing 0
   * to device_status, the driver MUST wait for a read of device_status to return 0 before
   * reinitializing the device"). Bounded by {@link MMIO_RESET_POLL_LIMIT} reads.
   * @throws VirtioError `DEVICE_FAILED` when the status never reads 0
   */
  reset(): void {
    this.access.write32(MmioReg.Status, 0);
    for (let i = 0; i < MMIO_RESET_POLL_LIMIT; i++) {
      if (this.access.read32(MmioReg.Status) === 0) return;
    }
    throw new VirtioError(
      'DEVICE_FAILED',
      `${this.name}: status still not 0 after ${String(MMIO_RESET_POLL_LIMIT)} reads following a reset`,
    );
  }

  /** The offered features, all {@link FEATURE_WORDS} words through DeviceFeaturesSel (4.2.2). */
  getFeatures(): Features {
    const f = new Features();
    for (let i = 0; i < FEATURE_WORDS; i++) {
      this.access.write32(MmioReg.DeviceFeaturesSel, i);
      f.words[i] = this.access.read32(MmioReg.DeviceFeatures);
    }
    return f;
  }

  /**
   * Writes the accepted features (Linux `vm_finalize_features`): device-type bits (0..23, 50..127)
   * pass, transport bits only if this driver implements them. A modern device must end up with
   * VIRTIO_F_VERSION_1 (4.2.3.1.1 / 6.1: "A driver MUST accept VIRTIO_F_VERSION_1 if it is
   * offered"; Linux: version 2 devices "must provide VIRTIO_F_VERSION_1"); otherwise the device is
   * marked FAILED and nothing is written.
   * @throws VirtioError `FEATURES_REJECTED` for a version 2 device without VIRTIO_F_VERSION_1
   */
  finalizeFeatures(accepted: Features): Features {
    const kept = new Features();
    for (let bit = 0; bit <= DEVICE_BITS_LOW_LAST; bit++) if (accepted.has(bit)) kept.set(bit);
    for (let bit = DEVICE_BITS_HIGH_FIRST; bit < FEATURE_WORDS * 32; bit++)
      if (accepted.has(bit)) kept.set(bit);
    for (const bit of this.legacy ? LEGACY_TRANSPORT_BITS : MODERN_TRANSPORT_BITS) {
      if (accepted.has(bit)) kept.set(bit);
    }
    if (!this.legacy && !kept.has(FeatureBit.VERSION_1)) {
      // 3.1.1: "If any of these steps go irrecoverably wrong, the driver SHOULD set the FAILED
      // status bit to indicate that it has given up on the device".
      this.setStatus(this.getStatus() | DeviceStatus.FAILED);
      throw new VirtioError(
        'FEATURES_REJECTED',
        `${this.name}: version 2 device without virtio_f_version_1 (features ${accepted.toString()})`,
      );
    }
    for (let i = 0; i < FEATURE_WORDS; i++) {
      this.access.write32(MmioReg.DriverFeaturesSel, i);
      this.access.write32(MmioReg.DriverFeatures, kept.words[i]);
    }
    this.negotiated = kept;
    this.notificationData = kept.has(FeatureBit.NOTIFICATION_DATA);
    this.ringReset = kept.has(FeatureBit.RING_RESET);
    this.eventIdx = kept.has(FeatureBit.EVENT_IDX);
    this.indirectDesc = kept.has(FeatureBit.INDIRECT_DESC);
    return kept.clone();
  }

  /** The negotiated features (a copy; empty before {@link MmioDriver.finalizeFeatures}). */
  get features(): Features {
    return this.negotiated.clone();
  }

  // ---------------------------------------------------------------------------------------------
  // Queues.

  /**
   * Sets up the requested queues (Linux `vm_find_vqs`): requests the wired line `irqLines[0]` with
   * the interrupt handler, then programs each queue (Linux `vm_setup_vq`). All or nothing: on any
   * failure every queue set up so far is disabled, its rings freed, the line freed, and the error
   * rethrown.
   * @throws VirtioError `INVALID_STATE` when queues are already set up
   * @throws VirtioError `INVALID_ARGUMENT` for a duplicate or invalid queue number or size
   * @throws VirtioError `IRQ_INVALID_LINE` when the device has no interrupt line or the platform
   *   refuses it
   * @throws VirtioError `DEVICE_NOT_FOUND` for a queue whose QueueNumMax reads 0
   * @throws VirtioError `DEVICE_FAILED` for a queue already live before setup, or one the device
   *   refuses to enable
   * @throws VirtioError `ALLOC_FAILED` when the rings do not fit in DMA memory (legacy: or lie above
   *   what QueuePFN can address)
   */
  setupQueues(requests: readonly QueueRequest[]): DriverQueue[] {
    if (this.slots.length > 0 || this.irqLine >= 0) {
      throw new VirtioError('INVALID_STATE', `${this.name}: queues are already set up`);
    }
    const seen = new Set<number>();
    for (const r of requests) {
      if (!Number.isInteger(r.index) || r.index < 0 || r.index > 0xffff || seen.has(r.index)) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `${this.name}: invalid or duplicate queue ${String(r.index)}`,
        );
      }
      seen.add(r.index);
      if (r.size !== undefined && (!isPowerOfTwo(r.size) || r.size > MAX_QUEUE_SIZE)) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `${this.name}: queue ${String(r.index)} size ${String(r.size)} is not a power of two up to 32768`,
        );
      }
    }
    const line = this.irqLines[0];
    if (line === undefined) {
      throw new VirtioError('IRQ_INVALID_LINE', `${this.name}: the device has no interrupt line`);
    }
    this.platform.requestIrq(line, this.interruptHandler);
    this.irqLine = line;
    try {
      for (const r of requests) this.setupQueue(r);
    } catch (e) {
      // Unwind everything (Linux: vm_del_vqs on the error path of vm_find_vqs). A second failure
      // while unwinding must not hide the first.
      try {
        this.releaseQueues();
      } catch {
        // The first error is the one to report.
      }
      throw e;
    }
    return this.slots.map((s) => s.queue as DriverQueue);
  }

  /** Linux `vm_setup_vq`: one queue, its rings and its registers. */
  private setupQueue(r: QueueRequest): void {
    const a = this.access;
    const index = r.index;
    a.write32(MmioReg.QueueSel, index);
    // 4.2.3.2: "Check if the queue is not already in use: read QueueReady, and expect a returned
    // value of zero (0x0)" (legacy 4.2.4: QueuePFN).
    const inUse = this.legacy ? a.read32(MmioLegacyReg.QueuePFN) : a.read32(MmioReg.QueueReady);
    if (inUse !== 0) {
      throw new VirtioError('DEVICE_FAILED', `${this.name}: queue ${String(index)} is already in use`);
    }
    // 4.2.3.2: "Read maximum queue size (number of elements) from QueueNumMax. If the returned value
    // is zero (0x0) the queue is not available."
    const max = a.read32(MmioReg.QueueNumMax);
    if (max === 0) {
      throw new VirtioError('DEVICE_NOT_FOUND', `${this.name}: queue ${String(index)} not available`);
    }
    // 2.7: split ring sizes are powers of two up to 32768; a device maximum that is not one is
    // rounded down (the driver may use any size up to QueueNumMax, 4.2.2.2).
    const cap = floorPowerOfTwo(Math.min(max, MAX_QUEUE_SIZE));
    const size = Math.min(r.size ?? cap, cap);
    const slot: QueueSlot = {
      index,
      queue: null,
      callback: r.callback,
      allocations: [],
      size,
      rings: null,
    };
    // Registered before anything can fail, so the unwind path finds every allocation.
    this.slots.push(slot);
    this.byIndex.set(index, slot);
    slot.rings = this.legacy ? this.allocLegacyRings(slot) : this.allocModernRings(slot);
    slot.queue = this.newQueue(slot);
    if (this.legacy) this.programLegacy(slot);
    else this.programModern(slot);
  }

  /** The three areas of a modern queue, zeroed, each with its alignment (2.7). */
  private allocModernRings(slot: QueueSlot): RingAddresses {
    const bytes = DriverQueue.areaBytes(slot.size);
    const descTable = this.allocZeroed(slot, bytes.desc, DESC_TABLE_ALIGN);
    const availRing = this.allocZeroed(slot, bytes.avail, AVAIL_RING_ALIGN);
    const usedRing = this.allocZeroed(slot, bytes.used, USED_RING_ALIGN);
    return { descTable, availRing, usedRing };
  }

  /**
   * One contiguous, page-aligned, zeroed block in the legacy layout (2.7.2 legacy), addressable by a
   * 32-bit QueuePFN (Linux refuses rings above 2^(32 + PAGE_SHIFT) the same way).
   */
  private allocLegacyRings(slot: QueueSlot): RingAddresses {
    const base = this.allocZeroed(slot, legacyRingBytes(slot.size, this.pageSize), this.pageSize);
    if (base / this.pageSize > 0xffff_ffff) {
      throw new VirtioError(
        'ALLOC_FAILED',
        `${this.name}: legacy queue ${String(slot.index)} at ${hex(base)} is above what a 32-bit QueuePFN addresses`,
      );
    }
    return legacyLayout(base, slot.size, this.pageSize);
  }

  /** Allocates and zeroes DMA memory recorded in `slot`. */
  private allocZeroed(slot: QueueSlot, bytes: number, align: number): number {
    const gpa = this.dma.alloc(bytes, align);
    slot.allocations.push(gpa);
    this.mem.fill(gpa, bytes, 0);
    return gpa;
  }

  /** A driver-side ring over the slot's areas with the negotiated ring features. */
  private newQueue(slot: QueueSlot): DriverQueue {
    return new DriverQueue(this.mem, slot.index, slot.size, slot.rings as RingAddresses, {
      eventIdx: this.eventIdx,
      indirectAllocator: this.indirectDesc ? this.dma : undefined,
    });
  }

  /**
   * 4.2.3.2: QueueNum, the three area addresses, QueueReady = 1; then reads QueueReady back (a
   * device that refused the configuration reads 0; Linux does not check, we fail early).
   */
  private programModern(slot: QueueSlot): void {
    const a = this.access;
    const rings = slot.rings as RingAddresses;
    a.write32(MmioReg.QueueSel, slot.index);
    a.write32(MmioReg.QueueNum, slot.size);
    a.write32(MmioReg.QueueDescLow, rings.descTable % TWO_POW_32);
    a.write32(MmioReg.QueueDescHigh, Math.floor(rings.descTable / TWO_POW_32));
    a.write32(MmioReg.QueueDriverLow, rings.availRing % TWO_POW_32);
    a.write32(MmioReg.QueueDriverHigh, Math.floor(rings.availRing / TWO_POW_32));
    a.write32(MmioReg.QueueDeviceLow, rings.usedRing % TWO_POW_32);
    a.write32(MmioReg.QueueDeviceHigh, Math.floor(rings.usedRing / TWO_POW_32));
    a.write32(MmioReg.QueueReady, 1);
    if (a.read32(MmioReg.QueueReady) !== 1) {
      throw new VirtioError(
        'DEVICE_FAILED',
        `${this.name}: device did not enable queue ${String(slot.index)}`,
      );
    }
  }

  /** 4.2.4: QueueNum, QueueAlign = page size, QueuePFN; then reads QueuePFN back. */
  private programLegacy(slot: QueueSlot): void {
    const a = this.access;
    const rings = slot.rings as RingAddresses;
    const pfn = rings.descTable / this.pageSize;
    a.write32(MmioReg.QueueSel, slot.index);
    a.write32(MmioReg.QueueNum, slot.size);
    a.write32(MmioLegacyReg.QueueAlign, this.pageSize);
    a.write32(MmioLegacyReg.QueuePFN, pfn);
    if (a.read32(MmioLegacyReg.QueuePFN) !== pfn) {
      throw new VirtioError('DEVICE_FAILED', `${this.name}: device did not take queue ${String(slot.index)}`);
    }
  }

  /**
   * Releases every queue and the interrupt line (Linux `vm_del_vqs`); the device should be reset
   * first. Per queue: QueueReady = 0 (legacy QueuePFN = 0) and a read back that must give 0
   * (4.2.2.2: "To stop using the queue the driver MUST write zero (0x0) to this QueueReady and MUST
   * read the value back to ensure synchronization"), outstanding buffers detached, rings freed.
   * Everything is released even when the device misbehaves.
   * @throws VirtioError `DEVICE_FAILED` after releasing, when a queue still read as live
   */
  deleteQueues(): void {
    this.releaseQueues();
  }

  /** The body of {@link MmioDriver.deleteQueues}, also the unwind path of setupQueues. */
  private releaseQueues(): void {
    const a = this.access;
    const stuck: number[] = [];
    for (const slot of this.slots) {
      a.write32(MmioReg.QueueSel, slot.index);
      if (this.legacy) {
        a.write32(MmioLegacyReg.QueuePFN, 0);
        if (a.read32(MmioLegacyReg.QueuePFN) !== 0) stuck.push(slot.index);
      } else {
        a.write32(MmioReg.QueueReady, 0);
        if (a.read32(MmioReg.QueueReady) !== 0) stuck.push(slot.index);
      }
      // Indirect tables of buffers the device never returned go back to the allocator here.
      if (slot.queue !== null) {
        slot.queue.detachUnused();
        slot.queue.broken ??= 'queue deleted';
      }
      for (const gpa of slot.allocations) this.dma.release(gpa);
      slot.allocations.length = 0;
    }
    this.slots.length = 0;
    this.byIndex.clear();
    if (this.irqLine >= 0) {
      this.platform.freeIrq(this.irqLine);
      this.irqLine = -1;
    }
    if (stuck.length > 0) {
      throw new VirtioError(
        'DEVICE_FAILED',
        `${this.name}: queues ${stuck.join(', ')} still live after being stopped`,
      );
    }
  }

  /**
   * Resets one queue and re-enables it with zeroed rings (virtio 1.2, 2.6.1 "Virtqueue Reset" over
   * MMIO, register QueueReset of 4.2.2): QueueReset = 1, wait for QueueReset and QueueReady to read 0, then
   * reprogram and QueueReady = 1. The old {@link DriverQueue} is detached (its outstanding buffers
   * are dropped) and marked broken; the returned one replaces it. The ring memory is reused.
   * @throws VirtioError `INVALID_STATE` when VIRTIO_F_RING_RESET is not negotiated
   * @throws VirtioError `INVALID_ARGUMENT` for a queue this driver did not set up
   * @throws VirtioError `DEVICE_FAILED` when the device does not complete the reset or refuses the
   *   queue again
   */
  resetQueue(queue: DriverQueue): DriverQueue {
    if (!this.ringReset) {
      throw new VirtioError('INVALID_STATE', `${this.name}: virtio_f_ring_reset is not negotiated`);
    }
    const slot = this.byIndex.get(queue.index);
    if (slot === undefined || slot.queue !== queue) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${this.name}: queue ${String(queue.index)} is not set up here`,
      );
    }
    const a = this.access;
    a.write32(MmioReg.QueueSel, slot.index);
    a.write32(MmioReg.QueueReset, 1);
    // 4.2.2.1: "The device MUST present 0 in both QueueReset and QueueReady when queue reset
    // has completed"; the driver waits for that before reprogramming.
    let done = false;
    for (let i = 0; i < MMIO_QUEUE_RESET_POLL_LIMIT; i++) {
      if (a.read32(MmioReg.QueueReset) === 0) {
        done = true;
        break;
      }
    }
    if (!done || a.read32(MmioReg.QueueReady) !== 0) {
      throw new VirtioError(
        'DEVICE_FAILED',
        `${this.name}: queue ${String(slot.index)} reset did not complete`,
      );
    }
    queue.detachUnused();
    queue.broken = 'queue was reset';
    const rings = slot.rings as RingAddresses;
    const bytes = DriverQueue.areaBytes(slot.size);
    this.mem.fill(rings.descTable, bytes.desc, 0);
    this.mem.fill(rings.availRing, bytes.avail, 0);
    this.mem.fill(rings.usedRing, bytes.used, 0);
    slot.queue = this.newQueue(slot);
    this.programModern(slot);
    return slot.queue;
  }

  /**
   * Available buffer notification (Linux `vm_notify` / `vm_notify_with_data`, 4.2.3.3): QueueNotify
   * gets the queue index, or with VIRTIO_F_NOTIFICATION_DATA the notification data: vqn in bits
   * 0..15, and for a split ring the next available index in bits 16..31 (next_off = its 15 low bits,
   * next_wrap = bit 15). Allocation-free.
   * @throws VirtioError `INVALID_ARGUMENT` for a queue this driver did not set up
   */
  notify(queue: DriverQueue): void {
    const slot = this.byIndex.get(queue.index);
    if (slot === undefined || slot.queue !== queue) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${this.name}: queue ${String(queue.index)} is not set up here`,
      );
    }
    const value = this.notificationData
      ? ((queue.index & 0xffff) | ((queue.availIndex & 0xffff) << 16)) >>> 0
      : queue.index;
    this.access.write32(MmioReg.QueueNotify, value);
  }

  /**
   * The interrupt handler (Linux `vm_interrupt`): reads InterruptStatus and acknowledges it, runs
   * the configuration change handler for bit 1, and for bit 0 every queue with used buffers
   * (4.2.3.4.1: "The used buffer notification bit being set SHOULD be interpreted as a used buffer
   * notification for each active virtqueue"). A status of 0 (a shared or stale interrupt) writes
   * nothing; unknown status bits are neither handled nor acknowledged.
   */
  private handleInterrupt(): void {
    const a = this.access;
    const status = a.read32(MmioReg.InterruptStatus) & KNOWN_INTERRUPT_BITS;
    if (status === 0) return;
    // 4.2.3.4.1: "After the interrupt is handled, the driver MUST acknowledge it by writing a bit
    // mask corresponding to the handled events to the InterruptACK register".
    a.write32(MmioReg.InterruptACK, status);
    if ((status & InterruptBit.CONFIG) !== 0 && this.configHandler !== null) this.configHandler();
    if ((status & InterruptBit.VRING) !== 0) {
      const slots = this.slots;
      for (let i = 0; i < slots.length; i++) {
        const s = slots[i];
        // Like vring_interrupt: nothing to do for a queue without used buffers (or a broken one).
        if (s.callback !== null && s.queue?.hasUsed() === true) s.callback();
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Configuration space.

  /** Checks a configuration access (tier 3: the calling driver's mistake). */
  private checkConfig(offset: number, width: number): void {
    if (width !== 1 && width !== 2 && width !== 4) {
      throw new VirtioError('INVALID_ARGUMENT', `${this.name}: config access width ${String(width)}`);
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % width !== 0) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${this.name}: config access of ${String(width)} bytes at ${String(offset)} is not naturally aligned`,
      );
    }
  }

  /**
   * Reads configuration space at `offset`. Modern: one access of `width` (4.2.2.2: "8 bit wide
   * accesses for 8 bit wide fields, 16 bit wide and aligned accesses for 16 bit wide fields and 32
   * bit wide and aligned accesses for 32 and 64 bit wide fields"). Legacy: byte by byte, as Linux
   * does, little-endian (the guest's native order here).
   * @throws VirtioError `INVALID_ARGUMENT` for a width other than 1, 2, 4 or a misaligned offset
   */
  readConfig(offset: number, width: 1 | 2 | 4): number {
    this.checkConfig(offset, width);
    const a = this.access;
    const at = MmioReg.Config + offset;
    if (this.legacy) {
      let v = 0;
      for (let i = 0; i < width; i++) v += a.read8(at + i) * 2 ** (8 * i);
      return v;
    }
    if (width === 1) return a.read8(at);
    if (width === 2) return a.read16(at);
    return a.read32(at) >>> 0;
  }

  /**
   * Writes configuration space at `offset` (modern: one access; legacy: byte by byte).
   * @throws VirtioError `INVALID_ARGUMENT` for a width other than 1, 2, 4 or a misaligned offset
   */
  writeConfig(offset: number, width: 1 | 2 | 4, value: number): void {
    this.checkConfig(offset, width);
    const a = this.access;
    const at = MmioReg.Config + offset;
    if (this.legacy) {
      for (let i = 0; i < width; i++) a.write8(at + i, Math.floor(value / 2 ** (8 * i)) & 0xff);
      return;
    }
    if (width === 1) a.write8(at, value & 0xff);
    else if (width === 2) a.write16(at, value & 0xffff);
    else a.write32(at, value >>> 0);
  }

  /** ConfigGeneration (4.2.2); a legacy device has none and reads as 0. */
  configGeneration(): number {
    return this.legacy ? 0 : this.access.read32(MmioReg.ConfigGeneration);
  }

  /** Registers the configuration change handler, run from the interrupt handler. */
  onConfigChange(handler: () => void): void {
    this.configHandler = handler;
  }

  /**
   * Teardown as a guest unbinding the device: reset, then release the queues and the line, even
   * when the reset fails.
   * @throws VirtioError `DEVICE_FAILED` when the device did not reset or kept a queue live
   */
  teardown(): void {
    try {
      this.reset();
    } finally {
      this.releaseQueues();
    }
  }
}
