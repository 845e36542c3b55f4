/**
 * Boots Debian's stock i386 kernel in v86 under Node with virtio-mmio windows declared by an SSDT,
 * snapshots the booted guest once, and restores it for each scenario with fresh devices behind the
 * windows. Talks to the guest's busybox shell over the serial console.
 *
 * Failures in a device show as guest hangs, so every wait has a timeout, and the console is
 * watched for kernel `BUG:` / `WARNING:` / oops lines and virtio error messages.
 *
 * @packageDocumentation
 */

import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { VirtioError } from '../../spec/index.js';
import type { MmioDevice } from '../../transport/index.js';
import { type V86Cpu, V86GuestMemory, V86IrqLine, V86MmioWindows, v86Cpu } from './adapter.js';
import type { AmlVirtioDevice } from './aml.js';
import { buildInitrd, GUEST_MODULES, GUEST_READY_MARKER } from './initrd.js';

/** The npm v86 version the adapter was checked against (package.json pins it). */
export const V86_PINNED_VERSION = '0.5.462';

/** Default cache folder of `scripts/fetch-linux-guest.sh`, relative to the repository root. */
export const LINUX_GUEST_CACHE = '.cache/linux-guest';

/**
 * CPUs Linux is told are possible (`possible_cpus=`, x86 `prefill_possible_map`: CPU hotplug). v86
 * runs one CPU, so one is online and present and the others are hotplug slots that never come
 * online; but `nr_cpu_ids` becomes this, and `virtio_blk` sets up `min(num_queues, nr_cpu_ids)`
 * request queues, one blk-mq hardware context per possible CPU. That is how a multiqueue device is
 * driven on more than one queue by Linux in v86.
 */
export const LINUX_POSSIBLE_CPUS = 4;

/**
 * Kernel command line: serial console, the boot-time savers measured for this kernel, the stall
 * detectors off, and {@link LINUX_POSSIBLE_CPUS}. v86's timers follow the host's wall clock, so
 * when the host is busy (a CI machine running other suites) the emulated CPU falls behind its own
 * timers and the kernel reports `BUG: soft lockup` or RCU stalls that say nothing about our
 * devices. A device hang still fails the scenario, by its timeout.
 */
export const LINUX_CMDLINE = `console=ttyS0 quiet cryptomgr.notests=1 noisapnp mitigations=off nowatchdog rcupdate.rcu_cpu_stall_suppress=1 possible_cpus=${String(LINUX_POSSIBLE_CPUS)}`;

/** Where the virtio windows live in guest physical space (above RAM, below the IO-APIC). */
export const LINUX_WINDOW_BASE = 0xd000_0000;

/** Window stride; each window is a 0x200 virtio-mmio register file. */
export const LINUX_WINDOW_STRIDE = 0x200;

/** One interrupt line per window, none shared and none v86 drives. */
export const LINUX_WINDOW_IRQS: readonly number[] = [5, 3];

/** Guest RAM: more than the 64 MiB where v86 loads the initrd, plus the initrd. */
export const LINUX_MEMORY_SIZE = 96 << 20;

/** The guest files found in the cache folder. */
export interface LinuxGuestFiles {
  /** Folder they came from. */
  dir: string;
  vmlinuz: Uint8Array;
  bios: Uint8Array;
  busybox: Uint8Array;
  modules: Record<string, Uint8Array>;
  /** `uname -r` of the kernel, when the fetch script recorded it. */
  kernelVersion: string;
}

/** What is there to run the Linux check, and what is missing. */
export interface LinuxPrerequisites {
  /** The guest files, or null when some are missing. */
  files: LinuxGuestFiles | null;
  /** Path of v86's `build/v86.wasm`, or null. */
  wasmPath: string | null;
  /** Installed v86 version, or null. */
  v86Version: string | null;
  /** One line per missing prerequisite, with what to run; empty when everything is there. */
  missing: string[];
}

/** Reads a file or returns null. */
function readOrNull(file: string): Uint8Array | null {
  try {
    return new Uint8Array(fs.readFileSync(file));
  } catch {
    return null;
  }
}

/** The repository root (where package.json is), from this module's location in src/ or dist/. */
export function repositoryRoot(): string {
  let dir = path.dirname(new URL(import.meta.url).pathname);
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
}

/**
 * Looks for the cached guest files (`$VIRTIO_MMIO_LINUX_GUEST` or `.cache/linux-guest`) and the
 * installed v86 package. Never throws: what is missing is listed.
 */
export function findLinuxPrerequisites(dir?: string): LinuxPrerequisites {
  const root = repositoryRoot();
  const cache = dir ?? process.env.VIRTIO_MMIO_LINUX_GUEST ?? path.join(root, LINUX_GUEST_CACHE);
  const missing: string[] = [];
  const vmlinuz = readOrNull(path.join(cache, 'vmlinuz'));
  const bios = readOrNull(path.join(cache, 'bios.bin'));
  const busybox = readOrNull(path.join(cache, 'busybox'));
  const modules: Record<string, Uint8Array> = {};
  const absent: string[] = [];
  if (vmlinuz === null) absent.push('vmlinuz');
  if (bios === null) absent.push('bios.bin');
  if (busybox === null) absent.push('busybox');
  for (const m of GUEST_MODULES) {
    const data = readOrNull(path.join(cache, 'modules', `${m}.ko`));
    if (data === null) absent.push(`modules/${m}.ko`);
    else modules[m] = data;
  }
  if (absent.length > 0) {
    missing.push(
      `linux guest files missing in ${cache}: ${absent.join(', ')} (run scripts/fetch-linux-guest.sh)`,
    );
  }
  let wasmPath: string | null = null;
  let v86Version: string | null = null;
  try {
    const require = createRequire(path.join(root, 'package.json'));
    const pkgFile = require.resolve('v86/package.json');
    v86Version = (JSON.parse(fs.readFileSync(pkgFile, 'utf8')) as { version: string }).version;
    const wasm = path.join(path.dirname(pkgFile), 'build', 'v86.wasm');
    if (fs.existsSync(wasm)) wasmPath = wasm;
    else missing.push(`v86 is installed but ${wasm} is missing`);
  } catch {
    missing.push(
      `npm package v86 is not installed (run npm install; package.json pins v86@${V86_PINNED_VERSION})`,
    );
  }
  let kernelVersion = 'unknown';
  try {
    kernelVersion = fs.readFileSync(path.join(cache, 'kernel-version'), 'utf8').trim();
  } catch {
    // optional
  }
  const files =
    vmlinuz !== null && bios !== null && busybox !== null && absent.length === 0
      ? { dir: cache, vmlinuz, bios, busybox, modules, kernelVersion }
      : null;
  return { files, wasmPath, v86Version, missing };
}

/** Lines on the console that mean the guest kernel is unhappy. */
export const GUEST_PROBLEM_PATTERN =
  /(BUG:|WARNING:|Oops|Call Trace|Kernel panic|general protection|virtio[-_ ]?\w*.*(error|fail|wrong|broken|timeout|not supported)|Wrong magic|vring|blk_update_request|I\/O error)/i;

/** A kernel console message: `[   12.345678] ...`. */
const KERNEL_LINE = /^\[\s*\d+\.\d+\]/;

/** The minimal shape of the v86 emulator the runner uses (the public part; internals via adapter). */
interface V86Emulator {
  add_listener(event: string, listener: (arg: never) => void): void;
  run(): Promise<void>;
  stop(): Promise<void>;
  destroy(): Promise<void>;
  save_state(): Promise<ArrayBuffer>;
  restore_state(state: ArrayBuffer): Promise<void>;
  serial0_send(data: string): void;
}

/** Options of {@link LinuxGuest.boot}. */
export interface LinuxBootOptions {
  files: LinuxGuestFiles;
  wasmPath: string;
  /** Boot timeout in ms (default 240 s: a loaded CI machine slows the guest several times). */
  timeoutMs?: number;
  /** Receives every console line (for live logs). */
  onLine?: (line: string) => void;
  /** Kernel command line (default {@link LINUX_CMDLINE}). */
  cmdline?: string;
}

/** A booted Linux guest with virtio-mmio windows, snapshotted right after boot. */
export class LinuxGuest {
  /** Everything the console printed since construction. */
  console = '';
  /** Console lines matching {@link GUEST_PROBLEM_PATTERN}, in order. */
  readonly problems: string[] = [];
  /** `@ERR` lines the guest scenario library printed (a failed insmod, rmmod, dd...). */
  readonly scriptErrors: string[] = [];
  /** Wall time of the cold boot to the shell, ms. */
  bootMs = 0;
  /** Wall time of save_state, ms. */
  saveMs = 0;
  /** Size of the snapshot in bytes. */
  stateBytes = 0;
  /** The windows, for attaching devices. */
  readonly windows: V86MmioWindows;
  /** Guest RAM, for the device transports. */
  readonly mem: V86GuestMemory;
  /** The interrupt line of each window. */
  readonly irqs: V86IrqLine[];
  /** The windows as declared in the SSDT. */
  readonly slots: readonly AmlVirtioDevice[];

  private line = '';
  private readonly recentKernel: string[] = [];
  private waiters: { test: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  private state: ArrayBuffer | null = null;
  private markerSeq = 0;

  private constructor(
    private readonly emulator: V86Emulator,
    readonly cpu: V86Cpu,
    slots: readonly AmlVirtioDevice[],
    private readonly onLine: ((line: string) => void) | undefined,
  ) {
    this.slots = slots;
    this.windows = new V86MmioWindows(cpu, LINUX_WINDOW_BASE, slots.length, LINUX_WINDOW_STRIDE);
    this.mem = new V86GuestMemory(cpu);
    this.irqs = slots.map((s) => new V86IrqLine(cpu, s.irq));
    emulator.add_listener('serial0-output-byte', ((byte: number) => this.onByte(byte)) as (
      arg: never,
    ) => void);
  }

  /** The SSDT windows this runner declares: one per line of {@link LINUX_WINDOW_IRQS}. */
  static slots(): AmlVirtioDevice[] {
    return LINUX_WINDOW_IRQS.map((irq, i) => ({
      base: LINUX_WINDOW_BASE + i * LINUX_WINDOW_STRIDE,
      size: LINUX_WINDOW_STRIDE,
      irq,
    }));
  }

  /**
   * Creates the emulator, boots to the shell (`@READY`) with every window empty, and snapshots.
   * @throws VirtioError `TIMEOUT` when the shell does not come up in time (console tail in message)
   */
  static async boot(options: LinuxBootOptions): Promise<LinuxGuest> {
    const slots = LinuxGuest.slots();
    const { files } = options;
    const initrd = buildInitrd({ devices: slots, busybox: files.busybox, modules: files.modules });
    const { V86 } = (await import('v86')) as unknown as { V86: new (o: object) => V86Emulator };
    const t0 = performance.now();
    const emulator = new V86({
      wasm_path: options.wasmPath,
      bios: { buffer: toArrayBuffer(files.bios) },
      bzimage: { buffer: toArrayBuffer(files.vmlinuz) },
      initrd: { buffer: toArrayBuffer(initrd) },
      cmdline: options.cmdline ?? LINUX_CMDLINE,
      memory_size: LINUX_MEMORY_SIZE,
      acpi: true,
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      log_level: 0,
    });
    await new Promise<void>((resolve) =>
      emulator.add_listener('emulator-loaded', (() => resolve()) as () => void),
    );
    let guest: LinuxGuest;
    try {
      guest = new LinuxGuest(emulator, v86Cpu(emulator), slots, options.onLine);
    } catch (e) {
      await emulator.destroy();
      throw e;
    }
    try {
      const ready = guest.waitLine(
        (l) => l.includes(GUEST_READY_MARKER),
        options.timeoutMs ?? 240_000,
        'boot',
      );
      await emulator.run();
      await ready;
      guest.bootMs = performance.now() - t0;
      const s0 = performance.now();
      await emulator.stop();
      guest.state = await emulator.save_state();
      guest.stateBytes = guest.state.byteLength;
      guest.saveMs = performance.now() - s0;
      await emulator.run();
    } catch (e) {
      await emulator.destroy();
      throw e;
    }
    return guest;
  }

  /**
   * Returns the guest to the booted snapshot with `devices[i]` (or an empty slot) behind window i.
   * Build the devices' transports with {@link LinuxGuest.mem} and {@link LinuxGuest.irqs}[i].
   * @returns restore time in ms
   */
  async restore(devices: readonly (MmioDevice | null)[]): Promise<number> {
    if (this.state === null) throw new VirtioError('INVALID_STATE', 'linux guest has no snapshot');
    const t0 = performance.now();
    await this.emulator.stop();
    // Our lines go low first: the snapshot has them low, and v86 keeps no copy of our level.
    for (const irq of this.irqs) if (irq.asserted) irq.setLevel(false);
    for (let i = 0; i < this.slots.length; i++) this.windows.attach(i, devices[i] ?? null);
    await this.emulator.restore_state(this.state);
    this.line = '';
    await this.emulator.run();
    return performance.now() - t0;
  }

  /**
   * Types `command` into the guest shell and collects the `@`-lines it prints until the end
   * marker. Console problem lines seen meanwhile are in {@link LinuxGuest.problems}.
   * @throws VirtioError `TIMEOUT` when the marker does not come in time
   */
  async run(command: string, timeoutMs = 30_000): Promise<string[]> {
    const n = ++this.markerSeq;
    const start = this.console.length;
    const done = this.waitLine((l) => l === `@END ${String(n)}`, timeoutMs, command);
    this.emulator.serial0_send(`${command}; fin ${String(n)}\n`);
    await done;
    return this.console
      .slice(start)
      .split('\n')
      .map((l) => l.replace(/\r/g, '').trim())
      .filter((l) => l.startsWith('@') && l !== `@END ${String(n)}`);
  }

  /**
   * Waits for a console line (a marker a guest command prints midway, so the host can act while the
   * command runs). Register it before sending the command that prints it.
   * @throws VirtioError `TIMEOUT` when no such line comes in time
   */
  waitForLine(test: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    return this.waitLine(test, timeoutMs, what);
  }

  /** Stops and frees the emulator. */
  async destroy(): Promise<void> {
    for (const w of this.waiters) w.resolve('');
    this.waiters = [];
    await this.emulator.destroy();
  }

  private onByte(byte: number): void {
    const ch = String.fromCharCode(byte);
    this.console += ch;
    if (ch !== '\n') {
      this.line += ch;
      return;
    }
    const line = this.line.replace(/\r/g, '').trim();
    this.line = '';
    this.onLine?.(line);
    if (line.startsWith('@ERR')) this.scriptErrors.push(line);
    // Only kernel messages (timestamped) count: the echo of a typed command never does.
    if (KERNEL_LINE.test(line)) {
      // A trace without a BUG:/WARNING: header (RCU stall, hung task) is reported with the kernel
      // lines before it, so the report says what it was.
      if (GUEST_PROBLEM_PATTERN.test(line)) {
        this.problems.push(/Call Trace/.test(line) ? [...this.recentKernel, line].join(' ⏎ ') : line);
      }
      this.recentKernel.push(line);
      if (this.recentKernel.length > 4) this.recentKernel.shift();
    }
    const waiters = this.waiters;
    for (let i = 0; i < waiters.length; i++) {
      if (waiters[i].test(line)) {
        const [w] = waiters.splice(i, 1);
        w.resolve(line);
        i--;
      }
    }
  }

  private waitLine(test: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const waiter = {
        test,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        const tail = this.console.slice(-1500).replace(/\r/g, '');
        reject(
          new VirtioError(
            'TIMEOUT',
            `linux guest: no answer to ${JSON.stringify(what)} in ${String(timeoutMs)} ms; console tail:\n${tail}`,
          ),
        );
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }
}

/** A standalone ArrayBuffer with the bytes of `u8` (v86 wants `{ buffer: ArrayBuffer }`). */
function toArrayBuffer(u8: Uint8Array): ArrayBuffer {
  const out = new ArrayBuffer(u8.length);
  new Uint8Array(out).set(u8);
  return out;
}
