/**
 * Part 3 of the peer checks: differential register behaviour. The same register-level sequences
 * run against QEMU's device (through qtest) and against ours (an {@link MmioTransport} around an
 * equivalent {@link RngDevice}, the "twin"), and every read and the interrupt line level after every
 * access are compared.
 *
 * Two sources of sequences:
 * - recorded driver flows: our unchanged drivers run once over each side through a
 *   {@link RecordingMmioAccess}; the two logs must match access for access (writes included: the
 *   driver derives them from what it read);
 * - generated sequences: a seeded PRNG drives a model of a legal driver (status steps in order,
 *   queue configuration only while allowed, random selectors, feature subsets, queue sizes,
 *   addresses and acknowledgements, real rng requests), mixed with guest errors whose outcome both
 *   sides define the same way (narrow control accesses, reads of write-only registers, writes of
 *   read-only ones).
 *
 * Where QEMU departs from the spec we keep our behaviour and the comparison normalises exactly
 * that read, with the departure's name ({@link QEMU_DEPARTURES}, docs/qemu-departures.md). Cases
 * the generator deliberately never produces, because QEMU's answer there departs from the spec
 * in a way that would make every later read differ, are listed too and probed separately by
 * {@link probeDepartures}.
 *
 * @packageDocumentation
 */

import {
  BlkDevice,
  BlkDriver,
  MemoryBlockBackend,
  RngDevice,
  RngDriver,
  type VirtioDevice,
} from '../../device/index.js';
import { GuestAllocator, RamMemory } from '../../memory/index.js';
import { InProcessCpu, InterruptController, MmioBus } from '../../platform/index.js';
import {
  AVAIL_ELEM_SIZE,
  AVAIL_IDX,
  AVAIL_RING,
  BlkFeature,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_SIZE,
  DescFlag,
  DeviceStatus,
  FeatureBit,
  hex,
  InterruptBit,
  MmioLegacyReg,
  MmioReg,
  VirtioError,
} from '../../spec/index.js';
import { type MmioAccess, MmioDriver, MmioTransport } from '../../transport/index.js';
import {
  availRingBytes,
  descTableBytes,
  legacyLayout,
  legacyRingBytes,
  usedRingBytes,
} from '../../virtqueue/index.js';
import { type AccessRecord, QtestGuestMemory, QtestMmioAccess, RecordingMmioAccess } from './adapters.js';
import { QEMU_NET_ID, type QemuMicrovm } from './qemuProcess.js';
import { attachGuest, QEMU_DMA_BASE, QEMU_DMA_SIZE, QEMU_VENDOR_ID } from './scenarios.js';

/** A known departure of QEMU 7.2 from the virtio spec (or a difference in what is offered). */
export interface QemuDeparture {
  /** Stable name used in reports. */
  readonly name: string;
  /** Spec section. */
  readonly section: string;
  /** What QEMU does, what the spec says, and what the comparison does about it. */
  readonly summary: string;
}

/** Every departure the comparison knows about (documented in docs/qemu-departures.md). */
export const QEMU_DEPARTURES: readonly QemuDeparture[] = [
  {
    name: 'features-sel-high',
    section: '4.2.2 (DeviceFeatures / DeviceFeaturesSel)',
    summary:
      'modern: any non-zero DeviceFeaturesSel reads feature bits 32..63, so selectors 2 and 3 repeat word 1 ' +
      'instead of reading 0; DeviceFeatures reads with a selector >= 2 are not compared',
  },
  {
    name: 'driver-features-sel-high',
    section: '4.2.2 (DriverFeatures / DriverFeaturesSel)',
    summary:
      'modern: any non-zero DriverFeaturesSel selects feature bits 32..63, so a driver that writes words 2 and 3 ' +
      '(0: no bits there) erases word 1 and QEMU runs without VIRTIO_F_VERSION_1 (virtio-net then strips a ' +
      '10-byte header); the net frame scenarios write words 0 and 1 only, as Linux does; probed with our driver',
  },
  {
    name: 'legacy-transport-bits',
    section: '6.3 (legacy interface: reserved feature bits)',
    summary:
      'legacy: QEMU offers VIRTIO_F_NOTIFY_ON_EMPTY (24) and VIRTIO_F_ANY_LAYOUT (27), which our transport does not ' +
      'implement; those two bits are masked out of legacy DeviceFeatures word 0 before comparing',
  },
  {
    name: 'blk-features-not-modelled',
    section: '5.2.3 (virtio-blk feature bits)',
    summary:
      'virtio-blk: QEMU offers VIRTIO_BLK_F_GEOMETRY (4) and VIRTIO_BLK_F_TOPOLOGY (10), and legacy VIRTIO_BLK_F_SCSI ' +
      '(7); our device models none of them (a difference in what is offered); masked out of DeviceFeatures word 0 ' +
      'of the blk comparison, and our driver does not negotiate them',
  },
  {
    name: 'features-ok-without-version1',
    section: '4.2.3.1.1, 6.1 (VIRTIO_F_VERSION_1)',
    summary:
      'modern: FEATURES_OK is kept when the driver did not accept VIRTIO_F_VERSION_1 (the spec lets a modern ' +
      'device refuse; ours clears FEATURES_OK); never generated, probed separately',
  },
  {
    name: 'ring-reset-unimplemented',
    section: '4.2.2 (QueueReset), 2.6.1 (virtqueue reset)',
    summary:
      'modern: VIRTIO_F_RING_RESET is offered but the QueueReset register has no handler (reads 0, writes ' +
      'ignored), so a queue reset never happens; QueueReset accesses are never generated, probed separately',
  },
  {
    name: 'config-isr-3',
    section: '4.2.2 (InterruptStatus), 2.1.2',
    summary:
      'a configuration change interrupt sets InterruptStatus to 3 (both bits) instead of setting bit 1 only; ' +
      'seen on virtio-net set_link, probed separately (no net twin)',
  },
  {
    name: 'queue-num-max-1024',
    section: '4.2.2 (QueueNumMax)',
    summary:
      'QueueNumMax reads 1024 (VIRTQUEUE_MAX_SIZE) for every existing queue whatever the device model uses ' +
      'internally (rng 8, blk/net 256); the twin is configured with 1024 so reads compare exactly',
  },
  {
    name: 'vendor-id',
    section: '4.2.2 (VendorID)',
    summary: 'VendorID is "QEMU" (0x554d4551); the twin is configured with the same value',
  },
  {
    name: 'status-any-value',
    section: '2.1.1, 3.1.1 (device status)',
    summary:
      'QEMU stores any Status value (skipped steps, DRIVER_OK before FEATURES_OK, clearing bits); ours ignores ' +
      'invalid transitions as guest errors; the generator only makes the transitions of 3.1.1 (and reset)',
  },
  {
    name: 'queue-config-any-time',
    section: '4.2.3.2, 3.1.1 step 7',
    summary:
      'QEMU accepts queue configuration writes in any device status and any QueueNum up to 1024; ours only ' +
      'between FEATURES_OK and DRIVER_OK (legacy: after DRIVER) and checks sizes and addresses at enable; the ' +
      'generator only configures queues where the spec allows, with powers of two and valid addresses',
  },
  {
    name: 'selectors-survive-reset',
    section: '2.4 (device reset), 4.2.2 (DeviceFeaturesSel, QueueSel)',
    summary:
      'a device reset (Status = 0) leaves DeviceFeaturesSel and QueueSel as they were; ours returns them to 0. ' +
      'The spec does not say either way; reads that depend on a selector not written since the last reset ' +
      '(DeviceFeatures, QueueNumMax, QueueReady, QueuePFN) are not compared',
  },
  {
    name: 'shm-base-zero',
    section: '4.2.2 (SHMBaseLow / SHMBaseHigh)',
    summary:
      'modern: SHMBaseLow/High read 0 for a region that does not exist (QEMU implements no shared memory); ' +
      'the spec says 0xffffffffffffffff, which is what ours reads; not compared (SHMLen reads compare)',
  },
  {
    name: 'legacy-pfn-zero-resets-device',
    section: '4.2.4 (legacy QueuePFN)',
    summary:
      'legacy: writing 0 to QueuePFN resets the whole device (status 0, every queue) instead of stopping ' +
      'the selected queue; never generated after the device is live, probed separately',
  },
  {
    name: 'config-out-of-range',
    section: '4.2.2 (Config), 2.5',
    summary:
      "a configuration space read past the device's configuration (virtio-rng has none) reads all ones; ours " +
      'reads 0 (a guest error, value unspecified); not compared',
  },
];

/** Names of departures the comparison normalises inline. */
type InlineDeparture =
  | 'blk-features-not-modelled'
  | 'features-sel-high'
  | 'legacy-transport-bits'
  | 'config-out-of-range'
  | 'selectors-survive-reset'
  | 'shm-base-zero';

/** Registers whose reads depend on QueueSel. */
const QUEUE_SELECTED: readonly number[] = [MmioReg.QueueNumMax, MmioReg.QueueReady, MmioLegacyReg.QueuePFN];

/** A difference between QEMU and our transport. */
export interface Mismatch {
  /** Index of the access in the sequence. */
  readonly at: number;
  /** What differs. */
  readonly message: string;
}

/** Result of comparing two logs. */
export interface Comparison {
  /** Accesses compared. */
  readonly compared: number;
  /** Reads skipped or normalised, by departure name. */
  readonly normalised: Record<string, number>;
  /** Differences (empty when the logs agree). */
  readonly mismatches: Mismatch[];
}

/**
 * Tracks selector state while walking a log, to know what each read means. A device reset leaves
 * QEMU's selectors as they were and sets ours to 0, so until the driver writes a selector again
 * the reads it selects are not comparable (selectors-survive-reset).
 */
class SelectorState {
  deviceFeaturesSel = 0;
  deviceFeaturesSelKnown = true;
  queueSelKnown = true;
  apply(r: AccessRecord): void {
    if (r.op !== 'w' || r.width !== 4) return;
    if (r.offset === MmioReg.DeviceFeaturesSel) {
      this.deviceFeaturesSel = r.value;
      this.deviceFeaturesSelKnown = true;
    } else if (r.offset === MmioReg.QueueSel) {
      this.queueSelKnown = true;
    } else if (r.offset === MmioReg.Status && r.value === 0) {
      this.deviceFeaturesSelKnown = false;
      this.queueSelKnown = false;
    }
  }
}

/** Legacy VIRTIO_BLK_F_SCSI (5.2.3.1, legacy interface). */
const BLK_F_SCSI_LEGACY = 7;

/** virtio-blk bits QEMU offers and our device does not model: GEOMETRY, SCSI (legacy), TOPOLOGY. */
const BLK_EXTRA_BITS = (1 << BlkFeature.GEOMETRY) | (1 << BLK_F_SCSI_LEGACY) | (1 << BlkFeature.TOPOLOGY);

/** Legacy-only transport bits QEMU offers and our transport does not. */
const LEGACY_EXTRA_BITS = (1 << FeatureBit.NOTIFY_ON_EMPTY) | (1 << FeatureBit.ANY_LAYOUT);

/**
 * Decides how a read pair is compared: null to compare as is, or the departure and the two values to
 * compare instead (`skip` when the read is not compared at all).
 */
function normalise(
  r: AccessRecord,
  sel: SelectorState,
  version: 1 | 2,
  configSize: number,
  qemu: number,
  ours: number,
  kind: 'rng' | 'blk',
): { name: InlineDeparture; skip: boolean; qemu: number; ours: number } | null {
  if (r.op !== 'r') return null;
  if (r.width === 4 && r.offset === MmioReg.DeviceFeatures && !sel.deviceFeaturesSelKnown) {
    return { name: 'selectors-survive-reset', skip: true, qemu, ours };
  }
  if (r.width === 4 && QUEUE_SELECTED.includes(r.offset) && !sel.queueSelKnown) {
    return { name: 'selectors-survive-reset', skip: true, qemu, ours };
  }
  if (
    version === 2 &&
    r.width === 4 &&
    (r.offset === MmioReg.SHMBaseLow || r.offset === MmioReg.SHMBaseHigh)
  ) {
    return { name: 'shm-base-zero', skip: true, qemu, ours };
  }
  if (r.width === 4 && r.offset === MmioReg.DeviceFeatures) {
    if (kind === 'blk' && sel.deviceFeaturesSel === 0 && ((qemu ^ ours) & BLK_EXTRA_BITS) !== 0) {
      const mask = ~(BLK_EXTRA_BITS | (version === 1 ? LEGACY_EXTRA_BITS : 0));
      return {
        name: 'blk-features-not-modelled',
        skip: false,
        qemu: (qemu & mask) >>> 0,
        ours: (ours & mask) >>> 0,
      };
    }
    if (version === 2 && sel.deviceFeaturesSel >= 2)
      return { name: 'features-sel-high', skip: true, qemu, ours };
    if (version === 1 && sel.deviceFeaturesSel === 0) {
      return {
        name: 'legacy-transport-bits',
        skip: false,
        qemu: (qemu & ~LEGACY_EXTRA_BITS) >>> 0,
        ours: (ours & ~LEGACY_EXTRA_BITS) >>> 0,
      };
    }
  }
  if (r.offset >= MmioReg.Config && r.offset + r.width > MmioReg.Config + configSize) {
    return { name: 'config-out-of-range', skip: true, qemu, ours };
  }
  return null;
}

function describe(r: AccessRecord): string {
  return `${r.op === 'r' ? 'read' : 'write'}${String(r.width * 8)} ${registerName(r.offset)}`;
}

/** Register name of an offset, for messages. */
export function registerName(offset: number): string {
  for (const [k, v] of Object.entries(MmioReg)) if (v === offset) return k;
  for (const [k, v] of Object.entries(MmioLegacyReg)) if (v === offset) return k;
  if (offset >= MmioReg.Config) return `Config+${hex(offset - MmioReg.Config)}`;
  return hex(offset);
}

/**
 * Compares a QEMU log with our log access by access: same operation, width and offset; the same
 * value (reads after normalisation, writes as is); the same line level afterwards.
 */
export function compareLogs(
  qemu: readonly AccessRecord[],
  ours: readonly AccessRecord[],
  version: 1 | 2,
  configSize: number,
  kind: 'rng' | 'blk' = 'rng',
): Comparison {
  const mismatches: Mismatch[] = [];
  const normalised: Record<string, number> = {};
  const sel = new SelectorState();
  const n = Math.min(qemu.length, ours.length);
  let i = 0;
  for (; i < n && mismatches.length < 10; i++) {
    const q = qemu[i];
    const o = ours[i];
    if (q.op !== o.op || q.width !== o.width || q.offset !== o.offset) {
      mismatches.push({ at: i, message: `qemu did ${describe(q)}, ours did ${describe(o)}` });
      break;
    }
    const norm = normalise(q, sel, version, configSize, q.value, o.value, kind);
    if (norm !== null) normalised[norm.name] = (normalised[norm.name] ?? 0) + 1;
    if (norm === null || !norm.skip) {
      const qv = norm === null ? q.value : norm.qemu;
      const ov = norm === null ? o.value : norm.ours;
      if (qv !== ov) {
        mismatches.push({ at: i, message: `${describe(q)}: qemu ${hex(qv)}, ours ${hex(ov)}` });
      }
    }
    if (q.irq !== o.irq) {
      mismatches.push({
        at: i,
        message: `line after ${describe(q)}: qemu ${q.irq ? 'raised' : 'low'}, ours ${o.irq ? 'raised' : 'low'}`,
      });
    }
    sel.apply(q);
  }
  if (mismatches.length === 0 && qemu.length !== ours.length) {
    mismatches.push({
      at: n,
      message: `qemu log has ${String(qemu.length)} accesses, ours ${String(ours.length)}`,
    });
  }
  return { compared: i, normalised, mismatches };
}

// -------------------------------------------------------------------------------------------------
// The twin: our transport around an rng device configured like QEMU's.

/** Line of the twin on its interrupt controller. */
const TWIN_LINE = 5;

/** Bytes 0, 1, 2, ... (deterministic). */
function countingEntropy() {
  let next = 0;
  return {
    fill(dst: Uint8Array): void {
      for (let i = 0; i < dst.length; i++) dst[i] = next++ & 0xff;
    },
  };
}

/** Bytes of the disk behind both blk devices (QEMU's backing file and our twin's RAM disk). */
export const TWIN_DISK_BYTES = 1 << 20;

/**
 * Our device behind our transport, configured like QEMU's device of the same kind on microvm
 * (the "twin"): same VendorID, QueueNumMax 1024, the transport features QEMU 7.2 offers, and for
 * virtio-blk the configuration values QEMU presents (seg_max 254, blk_size 512, writeback, discard
 * and write zeroes limits 0x3fffff sectors, 1 segment, alignment 1, write_zeroes_may_unmap 1).
 */
export class DeviceTwin {
  /** Guest RAM: the DMA window only, at the same addresses as in QEMU. */
  readonly mem = new RamMemory([{ gpa: QEMU_DMA_BASE, buffer: new ArrayBuffer(QEMU_DMA_SIZE) }]);
  /** Interrupt controller of the twin machine. */
  readonly irq = new InterruptController({ lines: 8 });
  /** The CPU taking interrupts. */
  readonly cpu = new InProcessCpu(this.irq);
  /** The device. */
  readonly device: VirtioDevice;
  /** The transport. */
  readonly transport: MmioTransport;
  /** The window as an MMIO access. */
  readonly access: MmioAccess;
  /** Guest errors our transport reported. */
  readonly guestErrors: string[] = [];
  /** The line the twin drives. */
  readonly line = TWIN_LINE;

  constructor(kind: 'rng' | 'blk', version: 1 | 2) {
    this.device =
      kind === 'rng'
        ? new RngDevice({ entropy: countingEntropy(), queueSize: 1024 })
        : new BlkDevice({
            backend: new MemoryBlockBackend(TWIN_DISK_BYTES),
            queueSize: 1024,
            segMax: 254,
            blkSize: 512,
            flush: true,
            configWce: true,
            writeback: true,
            discard: { maxSectors: 0x3f_ffff, maxSegments: 1, sectorAlignment: 1 },
            writeZeroes: { maxSectors: 0x3f_ffff, maxSegments: 1, mayUnmap: true },
          });
    this.transport = new MmioTransport(this.device, {
      mem: this.mem,
      irq: this.irq.line(TWIN_LINE),
      version,
      vendorId: QEMU_VENDOR_ID,
      // QEMU 7.2 offers INDIRECT_DESC, EVENT_IDX, VERSION_1 and RING_RESET; no notification data.
      notificationData: false,
      ringReset: version === 2,
      onGuestError: (m) => this.guestErrors.push(m),
    });
    const bus = new MmioBus();
    bus.map(0x1000_0000, this.transport, kind);
    this.access = bus.window(kind);
  }

  /** Line level. */
  level(): boolean {
    return this.irq.isAsserted(TWIN_LINE);
  }
}

/** Our rng twin (see {@link DeviceTwin}). */
export class RngTwin extends DeviceTwin {
  constructor(version: 1 | 2) {
    super('rng', version);
  }
}

/** Waits for QEMU's line after an available buffer notification (QEMU completes asynchronously). */
const NOTIFY_SETTLE_MS = 1000;

/** A recording access on QEMU that waits for the line to rise after each QueueNotify write. */
class SettlingQemuAccess implements MmioAccess {
  constructor(
    private readonly inner: MmioAccess,
    private readonly vm: QemuMicrovm,
    private readonly gsi: number,
  ) {}
  read32(o: number): number {
    return this.inner.read32(o);
  }
  write32(o: number, v: number): void {
    this.inner.write32(o, v);
    if (o === MmioReg.QueueNotify) this.vm.qtest.waitIrq(this.gsi, NOTIFY_SETTLE_MS);
  }
  read8(o: number): number {
    return this.inner.read8(o);
  }
  read16(o: number): number {
    return this.inner.read16(o);
  }
  write8(o: number, v: number): void {
    this.inner.write8(o, v);
  }
  write16(o: number, v: number): void {
    this.inner.write16(o, v);
  }
}

/** The rng driver flow both sides run: probe, two reads, remove. */
function rngFlow(t: MmioDriver): void {
  const rng = RngDriver.probe(t, { bufferSize: 512 });
  rng.fill(new Uint8Array(100));
  rng.fill(new Uint8Array(1200));
  rng.remove();
}

/** Deterministic bytes for the blk flow. */
function flowPattern(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);
}

/** The blk driver flow both sides run: probe, write, read back, flush, write zeroes, remove. */
function blkFlow(t: MmioDriver): void {
  const blk = BlkDriver.probe(t);
  const data = flowPattern(8192);
  blk.write(16, data);
  const back = blk.read(16, data.length / 512);
  if (!back.every((b, i) => b === data[i]))
    throw new VirtioError('DEVICE_FAILED', 'blk flow: read back differs');
  blk.flush();
  blk.writeZeroes(20, 4);
  blk.read(16, 8);
  blk.remove();
}

/**
 * Recorded driver flow: our driver of `kind` over QEMU and over the twin, logs compared. The QEMU
 * machine must have that device; it is left reset.
 */
export function compareRecordedFlow(vm: QemuMicrovm, kind: 'rng' | 'blk'): Comparison {
  const flow = kind === 'rng' ? rngFlow : blkFlow;
  const w = vm.window(kind);
  const qt = vm.qtest;
  const settling = new SettlingQemuAccess(new QtestMmioAccess(qt, w.base), vm, w.gsi);
  const qrec = new RecordingMmioAccess(settling, () => qt.irqLevel(w.gsi));
  const g = attachGuest(vm, kind);
  const qemuDriver = MmioDriver.probe(qrec, {
    mem: g.t.mem,
    dma: new GuestAllocator(QEMU_DMA_BASE, QEMU_DMA_SIZE),
    platform: g.platform,
    irqLines: [w.gsi],
  }) as MmioDriver;
  flow(qemuDriver);

  const twin = new DeviceTwin(kind, vm.version);
  const orec = new RecordingMmioAccess(twin.access, () => twin.level());
  const ourDriver = MmioDriver.probe(orec, {
    mem: twin.mem,
    dma: new GuestAllocator(QEMU_DMA_BASE, QEMU_DMA_SIZE),
    platform: twin.cpu,
    irqLines: [twin.line],
  }) as MmioDriver;
  flow(ourDriver);
  return compareLogs(qrec.log, orec.log, vm.version, twin.device.configSize, kind);
}

/** {@link compareRecordedFlow} for virtio-rng. */
export function compareRecordedRngFlow(vm: QemuMicrovm): Comparison {
  return compareRecordedFlow(vm, 'rng');
}

// -------------------------------------------------------------------------------------------------
// Generated sequences.

/** Small seeded PRNG (mulberry32). */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 2^32). */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform integer in [0, n). */
  below(n: number): number {
    return this.u32() % n;
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  /** One element. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.below(xs.length)];
  }
}

/** One generated operation. */
export type GenOp =
  | { readonly k: 'r'; readonly offset: number; readonly width: 1 | 2 | 4 }
  | { readonly k: 'w'; readonly offset: number; readonly width: 1 | 2 | 4; readonly value: number }
  /** Zero guest memory on both sides (no register access). */
  | { readonly k: 'fill'; readonly addr: number; readonly len: number }
  /** Post one device-writable buffer on a live queue and notify; then wait for the line. */
  | {
      readonly k: 'req';
      readonly queue: number;
      readonly size: number;
      readonly desc: number;
      readonly avail: number;
      readonly used: number;
      readonly availIdx: number;
      readonly buffer: number;
      readonly len: number;
    };

/** Registers a driver may read at any time (modern / legacy). */
const READABLE_MODERN = [
  MmioReg.MagicValue,
  MmioReg.Version,
  MmioReg.DeviceID,
  MmioReg.VendorID,
  MmioReg.DeviceFeatures,
  MmioReg.QueueNumMax,
  MmioReg.QueueReady,
  MmioReg.InterruptStatus,
  MmioReg.Status,
  MmioReg.ConfigGeneration,
  MmioReg.SHMLenLow,
  MmioReg.SHMLenHigh,
  MmioReg.SHMBaseLow,
  MmioReg.SHMBaseHigh,
];
const READABLE_LEGACY = [
  MmioReg.MagicValue,
  MmioReg.Version,
  MmioReg.DeviceID,
  MmioReg.VendorID,
  MmioReg.DeviceFeatures,
  MmioReg.QueueNumMax,
  MmioLegacyReg.QueuePFN,
  MmioReg.InterruptStatus,
  MmioReg.Status,
];
/** Write-only registers: reads are guest errors that both sides answer with 0. */
const WRITE_ONLY_MODERN = [
  MmioReg.DeviceFeaturesSel,
  MmioReg.DriverFeatures,
  MmioReg.DriverFeaturesSel,
  MmioReg.QueueSel,
  MmioReg.QueueNum,
  MmioReg.QueueNotify,
  MmioReg.InterruptACK,
  MmioReg.QueueDescLow,
  MmioReg.QueueDescHigh,
  MmioReg.QueueDriverLow,
  MmioReg.QueueDriverHigh,
  MmioReg.QueueDeviceLow,
  MmioReg.QueueDeviceHigh,
];
const WRITE_ONLY_LEGACY = [
  MmioReg.DeviceFeaturesSel,
  MmioReg.DriverFeatures,
  MmioReg.DriverFeaturesSel,
  MmioLegacyReg.GuestPageSize,
  MmioReg.QueueSel,
  MmioReg.QueueNum,
  MmioLegacyReg.QueueAlign,
  MmioReg.QueueNotify,
  MmioReg.InterruptACK,
];
/** Read-only registers: writes are ignored by both. */
const READ_ONLY = [
  MmioReg.MagicValue,
  MmioReg.Version,
  MmioReg.DeviceID,
  MmioReg.VendorID,
  MmioReg.QueueNumMax,
  MmioReg.InterruptStatus,
];

/** Model of the driver the generator plays. */
interface GenState {
  status: number;
  queueSel: number;
  /** Queue 0 as configured: size and areas; live once enabled. */
  q: { size: number; desc: number; avail: number; used: number; live: boolean; availIdx: number } | null;
  staged: { size: number; desc: number; avail: number; used: number };
  featuresWritten: boolean;
  pageSize: number;
  align: number;
}

/** Page-aligned addresses inside the DMA window for queue areas (8 slots of 64 KiB). */
function areaAddress(p: Prng, slot: number): number {
  return QEMU_DMA_BASE + slot * 0x1_0000 + p.below(4) * 0x1000;
}

/**
 * Generates one legal-driver sequence of about `length` operations for a Version `version` rng.
 * Starts with a reset.
 */
export function generateSequence(p: Prng, version: 1 | 2, length: number): GenOp[] {
  const ops: GenOp[] = [{ k: 'w', offset: MmioReg.Status, width: 4, value: 0 }];
  const s: GenState = {
    status: 0,
    queueSel: 0,
    q: null,
    staged: { size: 0, desc: 0, avail: 0, used: 0 },
    featuresWritten: false,
    pageSize: 4096,
    align: 4096,
  };
  const legacy = version === 1;
  const w = (offset: number, value: number) => ops.push({ k: 'w', offset, width: 4, value: value >>> 0 });
  const setStatus = (v: number) => {
    w(MmioReg.Status, v);
    s.status = v;
  };
  // 3.1.1 step 7 / 3.1.2 step 5: queues after the features (modern: after FEATURES_OK), before
  // DRIVER_OK, and never on a device marked FAILED (the driver resets it first).
  const queueConfigAllowed = () =>
    (s.status & (DeviceStatus.DRIVER_OK | DeviceStatus.FAILED)) === 0 &&
    (legacy ? s.featuresWritten : (s.status & DeviceStatus.FEATURES_OK) !== 0);
  const readable = legacy ? READABLE_LEGACY : READABLE_MODERN;
  const writeOnly = legacy ? WRITE_ONLY_LEGACY : WRITE_ONLY_MODERN;
  if (legacy) w(MmioLegacyReg.GuestPageSize, s.pageSize);
  while (ops.length < length) {
    const roll = p.below(100);
    if (roll < 18) {
      ops.push({ k: 'r', offset: p.pick(readable), width: 4 });
    } else if (roll < 22) {
      // Selectors, including ones past the modelled words.
      w(MmioReg.DeviceFeaturesSel, p.pick([0, 0, 1, 1, 2, 3, p.u32()]));
      ops.push({ k: 'r', offset: MmioReg.DeviceFeatures, width: 4 });
    } else if (roll < 42) {
      // The next status step of 3.1.1 / 3.1.2.
      const st = s.status;
      if ((st & DeviceStatus.FAILED) !== 0 || p.chance(0.05)) {
        setStatus(0);
        s.q = null;
        s.featuresWritten = false;
      } else if (st === 0) setStatus(DeviceStatus.ACKNOWLEDGE);
      else if (st === DeviceStatus.ACKNOWLEDGE) setStatus(st | DeviceStatus.DRIVER);
      else if (st === (DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER) && !s.featuresWritten) {
        // Driver features: a random subset of what QEMU and the twin both offer (modern: always
        // VERSION_1, see features-ok-without-version1), written through both selectors.
        const lo =
          (p.chance(0.5) ? 1 << FeatureBit.INDIRECT_DESC : 0) |
          (p.chance(0.5) ? 1 << FeatureBit.EVENT_IDX : 0);
        const hi = legacy ? 0 : 1 | (p.chance(0.5) ? 1 << (FeatureBit.RING_RESET - 32) : 0);
        w(MmioReg.DriverFeaturesSel, 0);
        w(MmioReg.DriverFeatures, lo);
        w(MmioReg.DriverFeaturesSel, 1);
        w(MmioReg.DriverFeatures, hi);
        s.featuresWritten = true;
      } else if (st === (DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER) && !legacy) {
        setStatus(st | DeviceStatus.FEATURES_OK);
      } else if (queueConfigAllowed() && s.q?.live === true) {
        setStatus(st | DeviceStatus.DRIVER_OK);
      } else if (p.chance(0.1)) {
        setStatus(st | DeviceStatus.FAILED);
      }
    } else if (roll < 56) {
      if (!queueConfigAllowed()) {
        ops.push({ k: 'r', offset: MmioReg.QueueNumMax, width: 4 });
        continue;
      }
      // Queue configuration of queue 0 (or a look at queue 1, which does not exist).
      const sel = p.chance(0.15) ? 1 : 0;
      w(MmioReg.QueueSel, sel);
      s.queueSel = sel;
      if (sel === 1) {
        ops.push({ k: 'r', offset: MmioReg.QueueNumMax, width: 4 });
        continue;
      }
      if (s.q?.live === true) {
        // Stop it (4.2.2.2: write 0, read back), as a driver tearing a queue down. Legacy: not
        // generated (legacy-pfn-zero-resets-device); the queue is read instead.
        if (legacy) {
          ops.push({ k: 'r', offset: MmioLegacyReg.QueuePFN, width: 4 });
          continue;
        }
        w(MmioReg.QueueReady, 0);
        ops.push({ k: 'r', offset: MmioReg.QueueReady, width: 4 });
        s.q = null;
        continue;
      }
      const size = 2 ** p.below(11);
      w(MmioReg.QueueNum, size);
      // 2.7: the driver hands the device zeroed rings (memory may hold an earlier sequence's).
      const zero = (addr: number, len: number) => ops.push({ k: 'fill', addr, len });
      if (legacy) {
        const base = areaAddress(p, p.below(8));
        zero(base, legacyRingBytes(size, s.align));
        w(MmioLegacyReg.QueueAlign, s.align);
        w(MmioLegacyReg.QueuePFN, base / s.pageSize);
        const rings = legacyLayout(base, size, s.align);
        s.q = {
          size,
          desc: rings.descTable,
          avail: rings.availRing,
          used: rings.usedRing,
          live: true,
          availIdx: 0,
        };
        ops.push({ k: 'r', offset: MmioLegacyReg.QueuePFN, width: 4 });
      } else {
        const slots = [0, 1, 2, 3, 4, 5, 6, 7];
        const pickSlot = () => slots.splice(p.below(slots.length), 1)[0];
        const desc = areaAddress(p, pickSlot());
        const avail = areaAddress(p, pickSlot());
        const used = areaAddress(p, pickSlot());
        zero(desc, descTableBytes(size));
        zero(avail, availRingBytes(size));
        zero(used, usedRingBytes(size));
        w(MmioReg.QueueDescLow, desc);
        w(MmioReg.QueueDescHigh, 0);
        w(MmioReg.QueueDriverLow, avail);
        w(MmioReg.QueueDriverHigh, 0);
        w(MmioReg.QueueDeviceLow, used);
        w(MmioReg.QueueDeviceHigh, 0);
        w(MmioReg.QueueReady, 1);
        ops.push({ k: 'r', offset: MmioReg.QueueReady, width: 4 });
        s.q = { size, desc, avail, used, live: true, availIdx: 0 };
      }
    } else if (roll < 72) {
      const q = s.q;
      if (q?.live && (s.status & DeviceStatus.DRIVER_OK) !== 0 && q.availIdx < q.size) {
        ops.push({
          k: 'req',
          queue: 0,
          size: q.size,
          desc: q.desc,
          avail: q.avail,
          used: q.used,
          availIdx: q.availIdx,
          buffer: QEMU_DMA_BASE + 0x9_0000 + p.below(16) * 0x100,
          len: 1 + p.below(64),
        });
        q.availIdx++;
        ops.push({ k: 'r', offset: MmioReg.InterruptStatus, width: 4 });
      } else {
        // A notification for a queue with nothing available (or before DRIVER_OK): nothing happens.
        w(MmioReg.QueueNotify, 0);
      }
    } else if (roll < 80) {
      w(MmioReg.InterruptACK, p.pick([1, 1, 2, 3]));
      ops.push({ k: 'r', offset: MmioReg.InterruptStatus, width: 4 });
    } else if (roll < 85) {
      // Guest errors with the same outcome on both sides: a read of a write-only register (0).
      ops.push({ k: 'r', offset: p.pick(writeOnly), width: 4 });
    } else if (roll < 89) {
      // A write to a read-only register (ignored), then its value.
      const off = p.pick(READ_ONLY);
      w(off, p.u32());
      ops.push({ k: 'r', offset: off, width: 4 });
    } else if (roll < 93) {
      // Narrow accesses to control registers (4.2.2.2: 32-bit only): reads 0, writes ignored.
      const off = p.pick([MmioReg.MagicValue, MmioReg.Status, MmioReg.DeviceID, MmioReg.QueueNumMax]);
      const width = p.pick([1, 2] as const);
      if (p.chance(0.5)) ops.push({ k: 'r', offset: off, width });
      else ops.push({ k: 'w', offset: MmioReg.Status, width, value: p.below(256) });
      ops.push({ k: 'r', offset: MmioReg.Status, width: 4 });
    } else {
      // virtio-rng has no configuration space.
      const width = p.pick([1, 2, 4] as const);
      ops.push({ k: 'r', offset: MmioReg.Config + width * p.below(4), width });
    }
  }
  return ops;
}

/** One side a generated sequence runs on. */
export interface Side {
  readonly access: MmioAccess;
  readonly mem: {
    write16(a: number, v: number): void;
    writeBytes(a: number, b: Uint8Array): void;
    fill(a: number, len: number, byte: number): void;
  };
  level(): boolean;
  /** Waits for the line after a request (QEMU completes asynchronously). */
  settle(): void;
}

/** A 16-byte split-ring descriptor: addr, len, flags = WRITE. */
function descriptorBytes(addr: number, len: number): Uint8Array {
  const b = new Uint8Array(DESC_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(DESC_ADDR, addr, true);
  dv.setUint32(DESC_LEN, len, true);
  dv.setUint16(DESC_FLAGS, DescFlag.WRITE, true);
  return b;
}

/** Runs `ops` on `side`, recording every access like {@link RecordingMmioAccess}. */
export function runOps(ops: readonly GenOp[], side: Side): AccessRecord[] {
  const rec = new RecordingMmioAccess(side.access, () => side.level());
  for (const op of ops) {
    if (op.k === 'r') {
      if (op.width === 4) rec.read32(op.offset);
      else if (op.width === 2) rec.read16(op.offset);
      else rec.read8(op.offset);
    } else if (op.k === 'w') {
      if (op.width === 4) rec.write32(op.offset, op.value);
      else if (op.width === 2) rec.write16(op.offset, op.value);
      else rec.write8(op.offset, op.value);
    } else if (op.k === 'fill') {
      side.mem.fill(op.addr, op.len, 0);
    } else {
      const head = op.availIdx % op.size;
      side.mem.writeBytes(op.desc + DESC_SIZE * head, descriptorBytes(op.buffer, op.len));
      side.mem.write16(op.avail + AVAIL_RING + AVAIL_ELEM_SIZE * head, head);
      // used_event (after the ring, 2.7.10) = the used index before this completion, so the
      // device interrupts with VIRTIO_F_EVENT_IDX too.
      side.mem.write16(op.avail + AVAIL_RING + AVAIL_ELEM_SIZE * op.size, op.availIdx);
      side.mem.write16(op.avail + AVAIL_IDX, (op.availIdx + 1) & 0xffff);
      // Not recorded as it happens: QEMU completes asynchronously, so the line right after the
      // write is a race. One record with the level once the request completed instead.
      side.access.write32(MmioReg.QueueNotify, op.queue);
      side.settle();
      rec.log.push({ op: 'w', width: 4, offset: MmioReg.QueueNotify, value: op.queue, irq: side.level() });
    }
  }
  return rec.log;
}

/** Result of the generated comparison. */
export interface GeneratedComparison {
  /** Sequences run. */
  readonly sequences: number;
  /** Accesses compared over all sequences. */
  readonly accesses: number;
  /** rng requests posted (each completed with an interrupt on both sides unless a failure says otherwise). */
  readonly requests: number;
  /** Normalised reads by departure. */
  readonly normalised: Record<string, number>;
  /** Failing sequences: seed and first differences. */
  readonly failures: { seed: number; mismatches: Mismatch[]; ops: number }[];
}

/**
 * Runs `count` generated sequences (seeds `seed`, `seed + 1`, ...) on QEMU's rng (the machine
 * must have one) and on one long-lived twin, comparing each.
 */
export function compareGeneratedRng(
  vm: QemuMicrovm,
  count: number,
  seed: number,
  length = 60,
): GeneratedComparison {
  const w = vm.window('rng');
  const qt = vm.qtest;
  const qmem = new QtestGuestMemory(qt, vm.ramSize);
  const qemuSide: Side = {
    access: new QtestMmioAccess(qt, w.base),
    mem: qmem,
    level: () => qt.irqLevel(w.gsi),
    settle: () => {
      qt.waitIrq(w.gsi, NOTIFY_SETTLE_MS);
    },
  };
  const twin = new DeviceTwin('rng', vm.version);
  const ourSide: Side = { access: twin.access, mem: twin.mem, level: () => twin.level(), settle: () => {} };
  const normalised: Record<string, number> = {};
  const failures: GeneratedComparison['failures'] = [];
  let accesses = 0;
  let requests = 0;
  for (let i = 0; i < count; i++) {
    const ops = generateSequence(new Prng(seed + i), vm.version, length);
    for (const op of ops) if (op.k === 'req') requests++;
    const q = runOps(ops, qemuSide);
    const o = runOps(ops, ourSide);
    const c = compareLogs(q, o, vm.version, 0);
    accesses += c.compared;
    for (const [k, v] of Object.entries(c.normalised)) normalised[k] = (normalised[k] ?? 0) + v;
    if (c.mismatches.length > 0) failures.push({ seed: seed + i, mismatches: c.mismatches, ops: ops.length });
  }
  // Leave both reset.
  qemuSide.access.write32(MmioReg.Status, 0);
  twin.access.write32(MmioReg.Status, 0);
  return { sequences: count, accesses, requests, normalised, failures };
}

/** What a departure probe observed. */
export interface DepartureObservation {
  /** Departure name. */
  readonly name: string;
  /** True when QEMU behaved as the departure describes. */
  readonly observed: boolean;
  /** What was seen. */
  readonly detail: string;
}

/**
 * Probes the departures the generator avoids, on QEMU's rng (modern only; legacy has neither
 * FEATURES_OK nor QueueReset) and, for the configuration interrupt, on virtio-net.
 */
export function probeDepartures(vm: QemuMicrovm): DepartureObservation[] {
  const out: DepartureObservation[] = [];
  const qt = vm.qtest;
  if (vm.version === 2 && vm.windows.has('rng')) {
    const a = new QtestMmioAccess(qt, vm.window('rng').base);
    // features-ok-without-version1
    a.write32(MmioReg.Status, 0);
    a.write32(MmioReg.Status, DeviceStatus.ACKNOWLEDGE);
    a.write32(MmioReg.Status, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    a.write32(MmioReg.DriverFeaturesSel, 0);
    a.write32(MmioReg.DriverFeatures, 0);
    a.write32(MmioReg.DriverFeaturesSel, 1);
    a.write32(MmioReg.DriverFeatures, 0);
    a.write32(MmioReg.Status, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
    const st = a.read32(MmioReg.Status);
    out.push({
      name: 'features-ok-without-version1',
      observed: (st & DeviceStatus.FEATURES_OK) !== 0,
      detail: `status ${hex(st)} after FEATURES_OK without VERSION_1`,
    });
    // ring-reset-unimplemented: offered, but QueueReset does nothing.
    a.write32(MmioReg.Status, 0);
    a.write32(MmioReg.DeviceFeaturesSel, 1);
    const offered = a.read32(MmioReg.DeviceFeatures);
    const g = attachGuest(vm, 'rng');
    let detail: string;
    let observed = false;
    try {
      const d = RngDriver.probe(g.t);
      d.remove();
      detail = 'rng driver does not negotiate ring reset';
      // Negotiate it by hand and program a queue.
      const t = g.t;
      t.reset();
      t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
      const f = t.getFeatures();
      const accepted = t.finalizeFeatures(f);
      t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
      const [q] = t.setupQueues([{ index: 0, callback: null, size: 8 }]);
      t.setStatus(t.getStatus() | DeviceStatus.DRIVER_OK);
      try {
        t.resetQueue(q);
        detail = 'queue reset completed';
      } catch (e) {
        observed =
          (offered & (1 << (FeatureBit.RING_RESET - 32))) !== 0 && accepted.has(FeatureBit.RING_RESET);
        detail = `offered ${hex(offered)} (word 1), our driver's queue reset: ${(e as Error).message}`;
      }
      t.teardown();
    } catch (e) {
      detail = `probe failed: ${(e as Error).message}`;
    }
    out.push({ name: 'ring-reset-unimplemented', observed, detail });
    // features-sel-high
    a.write32(MmioReg.DeviceFeaturesSel, 2);
    const w2 = a.read32(MmioReg.DeviceFeatures);
    out.push({
      name: 'features-sel-high',
      observed: w2 === offered && w2 !== 0,
      detail: `DeviceFeaturesSel 2 reads ${hex(w2)} (word 1 is ${hex(offered)})`,
    });
    a.write32(MmioReg.DeviceFeaturesSel, 0);
  }
  if (vm.version === 1 && vm.windows.has('rng')) {
    // legacy-pfn-zero-resets-device: a live device, then QueuePFN = 0 for queue 0.
    const g = attachGuest(vm, 'rng');
    RngDriver.probe(g.t);
    const before = g.t.getStatus();
    g.access.write32(MmioReg.QueueSel, 0);
    g.access.write32(MmioLegacyReg.QueuePFN, 0);
    const after = g.t.getStatus();
    g.t.reset();
    out.push({
      name: 'legacy-pfn-zero-resets-device',
      observed: before !== 0 && after === 0,
      detail: `status ${hex(before)} before QueuePFN = 0, ${hex(after)} after (spec: only the queue stops)`,
    });
  }
  if (vm.windows.has('net')) {
    const g = attachGuest(vm, 'net');
    const t = g.t;
    t.reset();
    t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    const f = t.getFeatures();
    const accepted = t.finalizeFeatures(f);
    if (accepted.has(FeatureBit.VERSION_1)) {
      t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
    }
    t.setupQueues([
      { index: 0, callback: null },
      { index: 1, callback: null },
    ]);
    t.setStatus(t.getStatus() | DeviceStatus.DRIVER_OK);
    vm.qmp.execute('set_link', { name: QEMU_NET_ID, up: false });
    const raised = qt.waitIrq(g.gsi, NOTIFY_SETTLE_MS);
    const isr = g.access.read32(MmioReg.InterruptStatus);
    g.access.write32(MmioReg.InterruptACK, isr);
    vm.qmp.execute('set_link', { name: QEMU_NET_ID, up: true });
    qt.waitIrq(g.gsi, NOTIFY_SETTLE_MS);
    g.access.write32(MmioReg.InterruptACK, g.access.read32(MmioReg.InterruptStatus));
    t.teardown();
    out.push({
      name: 'config-isr-3',
      observed: raised && isr === (InterruptBit.VRING | InterruptBit.CONFIG),
      detail: `InterruptStatus ${hex(isr)} after a link change (spec: ${hex(InterruptBit.CONFIG)})`,
    });
  }
  return out;
}

/** Throws when a departure name is unknown (keeps the list and the probes in step). */
export function departure(name: string): QemuDeparture {
  const d = QEMU_DEPARTURES.find((x) => x.name === name);
  if (d === undefined) throw new VirtioError('INVALID_ARGUMENT', `unknown departure ${name}`);
  return d;
}
