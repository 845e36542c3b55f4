/**
 * A QEMU `microvm` machine run under the qtest accelerator: no guest CPU runs; our code issues the
 * guest's memory and MMIO accesses through qtest and sees the interrupt controller's inputs. The
 * virtio-mmio transports of microvm with `acpi=off` sit at 0xfeb00000 + 0x200 * i on IOAPIC input
 * (GSI) 5 + i; QEMU fills them from the top, so each device is found by scanning DeviceID.
 *
 * ```
 * const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] });
 * try { const w = vm.window('rng'); ... } finally { await vm.close(); }
 * ```
 *
 * @packageDocumentation
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { DeviceId, hex, MMIO_MAGIC_VALUE, MmioReg, VirtioError } from '../../spec/index.js';
import { QemuConsoleChannel } from './consoleChannel.js';
import { type QemuDgramPorts, qemuDgramNetdev } from './netPeer.js';
import { QmpClient } from './qmp.js';
import { QtestClient } from './qtest.js';
import { SyncPipe } from './syncPipe.js';

/** Base of the first microvm virtio-mmio transport (QEMU `VIRTIO_MMIO_BASE`). */
export const MICROVM_VIRTIO_MMIO_BASE = 0xfeb0_0000;
/** Size of one transport window (QEMU: 512 bytes). */
export const MICROVM_VIRTIO_MMIO_STRIDE = 0x200;
/** GSI of transport 0 (QEMU `VIRTIO_IRQ_BASE`); transport i uses GSI 5 + i. */
export const MICROVM_VIRTIO_IRQ_BASE = 5;
/** Transports microvm creates with one IOAPIC (acpi=off: no second IOAPIC). */
export const MICROVM_VIRTIO_TRANSPORTS = 8;
/** Guest RAM given to the machine (MiB); the DMA window sits inside it. */
export const MICROVM_RAM_MIB = 64;

/** Name of the QEMU binary with the qtest accelerator. */
export const QEMU_MICROVM_BINARY = 'qemu-system-x86_64-microvm';

/** One device on the command line. */
export type QemuDeviceSpec =
  | { readonly kind: 'rng' }
  | { readonly kind: 'blk' /** Size of the backing file in bytes (default 1 MiB). */; readonly size?: number }
  | {
      readonly kind: 'net';
      /**
       * A loopback UDP netdev (one frame per datagram, see `netPeer.ts`) with these ports; without
       * it the device sits on a hub port with nothing behind it.
       */
      readonly dgram?: QemuDgramPorts;
    }
  | {
      readonly kind: 'console';
      /** `max_ports` of virtio-serial-device (QEMU default 31; 1 means no MULTIPORT offered). */
      readonly maxPorts?: number;
      /** Name of the `virtconsole` port (sent with PORT_NAME), default none. */
      readonly name?: string;
      /** Also a generic `virtserialport` (port 1) with this name, on a second pipe chardev. */
      readonly serialPort?: string;
    };

/** Options of {@link QemuMicrovm.start}. */
export interface QemuMicrovmOptions {
  /** MMIO register layout: 2 (`force-legacy=false`) or 1 (QEMU's default, legacy). */
  version: 1 | 2;
  /** Devices, at most one of each kind. */
  devices: readonly QemuDeviceSpec[];
  /** Startup timeout in milliseconds (default 10 s). */
  startTimeoutMs?: number;
  /** Per-request timeout in milliseconds (default 5 s). */
  requestTimeoutMs?: number;
}

/** A device window the scan found. */
export interface QemuWindow {
  /** Device kind. */
  readonly kind: QemuDeviceSpec['kind'];
  /** Transport index. */
  readonly index: number;
  /** Guest physical base of the window. */
  readonly base: number;
  /** IOAPIC input (GSI) of the transport. */
  readonly gsi: number;
}

/** DeviceID of each kind. */
const KIND_IDS: Record<QemuDeviceSpec['kind'], number> = {
  rng: DeviceId.ENTROPY,
  blk: DeviceId.BLOCK,
  net: DeviceId.NET,
  console: DeviceId.CONSOLE,
};

/** Id of the chardev behind the `virtconsole` port. */
export const QEMU_CONSOLE_CHARDEV = 'con0';

/** Id of the chardev behind the generic `virtserialport`. */
export const QEMU_SERIAL_PORT_CHARDEV = 'port1';

/** Id QMP uses for the net device in `set_link`. */
export const QEMU_NET_ID = 'net0';

/** Live QEMU children, killed if the Node process exits without closing them. */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });
}

/** Path of the QEMU microvm binary (env `QEMU_MICROVM` wins), or null when not installed. */
export function findQemuMicrovm(): string | null {
  const env = process.env.QEMU_MICROVM;
  if (env !== undefined && env !== '') return existsSync(env) ? env : null;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, QEMU_MICROVM_BINARY);
    if (existsSync(p)) return p;
  }
  return null;
}

/**
 * Whether QEMU can run our checks here, and if not why: the binary must exist and start a microvm
 * under the qtest accelerator. (`-accel help` does not list qtest even where it works, so the
 * machine is started and quit through QMP; a binary without it fails with "invalid accelerator".)
 */
export function qemuAvailability(): { available: boolean; reason: string; binary: string | null } {
  const binary = findQemuMicrovm();
  if (binary === null) {
    const env = process.env.QEMU_MICROVM;
    const where = env !== undefined && env !== '' ? `QEMU_MICROVM=${env}` : `${QEMU_MICROVM_BINARY} on PATH`;
    return {
      available: false,
      reason: `${where} not found (install with scripts/install-qemu.sh)`,
      binary,
    };
  }
  try {
    execFileSync(
      binary,
      [
        '-M',
        'microvm,acpi=off',
        '-accel',
        'qtest',
        '-qmp',
        'stdio',
        '-display',
        'none',
        '-nodefaults',
      ].concat(['-serial', 'none', '-monitor', 'none', '-m', '16M']),
      {
        input: '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
        encoding: 'utf8',
        timeout: 20_000,
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
  } catch (e) {
    const stderr = String((e as { stderr?: unknown }).stderr ?? '').trim();
    return {
      available: false,
      reason: `${binary} cannot run a microvm under qtest: ${stderr || (e as Error).message}`,
      binary,
    };
  }
  return { available: true, reason: '', binary };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A running QEMU microvm under qtest, with its qtest and QMP channels. */
export class QemuMicrovm {
  /** The qtest client. */
  readonly qtest: QtestClient;
  /** The QMP client. */
  readonly qmp: QmpClient;
  /** Register layout version of every transport. */
  readonly version: 1 | 2;
  /** Guest RAM size in bytes. */
  readonly ramSize = MICROVM_RAM_MIB << 20;
  /** The backing file of the blk device, if any. */
  readonly diskPath: string | null;
  /** Windows found by the scan, by kind. */
  readonly windows: ReadonlyMap<QemuDeviceSpec['kind'], QemuWindow>;
  /** The host end of the console port's chardev, when a console device was asked for. */
  readonly console: QemuConsoleChannel | null;
  /** The host end of the generic port's chardev, when the console was asked with `serialPort`. */
  readonly serialPort: QemuConsoleChannel | null;
  private readonly child: ChildProcess;
  private readonly dir: string;
  private readonly pipes: { close(): void }[];
  private readonly exited: Promise<void>;
  private closed = false;

  private constructor(
    child: ChildProcess,
    exited: Promise<void>,
    dir: string,
    qtestPipe: SyncPipe,
    qmpPipe: SyncPipe,
    qmp: QmpClient,
    options: QemuMicrovmOptions,
    diskPath: string | null,
    channels: readonly QemuConsoleChannel[],
  ) {
    this.child = child;
    this.console = channels[0] ?? null;
    this.serialPort = channels[1] ?? null;
    this.exited = exited;
    this.dir = dir;
    this.pipes = [qtestPipe, qmpPipe];
    this.pipes.push(...channels);
    this.qtest = new QtestClient(qtestPipe, options.requestTimeoutMs);
    this.qmp = qmp;
    this.version = options.version;
    this.diskPath = diskPath;
    this.qtest.interceptIn('ioapic');
    this.windows = this.scan(options.devices);
  }

  /**
   * Starts QEMU and connects. Always pair with {@link QemuMicrovm.close}.
   * @throws VirtioError `DEVICE_NOT_FOUND` when QEMU is not installed, `BACKEND_IO` when it exits
   *   early (with its stderr), `TIMEOUT` when it does not open its channels in time
   */
  static async start(options: QemuMicrovmOptions): Promise<QemuMicrovm> {
    const binary = findQemuMicrovm();
    if (binary === null) throw new VirtioError('DEVICE_NOT_FOUND', `${QEMU_MICROVM_BINARY} not found`);
    const dir = mkdtempSync(join(tmpdir(), 'virtio-mmio-qemu-'));
    const cleanupDir = () => rmSync(dir, { recursive: true, force: true });
    const args = [
      '-M',
      'microvm,acpi=off,x-option-roms=off,isa-serial=off,rtc=off,pit=off,pic=off',
      '-accel',
      'qtest',
      '-qtest',
      `pipe:${join(dir, 'qtest')}`,
      '-qtest-log',
      '/dev/null',
      '-qmp',
      `pipe:${join(dir, 'qmp')}`,
      '-display',
      'none',
      '-nodefaults',
      '-serial',
      'none',
      '-monitor',
      'none',
      '-m',
      `${String(MICROVM_RAM_MIB)}M`,
      '-global',
      `virtio-mmio.force-legacy=${options.version === 1 ? 'true' : 'false'}`,
    ];
    let diskPath: string | null = null;
    /** Chardev FIFO paths of the console port, then of the generic port. */
    const channelPaths: string[] = [];
    const kinds = new Set<string>();
    for (const d of options.devices) {
      if (kinds.has(d.kind)) throw new VirtioError('INVALID_ARGUMENT', `two ${d.kind} devices`);
      kinds.add(d.kind);
      if (d.kind === 'rng') args.push('-device', 'virtio-rng-device');
      else if (d.kind === 'blk') {
        diskPath = join(dir, 'disk.img');
        writeFileSync(diskPath, new Uint8Array(d.size ?? 1 << 20));
        args.push(
          '-drive',
          `file=${diskPath},if=none,id=d0,format=raw,cache=writeback`,
          '-device',
          'virtio-blk-device,drive=d0',
        );
      } else if (d.kind === 'console') {
        // virtio-serial with one console port (port 0) on a pipe chardev the test reads and writes.
        const consolePath = join(dir, 'console');
        channelPaths.push(consolePath);
        const max = d.maxPorts === undefined ? '' : `,max_ports=${String(d.maxPorts)}`;
        const name = d.name === undefined ? '' : `,name=${d.name}`;
        args.push(
          '-chardev',
          `pipe,id=${QEMU_CONSOLE_CHARDEV},path=${consolePath}`,
          '-device',
          `virtio-serial-device${max}`,
          '-device',
          `virtconsole,chardev=${QEMU_CONSOLE_CHARDEV}${name}`,
        );
        if (d.serialPort !== undefined) {
          const portPath = join(dir, 'port1');
          channelPaths.push(portPath);
          args.push(
            '-chardev',
            `pipe,id=${QEMU_SERIAL_PORT_CHARDEV},path=${portPath}`,
            '-device',
            `virtserialport,chardev=${QEMU_SERIAL_PORT_CHARDEV},name=${d.serialPort}`,
          );
        }
      } else {
        // With ports: frames go to a peer over loopback UDP. Without: a hub port, no host network
        // needed, the link status is all that matters.
        const netdev =
          d.dgram === undefined ? 'hubport,id=n0,hubid=0' : qemuDgramNetdev(binary, 'n0', d.dgram);
        args.push('-netdev', netdev, '-device', `virtio-net-device,netdev=n0,id=${QEMU_NET_ID}`);
      }
    }
    try {
      for (const base of [join(dir, 'qtest'), join(dir, 'qmp'), ...channelPaths]) {
        execFileSync('mkfifo', [`${base}.in`, `${base}.out`]);
      }
    } catch (e) {
      cleanupDir();
      throw e;
    }
    const errPath = join(dir, 'stderr.txt');
    const errFd = openSync(errPath, 'w');
    installExitHook();
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', errFd] });
    closeSync(errFd);
    live.add(child);
    let exitInfo: string | null = null;
    const exited = new Promise<void>((resolve) => {
      child.on('exit', (code, signal) => {
        exitInfo = signal !== null ? `signal ${signal}` : `code ${String(code)}`;
        live.delete(child);
        resolve();
      });
      child.on('error', (e) => {
        exitInfo = e.message;
        live.delete(child);
        resolve();
      });
    });
    const stderr = () => {
      try {
        return readFileSync(errPath, 'utf8').trim();
      } catch {
        return '';
      }
    };
    const fail = async (err: VirtioError): Promise<never> => {
      if (exitInfo === null) child.kill('SIGKILL');
      await exited;
      cleanupDir();
      throw err;
    };
    const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
    let qtestPipe: SyncPipe | null = null;
    let qmpPipe: SyncPipe | null = null;
    const channels: (QemuConsoleChannel | null)[] = channelPaths.map(() => null);
    const closeChannels = () => {
      for (const c of channels) c?.close();
    };
    while (qtestPipe === null || qmpPipe === null || channels.includes(null)) {
      if (exitInfo !== null) {
        return fail(
          new VirtioError('BACKEND_IO', `qemu exited (${String(exitInfo)}) at startup: ${stderr()}`),
        );
      }
      if (Date.now() > deadline) {
        qtestPipe?.close();
        qmpPipe?.close();
        closeChannels();
        return fail(new VirtioError('TIMEOUT', `qemu did not open its channels: ${stderr()}`));
      }
      qtestPipe ??= SyncPipe.tryOpen('qtest', join(dir, 'qtest'));
      qmpPipe ??= SyncPipe.tryOpen('qmp', join(dir, 'qmp'));
      for (let k = 0; k < channels.length; k++) channels[k] ??= QemuConsoleChannel.tryOpen(channelPaths[k]);
      if (qtestPipe === null || qmpPipe === null || channels.includes(null)) await delay(5);
    }
    try {
      const qmp = QmpClient.connect(qmpPipe, options.requestTimeoutMs);
      return new QemuMicrovm(
        child,
        exited,
        dir,
        qtestPipe,
        qmpPipe,
        qmp,
        options,
        diskPath,
        channels as QemuConsoleChannel[],
      );
    } catch (e) {
      qtestPipe.close();
      qmpPipe.close();
      closeChannels();
      const msg = e instanceof Error ? e.message : String(e);
      return fail(
        new VirtioError(e instanceof VirtioError ? e.code : 'BACKEND_IO', `${msg}; stderr: ${stderr()}`),
      );
    }
  }

  /** Process id of QEMU (for checks that it is gone after {@link QemuMicrovm.close}). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Finds each requested device by its DeviceID. */
  private scan(devices: readonly QemuDeviceSpec[]): Map<QemuDeviceSpec['kind'], QemuWindow> {
    const found = new Map<QemuDeviceSpec['kind'], QemuWindow>();
    for (let i = 0; i < MICROVM_VIRTIO_TRANSPORTS; i++) {
      const base = MICROVM_VIRTIO_MMIO_BASE + i * MICROVM_VIRTIO_MMIO_STRIDE;
      const magic = this.qtest.readl(base + MmioReg.MagicValue);
      if (magic !== MMIO_MAGIC_VALUE) {
        throw new VirtioError(
          'DEVICE_NOT_FOUND',
          `no virtio-mmio transport at ${hex(base)} (magic ${hex(magic)})`,
        );
      }
      const id = this.qtest.readl(base + MmioReg.DeviceID);
      for (const d of devices) {
        if (KIND_IDS[d.kind] === id)
          found.set(d.kind, { kind: d.kind, index: i, base, gsi: MICROVM_VIRTIO_IRQ_BASE + i });
      }
    }
    for (const d of devices) {
      if (!found.has(d.kind))
        throw new VirtioError('DEVICE_NOT_FOUND', `qemu ${d.kind} device not found in the scan`);
    }
    return found;
  }

  /**
   * The window of the device of `kind`.
   * @throws VirtioError `DEVICE_NOT_FOUND` when it was not started
   */
  window(kind: QemuDeviceSpec['kind']): QemuWindow {
    const w = this.windows.get(kind);
    if (w === undefined) throw new VirtioError('DEVICE_NOT_FOUND', `no ${kind} device in this machine`);
    return w;
  }

  /** Kills QEMU, closes the channels and removes the temporary directory. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pipes) p.close();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), 2000).unref());
      if ((await Promise.race([this.exited.then(() => 'done' as const), timer])) === 'late') {
        this.child.kill('SIGKILL');
      }
    }
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The backing file's bytes at `offset` (the host's view of the disk). */
  readDisk(offset: number, length: number): Uint8Array {
    if (this.diskPath === null) throw new VirtioError('DEVICE_NOT_FOUND', 'no blk device in this machine');
    return new Uint8Array(readFileSync(this.diskPath).subarray(offset, offset + length));
  }
}
