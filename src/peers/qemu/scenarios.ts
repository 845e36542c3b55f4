/**
 * Part 2 of the peer checks: our guest-side MMIO driver and device drivers, unchanged, drive QEMU's
 * virtio-rng, virtio-blk and virtio-net over the microvm machine, for Version 2 and Version 1.
 * Each scenario starts its own QEMU, asserts from what the driver sees and from the host side (the
 * disk file), and always stops QEMU.
 *
 * @packageDocumentation
 */

import { BlkDriver, beginInit, Features, finishInit, RngDriver, waitUntil } from '../../device/index.js';
import { GuestAllocator } from '../../memory/index.js';
import {
  BlkFeature,
  DeviceId,
  DeviceStatus,
  FeatureBit,
  hex,
  InterruptBit,
  MMIO_MAGIC_VALUE,
  MmioLegacyReg,
  MmioReg,
  SeedMmioReg,
  VirtioError,
} from '../../spec/index.js';
import { type MmioAccess, MmioDriver } from '../../transport/index.js';
import { QtestGuestMemory, QtestIrqPlatform, QtestMmioAccess, RecordingMmioAccess } from './adapters.js';
import { QEMU_NET_ID, type QemuDeviceSpec, QemuMicrovm } from './qemuProcess.js';

/** VendorID of QEMU's transports: "QEMU" little-endian. */
export const QEMU_VENDOR_ID = 0x554d_4551;

/** Guest physical window our DMA allocator hands out (inside the 64 MiB of RAM). */
export const QEMU_DMA_BASE = 0x10_0000;
/** Size of the DMA window. */
export const QEMU_DMA_SIZE = 16 << 20;
/**
 * Each transport's guest gets its own slice of the DMA window (transport i at
 * `QEMU_DMA_BASE + i * QEMU_DMA_PER_DEVICE`), as one guest kernel's allocator would never hand two
 * drivers the same memory.
 */
export const QEMU_DMA_PER_DEVICE = 2 << 20;

/** virtio-net feature bits used here (5.1.3). */
export const NetFeature = {
  /** Device has given MAC address. */
  MAC: 5,
  /** Configuration status field is available. */
  STATUS: 16,
} as const;

/** virtio-net configuration layout (5.1.4): mac[6] then le16 status. */
export const NetConfig = { mac: 0, status: 6 } as const;

/** VIRTIO_NET_S_LINK_UP (5.1.4). */
export const NET_S_LINK_UP = 1;

/** A guest over one QEMU device: the probed transport driver and the pieces behind it. */
export interface QemuGuest {
  /** The machine. */
  readonly vm: QemuMicrovm;
  /** Our transport driver over the window. */
  readonly t: MmioDriver;
  /** The window access (recording when asked). */
  readonly access: MmioAccess;
  /** The recorder, when recording. */
  readonly recorder: RecordingMmioAccess | null;
  /** The guest platform. */
  readonly platform: QtestIrqPlatform;
  /** The GSI of the window. */
  readonly gsi: number;
}

/**
 * Probes our {@link MmioDriver} on the window of `kind` (through `wrap` when given, for example a
 * `DriverFeaturesWordGuard`).
 * @throws VirtioError from the probe, or `DEVICE_NOT_FOUND` for an empty slot
 */
export function attachGuest(
  vm: QemuMicrovm,
  kind: QemuDeviceSpec['kind'],
  record = false,
  seed = false,
  wrap: ((a: MmioAccess) => MmioAccess) | null = null,
): QemuGuest {
  const w = vm.window(kind);
  const qt = vm.qtest;
  const window = new QtestMmioAccess(qt, w.base);
  const raw = wrap === null ? window : wrap(window);
  const recorder = record ? new RecordingMmioAccess(raw, () => qt.irqLevel(w.gsi)) : null;
  const access: MmioAccess = recorder ?? raw;
  const mem = new QtestGuestMemory(qt, vm.ramSize);
  const dma = new GuestAllocator(QEMU_DMA_BASE + w.index * QEMU_DMA_PER_DEVICE, QEMU_DMA_PER_DEVICE);
  const lines = [...vm.windows.values()].map((x) => x.gsi);
  const platform = new QtestIrqPlatform(qt, lines);
  const t = MmioDriver.probe(access, { mem, dma, platform, irqLines: [w.gsi], name: `qemu-${kind}`, seed });
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', `qemu ${kind}: device id 0`);
  return { vm, t, access, recorder, platform, gsi: w.gsi };
}

/** Throws a check failure. */
function expectThat(cond: boolean, message: string): void {
  if (!cond) throw new VirtioError('DEVICE_FAILED', message);
}

/** A scenario: a name and a body run against a fresh machine. */
export interface QemuScenario {
  /** Short name (`v2 rng read`). */
  readonly name: string;
  /** Register layout version. */
  readonly version: 1 | 2;
  /** Devices the machine needs. */
  readonly devices: readonly QemuDeviceSpec[];
  /** The body; returns a one-line detail for the report. */
  run(vm: QemuMicrovm): string;
  /**
   * Starts host-side resources before QEMU (the net frame scenarios' peer worker) and returns the
   * devices QEMU is started with, in place of `devices`.
   */
  prepare?(): Promise<readonly QemuDeviceSpec[]>;
  /** Stops what `prepare` started; {@link runScenario} always calls it, after QEMU is stopped. */
  cleanup?(): Promise<void>;
}

/** Probe of every window: magic, version, device id, vendor "QEMU". */
function probeScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} probe rng/blk/net`,
    version,
    devices: [{ kind: 'rng' }, { kind: 'blk' }, { kind: 'net' }],
    run(vm) {
      const ids: Record<string, number> = { rng: DeviceId.ENTROPY, blk: DeviceId.BLOCK, net: DeviceId.NET };
      const parts: string[] = [];
      for (const w of vm.windows.values()) {
        const a = new QtestMmioAccess(vm.qtest, w.base);
        expectThat(a.read32(MmioReg.MagicValue) === MMIO_MAGIC_VALUE, `${w.kind}: magic`);
        const g = attachGuest(vm, w.kind);
        expectThat(g.t.version === version, `${w.kind}: version ${String(g.t.version)}`);
        expectThat(g.t.deviceId === ids[w.kind], `${w.kind}: device id ${String(g.t.deviceId)}`);
        expectThat(g.t.vendorId === QEMU_VENDOR_ID, `${w.kind}: vendor ${hex(g.t.vendorId)}`);
        parts.push(`${w.kind}@${hex(w.base)} gsi ${String(w.gsi)}`);
      }
      return parts.join(', ');
    },
  };
}

/** virtio-rng: init, two reads (one spanning two requests), interrupts, remove. */
function rngScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} rng read`,
    version,
    devices: [{ kind: 'rng' }],
    run(vm) {
      const g = attachGuest(vm, 'rng');
      const rng = RngDriver.probe(g.t, { bufferSize: 4096 });
      const live =
        DeviceStatus.ACKNOWLEDGE |
        DeviceStatus.DRIVER |
        DeviceStatus.DRIVER_OK |
        (version === 2 ? DeviceStatus.FEATURES_OK : 0);
      expectThat(g.t.getStatus() === live, `status ${hex(g.t.getStatus())} after init`);
      const small = new Uint8Array(64);
      rng.fill(small);
      const big = new Uint8Array(10_000);
      rng.fill(big);
      expectThat(small.some((b) => b !== 0) && big.some((b) => b !== 0), 'random bytes are all zero');
      expectThat(g.platform.handlerRuns >= 3, `only ${String(g.platform.handlerRuns)} interrupts taken`);
      expectThat(!g.vm.qtest.irqLevel(g.gsi), 'line still raised after the last interrupt');
      rng.remove();
      expectThat(g.t.getStatus() === 0, 'status not 0 after remove');
      return `features ${rng.features.toString()}, ${String(g.platform.handlerRuns)} interrupts`;
    },
  };
}

/** Deterministic pattern for the disk test. */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** virtio-blk: init, write, read back, flush, the host file holds the data, remove. */
function blkScenario(version: 1 | 2): QemuScenario {
  const diskBytes = 1 << 20;
  return {
    name: `v${String(version)} blk write/read/flush`,
    version,
    devices: [{ kind: 'blk', size: diskBytes }],
    run(vm) {
      const g = attachGuest(vm, 'blk');
      const blk = BlkDriver.probe(g.t);
      expectThat(blk.capacity === diskBytes / 512, `capacity ${String(blk.capacity)}`);
      const data = pattern(8192, 0x5eed + version);
      blk.write(16, data);
      const back = blk.read(16, data.length / 512);
      expectThat(same(back, data), 'read back differs from what was written');
      blk.flush();
      const onHost = vm.readDisk(16 * 512, data.length);
      expectThat(same(onHost, data), 'host file does not hold the written data');
      const untouched = vm.readDisk(0, 16 * 512);
      expectThat(
        untouched.every((b) => b === 0),
        'sectors before the write changed',
      );
      const flush = blk.features.has(BlkFeature.FLUSH);
      blk.remove();
      expectThat(g.t.getStatus() === 0, 'status not 0 after remove');
      return `capacity ${String(blk.capacity)} sectors, flush ${flush ? 'sent' : 'not offered'}, ${String(g.platform.handlerRuns)} interrupts`;
    },
  };
}

/**
 * Issue 5 interoperation: our driver built with the seed profile against QEMU's standard device.
 * QEMU offers bit 40 as VIRTIO_F_RING_RESET, which a seed driver reads as VIRTIO_F_MMIO_MSI; the
 * driver must find no usable vectors (0x0c0 is QueueReset there), fall back to the standard line,
 * never touch 0x0c4..0x0dc, and still complete requests.
 */
function seedFallbackScenario(): QemuScenario {
  return {
    name: 'v2 seed driver falls back to the line',
    version: 2,
    devices: [{ kind: 'blk', size: 1 << 20 }],
    run(vm) {
      const g = attachGuest(vm, 'blk', true, true);
      const blk = BlkDriver.probe(g.t);
      expectThat(g.t.interruptMode === 'line', `interrupt mode ${g.t.interruptMode}`);
      const data = pattern(4096, 0x5eed);
      blk.write(0, data);
      expectThat(same(blk.read(0, data.length / 512), data), 'read back differs from what was written');
      const log = g.recorder?.log ?? [];
      const msiTouched = log.filter(
        (e) => e.offset >= SeedMmioReg.MsiState && e.offset <= SeedMmioReg.MsiData,
      ).length;
      expectThat(msiTouched === 0, `${String(msiTouched)} accesses to the seed msi registers`);
      const fallbacks = g.t.interruptFallbacks.map((f) => f.mode).join(', ');
      blk.remove();
      return `mode line after trying ${fallbacks || 'nothing'}`;
    },
  };
}

/**
 * virtio-net: init with MAC and STATUS, the configuration (mac, status), both queues set up, a link
 * change through QMP `set_link` arriving as a configuration interrupt, reset.
 */
function netScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} net config change`,
    version,
    devices: [{ kind: 'net' }],
    run(vm) {
      const g = attachGuest(vm, 'net');
      const t = g.t;
      const offered = (() => {
        t.reset();
        return t.getFeatures();
      })();
      expectThat(offered.has(NetFeature.MAC) && offered.has(NetFeature.STATUS), 'mac/status not offered');
      const wanted = new Features([NetFeature.MAC, NetFeature.STATUS, FeatureBit.VERSION_1]);
      const features = beginInit(t, wanted);
      const mac: number[] = [];
      for (let i = 0; i < 6; i++) mac.push(t.readConfig(NetConfig.mac + i, 1));
      const macText = mac.map((b) => b.toString(16).padStart(2, '0')).join(':');
      // QEMU's default MAC is 52:54:00:12:34:56 plus the NIC index.
      expectThat(mac[0] === 0x52 && mac[1] === 0x54 && mac[2] === 0x00, `mac ${macText}`);
      const linkStatus = () => t.readConfig(NetConfig.status, 2) & NET_S_LINK_UP;
      expectThat(linkStatus() === NET_S_LINK_UP, 'link not up at start');
      let configChanges = 0;
      t.onConfigChange(() => configChanges++);
      const queues = t.setupQueues([
        { index: 0, callback: null },
        { index: 1, callback: null },
      ]);
      expectThat(queues.length === 2, 'queues');
      finishInit(t);
      const gen0 = t.configGeneration();
      vm.qmp.execute('set_link', { name: QEMU_NET_ID, up: false });
      waitUntil(g.platform, () => configChanges >= 1, 'link down config interrupt');
      expectThat(linkStatus() === 0, 'link still up after set_link down');
      expectThat(!vm.qtest.irqLevel(g.gsi), 'line still raised after the config interrupt');
      vm.qmp.execute('set_link', { name: QEMU_NET_ID, up: true });
      waitUntil(g.platform, () => configChanges >= 2, 'link up config interrupt');
      expectThat(linkStatus() === NET_S_LINK_UP, 'link not up after set_link up');
      const gen1 = t.configGeneration();
      if (version === 2) expectThat(gen1 !== gen0, 'config generation did not change');
      t.teardown();
      expectThat(t.getStatus() === 0, 'status not 0 after reset');
      const a = g.access;
      a.write32(MmioReg.QueueSel, 0);
      const live = version === 2 ? a.read32(MmioReg.QueueReady) : a.read32(MmioLegacyReg.QueuePFN);
      expectThat(live === 0, 'queue 0 still live after reset');
      expectThat(a.read32(MmioReg.InterruptStatus) === 0, 'interrupt status not 0 after reset');
      return `mac ${macText}, features ${features.toString()}, ${String(configChanges)} config interrupts`;
    },
  };
}

/**
 * Reset and re-initialization: an rng is initialized, used, reset (status 0, queues and
 * InterruptStatus cleared), and initialized again on the same machine.
 */
function resetScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} rng reset and re-init`,
    version,
    devices: [{ kind: 'rng' }],
    run(vm) {
      const g = attachGuest(vm, 'rng');
      for (let round = 0; round < 2; round++) {
        const rng = RngDriver.probe(g.t, { bufferSize: 256 });
        const buf = new Uint8Array(256);
        rng.fill(buf);
        rng.remove();
        expectThat(g.t.getStatus() === 0, `round ${String(round)}: status not 0 after reset`);
        const isr = g.access.read32(MmioReg.InterruptStatus) & (InterruptBit.VRING | InterruptBit.CONFIG);
        expectThat(isr === 0, `round ${String(round)}: interrupt status ${hex(isr)} after reset`);
      }
      // A driver status write with FAILED after ACKNOWLEDGE|DRIVER, then reset again.
      g.t.reset();
      g.t.setStatus(DeviceStatus.ACKNOWLEDGE);
      g.t.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FAILED);
      g.t.reset();
      return `${String(g.platform.handlerRuns)} interrupts over two initializations`;
    },
  };
}

/**
 * Three devices at once, each on its own line: a blk write in flight while the rng is read, then
 * the blk completion taken, and a net link change, with the other devices live.
 */
function togetherScenario(version: 1 | 2): QemuScenario {
  return {
    name: `v${String(version)} rng+blk+net at once`,
    version,
    devices: [{ kind: 'rng' }, { kind: 'blk' }, { kind: 'net' }],
    run(vm) {
      const r = attachGuest(vm, 'rng');
      const b = attachGuest(vm, 'blk');
      const n = attachGuest(vm, 'net');
      expectThat(new Set([r.gsi, b.gsi, n.gsi]).size === 3, 'devices share a line');
      const rng = RngDriver.probe(r.t);
      const blk = BlkDriver.probe(b.t);
      const net = n.t;
      beginInit(net, new Features([NetFeature.STATUS, FeatureBit.VERSION_1]));
      let changes = 0;
      net.onConfigChange(() => changes++);
      net.setupQueues([
        { index: 0, callback: null },
        { index: 1, callback: null },
      ]);
      finishInit(net);
      const data = pattern(4096, 77);
      const id = blk.submit({ op: 'write', sector: 4, data });
      expectThat(id !== null, 'blk submit refused');
      const buf = new Uint8Array(256);
      rng.fill(buf);
      vm.qmp.execute('set_link', { name: QEMU_NET_ID, up: false });
      waitUntil(n.platform, () => changes > 0, 'net config interrupt');
      const done = blk.wait();
      expectThat(
        done.length === 1 && done[0].id === id && done[0].status === 0,
        'blk write did not complete',
      );
      expectThat(same(vm.readDisk(4 * 512, data.length), data), 'host file does not hold the write');
      for (const [name, g] of [
        ['rng', r],
        ['blk', b],
        ['net', n],
      ] as const) {
        expectThat(g.platform.handlerRuns > 0, `${name} took no interrupt on its line`);
        expectThat(!vm.qtest.irqLevel(g.gsi), `${name} line left raised`);
      }
      rng.remove();
      blk.remove();
      net.teardown();
      return `lines ${String(r.gsi)}/${String(b.gsi)}/${String(n.gsi)}: ${String(r.platform.handlerRuns)}/${String(b.platform.handlerRuns)}/${String(n.platform.handlerRuns)} interrupts`;
    },
  };
}

/** Every part-2 scenario, Version 2 then Version 1. */
export function qemuScenarios(): QemuScenario[] {
  const out: QemuScenario[] = [];
  for (const v of [2, 1] as const) {
    out.push(
      probeScenario(v),
      rngScenario(v),
      blkScenario(v),
      netScenario(v),
      resetScenario(v),
      togetherScenario(v),
    );
  }
  out.push(seedFallbackScenario());
  return out;
}

/** Result of one scenario. */
export interface ScenarioResult {
  /** Scenario name. */
  readonly name: string;
  /** Passed or not. */
  readonly ok: boolean;
  /** Detail line (the failure message when not ok). */
  readonly detail: string;
  /** Wall time in milliseconds including QEMU start and stop. */
  readonly ms: number;
}

/** Runs one scenario on a fresh machine; never throws (failures are in the result). */
export async function runScenario(s: QemuScenario): Promise<ScenarioResult> {
  const start = performance.now();
  let vm: QemuMicrovm | null = null;
  try {
    const devices = s.prepare === undefined ? s.devices : await s.prepare();
    vm = await QemuMicrovm.start({ version: s.version, devices });
    const detail = s.run(vm);
    return { name: s.name, ok: true, detail, ms: performance.now() - start };
  } catch (e) {
    const detail = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { name: s.name, ok: false, detail, ms: performance.now() - start };
  } finally {
    try {
      await vm?.close();
    } finally {
      await s.cleanup?.();
    }
  }
}
