/**
 * `virtio-mmio check linux`: a stock Linux kernel (Debian 12 i386) in v86 drives our device
 * models through its own virtio_mmio, virtio_blk, virtio-rng and virtio_console drivers. One cold boot, one
 * snapshot, then each scenario restores the snapshot with fresh devices and asserts what the
 * guest prints.
 *
 * @packageDocumentation
 */

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileBlockBackend } from '../../backend/index.js';
import {
  BlkDevice,
  ConsoleDevice,
  createNetLink,
  type EntropySource,
  Features,
  HostPeer,
  MemoryConsoleBackend,
  NetDevice,
  RngDevice,
} from '../../device/index.js';
import {
  BlkFeature,
  ConsoleFeature,
  DeviceId,
  DeviceStatus,
  FeatureBit,
  hex,
  NetFeature,
  SeedFeatureBit,
} from '../../spec/index.js';
import { MmioTransport } from '../../transport/index.js';
import { CONSOLE_LINE_MARKER, CONSOLE_READY_MARKER, guestPattern } from './initrd.js';
import { findLinuxPrerequisites, LINUX_POSSIBLE_CPUS, LINUX_WINDOW_IRQS, LinuxGuest } from './linuxGuest.js';

/** One scenario's outcome. */
export interface LinuxScenarioResult {
  /** Short name (`rng`, `blk-read`, ...). */
  name: string;
  /** One-line description. */
  title: string;
  ok: boolean;
  /** Restore time, ms. */
  restoreMs: number;
  /** Guest command time, ms (restore excluded). */
  runMs: number;
  /** What was verified, one line each. */
  checks: string[];
  /** What failed, one line each (empty when ok). */
  failures: string[];
  /** Kernel problem lines printed during the scenario. */
  guestProblems: string[];
}

/** The whole check. */
export interface LinuxCheckReport {
  /** All scenarios passed and nothing was missing. */
  ok: boolean;
  /** Missing prerequisites (the check did not run when non-empty). */
  missing: string[];
  kernel: string;
  v86: string;
  /** Cold boot to the shell, ms; save_state, ms; snapshot size in bytes. */
  bootMs: number;
  saveMs: number;
  stateBytes: number;
  /** Problem lines the kernel printed during boot, and `@ERR` lines of /init. */
  bootProblems: string[];
  scenarios: LinuxScenarioResult[];
  /** Set when the run itself failed (boot timeout, emulator error). */
  error?: string;
  totalMs: number;
}

/** Options of {@link runLinuxCheck}. */
export interface LinuxCheckOptions {
  /** Run only these scenarios (by name); default all. */
  only?: readonly string[];
  /** Cache folder of the guest files; default `$VIRTIO_MMIO_LINUX_GUEST` or `.cache/linux-guest`. */
  guestDir?: string;
  /** Receives every console line. */
  onLine?: (line: string) => void;
  /** Called after the boot and after each scenario (for live progress). */
  onProgress?: (line: string) => void;
  /** Per-command guest timeout, ms (default 180 s). */
  timeoutMs?: number;
}

/**
 * A deterministic entropy source (xorshift32) that keeps everything it produced, so the host can
 * prove that bytes read from the guest's /dev/hwrng came from our device.
 */
export class RecordingEntropy implements EntropySource {
  private x: number;
  private log = new Uint8Array(1 << 16);
  private used = 0;

  constructor(seed = 0x9e3779b9) {
    this.x = seed >>> 0 || 1;
  }

  fill(dst: Uint8Array): void {
    let x = this.x;
    for (let i = 0; i < dst.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      dst[i] = x & 0xff;
    }
    this.x = x;
    if (this.used + dst.length > this.log.length && this.log.length < 1 << 24) {
      const bigger = new Uint8Array(Math.max(this.log.length * 2, this.used + dst.length));
      bigger.set(this.log.subarray(0, this.used));
      this.log = bigger;
    }
    const n = Math.min(dst.length, this.log.length - this.used);
    this.log.set(dst.subarray(0, n), this.used);
    this.used += n;
  }

  /** Everything produced so far. */
  get produced(): Uint8Array {
    return this.log.subarray(0, this.used);
  }
}

/**
 * How many bytes of `sample` lie in runs of at least `minRun` bytes that also occur, contiguous,
 * in `stream` (greedy longest match). Guest reads of an rng may be stitched from several device
 * buffers, so the sample is a concatenation of pieces of the stream, not one substring.
 */
export function coveredBytes(sample: Uint8Array, stream: Uint8Array, minRun = 8): number {
  let covered = 0;
  let pos = 0;
  while (pos < sample.length) {
    let best = 0;
    for (let s = 0; s < stream.length && best < sample.length - pos; s++) {
      let k = 0;
      while (pos + k < sample.length && s + k < stream.length && sample[pos + k] === stream[s + k]) k++;
      if (k > best) best = k;
    }
    if (best >= minRun) {
      covered += best;
      pos += best;
    } else {
      pos++;
    }
  }
  return covered;
}

/** A `@DEV` line parsed. */
interface GuestDevice {
  name: string;
  device: number;
  vendor: number;
  status: number;
  features: string;
  driver: string;
  parent: string;
}

function parseDevs(lines: readonly string[]): GuestDevice[] {
  const out: GuestDevice[] = [];
  for (const l of lines) {
    if (!l.startsWith('@DEV ')) continue;
    const [, name, ...kv] = l.split(/\s+/);
    const f: Record<string, string> = {};
    for (const p of kv) {
      const eq = p.indexOf('=');
      if (eq > 0) f[p.slice(0, eq)] = p.slice(eq + 1);
    }
    out.push({
      name,
      device: Number.parseInt(f.device ?? '', 16),
      vendor: Number.parseInt(f.vendor ?? '', 16),
      status: Number.parseInt(f.status ?? '', 16),
      features: f.features ?? '',
      driver: f.driver ?? '',
      parent: f.parent ?? '',
    });
  }
  return out;
}

/** Features from the sysfs string (character i is bit i). */
function sysfsFeatures(s: string): Features {
  const f = new Features();
  for (let i = 0; i < s.length && i < 128; i++) if (s[i] === '1') f.set(i);
  return f;
}

/** The bits of `f` below 128, for messages. */
function bitList(f: Features): string {
  const bits: number[] = [];
  for (let i = 0; i < 128; i++) if (f.has(i)) bits.push(i);
  return bits.join(',');
}

/** Interrupt counts per (line, virtio name) from `@IRQ` lines of /proc/interrupts. */
function parseIrqs(lines: readonly string[]): { line: number; count: number; name: string }[] {
  const out: { line: number; count: number; name: string }[] = [];
  for (const l of lines) {
    const m = /^@IRQ (\d+):\s+(\d+)\s.*\s(virtio\d+)$/.exec(l);
    if (m) out.push({ line: Number(m[1]), count: Number(m[2]), name: m[3] });
  }
  return out;
}

/** Collects checks and failures of one scenario. */
class Verdict {
  readonly checks: string[] = [];
  readonly failures: string[] = [];
  expect(ok: boolean, what: string, detail = ''): boolean {
    if (ok) this.checks.push(what);
    else this.failures.push(detail === '' ? what : `${what}: ${detail}`);
    return ok;
  }
}

/** Kinds of device a scenario places. */
type DeviceKind = 'rng' | 'blk' | 'console' | 'net';

/** Device id and Linux driver of each kind. */
const KIND_INFO: Record<DeviceKind, { id: number; driver: string }> = {
  rng: { id: DeviceId.ENTROPY, driver: 'virtio_rng' },
  blk: { id: DeviceId.BLOCK, driver: 'virtio_blk' },
  console: { id: DeviceId.CONSOLE, driver: 'virtio_console' },
  net: { id: DeviceId.NET, driver: 'virtio_net' },
};

/** A device placed in a window for one scenario. */
interface Placed {
  transport: MmioTransport;
  slot: number;
  kind: DeviceKind;
  entropy?: RecordingEntropy;
  disk?: { path: string; original: Uint8Array; backend: FileBlockBackend };
  /** The console device and one in-memory backend per port. */
  console?: { device: ConsoleDevice; backends: MemoryConsoleBackend[] };
  /** The NIC and the host peer at the other end of its in-process link. */
  net?: { device: NetDevice; peer: HostPeer };
  log: string[];
}

/** Deterministic disk contents. */
function diskImage(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  // A readable first sector, for anyone looking at the guest's view.
  out.set(new TextEncoder().encode('virtio-mmio v86 linux check disk\n'), 0);
  return out;
}

function sha256(b: Uint8Array | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Size of the test disk (4 MiB: 8192 sectors). */
const DISK_SIZE = 4 << 20;
/** Pattern written by the guest: lines, and where (in 512-byte sectors). */
const PATTERN_LINES = 4096;
const PATTERN_SECTOR = 2048;
/** The blk-mq scenario's write: lines, and where (in 512-byte sectors). */
const MQ_PATTERN_LINES = 512;
const MQ_PATTERN_SECTOR = 4096;

/** Context of a scenario run. */
interface ScenarioEnv {
  guest: LinuxGuest;
  tmp: string;
  timeoutMs: number;
}

/** Scenario definition. */
interface Scenario {
  name: string;
  title: string;
  version: 1 | 2;
  devices: readonly (DeviceKind | null)[];
  /** Request queues of the blk device (more than 1 offers VIRTIO_BLK_F_MQ). Default 1. */
  blkQueues?: number;
  /** Queue pairs of the net device (more than 1 offers VIRTIO_NET_F_MQ). Default 1. */
  netQueuePairs?: number;
  /**
   * Ports of the console device: 1 is a single-port console without MULTIPORT; more offer
   * MULTIPORT, port 0 a console and the others generic ports named {@link consolePortName}.
   */
  consolePorts?: number;
  /**
   * Place the devices with the seed v2 MSI profile (non-standard, issue 5): Linux knows nothing of
   * it, so it must leave bits 39/40 alone and use the standard line. MSI messages are counted.
   */
  seed?: boolean;
  run(env: ScenarioEnv, placed: Placed[], v: Verdict): Promise<void>;
}

/** Builds the transports for a scenario. */
function place(env: ScenarioEnv, scenario: Scenario, seq: number): Placed[] {
  const placed: Placed[] = [];
  scenario.devices.forEach((kind, slot) => {
    if (kind === null) return;
    const log: string[] = [];
    const common = {
      mem: env.guest.mem,
      irq: env.guest.irqs[slot],
      version: scenario.version,
      onGuestError: (m: string) => log.push(m),
      ...(scenario.seed
        ? {
            seed: { msi: { vectors: 4, sharing: false } },
            ringReset: false,
            msiSink: { send: () => log.push('msi message sent although linux never enabled msi') },
          }
        : {}),
    };
    if (kind === 'console') {
      const n = scenario.consolePorts ?? 1;
      const backends = Array.from({ length: n }, () => new MemoryConsoleBackend());
      const device = new ConsoleDevice({
        ports: backends.map((backend, id) => ({
          backend,
          ...(id === 0 ? {} : { name: consolePortName(id) }),
        })),
        multiport: n > 1,
        size: CONSOLE_START_SIZE,
        log: (m) => log.push(m),
      });
      placed.push({
        transport: new MmioTransport(device, common),
        slot,
        kind,
        console: { device, backends },
        log,
      });
    } else if (kind === 'net') {
      // Frames move on microtasks: v86 runs on the event loop, between its execution slices.
      const link = createNetLink({ delivery: 'microtask' });
      const peer = new HostPeer({ backend: link.b, ip: NET_PEER_IP });
      const device = new NetDevice({
        backend: link.a,
        mac: NET_GUEST_MAC,
        queuePairs: scenario.netQueuePairs ?? 1,
        log: (m) => log.push(m),
      });
      placed.push({ transport: new MmioTransport(device, common), slot, kind, net: { device, peer }, log });
    } else if (kind === 'rng') {
      const entropy = new RecordingEntropy(0x1234567 + seq);
      const dev = new RngDevice({ entropy, log: (m) => log.push(m) });
      placed.push({ transport: new MmioTransport(dev, common), slot, kind, entropy, log });
    } else {
      const file = path.join(env.tmp, `${scenario.name}-${String(slot)}.img`);
      const original = diskImage(DISK_SIZE, 0xabcdef + seq);
      fs.writeFileSync(file, original);
      const backend = new FileBlockBackend(file);
      const dev = new BlkDevice({
        backend,
        serial: `v86-${scenario.name}`,
        queueCount: scenario.blkQueues ?? 1,
        log: (m) => log.push(m),
      });
      placed.push({
        transport: new MmioTransport(dev, common),
        slot,
        kind,
        disk: { path: file, original, backend },
        log,
      });
    }
  });
  return placed;
}

/** Checks every expected device is bound with status 0xf, the right features and its own line. */
function checkDevices(
  lines: readonly string[],
  placed: readonly Placed[],
  v: Verdict,
  version: 1 | 2,
  phase = '',
): Map<number, GuestDevice> {
  const devs = parseDevs(lines);
  const irqs = parseIrqs(lines);
  const bySlot = new Map<number, GuestDevice>();
  v.expect(
    devs.length === placed.length,
    `${phase}${String(placed.length)} virtio device(s) under /sys/bus/virtio/devices`,
    `found ${String(devs.length)}`,
  );
  for (const p of placed) {
    const want = KIND_INFO[p.kind].id;
    const d = devs.find((x) => x.parent === `LNRO0005:${p.slot.toString(16).padStart(2, '0')}`);
    const label = `${phase}${p.kind} (window ${String(p.slot)}, v${String(version)})`;
    if (!v.expect(d !== undefined, `${label} probed`, `no virtio device under LNRO0005:0${String(p.slot)}`))
      continue;
    if (d === undefined) continue;
    bySlot.set(p.slot, d);
    v.expect(d.device === want, `${label} device id ${String(want)}`, `guest sees ${String(d.device)}`);
    v.expect(d.vendor === p.transport.vendorId, `${label} vendor id`, `guest sees ${d.vendor.toString(16)}`);
    // Legacy drivers never set FEATURES_OK (it is a virtio 1.0 addition, 2.2.2 / 4.2.4).
    const status = version === 2 ? 0xf : 0x7;
    const statusName =
      version === 2 ? 'ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK' : 'ACKNOWLEDGE|DRIVER|DRIVER_OK';
    v.expect(
      d.status === status,
      `${label} status ${hex(status)} (${statusName})`,
      `status ${hex(d.status)}`,
    );
    v.expect(
      p.transport.status === status,
      `${label} our transport status ${hex(status)}`,
      `status ${hex(p.transport.status)}`,
    );
    v.expect(
      d.driver === KIND_INFO[p.kind].driver,
      `${label} bound to ${d.driver}`,
      `driver ${JSON.stringify(d.driver)}`,
    );
    const negotiated = sysfsFeatures(d.features);
    const offered = p.transport.offeredFeatures;
    v.expect(
      negotiated.isSubsetOf(offered),
      `${label} negotiated features ⊆ offered`,
      `negotiated ${bitList(negotiated)} offered ${bitList(offered)}`,
    );
    v.expect(
      negotiated.has(FeatureBit.VERSION_1) === (version === 2),
      `${label} VERSION_1 ${version === 2 ? 'negotiated' : 'absent (legacy)'}`,
      bitList(negotiated),
    );
    for (const bit of [FeatureBit.INDIRECT_DESC, FeatureBit.EVENT_IDX]) {
      v.expect(negotiated.has(bit), `${label} feature ${String(bit)} negotiated`, bitList(negotiated));
    }
    v.checks.push(`${label} negotiated bits ${bitList(negotiated)}`);
    const irq = irqs.find((x) => x.name === d.name);
    const line = LINUX_WINDOW_IRQS[p.slot];
    v.expect(
      irq !== undefined && irq.line === line,
      `${label} on its own interrupt line ${String(line)}`,
      JSON.stringify(irq),
    );
  }
  return bySlot;
}

/** Checks the interrupts of bound devices were taken. */
function checkIrqCounts(lines: readonly string[], bySlot: Map<number, GuestDevice>, v: Verdict): void {
  const irqs = parseIrqs(lines);
  for (const [slot, d] of bySlot) {
    const irq = irqs.find((x) => x.name === d.name);
    v.expect(
      irq !== undefined && irq.count > 0,
      `interrupts taken on line ${String(LINUX_WINDOW_IRQS[slot])}`,
      JSON.stringify(irq),
    );
  }
}

/** Parses `@RNG` hex lines. */
function rngBytes(lines: readonly string[]): Uint8Array {
  const out: number[] = [];
  for (const l of lines) {
    if (!l.startsWith('@RNG ') && !/^@RNG[0-9a-f ]/.test(l)) continue;
    if (l.startsWith('@RNGCUR')) continue;
    for (const h of l.slice(4).trim().split(/\s+/)) if (h !== '') out.push(Number.parseInt(h, 16));
  }
  return Uint8Array.from(out);
}

function checkRng(lines: readonly string[], p: Placed, want: number, v: Verdict): void {
  const cur = lines.find((l) => l.startsWith('@RNGCUR'));
  v.expect(cur?.includes('virtio_rng') === true, 'hwrng current is virtio_rng', cur ?? 'no rng_current');
  const got = rngBytes(lines);
  v.expect(got.length === want, `/dev/hwrng gave ${String(want)} bytes`, `got ${String(got.length)}`);
  const produced = p.entropy?.produced ?? new Uint8Array(0);
  const covered = coveredBytes(got, produced);
  v.expect(
    got.length > 0 && covered >= got.length * 0.9,
    `/dev/hwrng bytes are our device's (${String(covered)}/${String(got.length)} in runs of 8+ of the ${String(produced.length)} bytes produced)`,
    `only ${String(covered)} of ${String(got.length)} bytes found in what the device produced`,
  );
}

function checkBlkRead(lines: readonly string[], p: Placed, v: Verdict, expected?: Uint8Array): void {
  const disk = p.disk;
  if (disk === undefined) return;
  const size = lines.find((l) => l.startsWith('@BLKSIZE'))?.split(' ')[2];
  v.expect(
    Number(size) === DISK_SIZE / 512,
    `guest capacity ${String(DISK_SIZE / 512)} sectors`,
    `guest says ${String(size)}`,
  );
  const sum = lines.find((l) => l.startsWith('@BLKSUM'))?.split(' ')[2];
  const host = sha256(expected ?? disk.original);
  v.expect(
    sum === host,
    'guest sha256 of /dev/vda matches the host file',
    `guest ${String(sum)} host ${host}`,
  );
}

/** Name given to generic console port `id` (Linux shows it in /sys/class/virtio-ports/vport0pN/name). */
export function consolePortName(id: number): string {
  return `org.virtio-mmio.port${String(id)}`;
}

/** Console size offered at start (VIRTIO_CONSOLE_F_SIZE), and the size the host resizes to. */
const CONSOLE_START_SIZE = { cols: 80, rows: 25 };
const CONSOLE_RESIZED = { cols: 100, rows: 30 };

/** The line the host types into /dev/hvc0 (no leading or trailing blanks: `read` strips them). */
const CONSOLE_LINE = 'virtio-mmio console echo: Hello hvc0 <0123456789> ~!#%&*()_+{}|:?';

/** Bulk input to the console (pattern lines: more than one 4 KiB Linux receive buffer). */
const CONSOLE_BULK_LINES = 400;
/** Lines of pattern the guest writes back. */
const CONSOLE_OUT_LINES = 300;
/** Bulk input to, and lines of pattern written by the guest to, generic port 1. */
const PORT_BULK_LINES = 250;
const PORT_OUT_LINES = 64;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Where two byte strings first differ, for messages. */
function firstDifference(got: Uint8Array, want: Uint8Array): string {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  const show = (b: Uint8Array) => JSON.stringify(new TextDecoder().decode(b.subarray(i, i + 24)));
  return `${String(got.length)} bytes, want ${String(want.length)}; first difference at ${String(i)}: ${show(got)} vs ${show(want)}`;
}

/**
 * The console echo: Linux's virtio_console binds our ConsoleDevice and gives /dev/hvc0; the guest
 * puts it in raw mode and tells the host (`@CONREADY`); the host resizes the console and types a
 * line; the guest echoes it back uppercase, reports the tty size, checksums a bulk input the host
 * sends next and writes a pattern. Everything the guest wrote is compared byte for byte on the
 * host side (the port's {@link MemoryConsoleBackend}). With MULTIPORT, generic port 1 is read and
 * written too (/dev/vport0p1), its input sent before the guest opens it.
 */
async function consoleEcho(env: ScenarioEnv, placed: Placed[], v: Verdict, version: 1 | 2): Promise<void> {
  const p = placed.find((x) => x.kind === 'console');
  const con = p?.console;
  if (p === undefined || con === undefined) throw new Error('no console placed');
  const multiport = con.backends.length > 1;
  const enc = new TextEncoder();
  const bulk = enc.encode(guestPattern(CONSOLE_BULK_LINES));
  const portBulk = enc.encode(guestPattern(PORT_BULK_LINES).toUpperCase());
  // Generic ports take input only once the guest opens them: the device holds it until then.
  if (multiport) con.backends[1].push(portBulk);
  const ready = env.guest.waitForLine((l) => l === CONSOLE_READY_MARKER, env.timeoutMs, 'console ready');
  const echoed = env.guest.waitForLine(
    (l) => l.startsWith(CONSOLE_LINE_MARKER),
    env.timeoutMs,
    'console line read',
  );
  ready.catch(() => {});
  echoed.catch(() => {});
  const port1 = multiport
    ? `; waitchr vport0p1; vport vport0p1 ${String(portBulk.length)} ${String(PORT_OUT_LINES)}`
    : '';
  const done = env.guest.run(
    `ins virtio_mmio virtio_console; waitchr hvc0; devs; conecho hvc0 ${String(bulk.length)} ${String(CONSOLE_OUT_LINES)}${port1}; devs`,
    env.timeoutMs,
  );
  done.catch(() => {});
  await ready;
  con.device.resize(CONSOLE_RESIZED.cols, CONSOLE_RESIZED.rows);
  con.backends[0].push(`${CONSOLE_LINE}\n`);
  await echoed;
  con.backends[0].push(bulk);
  const lines = await done;

  const readyAt = lines.indexOf(CONSOLE_READY_MARKER);
  const by = checkDevices(readyAt < 0 ? lines : lines.slice(0, readyAt), placed, v, version);
  const dev = by.get(p.slot);
  const negotiated = dev === undefined ? new Features() : sysfsFeatures(dev.features);
  v.expect(
    negotiated.has(ConsoleFeature.MULTIPORT) === multiport,
    `console: MULTIPORT ${multiport ? 'negotiated' : 'not offered, not negotiated'}`,
    bitList(negotiated),
  );
  v.expect(negotiated.has(ConsoleFeature.SIZE), 'console: SIZE negotiated', bitList(negotiated));
  const got = lines
    .find((l) => l.startsWith(`${CONSOLE_LINE_MARKER} `))
    ?.slice(CONSOLE_LINE_MARKER.length + 1);
  v.expect(got === CONSOLE_LINE, 'guest read the host line from /dev/hvc0 exactly', JSON.stringify(got));
  const guestBulk = lines.find((l) => l.startsWith('@CONBULK '))?.split(' ')[1];
  v.expect(
    guestBulk === sha256(bulk),
    `guest read ${String(bulk.length)} bulk bytes from /dev/hvc0, checksum matches`,
    `guest ${String(guestBulk)}`,
  );
  const size = lines
    .find((l) => l.startsWith('@CONSIZE'))
    ?.slice(9)
    .trim();
  // `stty size` prints rows then cols. Without MULTIPORT the size comes from the configuration
  // space after a configuration change; with it from the RESIZE control message, whose layout
  // (cols, rows per 5.3.6.2) Linux read the other way round until the 2025 fix (5326ab737a47,
  // in 6.1 stable): this kernel has it.
  const wantSize = `${String(CONSOLE_RESIZED.rows)} ${String(CONSOLE_RESIZED.cols)}`;
  v.expect(
    size === wantSize,
    `hvc0 resized to ${String(CONSOLE_RESIZED.cols)}x${String(CONSOLE_RESIZED.rows)} (${multiport ? 'RESIZE control message' : 'config change'}): stty size "${wantSize}"`,
    `stty size ${JSON.stringify(size)}`,
  );
  const want = new Uint8Array([
    ...enc.encode(`${CONSOLE_LINE.toUpperCase()}\n`),
    ...enc.encode(guestPattern(CONSOLE_OUT_LINES)),
  ]);
  const out = con.backends[0].output();
  v.expect(
    sameBytes(out, want),
    `host got the echoed line and ${String(CONSOLE_OUT_LINES)} pattern lines byte for byte (${String(want.length)} bytes)`,
    firstDifference(out, want),
  );
  const c = con.device.counters;
  v.expect(c.inputDropped === 0, 'console: no input dropped', String(c.inputDropped));
  v.expect(c.guestErrors === 0 && c.backendErrors === 0, 'console: no guest or backend errors');
  const inputTotal = CONSOLE_LINE.length + 1 + bulk.length + (multiport ? portBulk.length : 0);
  v.expect(
    c.inputBytes === inputTotal && c.rxBytes === inputTotal,
    `console: all ${String(inputTotal)} input bytes reached guest buffers`,
    `input ${String(c.inputBytes)} rx ${String(c.rxBytes)}`,
  );
  if (multiport) {
    const name = lines.find((l) => l.startsWith('@VPNAME'))?.split(' ')[1];
    v.expect(name === consolePortName(1), `port 1 named ${consolePortName(1)} (PORT_NAME)`, String(name));
    const vb = lines.find((l) => l.startsWith('@VPBULK'))?.split(' ')[1];
    v.expect(
      vb === sha256(portBulk),
      `port 1: input sent before the guest opened it arrived whole (${String(portBulk.length)} bytes)`,
      String(vb),
    );
    const out1 = con.backends[1].output();
    const want1 = enc.encode(guestPattern(PORT_OUT_LINES));
    v.expect(
      sameBytes(out1, want1),
      'port 1: host got the pattern byte for byte',
      firstDifference(out1, want1),
    );
    const s0 = con.device.port(0);
    const s1 = con.device.port(1);
    v.expect(s0.guestReady && s1.guestReady, 'both ports answered PORT_READY(1)');
    v.expect(s0.guestOpen, 'console port opened by the guest (PORT_OPEN 1)');
    v.expect(!s1.guestOpen, 'port 1 closed again after the guest closed /dev/vport0p1 (PORT_OPEN 0)');
    v.expect(c.controlDropped === 0 && c.driverFailures === 0, 'control protocol clean');
    v.checks.push(`control messages: ${String(c.controlIn)} from linux, ${String(c.controlOut)} to linux`);
  }
  checkIrqCounts(lines.slice(Math.max(0, readyAt)), by, v);
}

/** Address of the guest's eth0 in the net scenario. */
const NET_GUEST_IP = '10.0.2.15';
/** Address of the host peer behind the NIC. */
const NET_PEER_IP = '10.0.2.2';
/** MAC the NIC reports in its configuration space. */
const NET_GUEST_MAC = '52:54:00:12:34:56';
/** Echo requests the guest sends. */
const NET_PINGS = 3;
/** Queue pairs of the net scenario's NIC (VIRTIO_NET_F_MQ offered). */
const NET_QUEUE_PAIRS = 2;

const SCENARIOS: readonly Scenario[] = [
  {
    name: 'rng',
    title: 'virtio-rng (v2): probe, status 0xf, /dev/hwrng bytes come from our device',
    version: 2,
    devices: ['rng'],
    async run(env, placed, v) {
      const lines = await env.guest.run('ins virtio_mmio virtio-rng; devs; rngread 512; devs', env.timeoutMs);
      const by = checkDevices(
        lines.slice(
          0,
          lines.findIndex((l) => l.startsWith('@RNGCUR')),
        ),
        placed,
        v,
        2,
      );
      checkRng(lines, placed[0], 512, v);
      checkIrqCounts(lines.slice(lines.findIndex((l) => l.startsWith('@RNGCUR'))), by, v);
    },
  },
  {
    name: 'blk-read',
    title: 'virtio-blk (v2): the guest reads a file-backed disk, checksum matches the host',
    version: 2,
    devices: ['blk'],
    async run(env, placed, v) {
      const lines = await env.guest.run(
        'ins virtio_mmio virtio_blk; waitblk vda; blkinfo vda; devs',
        env.timeoutMs,
      );
      const by = checkDevices(lines, placed, v, 2);
      checkBlkRead(lines, placed[0], v);
      checkIrqCounts(lines, by, v);
    },
  },
  {
    name: 'blk-write',
    title: 'virtio-blk (v2): the guest writes a pattern and syncs, the host file holds it',
    version: 2,
    devices: ['blk'],
    async run(env, placed, v) {
      const lines = await env.guest.run(
        `ins virtio_mmio virtio_blk; waitblk vda; blkwrite vda ${String(PATTERN_LINES)} ${String(PATTERN_SECTOR)}; devs`,
        env.timeoutMs,
      );
      checkDevices(lines, placed, v, 2);
      const disk = placed[0].disk;
      if (disk === undefined) return;
      const pattern = new TextEncoder().encode(guestPattern(PATTERN_LINES));
      const patSum = sha256(pattern);
      const guestSum = lines.find((l) => l.startsWith('@PATSUM'))?.split(' ')[1];
      v.expect(
        guestSum === patSum,
        'guest pattern equals the host model of it',
        `guest ${String(guestSum)} host ${patSum}`,
      );
      const back = lines.find((l) => l.startsWith('@READBACK'))?.split(' ')[1];
      v.expect(back === patSum, 'guest reads the pattern back after drop_caches', `${String(back)}`);
      const file = new Uint8Array(fs.readFileSync(disk.path));
      const at = PATTERN_SECTOR * 512;
      v.expect(
        sha256(file.subarray(at, at + pattern.length)) === patSum,
        `host file holds the pattern at ${String(at)}`,
      );
      const expected = disk.original.slice();
      expected.set(pattern, at);
      v.expect(sha256(file) === sha256(expected), 'nothing else in the host file changed');
    },
  },
  {
    name: 'reload',
    title: 'rmmod/insmod of virtio_blk, virtio_rng, virtio_mmio re-probes cleanly (both devices)',
    version: 2,
    devices: ['rng', 'blk'],
    async run(env, placed, v) {
      const first = await env.guest.run(
        'ins virtio_mmio virtio-rng virtio_blk; waitblk vda; devs',
        env.timeoutMs,
      );
      checkDevices(first, placed, v, 2, 'first probe: ');
      const gone = await env.guest.run('rmm virtio_blk virtio_rng virtio_mmio; devs', env.timeoutMs);
      v.expect(parseDevs(gone).length === 0, 'no virtio device left after rmmod');
      v.expect(
        gone.every((l) => !l.startsWith('@ERR')),
        'rmmod clean',
        gone.filter((l) => l.startsWith('@ERR')).join('; '),
      );
      // virtio_dev_remove: the driver resets the device (WARN_ON_ONCE otherwise, caught on the
      // console), then the core sets ACKNOWLEDGE again; virtio_mmio's own removal leaves it there.
      for (const p of placed) {
        v.expect(
          p.transport.status === DeviceStatus.ACKNOWLEDGE,
          `${p.kind}: reset by the driver on removal, then re-acknowledged (status 0x1)`,
          `status ${hex(p.transport.status)}`,
        );
      }
      const again = await env.guest.run(
        'ins virtio_mmio virtio-rng virtio_blk; waitblk vda; devs; blkinfo vda; rngread 256',
        env.timeoutMs,
      );
      checkDevices(again, placed, v, 2, 'second probe: ');
      const blk = placed.find((p) => p.kind === 'blk');
      const rng = placed.find((p) => p.kind === 'rng');
      if (blk !== undefined) checkBlkRead(again, blk, v);
      if (rng !== undefined) checkRng(again, rng, 256, v);
    },
  },
  {
    name: 'multi',
    title: 'rng and a 2-queue blk at once (v2), each on its own interrupt line',
    version: 2,
    devices: ['rng', 'blk'],
    // num_queues is a 16-bit config field: Linux's readw arrives as two 8-bit v86 accesses.
    blkQueues: 2,
    async run(env, placed, v) {
      const lines = await env.guest.run(
        'ins virtio_mmio virtio-rng virtio_blk; waitblk vda; blkinfo vda; rngread 256; devs',
        env.timeoutMs,
      );
      const by = checkDevices(lines, placed, v, 2);
      const blk = placed.find((p) => p.kind === 'blk');
      const rng = placed.find((p) => p.kind === 'rng');
      if (blk !== undefined) checkBlkRead(lines, blk, v);
      if (rng !== undefined) checkRng(lines, rng, 256, v);
      // num_queues is read only when MQ is negotiated, and a zero makes virtio_blk fail the probe
      // ("MQ advertised but zero queues reported"): a bound device proves the split 16-bit read.
      // Linux then uses min(num_queues, nr_cpu_ids) queues: nr_cpu_ids is LINUX_POSSIBLE_CPUS.
      const blkDev = blk === undefined ? undefined : by.get(blk.slot);
      v.expect(
        blkDev !== undefined && sysfsFeatures(blkDev.features).has(BlkFeature.MQ),
        'blk: VIRTIO_BLK_F_MQ negotiated and num_queues (16-bit config, two 8-bit v86 accesses) accepted',
        blkDev?.features ?? 'no blk device',
      );
      const mq = lines.find((l) => l.startsWith('@BLKMQ'))?.split(' ')[2];
      v.expect(
        mq === '2',
        `blk: guest uses min(num_queues = 2, nr_cpu_ids = ${String(LINUX_POSSIBLE_CPUS)}) = 2 hardware queues`,
        `mq ${String(mq)}`,
      );
      if (blk !== undefined) {
        const ready = [0, 1].map((i) => blk.transport.queue(i).ready);
        v.expect(
          ready[0] && ready[1],
          'blk: our transport sees both request queues made ready',
          ready.join(','),
        );
      }
      checkIrqCounts(lines, by, v);
    },
  },
  {
    name: 'legacy',
    title: 'Version 1 (legacy) transports: rng read, blk read and write',
    version: 1,
    devices: ['rng', 'blk'],
    async run(env, placed, v) {
      const lines = await env.guest.run(
        `ins virtio_mmio virtio-rng virtio_blk; waitblk vda; blkinfo vda; rngread 256; blkwrite vda 512 64; devs`,
        env.timeoutMs,
      );
      const by = checkDevices(lines, placed, v, 1);
      const blk = placed.find((p) => p.kind === 'blk');
      const rng = placed.find((p) => p.kind === 'rng');
      if (blk !== undefined) checkBlkRead(lines, blk, v);
      if (rng !== undefined) checkRng(lines, rng, 256, v);
      const patSum = sha256(guestPattern(512));
      v.expect(
        lines.find((l) => l.startsWith('@READBACK'))?.split(' ')[1] === patSum,
        'legacy blk write reads back',
      );
      if (blk?.disk !== undefined) {
        const file = new Uint8Array(fs.readFileSync(blk.disk.path));
        v.expect(
          sha256(file.subarray(64 * 512, 64 * 512 + 512 * 19)) === patSum,
          'legacy blk write reached the host file',
        );
      }
      checkIrqCounts(lines, by, v);
    },
  },
  {
    name: 'blk-mq',
    title: `virtio-blk with 4 request queues (v2): ${String(LINUX_POSSIBLE_CPUS)} possible CPUs, 4 hardware queues, I/O on queue 0`,
    version: 2,
    devices: ['blk'],
    blkQueues: 4,
    async run(env, placed, v) {
      const lines = await env.guest.run(
        `ins virtio_mmio virtio_blk; waitblk vda; cpus; blkinfo vda; mqmap vda; pin 0; pin 1; blkwrite vda ${String(MQ_PATTERN_LINES)} ${String(MQ_PATTERN_SECTOR)}; devs`,
        env.timeoutMs,
      );
      const by = checkDevices(lines, placed, v, 2);
      const blk = placed[0];
      checkBlkRead(lines, blk, v);
      const dev = by.get(blk.slot);
      v.expect(
        dev !== undefined && sysfsFeatures(dev.features).has(BlkFeature.MQ),
        'VIRTIO_BLK_F_MQ negotiated with num_queues 4',
        dev?.features ?? 'no device',
      );
      // possible_cpus=4 on the command line: nr_cpu_ids is 4, but v86 runs one CPU, so only cpu 0
      // is online (and present); 1..3 are hotplug slots.
      const cpus = lines.find((l) => l.startsWith('@CPUS'));
      const wantCpus = `@CPUS possible=0-${String(LINUX_POSSIBLE_CPUS - 1)} online=0 present=0`;
      v.expect(
        cpus === wantCpus,
        `guest: cpus 0-${String(LINUX_POSSIBLE_CPUS - 1)} possible, only cpu 0 online and present`,
        String(cpus),
      );
      // virtio_blk init_vq: num_vqs = min(num_queues, nr_cpu_ids) = 4 virtqueues; blk-mq makes one
      // hardware context per queue and maps possible cpu i to context i.
      const mq = lines.find((l) => l.startsWith('@BLKMQ'))?.split(' ')[2];
      v.expect(
        mq === '4',
        `linux shows 4 hardware queues in /sys/block/vda/mq (min(num_queues 4, nr_cpu_ids ${String(LINUX_POSSIBLE_CPUS)}))`,
        `mq ${String(mq)}`,
      );
      const map = lines
        .filter((l) => l.startsWith('@MQHW'))
        .map((l) => l.slice(6).trim())
        .join(',');
      v.expect(map === '0 0,1 1,2 2,3 3', 'hardware queue i serves cpu i', map);
      const ready = [0, 1, 2, 3].map((i) => blk.transport.queue(i).ready);
      v.expect(
        ready.every((r) => r),
        'our transport: linux made all 4 request queues ready',
        ready.join(','),
      );
      // A process cannot run on an offline cpu (sched_setaffinity refuses it), so every request
      // is submitted from cpu 0 and goes to its hardware queue, 0.
      v.expect(lines.includes('@PIN 0 ran'), 'guest: a process pinned to cpu 0 runs');
      v.expect(lines.includes('@PIN 1 refused'), 'guest: pinning to cpu 1 is refused (not online)');
      const patSum = sha256(guestPattern(MQ_PATTERN_LINES));
      v.expect(
        lines.find((l) => l.startsWith('@READBACK'))?.split(' ')[1] === patSum,
        'a write (dd conv=fsync, then drop_caches) reads back',
      );
      if (blk.disk !== undefined) {
        const at = MQ_PATTERN_SECTOR * 512;
        const file = new Uint8Array(fs.readFileSync(blk.disk.path));
        const len = guestPattern(MQ_PATTERN_LINES).length;
        v.expect(sha256(file.subarray(at, at + len)) === patSum, 'the write reached the host file');
      }
      const used = [0, 1, 2, 3].map((i) => blk.transport.queue(i).nextUsed);
      const avail = [0, 1, 2, 3].map((i) => blk.transport.queue(i).nextAvail);
      v.expect(
        used[0] > 0 && [1, 2, 3].every((i) => avail[i] === 0 && used[i] === 0),
        'our transport: every request (reads, the write, the flush) came on queue 0; queues 1..3 carried none',
        `available ${avail.join(',')} used ${used.join(',')}`,
      );
      v.checks.push(`queue 0 served ${String(used[0])} requests`);
      checkIrqCounts(lines, by, v);
    },
  },
  {
    name: 'console',
    title: 'virtio-console (v2): /dev/hvc0 on our device echoes a line, bulk both ways byte-exact',
    version: 2,
    devices: ['console'],
    async run(env, placed, v) {
      await consoleEcho(env, placed, v, 2);
    },
  },
  {
    name: 'console-mp',
    title: 'virtio-console MULTIPORT (v2): hvc0 echo plus a named port /dev/vport0p1 both ways',
    version: 2,
    devices: ['console'],
    consolePorts: 2,
    async run(env, placed, v) {
      await consoleEcho(env, placed, v, 2);
    },
  },
  {
    name: 'console-v1',
    title: 'virtio-console MULTIPORT on a Version 1 (legacy) transport: hvc0 echo and vport0p1',
    version: 1,
    devices: ['console'],
    consolePorts: 2,
    async run(env, placed, v) {
      await consoleEcho(env, placed, v, 1);
    },
  },
  {
    name: 'seed',
    title:
      'seed v2 MSI profile (non-standard): stock Linux ignores bits 39/40 and runs rng + blk on the line',
    version: 2,
    devices: ['rng', 'blk'],
    seed: true,
    async run(env, placed, v) {
      const lines = await env.guest.run(
        'ins virtio_mmio virtio-rng virtio_blk; waitblk vda; blkinfo vda; rngread 256; devs',
        env.timeoutMs,
      );
      const by = checkDevices(lines, placed, v, 2);
      for (const p of placed) {
        const negotiated = p.transport.driverFeatures;
        v.expect(
          !negotiated.has(SeedFeatureBit.MMIO_MSI) && !negotiated.has(SeedFeatureBit.MMIO_NOTIFICATION),
          `${p.kind}: linux left the seed bits 39/40 alone`,
          negotiated.toString(),
        );
        v.expect(
          p.transport.msi?.isEnabled === false,
          `${p.kind}: msi never enabled`,
          String(p.transport.msi?.isEnabled),
        );
      }
      const blk = placed.find((p) => p.kind === 'blk');
      const rng = placed.find((p) => p.kind === 'rng');
      if (blk !== undefined) checkBlkRead(lines, blk, v);
      if (rng !== undefined) checkRng(lines, rng, 256, v);
      checkIrqCounts(lines, by, v);
    },
  },
  {
    name: 'net',
    title:
      "virtio-net with 2 queue pairs (v2): Linux's virtio_net brings up eth0 on our NIC and pings the host peer",
    version: 2,
    devices: ['net'],
    netQueuePairs: NET_QUEUE_PAIRS,
    async run(env, placed, v) {
      const lines = await env.guest.run(
        `ins virtio_mmio failover net_failover virtio_net; waitnet eth0; devs; netq eth0; netping eth0 ${NET_GUEST_IP} ${NET_PEER_IP} ${String(NET_PINGS)}; devs`,
        env.timeoutMs,
      );
      // Two `devs` listings: before the traffic (binding, features) and after (interrupt counts).
      const split = lines.findIndex((l) => l.startsWith('@MAC '));
      const by = checkDevices(lines.slice(0, split), placed, v, 2);
      const p = placed[0];
      const mac = lines
        .find((l) => l.startsWith('@MAC '))
        ?.slice(5)
        .trim();
      v.expect(mac === NET_GUEST_MAC, 'eth0 has the MAC from our config space', String(mac));
      const summary = lines.find((l) => /packets transmitted/.test(l)) ?? '';
      v.expect(
        summary.includes(`${String(NET_PINGS)} packets transmitted, ${String(NET_PINGS)} packets received`),
        `${String(NET_PINGS)} pings to the host peer answered`,
        summary || lines.filter((l) => l.startsWith('@PING')).join(' | '),
      );
      const c = p.net?.peer.counters;
      v.expect(
        c !== undefined && c.arpReplies >= 1 && c.echoReplies === NET_PINGS,
        'the host peer answered ARP and every ICMP echo',
        JSON.stringify(c),
      );
      const d = p.net?.device.counters;
      v.expect(
        d !== undefined && d.txFrames >= NET_PINGS + 1 && d.rxFrames >= NET_PINGS + 1,
        'frames counted both ways by our device',
        JSON.stringify({ tx: d?.txFrames, rx: d?.rxFrames }),
      );
      // virtio_net sets up every pair's virtqueues (init_vqs uses max_queue_pairs), then uses
      // min(max_queue_pairs, num_online_cpus()) = 1 pair: one CPU is online whatever is possible.
      const dev = by.get(p.slot);
      v.expect(
        dev !== undefined && sysfsFeatures(dev.features).has(NetFeature.MQ),
        `VIRTIO_NET_F_MQ negotiated with max_virtqueue_pairs ${String(NET_QUEUE_PAIRS)}`,
        dev?.features ?? 'no device',
      );
      const queues = 2 * NET_QUEUE_PAIRS + 1;
      const ready = Array.from({ length: queues }, (_, i) => p.transport.queue(i).ready);
      v.expect(
        ready.every((r) => r),
        `our transport: linux made all ${String(queues)} queues ready (${String(NET_QUEUE_PAIRS)} pairs and the control queue)`,
        ready.join(','),
      );
      // Of the control classes only MQ is negotiated (no CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE,
      // CTRL_MAC_ADDR), so the commands Linux sent are VQ_PAIRS_SET (virtnet_set_queues at probe).
      v.expect(
        p.net?.device.queuePairsInUse === 1 && (d?.ctrlCommands ?? 0) >= 1 && d?.ctrlErrors === 0,
        'the driver set 1 pair in use with VQ_PAIRS_SET (one online cpu), accepted',
        `pairs ${String(p.net?.device.queuePairsInUse)} ctrl ${String(d?.ctrlCommands)} errors ${String(d?.ctrlErrors)}`,
      );
      const netq = lines
        .filter((l) => l.startsWith('@NETQ'))
        .map((l) => l.slice(6).trim())
        .join(',');
      v.expect(netq === 'rx-0,tx-0', 'eth0 has one rx and one tx queue', netq);
      const otherPairs =
        d === undefined
          ? -1
          : [...d.txFramesPerPair.slice(1), ...d.rxFramesPerPair.slice(1)].reduce((a, b) => a + b, 0);
      v.expect(
        otherPairs === 0,
        'every frame went through pair 0',
        JSON.stringify({ tx: d?.txFramesPerPair, rx: d?.rxFramesPerPair }),
      );
      checkIrqCounts(lines.slice(split), by, v);
    },
  },
];

/** Names of the scenarios, in the order they run. */
export const LINUX_SCENARIOS: readonly { name: string; title: string }[] = SCENARIOS.map((s) => ({
  name: s.name,
  title: s.title,
}));

/**
 * Runs the Linux check: boot once, then every scenario from the snapshot. Never throws for a guest
 * or device failure; those are in the report. Missing prerequisites give `ok: false` with
 * `missing` filled and no scenario run.
 */
export async function runLinuxCheck(options: LinuxCheckOptions = {}): Promise<LinuxCheckReport> {
  const t0 = performance.now();
  const pre = findLinuxPrerequisites(options.guestDir);
  const report: LinuxCheckReport = {
    ok: false,
    missing: pre.missing,
    kernel: pre.files?.kernelVersion ?? 'unknown',
    v86: pre.v86Version ?? 'missing',
    bootMs: 0,
    saveMs: 0,
    stateBytes: 0,
    bootProblems: [],
    scenarios: [],
    totalMs: 0,
  };
  if (pre.files === null || pre.wasmPath === null || pre.missing.length > 0) {
    report.totalMs = performance.now() - t0;
    return report;
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-mmio-linux-'));
  let guest: LinuxGuest | null = null;
  try {
    guest = await LinuxGuest.boot({ files: pre.files, wasmPath: pre.wasmPath, onLine: options.onLine });
    report.bootMs = guest.bootMs;
    report.saveMs = guest.saveMs;
    report.stateBytes = guest.stateBytes;
    report.bootProblems = [...guest.problems, ...guest.scriptErrors];
    options.onProgress?.(`booted ${report.kernel} in ${(report.bootMs / 1000).toFixed(1)} s`);
    const env: ScenarioEnv = { guest, tmp, timeoutMs: options.timeoutMs ?? 180_000 };
    let seq = 0;
    for (const scenario of SCENARIOS) {
      if (options.only !== undefined && !options.only.includes(scenario.name)) continue;
      const result = await runScenario(env, scenario, seq++);
      report.scenarios.push(result);
      options.onProgress?.(
        `${result.ok ? 'PASS' : 'FAIL'} ${scenario.name} (${(result.runMs / 1000).toFixed(1)} s)`,
      );
    }
    report.ok = report.scenarios.length > 0 && report.scenarios.every((s) => s.ok);
  } catch (e) {
    report.error = e instanceof Error ? e.message : String(e);
    report.ok = false;
  } finally {
    if (guest !== null) await guest.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  report.totalMs = performance.now() - t0;
  return report;
}

async function runScenario(env: ScenarioEnv, scenario: Scenario, seq: number): Promise<LinuxScenarioResult> {
  const v = new Verdict();
  const placed = place(env, scenario, seq);
  const devices = scenario.devices.map((_, slot) => placed.find((p) => p.slot === slot)?.transport ?? null);
  const problemsBefore = env.guest.problems.length;
  const strayBefore = env.guest.windows.strayAccesses;
  const scriptErrorsBefore = env.guest.scriptErrors.length;
  const restoreMs = await env.guest.restore(devices);
  const t0 = performance.now();
  try {
    await scenario.run(env, placed, v);
  } catch (e) {
    v.failures.push(e instanceof Error ? e.message : String(e));
  }
  const runMs = performance.now() - t0;
  for (const p of placed) {
    const label = `${p.kind} (window ${String(p.slot)})`;
    v.expect(
      p.transport.guestErrors === 0,
      `${label}: no guest errors counted by our transport`,
      `${String(p.transport.guestErrors)}: ${p.log.slice(0, 5).join('; ')}`,
    );
    v.expect(p.log.length === 0, `${label}: device logged nothing`, p.log.slice(0, 5).join('; '));
    p.disk?.backend.close();
  }
  const scriptErrors = env.guest.scriptErrors.slice(scriptErrorsBefore);
  v.expect(scriptErrors.length === 0, 'every guest command succeeded (no @ERR)', scriptErrors.join('; '));
  v.expect(env.guest.windows.strayAccesses === strayBefore, 'no access outside the register windows');
  const guestProblems = env.guest.problems.slice(problemsBefore);
  v.expect(
    guestProblems.length === 0,
    'no kernel BUG/WARNING/virtio error on the console',
    guestProblems.slice(0, 5).join(' | '),
  );
  return {
    name: scenario.name,
    title: scenario.title,
    ok: v.failures.length === 0,
    restoreMs,
    runMs,
    checks: v.checks,
    failures: v.failures,
    guestProblems,
  };
}

/** A readable report, one line per scenario, failures indented below. */
export function formatLinuxReport(r: LinuxCheckReport): string {
  const out: string[] = [];
  out.push(`linux peer check: v86 ${r.v86}, kernel ${r.kernel}`);
  if (r.missing.length > 0) {
    out.push('not run, missing prerequisites:');
    for (const m of r.missing) out.push(`  - ${m}`);
    return out.join('\n');
  }
  out.push(
    `boot ${(r.bootMs / 1000).toFixed(1)} s, snapshot ${(r.saveMs / 1000).toFixed(1)} s (${(r.stateBytes / 2 ** 20).toFixed(0)} MiB)`,
  );
  for (const p of r.bootProblems) out.push(`  boot console: ${p}`);
  for (const s of r.scenarios) {
    out.push(
      `${s.ok ? 'PASS' : 'FAIL'} ${s.name.padEnd(10)} ${(s.restoreMs / 1000).toFixed(1)} s restore + ${(s.runMs / 1000).toFixed(1)} s  ${s.title} (${String(s.checks.length)} checks)`,
    );
    for (const f of s.failures) out.push(`       ✗ ${f}`);
  }
  if (r.error !== undefined) out.push(`error: ${r.error}`);
  out.push(`${r.ok ? 'ok' : 'FAILED'} in ${(r.totalMs / 1000).toFixed(1)} s`);
  return out.join('\n');
}

/**
 * `virtio-mmio check linux`: runs {@link runLinuxCheck}, prints progress and the report, and
 * returns the process exit code (0 when everything passed, 1 otherwise, missing prerequisites
 * included).
 * @param verbose - also print every guest console line
 */
export async function printLinuxCheck(
  options: Omit<LinuxCheckOptions, 'onProgress' | 'onLine'> & { verbose?: boolean } = {},
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<number> {
  const report = await runLinuxCheck({
    ...options,
    onProgress: write,
    onLine: options.verbose === true ? (line) => write(`  | ${line}`) : undefined,
  });
  write('');
  write(formatLinuxReport(report));
  return report.ok ? 0 : 1;
}
