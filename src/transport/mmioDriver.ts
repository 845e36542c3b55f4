/**
 * The guest side of virtio over MMIO (virtio 1.2+, 4.2.3 "Driver Requirements"): what a guest
 * kernel's virtio-mmio platform driver does, following the flow of Linux
 * `drivers/virtio/virtio_mmio.c` (written from the spec and that flow, not from its code).
 *
 * ```
 * probe     MagicValue, Version (1 or 2), DeviceID (0: empty slot), VendorID; legacy: GuestPageSize
 * features  DeviceFeaturesSel/DeviceFeatures x4 words; DriverFeaturesSel/DriverFeatures x4 words
 * queues    the interrupt cascade (driverInterrupts.ts), and per queue: QueueSel, QueueReady == 0
 *           (legacy QueuePFN), QueueNumMax, rings from the DMA allocator, QueueNum,
 *           Desc/Driver/Device Low/High, QueueReady = 1 (legacy: QueueAlign, QueuePFN)
 * interrupt line: InterruptStatus -> InterruptACK, config handler for bit 1, every queue for bit 0;
 *           MSI: the vector says which event, no register access
 * notify    QueueNotify (or the queue's seed notification address) = queue index, or the 32-bit
 *           notification data (VIRTIO_F_NOTIFICATION_DATA)
 * ```
 *
 * Seed v2 profile (option `seed`, docs/profiles/seed-v2.md): feature bits 39 and 40 mean
 * VIRTIO_F_MMIO_NOTIFICATION and VIRTIO_F_MMIO_MSI instead of the standard NOTIF_CONFIG_DATA and
 * RING_RESET, so the driver negotiates them only when the machine description says the device
 * speaks the seed profile, and then never uses RING_RESET. Every seed register value is checked
 * before it is trusted, so a standard device that offers RING_RESET (bit 40) falls back cleanly:
 * its 0x0c0 is QueueReset, which reads 0 or 1, never the two vectors MSI needs.
 *
 * Device drivers see only {@link VirtioTransportDriver}; this class is the one place that knows the
 * register layout. It counts nothing itself: the platform bus counts every access.
 *
 * @packageDocumentation
 */

import {
  Features,
  type MsiMessageData,
  type NotifyLocation,
  notificationValue,
  type QueueRequest,
  type VirtioTransportDriver,
} from '../device/index.js';
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
  MSI_NO_VECTOR,
  MsiCmd,
  MsiStateBit,
  SeedFeatureBit,
  SeedMmioReg,
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
import {
  type DriverInterruptOptions,
  INTERRUPT_MODES,
  type InterruptFallback,
  type InterruptMode,
} from './driverInterrupts.js';
import { MAX_QUEUE_INTERRUPT_BITS, queueInterruptBit } from './interrupts.js';
import type { GuestIrqPlatform, GuestMsiAllocator, MmioAccess } from './types.js';

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
  /**
   * The machine description says the device speaks the seed v2 profile: negotiate
   * VIRTIO_F_MMIO_NOTIFICATION (39) and VIRTIO_F_MMIO_MSI (40) and never RING_RESET (40) or
   * NOTIF_CONFIG_DATA (39). Default false (the standard meaning of those bits).
   */
  seed?: boolean;
  /** Which interrupt modes the cascade may use (default all). */
  interrupts?: DriverInterruptOptions;
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
 * Transport bits with the seed v2 profile: the standard ones minus RING_RESET, whose bit (40) the
 * seed reuses for VIRTIO_F_MMIO_MSI (and whose register, 0x0c0, for MsiVecNum), plus the two seed
 * bits. NOTIF_CONFIG_DATA (39) is never kept, with or without the seed.
 */
const SEED_TRANSPORT_BITS: readonly number[] = [
  FeatureBit.INDIRECT_DESC,
  FeatureBit.EVENT_IDX,
  FeatureBit.VERSION_1,
  FeatureBit.NOTIFICATION_DATA,
  SeedFeatureBit.MMIO_NOTIFICATION,
  SeedFeatureBit.MMIO_MSI,
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
  /** Window offset the available buffer notification is written to (computed once at setup). */
  notifyOffset: number;
}

/** Thrown by a cascade step whose interrupt routing cannot work: the next step is tried. */
class RoutingFailure extends Error {}

/** What the seed MSI registers said, read at most once per setupQueues. */
interface MsiProbe {
  /** MsiVecNum. */
  readonly vectors: number;
  /** MsiState sharing bit (read only when MsiVecNum is plausible). */
  readonly sharing: boolean;
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
  /** Name for messages. */
  readonly name: string;
  /** Legacy: the guest page size (QueuePFN unit and QueueAlign). */
  readonly pageSize: number;

  private readonly access: MmioAccess;
  private readonly irqLines: readonly number[];
  private readonly legacy: boolean;
  private negotiated = new Features();
  /** What the device offered at the last {@link MmioDriver.getFeatures}. */
  private offered = new Features();
  /** Cached negotiated bits used on hot paths. */
  private notificationData = false;
  private ringReset = false;
  private eventIdx = false;
  private indirectDesc = false;
  /** Set-up queues in setup order (the interrupt handler walks this array; no allocation). */
  private readonly slots: QueueSlot[] = [];
  /** Set-up queues by queue number. */
  private readonly byIndex = new Map<number, QueueSlot>();
  /** Seed profile enabled for this device (option `seed`). */
  private readonly seed: boolean;
  /** Modes the cascade may use. */
  private readonly allowed: ReadonlySet<InterruptMode>;
  /** Negotiated VIRTIO_F_MMIO_MSI / VIRTIO_F_MMIO_NOTIFICATION (seed profile only). */
  private seedMsi = false;
  private seedNotification = false;
  /** The mode in use, or null before setup / after teardown. */
  private mode: InterruptMode | null = null;
  /** Steps of the last cascade that were not used. */
  private fallbackLog: InterruptFallback[] = [];
  /** Wired lines whose handlers are installed (the unwind and teardown release them). */
  private readonly heldLines: number[] = [];
  /** CPU vectors allocated for MSI (the unwind and teardown free them). */
  private msiVectors: number[] = [];
  /** We enabled MSI on the device (the unwind and teardown disable it). */
  private msiOn = false;
  /** Seed per-queue notification: notify_base and notify_multiplier (QueueNotify and 0 without). */
  private notifyBase: number = MmioReg.QueueNotify;
  private notifyMultiplier = 0;
  private configHandler: (() => void) | null = null;
  /** The single-line interrupt handler, bound once. */
  private readonly interruptHandler: () => void;
  /** Runs the configuration change handler (MSI config vector), bound once. */
  private readonly configEventHandler: () => void;
  /** Runs every queue with used buffers (MSI shared queue vector), bound once. */
  private readonly vringHandler: () => void;
  /** Config line of the multi-line layout: acknowledge bit 1, run the config handler. */
  private readonly lineConfigHandler: () => void;
  /** Shared queue line of the multi-line layout: acknowledge bit 0, run every queue. */
  private readonly lineSharedHandler: () => void;

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
    this.seed = options.seed === true;
    this.allowed = new Set(options.interrupts?.allow ?? INTERRUPT_MODES);
    this.interruptHandler = () => this.handleInterrupt();
    this.configEventHandler = () => {
      if (this.configHandler !== null) this.configHandler();
    };
    this.vringHandler = () => this.runQueues();
    // Multi-line lines say which event they carry, so no InterruptStatus read: acknowledge first
    // (an event after the acknowledgement raises the line again), then handle.
    this.lineConfigHandler = () => {
      this.access.write32(MmioReg.InterruptACK, InterruptBit.CONFIG);
      if (this.configHandler !== null) this.configHandler();
    };
    this.lineSharedHandler = () => {
      // Bit 0 is the combined queue bit: acknowledging it acknowledges every queue.
      this.access.write32(MmioReg.InterruptACK, InterruptBit.VRING);
      this.runQueues();
    };
  }

  /**
   * Probes the window behind `access` (Linux `virtio_mmio_probe`): checks MagicValue and Version,
   * returns null for DeviceID 0 (4.2.3.1.1: "if its value is zero (0x0) MUST abort initialization
   * and MUST NOT access any other register": an empty slot), and for a legacy device writes
   * GuestPageSize (4.2.4).
   * @throws VirtioError `DEVICE_REJECTED` for a wrong MagicValue or a Version other than 1 or 2
   * @throws VirtioError `INVALID_ARGUMENT` for a page size that is not a power of two from 4096 up,
   *   or an empty or unknown list of allowed interrupt modes
   */
  static probe(access: MmioAccess, options: MmioDriverOptions): MmioDriver | null {
    const name = options.name ?? 'virtio-mmio';
    const pageSize = options.pageSize ?? LEGACY_DEFAULT_PAGE_SIZE;
    const allow = options.interrupts?.allow;
    if (allow !== undefined && (allow.length === 0 || allow.some((m) => !INTERRUPT_MODES.includes(m)))) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `${name}: interrupt modes must be a non-empty subset of ${INTERRUPT_MODES.join(', ')}`,
      );
    }
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
      if (this.access.read32(MmioReg.Status) === 0) {
        // A reset turns MSI off (seed-v2.md rule 13) and gates the Msi* registers until the next
        // negotiation: the teardown that follows must not read MsiState or write DISABLE.
        this.msiOn = false;
        return;
      }
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
    this.offered = f.clone();
    return f;
  }

  /**
   * Writes the accepted features (Linux `vm_finalize_features`): device-type bits (0..23, 50..127)
   * pass, transport bits only if this driver implements them. With the seed profile (option
   * `seed`, modern devices only) bits 39/40 are kept as VIRTIO_F_MMIO_NOTIFICATION /
   * VIRTIO_F_MMIO_MSI and RING_RESET is never kept; without it they keep their standard meaning
   * (RING_RESET kept, NOTIF_CONFIG_DATA not). A modern device must end up with
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
    const transportBits = this.legacy
      ? LEGACY_TRANSPORT_BITS
      : this.seed
        ? SEED_TRANSPORT_BITS
        : MODERN_TRANSPORT_BITS;
    for (const bit of transportBits) {
      if (accepted.has(bit)) kept.set(bit);
    }
    if (this.seed && !this.legacy) {
      // The seed's vm_finalize_features: the MMIO extensions are the transport's business, taken
      // whenever the device offers them, whatever the device driver asked for.
      for (const bit of [SeedFeatureBit.MMIO_MSI, SeedFeatureBit.MMIO_NOTIFICATION]) {
        if (this.offered.has(bit)) kept.set(bit);
      }
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
    this.ringReset = !this.seed && kept.has(FeatureBit.RING_RESET);
    this.seedMsi = this.seed && !this.legacy && kept.has(SeedFeatureBit.MMIO_MSI);
    this.seedNotification = this.seed && !this.legacy && kept.has(SeedFeatureBit.MMIO_NOTIFICATION);
    this.eventIdx = kept.has(FeatureBit.EVENT_IDX);
    this.indirectDesc = kept.has(FeatureBit.INDIRECT_DESC);
    return kept.clone();
  }

  /** The negotiated features (a copy; empty before {@link MmioDriver.finalizeFeatures}). */
  get features(): Features {
    return this.negotiated.clone();
  }

  // ---------------------------------------------------------------------------------------------
  // ---------------------------------------------------------------------------------------------
  // Queues and interrupt routing.

  /**
   * The interrupt mode chosen by the last {@link MmioDriver.setupQueues}, or `none` before it and
   * after {@link MmioDriver.deleteQueues}.
   */
  get interruptMode(): InterruptMode | 'none' {
    return this.mode ?? 'none';
  }

  /** The cascade steps the last setupQueues skipped or gave up, in cascade order (a copy). */
  get interruptFallbacks(): InterruptFallback[] {
    return this.fallbackLog.slice();
  }

  /** The CPU vectors this driver holds for MSI (a copy; empty unless an MSI mode is in use). */
  get heldMsiVectors(): number[] {
    return this.msiVectors.slice();
  }

  /** The wired lines this driver has handlers on (a copy). */
  get heldIrqLines(): number[] {
    return this.heldLines.slice();
  }

  /**
   * Sets up the requested queues and their interrupt routing (Linux `vm_find_vqs`, extended with
   * the seed's `vm_find_vqs_msi` and the 2014 RFC's `vm_try_to_find_vqs`). The cascade tries, in
   * order and among the modes allowed by the `interrupts` option, stopping at the first that
   * works:
   *
   * 1. `msi-per-queue`: seed profile, VIRTIO_F_MMIO_MSI negotiated, the platform has MSI, MsiState
   *    sharing bit clear, MsiVecNum > highest queue index + 1 (fixed mapping: vector 0 = config,
   *    vector N+1 = queue N); one CPU vector for config and one per queue with a callback.
   * 2. `msi-shared`: as above, two CPU vectors (config, all queues). On a sharing device through
   *    MAP_CONFIG / MAP_QUEUE; on a non-sharing device by programming the same message into every
   *    used queue vector (MST's "program same vector in multiple VQs").
   * 3. `lines-per-queue`: the machine description gives the standard line, a config line and one
   *    line per queue (irqLines[0], [1], [2 + N]); the config line and the line of each queue with
   *    a callback get handlers (docs/profiles/multi-line.md).
   * 4. `lines-shared`: the standard line, a config line and one line for every queue.
   * 5. `line`: the standard line irqLines[0] with InterruptStatus / InterruptACK.
   *
   * Queues without a callback get MSI NO_VECTOR (non-sharing: their fixed vector is masked) and no
   * line. A step whose preconditions do not hold is skipped; a step whose routing fails on the way
   * (vector allocation, a line missing or busy, MSI not enabled by the device) unwinds everything
   * it set up (MSI disabled, handlers detached, vectors freed, lines freed, queues stopped and
   * their rings freed) and the next is tried. What was skipped and why is in
   * {@link MmioDriver.interruptFallbacks}. A failure of the queues themselves is not an interrupt
   * problem: it unwinds and is thrown without trying other modes.
   *
   * With VIRTIO_F_MMIO_NOTIFICATION (seed) QueueNotify is read once here and each queue's
   * notification address computed once: notify_base + notify_multiplier * index.
   * @throws VirtioError `INVALID_STATE` when queues are already set up
   * @throws VirtioError `INVALID_ARGUMENT` for a duplicate or invalid queue number or size
   * @throws VirtioError `IRQ_INVALID_LINE` when no allowed interrupt mode works (the message lists
   *   every step and why)
   * @throws VirtioError `DEVICE_NOT_FOUND` for a queue whose QueueNumMax reads 0
   * @throws VirtioError `DEVICE_FAILED` for a queue already live before setup, or one the device
   *   refuses to enable
   * @throws VirtioError `ALLOC_FAILED` when the rings do not fit in DMA memory (legacy: or lie above
   *   what QueuePFN can address)
   */
  setupQueues(requests: readonly QueueRequest[]): DriverQueue[] {
    if (this.slots.length > 0 || this.mode !== null) {
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
    const fallbacks: InterruptFallback[] = [];
    this.fallbackLog = fallbacks;
    this.readNotifyLayout();
    let msi: MsiProbe | null = null;
    const probeMsi = (): MsiProbe => {
      msi ??= this.readMsiProbe();
      return msi;
    };
    for (const mode of INTERRUPT_MODES) {
      if (!this.allowed.has(mode)) {
        fallbacks.push({ mode, reason: 'not allowed' });
        continue;
      }
      const why = this.precheck(mode, requests, probeMsi);
      if (why !== null) {
        fallbacks.push({ mode, reason: why });
        continue;
      }
      try {
        this.setupWith(mode, requests, mode === 'msi-per-queue' || mode === 'msi-shared' ? probeMsi() : null);
        this.mode = mode;
        return this.slots.map((s) => s.queue as DriverQueue);
      } catch (e) {
        // Unwind everything (Linux: vm_del_vqs on the error path of vm_find_vqs). A second failure
        // while unwinding must not hide the first.
        try {
          this.releaseQueues();
        } catch {
          // The first error is the one to report.
        }
        if (!(e instanceof RoutingFailure)) throw e;
        fallbacks.push({ mode, reason: e.message });
      }
    }
    throw new VirtioError(
      'IRQ_INVALID_LINE',
      `${this.name}: no interrupt mode works (${fallbacks.map((f) => `${f.mode}: ${f.reason}`).join('; ')})`,
    );
  }

  /**
   * Seed VIRTIO_F_MMIO_NOTIFICATION: reads QueueNotify once (notify_base in bits 0..15,
   * notify_multiplier in 16..31) and keeps them for {@link MmioDriver.setupQueues}. A layout that cannot be a notification address (inside
   * the register block other than QueueNotify itself, or misaligned: what a standard device's
   * write-only QueueNotify reads as is 0) keeps QueueNotify for every queue and is noted.
   */
  private readNotifyLayout(): void {
    this.notifyBase = MmioReg.QueueNotify;
    this.notifyMultiplier = 0;
    if (!this.seedNotification) return;
    const v = this.access.read32(MmioReg.QueueNotify);
    const base = v & 0xffff;
    const multiplier = v >>> 16;
    if ((base !== MmioReg.QueueNotify && base < MmioReg.Config) || base % 4 !== 0 || multiplier % 4 !== 0) {
      return;
    }
    this.notifyBase = base;
    this.notifyMultiplier = multiplier;
  }

  /**
   * Reads MsiVecNum, and MsiState only when MsiVecNum is plausible: on a standard device 0x0c0 is
   * QueueReset (0 or 1) and 0x0c4 is undefined, so a standard device that offered RING_RESET sees
   * one legal read and nothing else.
   */
  private readMsiProbe(): MsiProbe {
    const vectors = this.access.read32(SeedMmioReg.MsiVecNum) >>> 0;
    if (vectors < 2) return { vectors, sharing: false };
    const state = this.access.read32(SeedMmioReg.MsiState);
    return { vectors, sharing: (state & MsiStateBit.SHARING) !== 0 };
  }

  /** Why `mode` cannot work for `requests` before anything is set up, or null when it may. */
  private precheck(
    mode: InterruptMode,
    requests: readonly QueueRequest[],
    msi: () => MsiProbe,
  ): string | null {
    let maxIndex = -1;
    let maxCallbackIndex = -1;
    for (const r of requests) {
      maxIndex = Math.max(maxIndex, r.index);
      if (r.callback !== null) maxCallbackIndex = Math.max(maxCallbackIndex, r.index);
    }
    switch (mode) {
      case 'msi-per-queue':
      case 'msi-shared': {
        if (!this.seed) return 'seed profile not enabled';
        if (!this.seedMsi) return 'virtio_f_mmio_msi not negotiated';
        if (this.platform.msi === undefined) return 'the platform has no msi';
        const p = msi();
        // Seed 5/5: a sharing device "SHOULD support at least 2 MSI vectors"; a non-sharing one
        // "a number of vectors that greater than the maximum number of virtqueues".
        if (p.vectors < 2) return `device reports ${String(p.vectors)} msi vectors`;
        if (mode === 'msi-per-queue' && p.sharing) return 'device uses msi sharing mode';
        if (!p.sharing && p.vectors <= maxIndex + 1) {
          return `msivecnum ${String(p.vectors)} has no vector for queue ${String(maxIndex)}`;
        }
        return null;
      }
      case 'lines-per-queue': {
        const queueLines = this.irqLines.length - 2;
        // A shared layout has exactly one queue line; per-queue lines are at least two (with one
        // queue the two layouts are the same, and lines-shared handles it).
        if (queueLines < 2) return `${String(this.irqLines.length)} interrupt lines, no per-queue lines`;
        if (maxCallbackIndex >= queueLines) {
          return `no interrupt line for queue ${String(maxCallbackIndex)} (${String(queueLines)} queue lines)`;
        }
        if (maxCallbackIndex >= MAX_QUEUE_INTERRUPT_BITS) {
          return `queue ${String(maxCallbackIndex)} has no interruptstatus bit`;
        }
        return null;
      }
      case 'lines-shared':
        if (this.irqLines.length !== 3) {
          return `${String(this.irqLines.length)} interrupt lines, not a config and a shared queue line`;
        }
        return null;
      case 'line':
        return this.irqLines.length === 0 ? 'the device has no interrupt line' : null;
    }
  }

  /** Sets up routing and queues for `mode`; throws {@link RoutingFailure} when routing fails. */
  private setupWith(mode: InterruptMode, requests: readonly QueueRequest[], msi: MsiProbe | null): void {
    switch (mode) {
      case 'msi-per-queue':
      case 'msi-shared':
        this.setupMsi(mode === 'msi-per-queue', requests, msi as MsiProbe);
        return;
      case 'lines-per-queue':
      case 'lines-shared': {
        const perQueue = mode === 'lines-per-queue';
        this.takeLine(this.irqLines[1], this.lineConfigHandler);
        if (!perQueue && requests.some((r) => r.callback !== null)) {
          this.takeLine(this.irqLines[2], this.lineSharedHandler);
        }
        for (const r of requests) {
          this.setupQueue(r);
          // The RFC requests each queue's line after setting the queue up.
          if (perQueue && r.callback !== null)
            this.takeLine(this.irqLines[2 + r.index], this.lineQueueHandler(r));
        }
        return;
      }
      case 'line':
        this.takeLine(this.irqLines[0], this.interruptHandler);
        for (const r of requests) this.setupQueue(r);
        return;
    }
  }

  /** Attaches `handler` to `line` (a refusal is a routing failure). */
  private takeLine(line: number | undefined, handler: () => void): void {
    if (line === undefined) throw new RoutingFailure('interrupt line missing');
    try {
      this.platform.requestIrq(line, handler);
    } catch (e) {
      if (e instanceof VirtioError) throw new RoutingFailure(`line ${String(line)}: ${e.message}`);
      throw e;
    }
    this.heldLines.push(line);
  }

  /**
   * Seed MSI (Linux seed `vm_find_vqs_msi` + `vm_request_msi_vectors`): allocates the CPU
   * vectors, programs each device vector (MsiVecSel, MsiAddrLow/High, MsiData, CONFIGURE, UNMASK),
   * maps config and queues in sharing mode, ENABLEs and reads MsiState back, then sets the queues up.
   */
  private setupMsi(perQueue: boolean, requests: readonly QueueRequest[], probe: MsiProbe): void {
    const alloc = this.platform.msi as GuestMsiAllocator;
    const a = this.access;
    let withCallback = 0;
    let remote = 0;
    for (const r of requests) {
      if (r.callback !== null) withCallback++;
      if (r.callback !== null && r.msiMessage !== undefined) remote++;
    }
    // Per queue: config + one CPU vector per queue with a callback, except queues serviced on
    // another CPU (their message is given).
    const count = perQueue ? 1 + withCallback - remote : withCallback > 0 ? 2 : 1;
    const vectors = alloc.allocMsiVectors(count);
    if (vectors === null || vectors.length !== count) {
      if (vectors !== null) alloc.freeMsiVectors(vectors);
      throw new RoutingFailure(`the platform could not allocate ${String(count)} msi vectors`);
    }
    this.msiVectors = vectors;
    try {
      this.programMsiVectors(perQueue, requests, probe, alloc, vectors, withCallback);
    } catch (e) {
      // The platform refused a handler or a message (Linux: request_irq failing half-way).
      if (e instanceof VirtioError) throw new RoutingFailure(`msi vectors: ${e.message}`);
      throw e;
    }
    // Seed mmio_msi_set_enable: ENABLE only when MsiState says disabled (ENABLE while enabled is a
    // wrong-state command).
    if ((a.read32(SeedMmioReg.MsiState) & MsiStateBit.ENABLED) === 0) {
      a.write32(SeedMmioReg.MsiCommand, MsiCmd.ENABLE);
    }
    this.msiOn = true;
    if ((a.read32(SeedMmioReg.MsiState) & MsiStateBit.ENABLED) === 0) {
      this.msiOn = false;
      throw new RoutingFailure('device did not enable msi');
    }
    for (const r of requests) {
      this.setupQueue(r);
      if (probe.sharing) {
        // Seed vm_setup_vq: map the queue once it is set up (QueueSel still selects it).
        a.write32(MmioReg.QueueSel, r.index);
        this.msiCommand(r.callback === null ? MSI_NO_VECTOR : 1, MsiCmd.MAP_QUEUE);
      }
    }
  }

  /** Attaches the handlers to the CPU vectors and programs the device vectors they back. */
  private programMsiVectors(
    perQueue: boolean,
    requests: readonly QueueRequest[],
    probe: MsiProbe,
    alloc: GuestMsiAllocator,
    vectors: readonly number[],
    withCallback: number,
  ): void {
    // Device vector 0: the configuration change event (fixed in non-sharing mode, mapped in sharing).
    alloc.setMsiHandler(vectors[0], this.configEventHandler);
    this.programMsiVector(0, alloc, vectors[0]);
    if (probe.sharing) this.msiCommand(0, MsiCmd.MAP_CONFIG);
    if (withCallback > 0 && !perQueue) alloc.setMsiHandler(vectors[1], this.vringHandler);
    if (!probe.sharing) {
      let next = 1;
      for (const r of requests) {
        const deviceVector = r.index + 1;
        if (r.callback === null) {
          // Non-sharing has no NO_VECTOR for a queue: its fixed vector is masked instead, so its
          // events stay pending in the device and are never sent.
          this.msiCommand(deviceVector, MsiCmd.MASK);
          continue;
        }
        if (perQueue && r.msiMessage !== undefined) {
          // Serviced on another CPU: its vector there, no handler here.
          this.programMsiMessage(deviceVector, r.msiMessage);
          continue;
        }
        const cpuVector = perQueue ? vectors[next++] : vectors[1];
        if (perQueue) alloc.setMsiHandler(cpuVector, this.msiQueueHandler(r));
        this.programMsiVector(deviceVector, alloc, cpuVector);
      }
    } else if (withCallback > 0) {
      this.programMsiVector(1, alloc, vectors[1]);
    }
  }

  /** Latches the message of `cpuVector` into device vector `deviceVector` and unmasks it. */
  private programMsiVector(deviceVector: number, alloc: GuestMsiAllocator, cpuVector: number): void {
    this.programMsiMessage(deviceVector, alloc.msiMessage(cpuVector));
  }

  /** Latches message `m` into device vector `deviceVector` and unmasks it. */
  private programMsiMessage(deviceVector: number, m: MsiMessageData): void {
    const a = this.access;
    a.write32(SeedMmioReg.MsiVecSel, deviceVector);
    a.write32(SeedMmioReg.MsiAddrLow, m.addressLow);
    a.write32(SeedMmioReg.MsiAddrHigh, m.addressHigh);
    a.write32(SeedMmioReg.MsiData, m.data);
    a.write32(SeedMmioReg.MsiCommand, MsiCmd.CONFIGURE);
    // Linux unmasks at request_irq (irq startup); a reset device starts unmasked anyway.
    a.write32(SeedMmioReg.MsiCommand, MsiCmd.UNMASK);
  }

  /** MsiVecSel = `vector`, MsiCommand = `cmd`. */
  private msiCommand(vector: number, cmd: number): void {
    this.access.write32(SeedMmioReg.MsiVecSel, vector);
    this.access.write32(SeedMmioReg.MsiCommand, cmd);
  }

  /** The handler of a queue's own MSI vector: that queue's callback, no register access. */
  private msiQueueHandler(r: QueueRequest): () => void {
    const index = r.index;
    const callback = r.callback as () => void;
    return () => {
      // Like vring_interrupt: nothing to do for a queue without used buffers (or a broken one).
      if (this.byIndex.get(index)?.queue?.hasUsed() === true) callback();
    };
  }

  /**
   * The handler of a queue's own wired line (docs/profiles/multi-line.md): acknowledges the
   * queue's InterruptStatus bit (2 + index) first, so an event after it raises the line again,
   * then runs the callback. One register write, no read.
   */
  private lineQueueHandler(r: QueueRequest): () => void {
    const index = r.index;
    const callback = r.callback as () => void;
    const bit = queueInterruptBit(index);
    return () => {
      this.access.write32(MmioReg.InterruptACK, bit);
      if (this.byIndex.get(index)?.queue?.hasUsed() === true) callback();
    };
  }

  /** Runs every queue with a callback and used buffers (Linux `vm_vring_interrupt`). */
  private runQueues(): void {
    const slots = this.slots;
    for (let i = 0; i < slots.length; i++) {
      const s = slots[i];
      if (s.callback !== null && s.queue?.hasUsed() === true) s.callback();
    }
  }

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
      // Seed 2/5: queue N's notification address is notify_base + N * notify_multiplier, computed
      // here once (Jason Wang: cache it rather than multiply on every kick).
      notifyOffset: this.notifyBase + this.notifyMultiplier * index,
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
   * Releases every queue and the interrupt routing (Linux `vm_del_vqs` + the seed's
   * `vm_free_irqs`); the device should be reset first. In order: MSI DISABLE when this driver
   * enabled it and no reset happened since (seed: the driver "MUST disable MSI" when it gives up
   * on it); per queue QueueReady = 0 (legacy QueuePFN = 0) and a read back that must give 0
   * (4.2.2.2: "To stop using the queue the driver MUST write zero (0x0) to this QueueReady and MUST
   * read the value back to ensure synchronization"), outstanding buffers detached, rings freed;
   * every wired line freed; every MSI vector freed with its handler; {@link
   * MmioDriver.interruptMode} back to `none`. Everything is released even when the device
   * misbehaves.
   * @throws VirtioError `DEVICE_FAILED` after releasing, when a queue still read as live
   */
  deleteQueues(): void {
    this.releaseQueues();
  }

  /** The body of {@link MmioDriver.deleteQueues}, also the unwind path of setupQueues. */
  private releaseQueues(): void {
    const a = this.access;
    const stuck: number[] = [];
    if (this.msiOn) {
      // Seed: "If driver fails to setup any event with a vector, it MUST disable MSI"; first, so
      // the device stops sending before the vectors go away. Only when MsiState still says enabled
      // (a reset already disabled it, and DISABLE while disabled is a wrong-state command).
      this.msiOn = false;
      if ((a.read32(SeedMmioReg.MsiState) & MsiStateBit.ENABLED) !== 0) {
        a.write32(SeedMmioReg.MsiCommand, MsiCmd.DISABLE);
      }
    }
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
    for (const line of this.heldLines) this.platform.freeIrq(line);
    this.heldLines.length = 0;
    if (this.msiVectors.length > 0) {
      // Detaches the handlers too (Linux free_irq + platform_msi_domain_free_irqs).
      this.platform.msi?.freeMsiVectors(this.msiVectors);
      this.msiVectors = [];
    }
    this.mode = null;
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
   * Where notifications of queue `index` go: its notification offset (QueueNotify, or the seed's
   * per-queue address) and whether the value carries notification data.
   * @throws VirtioError `INVALID_ARGUMENT` for a queue this driver did not set up
   */
  notifyLocation(index: number): NotifyLocation {
    const slot = this.byIndex.get(index);
    if (slot === undefined || slot.queue === null) {
      throw new VirtioError('INVALID_ARGUMENT', `${this.name}: queue ${String(index)} is not set up here`);
    }
    return { offset: slot.notifyOffset, withData: this.notificationData };
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
    this.access.write32(
      slot.notifyOffset,
      notificationValue(queue.index, queue.availIndex, this.notificationData),
    );
  }

  /**
   * The handler of the single standard line, mode `line` (Linux `vm_interrupt`): reads InterruptStatus and acknowledges it, runs
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
   * Teardown as a guest unbinding the device: reset, then release the queues, lines and MSI
   * vectors, even when the reset fails.
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
