/**
 * The device side of virtio over MMIO (virtio 1.2+, section 4.2): the register file, the device
 * status machine, feature negotiation, queue configuration and the interrupt status, wrapped
 * around a {@link VirtioDevice}. A VMM maps an {@link MmioTransport} on its bus and routes guest
 * accesses to {@link MmioTransport.read} and {@link MmioTransport.write}.
 *
 * ```
 * window: 0x000 .. 0x0ff  control registers, 32-bit aligned accesses only (4.2.2.2)
 *         0x100 .. 0x100 + configSize - 1  device configuration, 8/16/32-bit naturally aligned
 *         notify_base + notify_multiplier * N  queue N's notification address (seed profile only)
 *         .. windowSize - 1  undescribed (guest error)
 * ```
 *
 * Interrupts go through an {@link InterruptDelivery}: the standard line, several wired lines
 * (`lines`, docs/profiles/multi-line.md), or the seed profile's MSI over either
 * (`seed.msi`, docs/profiles/seed-v2.md). The seed profile (`seed`) also adds register rows over
 * the modern table and per-queue notification addresses past the configuration space.
 *
 * Ownership. The transport owns the selectors, the device status, ConfigGeneration, the staged and
 * committed queue configuration ({@link DeviceQueue}) and the interrupt status. The device owns its
 * feature bits, its configuration bytes and the work behind each queue; it learns of the driver
 * only through {@link VirtioDevice.activate} (at DRIVER_OK, with a {@link DeviceContext}),
 * {@link VirtioDevice.notify} and {@link VirtioDevice.reset}.
 *
 * Guest errors (tier 1). Nothing a guest does throws: a wrong width, an undescribed offset, a read
 * of a write-only register, a write of a read-only one, an invalid status transition, a queue
 * write at the wrong time: each is counted by kind, reported through `onGuestError`, and the write
 * is ignored or the read returns 0. Host errors (bad options, a device offering transport bits)
 * throw a {@link VirtioError} from the constructor.
 *
 * Layout versions. Version 2 (modern) and version 1 (legacy, 4.2.4) each get their own register
 * table, chosen once at construction; the two differ in rows, not in `if (legacy)` branches.
 *
 * @packageDocumentation
 */

import { type DeviceContext, type DeviceHost, Features, type VirtioDevice } from '../device/index.js';
import type { GuestMemory } from '../memory/index.js';
import {
  DeviceStatus,
  FeatureBit,
  hex,
  LEGACY_DEFAULT_PAGE_SIZE,
  LEGACY_DEFAULT_QUEUE_ALIGN,
  MMIO_DEFAULT_WINDOW_SIZE,
  MMIO_MAGIC_VALUE,
  MMIO_VERSION_LEGACY,
  MMIO_VERSION_MODERN,
  MmioLegacyReg,
  MmioReg,
  SeedFeatureBit,
  STATUS_RESET,
  TRANSPORT_FEATURE_FIRST,
  TRANSPORT_FEATURE_LAST,
  VirtioError,
} from '../spec/index.js';
import { DeviceQueue, isPowerOfTwo, legacyLayout, type QueueError } from '../virtqueue/index.js';
import {
  type InterruptDelivery,
  LineInterrupt,
  MultiLineInterrupt,
  type MultiLineOptions,
} from './interrupts.js';
import { buildRegisterTable, type RegisterRow, type RegisterTable, registerRows } from './registers.js';
import { MsiDelivery } from './seed/msiDelivery.js';
import {
  type NotifyLayout,
  resolveNotifyLayout,
  type SeedProfileOptions,
  seedProfileRows,
} from './seed/profile.js';
import {
  findTransition,
  LEGACY_STATUS_TRANSITIONS,
  MODERN_STATUS_TRANSITIONS,
  type StatusTransition,
} from './statusMachine.js';
import type { AccessWidth, InterruptLine, MmioDevice, MsiSink } from './types.js';

/** A shared memory region the device exposes through SHMSel / SHMLen / SHMBase (virtio 1.2, 2.10). */
export interface ShmRegion {
  /** Region ID the driver writes to SHMSel. */
  readonly id: number;
  /** Guest physical base address. */
  readonly base: number;
  /** Length in bytes. */
  readonly length: number;
}

/**
 * A register profile: extra rows layered over the standard table of the chosen version. A row at an
 * offset the standard table uses replaces it (the seed profile puts MsiVecNum over QueueReset and
 * makes QueueNotify readable). Row handlers see the transport's public API. A profile is
 * non-standard by definition: the table is built once per transport that uses one.
 */
export interface MmioTransportProfile {
  /** Profile name, for reports. */
  readonly name: string;
  /** Rows to add or override. */
  readonly rows: readonly RegisterRow<MmioTransport>[];
}

/** Construction options of an {@link MmioTransport}. */
export interface MmioTransportOptions {
  /** Guest RAM, where the driver places the rings. */
  mem: GuestMemory;
  /** The wired interrupt line this device drives. */
  irq: InterruptLine;
  /** Register layout: 2 (modern, default) or 1 (legacy, 4.2.4). */
  version?: 1 | 2;
  /** VendorID register value; default 0x4f494d56 ("VMIO"). */
  vendorId?: number;
  /** Window size in bytes; default {@link MMIO_DEFAULT_WINDOW_SIZE}. Must hold 0x100 + configSize. */
  windowSize?: number;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  indirectDesc?: boolean;
  /** Offer VIRTIO_F_RING_RESET and the QueueReset register (default true; modern only). */
  ringReset?: boolean;
  /** Offer VIRTIO_F_NOTIFICATION_DATA (default true; modern only). */
  notificationData?: boolean;
  /** Shared memory regions (modern only); default none. */
  shmRegions?: readonly ShmRegion[];
  /** Receives a lowercase message for every guest error. */
  onGuestError?: (message: string) => void;
  /** Non-standard register profile layered over the standard table. */
  profile?: MmioTransportProfile;
  /**
   * The seed v2 profile (non-standard, modern only): VIRTIO_F_MMIO_MSI and/or
   * VIRTIO_F_MMIO_NOTIFICATION. Off by default; never offered with RING_RESET or NOTIF_CONFIG_DATA
   * (docs/profiles/seed-v2.md).
   */
  seed?: SeedProfileOptions;
  /** Where MSI messages go; required with `seed.msi`, ignored otherwise. */
  msiSink?: MsiSink;
  /**
   * Extra wired lines (the 2014 multi-IRQ RFC): a configuration line plus one line per queue or one
   * for all queues. `irq` stays the standard (combined) line (docs/profiles/multi-line.md).
   */
  lines?: MultiLineOptions;
}

/** Every kind of guest error the transport counts. */
export const GUEST_ERROR_KINDS = [
  /** A control register access that is not 32 bits wide and aligned (4.2.2.2). */
  'width',
  /** An offset the layout does not describe, or outside the window. */
  'offset',
  /** A read of a write-only register or a write of a read-only one (4.2.2.2). */
  'direction',
  /** A Status write that is not a valid transition. */
  'status',
  /** A feature write outside negotiation, or features refused at FEATURES_OK. */
  'features',
  /** Queue configuration written at the wrong time, for a missing queue, or invalid at enable. */
  'queue',
  /** An available buffer notification for a missing or stopped queue, or before DRIVER_OK. */
  'notify',
  /** An InterruptACK with undefined bits. */
  'interrupt',
  /** A configuration space access out of range, of the wrong width, or refused by the device. */
  'config',
  /** Ring corruption reported by the device: the device now needs a reset (2.1.2). */
  'ring',
  /** Seed profile: an Msi* register used before negotiation, or a command the device refuses. */
  'msi',
] as const;

/** A kind of guest error. */
export type GuestErrorKind = (typeof GUEST_ERROR_KINDS)[number];

/** Guest error counts by kind. */
export type GuestErrorCounts = Record<GuestErrorKind, number>;

/** Default VendorID: "VMIO" in little-endian. */
export const MMIO_DEFAULT_VENDOR_ID = 0x4f494d56;

/** 2^32, to split and combine 64-bit register pairs without BigInt. */
const TWO_POW_32 = 2 ** 32;

/** Largest window a transport accepts: 4 GiB, so every offset fits the `offset >>> 0` check. */
const MAX_WINDOW_SIZE = 0x1_0000_0000;

/** All ones: SHMLen / SHMBase of a region that does not exist (4.2.2). */
const NO_SHM = 0xffff_ffff;

/** Width masks for configuration space values. */
function widthMask(width: 1 | 2 | 4): number {
  return width === 1 ? 0xff : width === 2 ? 0xffff : 0xffff_ffff;
}

/**
 * The device side of one virtio-mmio window: a {@link MmioDevice} a bus maps, wrapping a
 * {@link VirtioDevice}.
 */
export class MmioTransport implements MmioDevice {
  /** Size of the window in bytes. */
  readonly windowSize: number;
  /** Register layout version: 2 (modern) or 1 (legacy). */
  readonly version: 1 | 2;
  /** VendorID register value. */
  readonly vendorId: number;
  /** The seed profile's MSI state, or null when the device does not offer VIRTIO_F_MMIO_MSI. */
  readonly msi: MsiDelivery | null;
  /** The seed profile's per-queue notification layout, or null when not offered. */
  readonly notifyLayout: NotifyLayout | null;

  /** True when the seed v2 profile is on (MSI or per-queue notification): a non-standard device. */
  get seedProfile(): boolean {
    return this.msi !== null || this.notifyLayout !== null;
  }

  private readonly device: VirtioDevice;
  private readonly mem: GuestMemory;
  private readonly interrupts: InterruptDelivery;
  private readonly onGuestError: ((message: string) => void) | undefined;
  private readonly table: RegisterTable<MmioTransport>;
  private readonly transitions: readonly StatusTransition[];
  private readonly legacy: boolean;

  /** Device features plus the transport bits we implement, fixed at construction. */
  private readonly offered: Features;
  /** What the driver wrote to DriverFeatures; the negotiated set once FEATURES_OK is set. */
  private readonly accepted = new Features();
  /** The driver wrote a non-zero word past the words we model: FEATURES_OK must fail. */
  private unknownFeatureBits = false;
  /** QueueNotify value mask: the low 16 bits with VIRTIO_F_NOTIFICATION_DATA, all 32 otherwise. */
  private notifyIndexMask = 0xffff_ffff;

  private deviceStatus = STATUS_RESET;
  private generation = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private queueSelect = 0;
  private shmSelect = 0;

  private readonly queues: DeviceQueue[];
  /** Staged QueueNum per queue, committed at QueueReady = 1 (QEMU's commit-on-ready). */
  private readonly stagedNum: Uint32Array;
  /** Staged address halves per queue: desc lo/hi, driver lo/hi, device lo/hi (6 words per queue). */
  private readonly stagedAddr: Uint32Array;
  /** 1 while a queue reset with QueueReset may be reprogrammed after DRIVER_OK (2.6.1.2). */
  private readonly queueWasReset: Uint8Array;

  /** Legacy: guest page size for QueuePFN; survives device reset (Linux writes it once at probe). */
  private guestPageSize = LEGACY_DEFAULT_PAGE_SIZE;
  /** Legacy: QueueAlign per queue. */
  private readonly queueAlign: Uint32Array;
  /** Legacy: QueuePFN per queue (0 = not in use). */
  private readonly queuePfn: Uint32Array;

  /** SHMLenLow, SHMLenHigh, SHMBaseLow, SHMBaseHigh of each region, by ID. */
  private readonly shm: Map<number, Uint32Array>;

  /** Window offsets of the per-queue notification addresses: [start, end); empty without the profile. */
  private readonly notifyStart: number;
  private readonly notifyEnd: number;
  private readonly notifyMultiplier: number;

  /** Incremented at every reset: contexts of earlier activations become inert. */
  private epoch = 0;
  /** Per queue: 1 when the device deferred it (DeviceContext.defer). */
  private deferred: Uint8Array = new Uint8Array(0);
  private deferredCount = 0;
  private errorTotal = 0;
  private readonly errorCounts: GuestErrorCounts;

  /**
   * @param device - the device model; `attach` is called once from here
   * @param options - see {@link MmioTransportOptions}
   * @throws VirtioError `INVALID_ARGUMENT` for invalid options, a window too small for the
   *   configuration space, or a device that offers transport feature bits itself
   * @throws VirtioError `QUEUE_INVALID_SIZE` for a queue maximum that is not a power of two
   */
  constructor(device: VirtioDevice, options: MmioTransportOptions) {
    const version = options.version ?? MMIO_VERSION_MODERN;
    if (version !== MMIO_VERSION_MODERN && version !== MMIO_VERSION_LEGACY) {
      throw new VirtioError('INVALID_ARGUMENT', `unsupported mmio version ${String(version)}`);
    }
    this.version = version;
    this.legacy = version === MMIO_VERSION_LEGACY;
    const modern = !this.legacy;

    const vendorId = options.vendorId ?? MMIO_DEFAULT_VENDOR_ID;
    if (!isU32(vendorId)) throw new VirtioError('INVALID_ARGUMENT', `invalid vendor id ${String(vendorId)}`);
    this.vendorId = vendorId;
    if (!isU32(device.deviceId)) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid device id ${String(device.deviceId)}`);
    }

    const configSize = device.configSize;
    if (!Number.isSafeInteger(configSize) || configSize < 0) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid config size ${String(configSize)}`);
    }
    const seed = options.seed;
    const numQueues = device.queueMaxSizes.length;
    if (seed !== undefined) {
      if (this.legacy) throw new VirtioError('INVALID_ARGUMENT', 'the seed profile needs the modern layout');
      if (seed.msi === undefined && seed.notification === undefined) {
        throw new VirtioError('INVALID_ARGUMENT', 'the seed profile needs msi or notification');
      }
      if (options.ringReset === true) {
        // docs/profiles/seed-v2.md: bit 40 is VIRTIO_F_MMIO_MSI here and VIRTIO_F_RING_RESET in the
        // standard, and 0x0c0 is MsiVecNum here and QueueReset there: never offered together.
        throw new VirtioError(
          'INVALID_ARGUMENT',
          'the seed profile cannot be offered with virtio_f_ring_reset',
        );
      }
      if (seed.msi !== undefined && options.msiSink === undefined) {
        throw new VirtioError('INVALID_ARGUMENT', 'the seed msi profile needs an msi sink');
      }
    }
    const notify =
      seed?.notification === undefined ? null : resolveNotifyLayout(seed.notification, configSize, numQueues);
    this.notifyLayout = notify;
    const minWindow =
      notify === null ? MMIO_DEFAULT_WINDOW_SIZE : Math.max(MMIO_DEFAULT_WINDOW_SIZE, notify.end);
    const windowSize =
      options.windowSize ?? Math.ceil(minWindow / MMIO_DEFAULT_WINDOW_SIZE) * MMIO_DEFAULT_WINDOW_SIZE;
    if (!Number.isSafeInteger(windowSize) || windowSize <= 0 || windowSize > MAX_WINDOW_SIZE) {
      throw new VirtioError('INVALID_ARGUMENT', `invalid window size ${String(windowSize)}`);
    }
    if (windowSize < MmioReg.Config + configSize) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `window size ${hex(windowSize)} cannot hold ${hex(MmioReg.Config)} + config size ${hex(configSize)}`,
      );
    }
    if (notify !== null && windowSize < notify.end) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `window size ${hex(windowSize)} cannot hold the queue notification addresses up to ${hex(notify.end)}`,
      );
    }
    this.windowSize = windowSize;
    this.notifyStart = notify === null ? windowSize : notify.base;
    this.notifyEnd = notify === null ? windowSize : notify.end;
    this.notifyMultiplier = notify === null ? 0 : notify.multiplier;

    // Transport bits belong to the transport (section 6): a device that sets one would offer a
    // mechanism the transport may not implement (RING_PACKED), or contradict an option.
    for (let bit = TRANSPORT_FEATURE_FIRST; bit <= TRANSPORT_FEATURE_LAST; bit++) {
      if (device.features.has(bit)) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `device offers transport feature bit ${bit}; the transport adds transport bits`,
        );
      }
    }
    const transportBits = new Features();
    // 6.2: "A device MUST offer VIRTIO_F_VERSION_1."
    if (modern) transportBits.set(FeatureBit.VERSION_1);
    if (options.eventIdx ?? true) transportBits.set(FeatureBit.EVENT_IDX);
    if (options.indirectDesc ?? true) transportBits.set(FeatureBit.INDIRECT_DESC);
    // The seed profile reuses bits 39 and 40: NOTIF_CONFIG_DATA (never offered by this transport)
    // and RING_RESET are left out with it.
    if (modern && seed === undefined && (options.ringReset ?? true)) transportBits.set(FeatureBit.RING_RESET);
    if (seed?.notification !== undefined) transportBits.set(SeedFeatureBit.MMIO_NOTIFICATION);
    if (seed?.msi !== undefined) transportBits.set(SeedFeatureBit.MMIO_MSI);
    if (modern && (options.notificationData ?? true)) transportBits.set(FeatureBit.NOTIFICATION_DATA);
    this.offered = device.features.or(transportBits);

    this.shm = new Map();
    for (const r of options.shmRegions ?? []) {
      if (this.legacy) {
        throw new VirtioError('INVALID_ARGUMENT', 'shared memory regions need the modern layout');
      }
      if (!isU32(r.id) || this.shm.has(r.id)) {
        throw new VirtioError('INVALID_ARGUMENT', `invalid or duplicate shm region id ${String(r.id)}`);
      }
      if (!isSafeU(r.base) || !isSafeU(r.length) || !isSafeU(r.base + r.length)) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `invalid shm region ${String(r.id)}: base ${String(r.base)} length ${String(r.length)}`,
        );
      }
      this.shm.set(
        r.id,
        Uint32Array.of(
          r.length % TWO_POW_32,
          Math.floor(r.length / TWO_POW_32),
          r.base % TWO_POW_32,
          Math.floor(r.base / TWO_POW_32),
        ),
      );
    }

    this.device = device;
    this.mem = options.mem;
    this.onGuestError = options.onGuestError;
    const wired: InterruptDelivery =
      options.lines === undefined
        ? new LineInterrupt(options.irq)
        : new MultiLineInterrupt(options.irq, options.lines, numQueues);
    const sink = options.msiSink;
    this.msi =
      seed?.msi === undefined || sink === undefined
        ? null
        : new MsiDelivery(wired, sink, seed.msi, numQueues, (message) => this.guestError('msi', message));
    this.interrupts = this.msi ?? wired;
    this.transitions = this.legacy ? LEGACY_STATUS_TRANSITIONS : MODERN_STATUS_TRANSITIONS;
    const base = this.legacy ? MmioTransport.LEGACY_TABLE : MmioTransport.MODERN_TABLE;
    const layers: RegisterRow<MmioTransport>[][] = [];
    if (seed === undefined) {
      layers.push(registerRows(base));
    } else {
      // Seed profile: 0x0c0 is MsiVecNum (or undescribed without MSI), never QueueReset.
      layers.push(registerRows(base).filter((row) => row.offset !== MmioReg.QueueReset));
      const queueNotify = base[MmioReg.QueueNotify >>> 2];
      if (queueNotify === undefined) throw new VirtioError('INVALID_ARGUMENT', 'no QueueNotify row');
      layers.push(seedProfileRows(queueNotify, this.msi, notify));
    }
    if (options.profile !== undefined) layers.push([...options.profile.rows]);
    this.table = layers.length === 1 ? base : buildRegisterTable(...layers);

    this.queues = device.queueMaxSizes.map((max) => new DeviceQueue(max));
    this.deferred = new Uint8Array(this.queues.length);
    const n = numQueues;
    this.stagedNum = new Uint32Array(n);
    this.stagedAddr = new Uint32Array(6 * n);
    this.queueWasReset = new Uint8Array(n);
    this.queueAlign = new Uint32Array(n);
    this.queuePfn = new Uint32Array(n);
    for (let i = 0; i < n; i++) this.resetQueueRegisters(i);

    const counts = {} as GuestErrorCounts;
    for (const kind of GUEST_ERROR_KINDS) counts[kind] = 0;
    this.errorCounts = counts;

    const host: DeviceHost = { configChanged: () => this.configChanged() };
    device.attach?.(host);
  }

  // ---------------------------------------------------------------------------------------------
  // MmioDevice: the hot path. One table lookup, no allocation, no BigInt.

  /** A guest read of `width` bytes at `offset` (relative to the window). Never throws. */
  read(offset: number, width: AccessWidth): number {
    if (offset >>> 0 !== offset || offset >= this.windowSize) {
      this.guestError('offset', `${String(width)}-byte read at ${String(offset)} outside the window`);
      return 0;
    }
    if (offset >= this.notifyStart && offset < this.notifyEnd) {
      // Seed: the queue notification addresses are written, never read.
      this.guestError('direction', `read of queue notification address ${hex(offset)}`);
      return 0;
    }
    if (offset >= MmioReg.Config) return this.readConfig(offset - MmioReg.Config, width);
    if (width !== 4 || (offset & 3) !== 0) {
      // 4.2.2.2: "The driver MUST only use 32 bit wide and aligned reads and writes to access the
      // control registers".
      this.guestError('width', `${String(width)}-byte read at ${hex(offset)}: control registers are 32-bit`);
      return 0;
    }
    const row = this.table[offset >>> 2];
    if (row === undefined) {
      // 4.2.2.2: "The driver MUST NOT access memory locations not described in the table".
      this.guestError('offset', `read of undescribed offset ${hex(offset)}`);
      return 0;
    }
    if (row.read === undefined) {
      // 4.2.2.2: the driver "MUST NOT read from the write-only registers (direction W)".
      this.guestError('direction', `read of write-only register ${row.name} (${hex(offset)})`);
      return 0;
    }
    return row.read(this) >>> 0;
  }

  /** A guest write of `width` bytes at `offset` (relative to the window). Never throws. */
  write(offset: number, width: AccessWidth, value: number): void {
    if (offset >>> 0 !== offset || offset >= this.windowSize) {
      this.guestError('offset', `${String(width)}-byte write at ${String(offset)} outside the window`);
      return;
    }
    if (offset >= this.notifyStart && offset < this.notifyEnd) {
      this.writeNotifyAddress(offset - this.notifyStart, width, value);
      return;
    }
    if (offset >= MmioReg.Config) {
      this.writeConfig(offset - MmioReg.Config, width, value);
      return;
    }
    if (width !== 4 || (offset & 3) !== 0) {
      // 4.2.2.2: "The driver MUST only use 32 bit wide and aligned reads and writes to access the
      // control registers".
      this.guestError('width', `${String(width)}-byte write at ${hex(offset)}: control registers are 32-bit`);
      return;
    }
    const row = this.table[offset >>> 2];
    if (row === undefined) {
      // 4.2.2.2: "The driver MUST NOT access memory locations not described in the table".
      this.guestError('offset', `write of undescribed offset ${hex(offset)}`);
      return;
    }
    if (row.write === undefined) {
      // 4.2.2.2: the driver "MUST NOT write to the read-only registers (direction R)".
      this.guestError('direction', `write of read-only register ${row.name} (${hex(offset)})`);
      return;
    }
    row.write(this, value >>> 0);
  }

  // ---------------------------------------------------------------------------------------------
  // Accessors for the VMM, profiles, tests and reports.

  /** The device status as the Status register reads it (DEVICE_NEEDS_RESET included). */
  get status(): number {
    return this.deviceStatus;
  }

  /** The InterruptStatus value. */
  get interruptStatus(): number {
    return this.interrupts.readStatus();
  }

  /** ConfigGeneration: changes on every device configuration change, never reset. */
  get configGeneration(): number {
    return this.generation;
  }

  /** The features offered to the driver (a copy). */
  get offeredFeatures(): Features {
    return this.offered.clone();
  }

  /**
   * The features the driver accepted (a copy): as written until FEATURES_OK (modern) or DRIVER_OK
   * (legacy, then masked to the offer), the negotiated set afterwards.
   */
  get driverFeatures(): Features {
    return this.accepted.clone();
  }

  /** The QueueSel value. */
  get queueSel(): number {
    return this.queueSelect;
  }

  /** Number of queues the device has. */
  get numQueues(): number {
    return this.queues.length;
  }

  /** True between DRIVER_OK and the next reset. */
  get isActivated(): boolean {
    return (this.deviceStatus & DeviceStatus.DRIVER_OK) !== 0;
  }

  /**
   * True when feature `bit` is negotiated: modern, after FEATURES_OK and until reset; legacy, as
   * written if offered. For profile rows (the seed registers are gated on it).
   */
  isNegotiated(bit: number): boolean {
    return this.negotiated(bit);
  }

  /** Total guest errors since construction. */
  get guestErrors(): number {
    return this.errorTotal;
  }

  /** Guest errors by kind since construction (a copy). */
  get guestErrorCounts(): GuestErrorCounts {
    return { ...this.errorCounts };
  }

  /** The register rows of this transport's table, in offset order. */
  get registers(): RegisterRow<MmioTransport>[] {
    return registerRows(this.table);
  }

  /**
   * Queue `index` (its committed configuration and cursors).
   * @throws VirtioError `INVALID_ARGUMENT` for an index the device does not have
   */
  queue(index: number): DeviceQueue {
    const q = this.queues[index];
    if (!Number.isInteger(index) || q === undefined) {
      throw new VirtioError('INVALID_ARGUMENT', `no queue ${String(index)}`);
    }
    return q;
  }

  /**
   * Counts a guest error of `kind` and reports `message`. For profile rows; the transport's own
   * rows use it too.
   */
  guestError(kind: GuestErrorKind, message: string): void {
    this.errorTotal++;
    this.errorCounts[kind]++;
    this.onGuestError?.(message);
  }

  // ---------------------------------------------------------------------------------------------
  // The register tables.

  /** Rows both layouts share, with the names each layout gives them. */
  private static sharedRows(legacy: boolean): RegisterRow<MmioTransport>[] {
    return [
      { offset: MmioReg.MagicValue, name: 'MagicValue', access: 'r', read: () => MMIO_MAGIC_VALUE },
      { offset: MmioReg.Version, name: 'Version', access: 'r', read: (t) => t.version },
      { offset: MmioReg.DeviceID, name: 'DeviceID', access: 'r', read: (t) => t.device.deviceId },
      { offset: MmioReg.VendorID, name: 'VendorID', access: 'r', read: (t) => t.vendorId },
      {
        offset: MmioReg.DeviceFeatures,
        name: legacy ? 'HostFeatures' : 'DeviceFeatures',
        access: 'r',
        // 4.2.2: "returns bits DeviceFeaturesSel*32 to (DeviceFeaturesSel*32)+31"; words past the
        // ones we model read 0.
        read: (t) => t.offered.word(t.deviceFeaturesSel),
      },
      {
        offset: MmioReg.DeviceFeaturesSel,
        name: legacy ? 'HostFeaturesSel' : 'DeviceFeaturesSel',
        access: 'w',
        write: (t, v) => {
          t.deviceFeaturesSel = v;
        },
      },
      {
        offset: MmioReg.DriverFeatures,
        name: legacy ? 'GuestFeatures' : 'DriverFeatures',
        access: 'w',
        write: (t, v) => t.writeDriverFeatures(v),
      },
      {
        offset: MmioReg.DriverFeaturesSel,
        name: legacy ? 'GuestFeaturesSel' : 'DriverFeaturesSel',
        access: 'w',
        write: (t, v) => {
          t.driverFeaturesSel = v;
        },
      },
      {
        offset: MmioReg.QueueSel,
        name: 'QueueSel',
        access: 'w',
        write: (t, v) => {
          t.queueSelect = v;
        },
      },
      {
        offset: MmioReg.QueueNumMax,
        name: 'QueueNumMax',
        access: 'r',
        // 4.2.2: "zero (0x0) if the queue is not available".
        read: (t) => (t.queueSelect < t.queues.length ? t.queues[t.queueSelect].maxSize : 0),
      },
      { offset: MmioReg.QueueNum, name: 'QueueNum', access: 'w', write: (t, v) => t.writeQueueNum(v) },
      {
        offset: MmioReg.QueueNotify,
        name: 'QueueNotify',
        access: 'w',
        write: (t, v) => t.writeQueueNotify(v),
      },
      {
        offset: MmioReg.InterruptStatus,
        name: 'InterruptStatus',
        access: 'r',
        read: (t) => t.interrupts.readStatus(),
      },
      {
        offset: MmioReg.InterruptACK,
        name: 'InterruptACK',
        access: 'w',
        write: (t, v) => t.writeInterruptAck(v),
      },
      {
        offset: MmioReg.Status,
        name: 'Status',
        access: 'rw',
        read: (t) => t.deviceStatus,
        write: (t, v) => t.writeStatus(v),
      },
    ];
  }

  /** A write-only half of a 64-bit queue address: `slot` 0..5 = desc lo/hi, driver lo/hi, device lo/hi. */
  private static addressRow(offset: number, name: string, slot: number): RegisterRow<MmioTransport> {
    return { offset, name, access: 'w', write: (t, v) => t.writeQueueAddress(name, slot, v) };
  }

  /** A read-only SHM word: `part` 0..3 = len lo, len hi, base lo, base hi. */
  private static shmRow(offset: number, name: string, part: number): RegisterRow<MmioTransport> {
    return {
      offset,
      name,
      access: 'r',
      // 4.2.2: "Reading from a non-existent region ... results in a length of -1" and "a base
      // address of 0xffffffffffffffff".
      read: (t) => t.shm.get(t.shmSelect)?.[part] ?? NO_SHM,
    };
  }

  /** The modern (Version 2) layout, 4.2.2. */
  private static readonly MODERN_ROWS: readonly RegisterRow<MmioTransport>[] = [
    ...MmioTransport.sharedRows(false),
    {
      offset: MmioReg.QueueReady,
      name: 'QueueReady',
      access: 'rw',
      // 4.2.2: "Reading from this register returns the last value written to it"; we return the
      // committed state, which differs only when a write of 1 was refused as invalid.
      read: (t) => (t.queueSelect < t.queues.length && t.queues[t.queueSelect].ready ? 1 : 0),
      write: (t, v) => t.writeQueueReady(v),
    },
    MmioTransport.addressRow(MmioReg.QueueDescLow, 'QueueDescLow', 0),
    MmioTransport.addressRow(MmioReg.QueueDescHigh, 'QueueDescHigh', 1),
    MmioTransport.addressRow(MmioReg.QueueDriverLow, 'QueueDriverLow', 2),
    MmioTransport.addressRow(MmioReg.QueueDriverHigh, 'QueueDriverHigh', 3),
    MmioTransport.addressRow(MmioReg.QueueDeviceLow, 'QueueDeviceLow', 4),
    MmioTransport.addressRow(MmioReg.QueueDeviceHigh, 'QueueDeviceHigh', 5),
    {
      offset: MmioReg.SHMSel,
      name: 'SHMSel',
      access: 'w',
      write: (t, v) => {
        t.shmSelect = v;
      },
    },
    MmioTransport.shmRow(MmioReg.SHMLenLow, 'SHMLenLow', 0),
    MmioTransport.shmRow(MmioReg.SHMLenHigh, 'SHMLenHigh', 1),
    MmioTransport.shmRow(MmioReg.SHMBaseLow, 'SHMBaseLow', 2),
    MmioTransport.shmRow(MmioReg.SHMBaseHigh, 'SHMBaseHigh', 3),
    {
      offset: MmioReg.QueueReset,
      name: 'QueueReset',
      access: 'rw',
      // 4.2.2.1: "The device MUST present 0 in both QueueReset and QueueReady when queue reset has
      // completed". A reset completes inside the write, so a read never sees 1 (reset ongoing).
      read: () => 0,
      write: (t, v) => t.writeQueueReset(v),
    },
    { offset: MmioReg.ConfigGeneration, name: 'ConfigGeneration', access: 'r', read: (t) => t.generation },
  ];

  /** The legacy (Version 1) layout, 4.2.4: page-based queues, no QueueReady, SHM or ConfigGeneration. */
  private static readonly LEGACY_ROWS: readonly RegisterRow<MmioTransport>[] = [
    ...MmioTransport.sharedRows(true),
    {
      offset: MmioLegacyReg.GuestPageSize,
      name: 'GuestPageSize',
      access: 'w',
      write: (t, v) => t.writeGuestPageSize(v),
    },
    {
      offset: MmioLegacyReg.QueueAlign,
      name: 'QueueAlign',
      access: 'w',
      write: (t, v) => t.writeQueueAlign(v),
    },
    {
      offset: MmioLegacyReg.QueuePFN,
      name: 'QueuePFN',
      access: 'rw',
      // 4.2.4: "Reading from this register returns the currently used page number of the queue".
      read: (t) => (t.queueSelect < t.queues.length ? t.queuePfn[t.queueSelect] : 0),
      write: (t, v) => t.writeQueuePfn(v),
    },
  ];

  /** Dispatch table of the modern layout, built once. */
  private static readonly MODERN_TABLE: RegisterTable<MmioTransport> = buildRegisterTable(
    MmioTransport.MODERN_ROWS,
  );

  /** Dispatch table of the legacy layout, built once. */
  private static readonly LEGACY_TABLE: RegisterTable<MmioTransport> = buildRegisterTable(
    MmioTransport.LEGACY_ROWS,
  );

  // ---------------------------------------------------------------------------------------------
  // Device status and feature negotiation.

  /** Status write: reset, FAILED, then the transition table. */
  private writeStatus(value: number): void {
    if (value === STATUS_RESET) {
      // 4.2.2: "Writing zero (0x0) to this register triggers a device reset."
      this.reset();
      return;
    }
    const needsReset = this.deviceStatus & DeviceStatus.DEVICE_NEEDS_RESET;
    if ((value & DeviceStatus.FAILED) !== 0) {
      // 3.1.1: "If any of these steps go irrecoverably wrong, the driver SHOULD set the FAILED
      // status bit"; accepted from any state. The driver must reset before using the device again.
      this.deviceStatus |= DeviceStatus.FAILED;
      return;
    }
    // DEVICE_NEEDS_RESET is the device's bit: the driver writes back what it read, with or without it.
    const from = this.deviceStatus & ~DeviceStatus.DEVICE_NEEDS_RESET;
    const to = value & ~DeviceStatus.DEVICE_NEEDS_RESET;
    const transition = findTransition(this.transitions, from, to);
    if (transition === undefined) {
      // 2.1.1: "The driver MUST NOT clear a device status bit"; 3.1.1 fixes the order of the rest.
      this.guestError('status', `invalid status transition ${hex(from)} -> ${hex(to)}`);
      return;
    }
    if (transition.step === 'features-ok') {
      const refusal = this.checkFeatures();
      if (refusal !== null) {
        // 2.2.2: "The device SHOULD accept any valid subset of features the driver accepts,
        // otherwise it MUST fail to set the FEATURES_OK device status bit when the driver writes
        // it." The write is taken but FEATURES_OK stays clear: the driver sees that when it
        // re-reads Status (3.1.1 step 6).
        this.guestError('features', `features_ok refused: ${refusal}`);
        return;
      }
      this.notifyIndexMask = this.accepted.has(FeatureBit.NOTIFICATION_DATA) ? 0xffff : 0xffff_ffff;
    }
    if (transition.step === 'driver-ok' && this.legacy) this.settleLegacyFeatures();
    this.deviceStatus = to | needsReset;
    if (transition.step === 'driver-ok') this.activate();
  }

  /** Why the accepted features cannot be FEATURES_OK, or null when they can. */
  private checkFeatures(): string | null {
    if (this.unknownFeatureBits) return 'driver accepted feature bits past bit 127';
    if (!this.accepted.isSubsetOf(this.offered)) {
      // 2.2.1: "The driver MUST NOT accept a feature which the device did not offer".
      return `driver accepted ${this.accepted.toString()}, offered ${this.offered.toString()}`;
    }
    if (!this.accepted.has(FeatureBit.VERSION_1)) {
      // 6.1: "A driver MUST accept VIRTIO_F_VERSION_1 if it is offered"; this device is not
      // transitional (6.2: "A device MAY fail to operate further if VIRTIO_F_VERSION_1 is not
      // accepted").
      return 'driver did not accept version_1';
    }
    const validate = this.device.validateFeatures;
    if (validate !== undefined && !validate.call(this.device, this.accepted.clone())) {
      return `device refused ${this.accepted.toString()}`;
    }
    return null;
  }

  /**
   * Legacy DRIVER_OK: the features are taken as written (3.1.2 has no FEATURES_OK), masked to what
   * was offered; dropping unoffered bits is a guest error.
   */
  private settleLegacyFeatures(): void {
    if (!this.accepted.isSubsetOf(this.offered)) {
      this.guestError(
        'features',
        `driver accepted ${this.accepted.toString()}, offered ${this.offered.toString()}: extra bits dropped`,
      );
      const words = this.accepted.words;
      for (let i = 0; i < words.length; i++) words[i] &= this.offered.words[i];
    }
  }

  /** DriverFeatures / GuestFeatures write into the word DriverFeaturesSel selects. */
  private writeDriverFeatures(value: number): void {
    const s = this.deviceStatus;
    const closed = this.legacy ? DeviceStatus.DRIVER_OK : DeviceStatus.FEATURES_OK;
    if ((s & DeviceStatus.DRIVER) === 0 || (s & (closed | DeviceStatus.FAILED)) !== 0) {
      // 3.1.1: features are written after DRIVER (step 4), and "The driver MUST NOT accept new
      // feature bits after this step" (step 5, FEATURES_OK).
      this.guestError('features', `driver features written in status ${hex(s)}`);
      return;
    }
    const sel = this.driverFeaturesSel;
    if (sel < this.accepted.words.length) {
      this.accepted.words[sel] = value;
    } else if (value !== 0) {
      // Bits we cannot represent were offered by no one: remembered so FEATURES_OK fails. Sticky
      // until reset (a later write of 0 to the same word does not clear it; no driver does that).
      this.unknownFeatureBits = true;
    }
  }

  /** True when `bit` is negotiated (modern: after FEATURES_OK; legacy: as written, if offered). */
  private negotiated(bit: number): boolean {
    if (this.legacy) return this.accepted.has(bit) && this.offered.has(bit);
    return (this.deviceStatus & DeviceStatus.FEATURES_OK) !== 0 && this.accepted.has(bit);
  }

  /**
   * Device reset (status 0). 2.4.1: "A device MUST reinitialize device status to 0 after receiving
   * a reset"; 4.2.2.1: "Upon reset, the device MUST clear all bits in InterruptStatus and ready bits
   * in the QueueReady register for all queues in the device"; 4.2.4: legacy "sets QueuePFN to zero
   * (0x0) for all queues in the device".
   *
   * Why not reset: ConfigGeneration stays monotonic, so a driver that read it before the reset can
   * never see the same value for different contents (Firecracker: "Do not reset config_generation
   * and keep it monotonically increasing"). GuestPageSize survives too: Linux writes it once in
   * `vm_probe`, before the virtio core resets the device.
   */
  private reset(): void {
    this.epoch++;
    this.deferred.fill(0);
    this.deferredCount = 0;
    this.device.reset();
    for (let i = 0; i < this.queues.length; i++) {
      this.queues[i].reset();
      this.resetQueueRegisters(i);
    }
    this.deviceFeaturesSel = 0;
    this.driverFeaturesSel = 0;
    this.queueSelect = 0;
    this.shmSelect = 0;
    this.accepted.words.fill(0);
    this.unknownFeatureBits = false;
    this.notifyIndexMask = 0xffff_ffff;
    this.interrupts.reset();
    this.deviceStatus = STATUS_RESET;
  }

  /**
   * DRIVER_OK: hands the device a context valid until the next reset. The context closes over the
   * epoch, so a device that keeps a stale context after reset cannot signal the new driver.
   */
  private activate(): void {
    const epoch = this.epoch;
    const ctx: DeviceContext = {
      mem: this.mem,
      queues: this.queues,
      features: this.accepted.clone(),
      notifyUsed: (index) => epoch === this.epoch && this.notifyUsed(index),
      queueFailed: (index, error) => {
        if (epoch === this.epoch) this.queueFailed(index, error);
      },
      defer: (index) => {
        if (epoch === this.epoch && index >= 0 && index < this.queues.length && this.deferred[index] === 0) {
          this.deferred[index] = 1;
          this.deferredCount++;
        }
      },
    };
    this.device.activate(ctx);
  }

  // ---------------------------------------------------------------------------------------------
  // Queue configuration.

  /** Staged registers of queue `i` back to their reset values (QueueNum = QueueNumMax, addresses 0). */
  private resetQueueRegisters(i: number): void {
    this.stagedNum[i] = this.queues[i].maxSize;
    this.stagedAddr.fill(0, 6 * i, 6 * i + 6);
    this.queueWasReset[i] = 0;
    this.queueAlign[i] = LEGACY_DEFAULT_QUEUE_ALIGN;
    this.queuePfn[i] = 0;
  }

  /**
   * The selected queue's index if its configuration may be written now, or -1 after counting a
   * guest error. Modern: FEATURES_OK set, DRIVER_OK not set (or the queue was reset with
   * QueueReset, 2.6.1.2), queue not ready. Legacy: DRIVER set, DRIVER_OK not set, queue not in use.
   */
  private writableQueue(reg: string): number {
    const i = this.queueSelect;
    if (i >= this.queues.length) {
      this.guestError('queue', `${reg} write for queue ${String(i)}, which does not exist`);
      return -1;
    }
    const s = this.deviceStatus;
    if ((s & DeviceStatus.FAILED) !== 0) {
      this.guestError('queue', `${reg} write for queue ${String(i)} after failed`);
      return -1;
    }
    if (this.queues[i].ready) {
      // 4.2.2.2: "When QueueReady is not zero, the driver MUST NOT access QueueNum, QueueDescLow,
      // QueueDescHigh, QueueDriverLow, QueueDriverHigh, QueueDeviceLow, QueueDeviceHigh."
      this.guestError('queue', `${reg} write for queue ${String(i)}, which is live`);
      return -1;
    }
    const needed = this.legacy ? DeviceStatus.DRIVER : DeviceStatus.FEATURES_OK;
    if ((s & needed) === 0) {
      // 3.1.1 step 7: queues are set up after FEATURES_OK (legacy 3.1.2: after the features).
      this.guestError('queue', `${reg} write for queue ${String(i)} in status ${hex(s)}, before setup`);
      return -1;
    }
    if ((s & DeviceStatus.DRIVER_OK) !== 0 && this.queueWasReset[i] === 0) {
      // 3.1.1 step 7 precedes DRIVER_OK; afterwards only a queue reset with QueueReset may be
      // reprogrammed (4.2.2.2: "The driver MAY re-enable the queue by writing 1 to QueueReady
      // after ensuring that other virtqueue fields have been set up correctly").
      this.guestError('queue', `${reg} write for queue ${String(i)} after driver_ok`);
      return -1;
    }
    return i;
  }

  /** QueueNum: staged; checked against QueueNumMax when the queue is enabled. */
  private writeQueueNum(value: number): void {
    const i = this.writableQueue('QueueNum');
    if (i >= 0) this.stagedNum[i] = value;
  }

  /** One half of a queue address: staged, combined and checked when the queue is enabled. */
  private writeQueueAddress(reg: string, slot: number, value: number): void {
    const i = this.writableQueue(reg);
    if (i >= 0) this.stagedAddr[6 * i + slot] = value;
  }

  /** QueueReady: 1 validates and commits the staged configuration, 0 stops the queue. */
  private writeQueueReady(value: number): void {
    const i = this.queueSelect;
    if (value === 0) {
      if (i >= this.queues.length) {
        this.guestError('queue', `QueueReady write for queue ${String(i)}, which does not exist`);
        return;
      }
      // 4.2.2.2: "To stop using the queue the driver MUST write zero (0x0) to this QueueReady and
      // MUST read the value back to ensure synchronization." Allowed in any state: Linux does it
      // for every queue after resetting the device (vm_del_vq).
      this.queues[i].ready = false;
      return;
    }
    if (value !== 1) {
      this.guestError('queue', `QueueReady write of ${hex(value)}, not 0 or 1`);
      return;
    }
    if (this.writableQueue('QueueReady') < 0) return;
    const base = 6 * i;
    const a = this.stagedAddr;
    this.commitQueue(
      i,
      this.stagedNum[i],
      a[base + 1] * TWO_POW_32 + a[base],
      a[base + 3] * TWO_POW_32 + a[base + 2],
      a[base + 5] * TWO_POW_32 + a[base + 4],
    );
  }

  /**
   * Checks a configuration and makes queue `i` live with it. Addresses at or above 2^53 lose
   * precision when combined, but no such address is inside RAM, so validation still refuses them.
   */
  private commitQueue(
    i: number,
    size: number,
    descTable: number,
    availRing: number,
    usedRing: number,
  ): boolean {
    const q = this.queues[i];
    q.size = size;
    q.descTable = descTable;
    q.availRing = availRing;
    q.usedRing = usedRing;
    // 4.2.2.2: "The driver MUST write a value to QueueNum which is less than or equal to the value
    // presented by the device in QueueNumMax"; 2.7: areas aligned 16 / 2 / 4 and (ours) inside RAM.
    const error = q.validate(this.mem);
    if (error !== null) {
      this.guestError('queue', `queue ${String(i)} not enabled: ${error.message}`);
      return false;
    }
    q.eventIdx = this.negotiated(FeatureBit.EVENT_IDX);
    q.indirectDesc = this.negotiated(FeatureBit.INDIRECT_DESC);
    q.ready = true;
    this.queueWasReset[i] = 0;
    return true;
  }

  /** QueueReset (needs VIRTIO_F_RING_RESET): 1 resets the selected queue. */
  private writeQueueReset(value: number): void {
    if (!this.negotiated(FeatureBit.RING_RESET)) {
      // 4.2.2: "If VIRTIO_F_RING_RESET has been negotiated, writing one (0x1) to this register
      // selectively resets the queue."
      this.guestError('queue', 'QueueReset write without virtio_f_ring_reset negotiated');
      return;
    }
    const i = this.queueSelect;
    if (i >= this.queues.length) {
      this.guestError('queue', `QueueReset write for queue ${String(i)}, which does not exist`);
      return;
    }
    if (value !== 1) {
      this.guestError('queue', `QueueReset write of ${hex(value)}, not 1`);
      return;
    }
    // 4.2.2.1: "The device MUST reset the queue when 1 is written to QueueReset." 2.6.1.1.1: "the
    // device MUST NOT execute any requests from that virtqueue, or notify the driver for it" and
    // "MUST reset any state of a virtqueue to the default state, including the available state and
    // the used state." A device that is not live has no work in flight to drop.
    if (this.isActivated) this.device.resetQueue?.(i);
    this.queues[i].reset();
    this.resetQueueRegisters(i);
    this.queueWasReset[i] = 1;
  }

  /** Legacy GuestPageSize: a power of two, used for every later QueuePFN. */
  private writeGuestPageSize(value: number): void {
    if (!isPowerOfTwo(value)) {
      // 4.2.4: "This value should be a power of 2".
      this.guestError('queue', `GuestPageSize ${hex(value)} is not a power of two`);
      return;
    }
    this.guestPageSize = value;
  }

  /** Legacy QueueAlign: the used ring alignment of the selected queue, a power of two. */
  private writeQueueAlign(value: number): void {
    const i = this.writableQueue('QueueAlign');
    if (i < 0) return;
    if (!isPowerOfTwo(value)) {
      // 4.2.4: "This value should be a power of 2".
      this.guestError('queue', `QueueAlign ${hex(value)} is not a power of two`);
      return;
    }
    this.queueAlign[i] = value;
  }

  /** Legacy QueuePFN: non-zero places and enables the queue, zero stops it. */
  private writeQueuePfn(value: number): void {
    const i = this.queueSelect;
    if (value === 0) {
      if (i >= this.queues.length) {
        this.guestError('queue', `QueuePFN write for queue ${String(i)}, which does not exist`);
        return;
      }
      // 4.2.4: "When the driver stops using the queue it writes zero (0x0) to this register."
      // Allowed in any state (Linux vm_del_vq does it after the device reset).
      this.queues[i].reset();
      this.queuePfn[i] = 0;
      return;
    }
    if (this.writableQueue('QueuePFN') < 0) return;
    const size = this.stagedNum[i];
    // Below 2^64, so exact only below 2^53; a larger address is never inside RAM and fails validate.
    const base = value * this.guestPageSize;
    const ring = legacyLayout(base, size, this.queueAlign[i]);
    if (this.commitQueue(i, size, ring.descTable, ring.availRing, ring.usedRing)) this.queuePfn[i] = value;
  }

  // ---------------------------------------------------------------------------------------------
  // Notifications in both directions.

  /** QueueNotify: an available buffer notification for the queue the value names. */
  private writeQueueNotify(value: number): void {
    // 4.2.3.3: without VIRTIO_F_NOTIFICATION_DATA the value is "the 16-bit virtqueue index"; with
    // it, the low 16 bits are vq_index and the rest is next_off / next_wrap (not used here: the
    // device reads avail.idx itself).
    const index = (value & this.notifyIndexMask) >>> 0;
    if ((this.deviceStatus & DeviceStatus.DRIVER_OK) === 0) {
      this.guestError('notify', `notify for queue ${String(index)} before driver_ok`);
      return;
    }
    if (index >= this.queues.length) {
      this.guestError('notify', `notify for queue ${String(index)}, which does not exist`);
      return;
    }
    if (!this.queues[index].ready) {
      this.guestError('notify', `notify for queue ${String(index)}, which is not ready`);
      return;
    }
    this.device.notify(index);
  }

  /**
   * Seed VIRTIO_F_MMIO_NOTIFICATION: a write at `rel` bytes past notify_base. With a multiplier, the
   * address names the queue and any value notifies it (with VIRTIO_F_NOTIFICATION_DATA the value is
   * the notification data and its vq_index must name the same queue); with multiplier 0 every queue
   * shares one address and the value names the queue, as in QueueNotify.
   */
  private writeNotifyAddress(rel: number, width: AccessWidth, value: number): void {
    if (width !== 4 || (rel & 3) !== 0) {
      this.guestError('width', `${String(width)}-byte write at queue notification offset ${hex(rel)}`);
      return;
    }
    if (!this.negotiated(SeedFeatureBit.MMIO_NOTIFICATION)) {
      this.guestError('notify', 'queue notification address written without virtio_f_mmio_notification');
      return;
    }
    const m = this.notifyMultiplier;
    if (m === 0) {
      this.writeQueueNotify(value);
      return;
    }
    if (rel % m !== 0) {
      this.guestError('offset', `write between queue notification addresses at offset ${hex(rel)}`);
      return;
    }
    const index = rel / m;
    if (this.notifyIndexMask === 0xffff && (value & 0xffff) !== index) {
      // 4.2.3.3 with VIRTIO_F_NOTIFICATION_DATA: the value carries vq_index.
      this.guestError(
        'notify',
        `notification data for queue ${String(value & 0xffff)} at queue ${String(index)}'s address`,
      );
      return;
    }
    this.writeQueueNotify(this.notifyIndexMask === 0xffff ? value : index);
  }

  /** InterruptACK: clears the written bits; the line drops when none is left. */
  private writeInterruptAck(value: number): void {
    const defined = this.interrupts.definedBits;
    if ((value & ~defined) !== 0) {
      // 4.2.2.2: the driver "MUST NOT set any of the undefined bits in the value".
      this.guestError('interrupt', `InterruptACK of undefined bits ${hex(value)}`);
    }
    this.interrupts.ack((value & defined) >>> 0);
  }

  /** Queues deferred by the device (DeviceContext.defer) and not served again yet. */
  get deferredQueues(): number {
    return this.deferredCount;
  }

  /**
   * Serves each deferred queue once more (a notification on the device's behalf), for the host's
   * loop to call when {@link MmioTransport.deferredQueues} is not 0. Queues that are no longer ready
   * are dropped. Returns how many were served. Never throws for device reasons the device itself
   * would not throw for on a guest notification.
   */
  serveDeferred(): number {
    if (this.deferredCount === 0) return 0;
    let served = 0;
    for (let i = 0; i < this.deferred.length; i++) {
      if (this.deferred[i] === 0) continue;
      this.deferred[i] = 0;
      this.deferredCount--;
      if (!this.isActivated || this.queues[i]?.ready !== true) continue;
      this.device.notify(i);
      served++;
    }
    return served;
  }

  /** DeviceContext.notifyUsed of the live activation. */
  private notifyUsed(index: number): boolean {
    const q = this.queues[index];
    if (q === undefined) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `notify_used for queue ${String(index)}, which does not exist`,
      );
    }
    // needsNotification is false for a stopped queue (4.2.2.1: "The device MUST NOT access virtual
    // queue contents when QueueReady is zero") and applies 2.7.7.2 / 2.7.10 suppression.
    if (!q.needsNotification(this.mem)) return false;
    this.interrupts.signalQueue(index);
    return true;
  }

  /** DeviceContext.queueFailed of the live activation: DEVICE_NEEDS_RESET plus a config interrupt. */
  private queueFailed(index: number, error: QueueError): void {
    this.guestError('ring', `queue ${String(index)} stopped: ${error.message}`);
    this.deviceStatus |= DeviceStatus.DEVICE_NEEDS_RESET;
    // 2.1.2: "If DRIVER_OK is set, after it sets DEVICE_NEEDS_RESET, the device MUST send a device
    // configuration change notification to the driver."
    if (this.isActivated) this.interrupts.signalConfig();
  }

  /** DeviceHost.configChanged: new ConfigGeneration, and a notification once the driver is up. */
  private configChanged(): void {
    // 4.2.2.1: "The device MUST change value returned in ConfigGeneration if there is any risk of a
    // driver seeing an inconsistent configuration state." Wraps at 2^32 like the register.
    this.generation = (this.generation + 1) >>> 0;
    // The driver cannot handle a configuration change notification before DRIVER_OK (Linux enables
    // config callbacks in virtio_device_ready); it reads the configuration during probe anyway.
    if (this.isActivated) this.interrupts.signalConfig();
  }

  // ---------------------------------------------------------------------------------------------
  // Device-specific configuration space.

  /**
   * True when a configuration access of `width` at `rel` is allowed, else counts a guest error.
   * 4.2.2.2: "the driver MUST use 8 bit wide accesses for 8 bit wide fields, 16 bit wide and aligned
   * accesses for 16 bit wide fields and 32 bit wide and aligned accesses for 32 and 64 bit wide
   * fields"; the device defines `configSize` bytes.
   */
  private configAccessOk(op: 'read' | 'write', rel: number, width: number): width is 1 | 2 | 4 {
    if (width !== 1 && width !== 2 && width !== 4) {
      this.guestError('config', `${String(width)}-byte config ${op} at ${hex(rel)}`);
      return false;
    }
    if (rel % width !== 0) {
      this.guestError('config', `misaligned ${String(width)}-byte config ${op} at ${hex(rel)}`);
      return false;
    }
    if (rel + width > this.device.configSize) {
      this.guestError(
        'config',
        `config ${op} at ${hex(rel)} past config size ${hex(this.device.configSize)}`,
      );
      return false;
    }
    return true;
  }

  private readConfig(rel: number, width: AccessWidth): number {
    if (!this.configAccessOk('read', rel, width)) return 0;
    return (this.device.readConfig(rel, width) & widthMask(width)) >>> 0;
  }

  private writeConfig(rel: number, width: AccessWidth, value: number): void {
    if (!this.configAccessOk('write', rel, width)) return;
    if (!this.device.writeConfig(rel, width, (value & widthMask(width)) >>> 0)) {
      this.guestError('config', `config write at ${hex(rel)} refused by the device`);
    }
  }
}

/** True for an integer in [0, 2^32). */
function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

/** True for a safe non-negative integer. */
function isSafeU(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}
