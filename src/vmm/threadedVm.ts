/**
 * The threaded machine, seen from the thread that owns it (usually Node's main thread, which stays
 * free: it never blocks). It spawns one VMM worker, which owns the bus, the interrupt controller and
 * the devices, and N vCPU workers, which run guest programs over guest RAM in a SharedArrayBuffer.
 *
 * ```
 *   main thread (ThreadedVm)       control plane only: MessagePorts, timers, counters in SABs
 *      |-- VMM worker              VmmCore.run(): mailboxes, doorbell rings, devices, irq controller
 *      |-- vCPU 0 worker           guest program; trapped exits; wired lines land here
 *      `-- vCPU 1.. workers        guest programs; MSI / IPI vectors
 * ```
 *
 * Lifecycle: {@link ThreadedVm.start} → running → {@link ThreadedVm.stop} (joins every worker;
 * a worker that does not exit in time is terminated) → stopped. A program that throws is reported
 * with its vCPU; one that outlives its timeout is reported and its vCPU worker terminated.
 *
 * @packageDocumentation
 */

import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { RamMemory } from '../memory/index.js';
import { VirtioError } from '../spec/index.js';
import {
  controlBytes,
  counterSlots,
  Hdr,
  injectVector,
  REG_SLOTS,
  RegKind,
  regBase,
  VCPU_COUNTERS,
  VcpuCounter,
  Vw,
  vcpuBase,
} from './layout.js';
import type { ChromeTrace, TraceEvent } from './trace.js';
import type {
  ErrorInfo,
  ExitModel,
  MachineInfo,
  ModuleRef,
  NotifyMode,
  VcpuInit,
  VmmInit,
  WaitPolicy,
} from './types.js';

/** Options of {@link ThreadedVm.start}. */
export interface ThreadedVmOptions {
  /** Number of vCPUs (default 1, at most 64). */
  vcpus?: number;
  /** Guest RAM in bytes (default 16 MiB; 2 MiB..1 GiB). */
  ramSize?: number;
  /** Module whose export builds the devices inside the VMM worker (`(host: VmmHost, args) => void`). */
  setup?: ModuleRef | null;
  /** Arguments for the setup function (structured clone). */
  setupArgs?: unknown;
  /** Notification writes trapped (default) or posted to the doorbell ring. */
  notify?: NotifyMode;
  /** Waiting policy of the vCPUs and the VMM thread (default: block at once). */
  wait?: WaitPolicy;
  /** Wired interrupt lines (default 24). */
  lines?: number;
  /** RAM at the bottom left out of the vCPUs' DMA windows (default 1 MiB). */
  reservedLow?: number;
  /** How long start and stop wait for a worker before giving up on it (default 5000 ms). */
  workerTimeoutMs?: number;
  /** Record exits, doorbells, injections and handlers for {@link ThreadedVm.trace} (default false). */
  trace?: boolean;
  /** InterruptStatus / InterruptACK / EOI as exits (`'trap'`, default) or served locally. */
  exitModel?: ExitModel;
}

/** Options of {@link ThreadedVm.run}. */
export interface RunOptions {
  /** Arguments (structured clone), available as `env.args`. */
  args?: unknown;
  /** The run is stopped and reported after this long (default 30 000 ms). */
  timeoutMs?: number;
  /** A halt with no interrupt for this long throws `TIMEOUT` in the guest (default: never). */
  haltTimeoutMs?: number;
}

/** How a guest program failed. */
export type GuestFailure = 'threw' | 'timeout' | 'crashed' | 'stopped';

/** A guest program failed: thrown, timed out, its worker died, or the machine stopped under it. */
export class GuestProgramError extends Error {
  /** The vCPU it ran on. */
  readonly vcpu: number;
  /** What happened. */
  readonly failure: GuestFailure;
  /** The guest's error as it crossed the thread boundary (for `threw`). */
  readonly guestError: ErrorInfo | null;

  /**
   * @param vcpu - the vCPU
   * @param failure - what happened
   * @param message - lowercase description
   * @param guestError - the guest's error, when it threw
   */
  constructor(vcpu: number, failure: GuestFailure, message: string, guestError: ErrorInfo | null = null) {
    super(message);
    this.name = 'GuestProgramError';
    this.vcpu = vcpu;
    this.failure = failure;
    this.guestError = guestError;
  }
}

/** Exit and interrupt counts of one register slot of one device, on one vCPU. */
export interface RegisterExitStats {
  /** Device name. */
  readonly device: string;
  /** Offset of the 32-bit slot in the window. */
  readonly offset: number;
  /** Trapped reads. */
  readonly reads: number;
  /** Trapped writes. */
  readonly writes: number;
  /** Posted writes (doorbells). */
  readonly posted: number;
  /** Accesses served on the vCPU thread (exit model 'local'). */
  readonly local: number;
}

/** Counters of one vCPU (see `VcpuCounter` in layout.ts). */
export interface VcpuStats {
  readonly vcpu: number;
  /** Exits by kind. */
  readonly exits: {
    readonly read: number;
    readonly write: number;
    readonly eoi: number;
    readonly hltWakeup: number;
    readonly irqchip: number;
  };
  /** Exit model 'local': InterruptStatus reads, InterruptACK writes and EOIs served without exit. */
  readonly local: { readonly reads: number; readonly writes: number; readonly eois: number };
  /** Notifications posted to the doorbell ring (not exits). */
  readonly doorbells: number;
  /** Posted notifications that trapped because the ring was full. */
  readonly ringFull: number;
  readonly halts: number;
  readonly haltPollHits: number;
  readonly exitPollHits: number;
  /** Vectors taken. */
  readonly interrupts: number;
  readonly spurious: number;
  /** Interrupts taken at an exit's return rather than in halt. */
  readonly takenAtExit: number;
  /** Injections into this vCPU, from any thread; coalesced ones; those that had to wake it. */
  readonly injects: number;
  readonly coalesced: number;
  readonly wakeNotifies: number;
  /** Thread CPU and wall time of the last run (ns; CPU -1 when unknown). */
  readonly cpuNs: number;
  readonly wallNs: number;
  /** Every register slot with a non-zero count. */
  readonly registers: readonly RegisterExitStats[];
}

/** Lifecycle state. */
export type VmState = 'running' | 'stopping' | 'stopped';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** Where a compiled sibling module of this one lives (source runs map to `dist/vmm`). */
export function vmmModuleUrl(name: string): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) return new URL(`../../dist/vmm/${name}.js`, here);
  return new URL(`./${name}.js`, here);
}

/** A {@link ModuleRef} for an export of one of this directory's compiled modules. */
export function vmmModule(name: string, exportName: string): ModuleRef {
  return { module: vmmModuleUrl(name).href, export: exportName };
}

/** One vCPU worker and its bookkeeping. */
interface VcpuSlot {
  readonly worker: Worker;
  readonly port: MessagePort;
  readonly exited: Promise<number>;
  busy: Pending | null;
  busyId: number;
  dead: string | null;
}

/** A virtio-mmio machine whose vCPUs and VMM run on worker threads. */
export class ThreadedVm {
  /** The machine description the VMM published. */
  readonly machine: MachineInfo;
  /** Guest RAM's shared buffer. */
  readonly ram: SharedArrayBuffer;
  /** Guest RAM, as seen from this thread (e.g. to check results). */
  readonly mem: RamMemory;
  /** Notification mode. */
  readonly notify: NotifyMode;
  private readonly ctl: Int32Array;
  private readonly counters: Float64Array;
  private readonly vmm: Worker;
  private readonly vmmPort: MessagePort;
  private readonly vmmExited: Promise<number>;
  private readonly vcpus: VcpuSlot[];
  private readonly replies = new Map<number, Pending>();
  private readonly timeoutMs: number;
  private nextId = 1;
  private status: VmState = 'running';

  private constructor(fields: {
    machine: MachineInfo;
    ram: SharedArrayBuffer;
    ctl: Int32Array;
    counters: Float64Array;
    vmm: Worker;
    vmmPort: MessagePort;
    vmmExited: Promise<number>;
    vcpus: VcpuSlot[];
    notify: NotifyMode;
    timeoutMs: number;
  }) {
    this.machine = fields.machine;
    this.ram = fields.ram;
    this.mem = new RamMemory(fields.ram);
    this.ctl = fields.ctl;
    this.counters = fields.counters;
    this.vmm = fields.vmm;
    this.vmmPort = fields.vmmPort;
    this.vmmExited = fields.vmmExited;
    this.vcpus = fields.vcpus;
    this.notify = fields.notify;
    this.timeoutMs = fields.timeoutMs;
    this.vmmPort.on('message', (m: { type: string; id?: number; value?: unknown }) => {
      if (m.type === 'reply' && m.id !== undefined) {
        const p = this.replies.get(m.id);
        this.replies.delete(m.id);
        p?.resolve(m.value);
      }
    });
  }

  /** Number of vCPUs. */
  get vcpuCount(): number {
    return this.vcpus.length;
  }

  /**
   * Starts the VMM worker (which builds the devices), then the vCPU workers.
   * @throws VirtioError `INVALID_ARGUMENT` for bad options; `DEVICE_FAILED` when the setup module
   *   throws (with its message); `TIMEOUT` when a worker does not come up in time
   */
  static async start(options: ThreadedVmOptions = {}): Promise<ThreadedVm> {
    const vcpuCount = options.vcpus ?? 1;
    if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > 64) {
      throw new VirtioError('INVALID_ARGUMENT', `vcpus must be in 1..64, got ${String(vcpuCount)}`);
    }
    const ramSize = options.ramSize ?? 16 << 20;
    if (!Number.isSafeInteger(ramSize) || ramSize < 2 << 20 || ramSize > 2 ** 30) {
      throw new VirtioError('INVALID_ARGUMENT', `ram size ${String(ramSize)} outside 2 MiB..1 GiB`);
    }
    const reserved = options.reservedLow ?? 1 << 20;
    if (!Number.isSafeInteger(reserved) || reserved < 0 || reserved >= ramSize) {
      throw new VirtioError('INVALID_ARGUMENT', `reserved low ram ${String(reserved)} outside the ram`);
    }
    const notify = options.notify ?? 'trapped';
    if (notify !== 'trapped' && notify !== 'posted') {
      throw new VirtioError('INVALID_ARGUMENT', `notify mode ${String(notify)} is not trapped or posted`);
    }
    const vcpuSpin = options.wait?.vcpuSpin ?? 0;
    const vmmSpin = options.wait?.vmmSpin ?? 0;
    for (const [k, n] of [
      ['vcpuSpin', vcpuSpin],
      ['vmmSpin', vmmSpin],
    ] as const) {
      if (!Number.isSafeInteger(n) || n < 0) {
        throw new VirtioError('INVALID_ARGUMENT', `${k} must be a non-negative integer, got ${String(n)}`);
      }
    }
    const exitModel = options.exitModel ?? 'trap';
    if (exitModel !== 'trap' && exitModel !== 'local') {
      throw new VirtioError('INVALID_ARGUMENT', `exit model ${String(exitModel)} is not trap or local`);
    }
    const timeoutMs = options.workerTimeoutMs ?? 5000;
    const ram = new SharedArrayBuffer(ramSize);
    const ctlBuf = new SharedArrayBuffer(controlBytes(vcpuCount));
    const ctl = new Int32Array(ctlBuf);

    const vmmChannel = new MessageChannel();
    const vmmInit: VmmInit = {
      vcpuCount,
      ctl: ctlBuf,
      ram,
      setup: options.setup ?? null,
      setupArgs: options.setupArgs,
      spin: vmmSpin,
      lines: options.lines ?? 24,
      exitModel,
      trace: options.trace === true,
    };
    const vmm = new Worker(vmmModuleUrl('vmmWorker'), {
      workerData: { init: vmmInit, port: vmmChannel.port2 },
      transferList: [vmmChannel.port2],
    });
    const vmmExited = exitOf(vmm);
    const vmmPort = watchPort(vmmChannel.port1);
    let machine: MachineInfo;
    try {
      machine = await firstMessage(vmmPort, vmm, timeoutMs, 'vmm worker').then((m) => {
        const msg = m as { type: string; machine?: MachineInfo; error?: ErrorInfo };
        if (msg.type !== 'ready' || msg.machine === undefined) {
          throw new VirtioError('DEVICE_FAILED', `machine setup failed: ${msg.error?.message ?? msg.type}`);
        }
        return msg.machine;
      });
    } catch (e) {
      vmmPort.close();
      await vmm.terminate();
      throw e;
    }

    const counters = new Float64Array(
      new SharedArrayBuffer(counterSlots(vcpuCount, machine.devices.length) * 8),
    );
    const dmaPart = Math.floor((ramSize - reserved) / vcpuCount / 4096) * 4096;
    const vcpus: VcpuSlot[] = [];
    const started: Promise<unknown>[] = [];
    for (let v = 0; v < vcpuCount; v++) {
      const ch = new MessageChannel();
      const init: VcpuInit = {
        vcpu: v,
        vcpuCount,
        ctl: ctlBuf,
        counters: counters.buffer as SharedArrayBuffer,
        ram,
        machine,
        notify,
        spin: vcpuSpin,
        exitModel,
        trace: options.trace === true,
        dmaBase: reserved + v * dmaPart,
        dmaSize: dmaPart,
      };
      const worker = new Worker(vmmModuleUrl('vcpuWorker'), {
        workerData: { init, port: ch.port2 },
        transferList: [ch.port2],
      });
      vcpus.push({
        worker,
        port: watchPort(ch.port1),
        exited: exitOf(worker),
        busy: null,
        busyId: 0,
        dead: null,
      });
      started.push(firstMessage(ch.port1, worker, timeoutMs, `vcpu ${v} worker`));
    }
    const vm = new ThreadedVm({
      machine,
      ram,
      ctl,
      counters,
      vmm,
      vmmPort,
      vmmExited,
      vcpus: [],
      notify,
      timeoutMs,
    });
    // Slots are attached after the constructor so a failed start can still stop what exists.
    vm.vcpus.push(...vcpus);
    for (let v = 0; v < vcpus.length; v++) vm.attach(v);
    try {
      await Promise.all(started);
    } catch (e) {
      await vm.stop();
      throw e;
    }
    return vm;
  }

  /** Lifecycle state. */
  get state(): VmState {
    return this.status;
  }

  /** Wires a vCPU slot's messages and exit to its pending run. */
  private attach(v: number): void {
    const slot = this.vcpus[v];
    slot.port.on(
      'message',
      (m: { type: string; id?: number; ok?: boolean; value?: unknown; error?: ErrorInfo }) => {
        if (m.type !== 'result' || slot.busy === null || m.id !== slot.busyId) return;
        const p = slot.busy;
        slot.busy = null;
        if (m.ok === true) p.resolve(m.value);
        else {
          const err = m.error as ErrorInfo;
          p.reject(
            new GuestProgramError(
              v,
              'threw',
              `vcpu ${v}: guest program threw ${err.name}${err.code === undefined ? '' : ` ${err.code}`}: ${err.message}`,
              err,
            ),
          );
        }
      },
    );
    slot.worker.on('error', (e) => {
      slot.dead = `worker error: ${e.message}`;
    });
    void slot.exited.then((code) => {
      slot.dead ??= `worker exited with code ${code}`;
      if (slot.busy !== null) {
        const p = slot.busy;
        slot.busy = null;
        p.reject(
          new GuestProgramError(
            v,
            this.status === 'running' ? 'crashed' : 'stopped',
            `vcpu ${v}: ${slot.dead}`,
          ),
        );
      }
    });
  }

  /**
   * Runs `program` on vCPU `vcpu` and resolves with its return value (structured clone).
   * @throws GuestProgramError `threw` (with the guest's error and vCPU), `timeout` (the vCPU worker
   *   is terminated and the vCPU is dead from then on), `crashed`, `stopped`
   * @throws VirtioError `INVALID_ARGUMENT` for a bad vCPU; `INVALID_STATE` when the vCPU is busy or
   *   dead, or the machine is not running
   */
  run(vcpu: number, program: ModuleRef, options: RunOptions = {}): Promise<unknown> {
    if (this.status !== 'running') {
      return Promise.reject(new VirtioError('INVALID_STATE', `machine is ${this.status}`));
    }
    const slot = this.vcpus[vcpu];
    if (!Number.isInteger(vcpu) || slot === undefined) {
      return Promise.reject(new VirtioError('INVALID_ARGUMENT', `no vcpu ${String(vcpu)}`));
    }
    if (slot.dead !== null) {
      return Promise.reject(new VirtioError('INVALID_STATE', `vcpu ${vcpu} is dead: ${slot.dead}`));
    }
    if (slot.busy !== null) {
      return Promise.reject(new VirtioError('INVALID_STATE', `vcpu ${vcpu} is already running a program`));
    }
    const timeoutMs = options.timeoutMs ?? 30_000;
    const id = this.nextId++;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (slot.busy === null || slot.busyId !== id) return;
        slot.busy = null;
        slot.dead = `terminated after a ${timeoutMs} ms timeout`;
        void slot.worker.terminate();
        reject(
          new GuestProgramError(
            vcpu,
            'timeout',
            `vcpu ${vcpu}: guest program still running after ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      slot.busyId = id;
      slot.busy = {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      slot.port.postMessage({
        type: 'run',
        id,
        program,
        args: options.args,
        haltTimeoutMs: options.haltTimeoutMs,
      });
    });
  }

  /**
   * Injects `vector` into vCPU `vcpu` from this thread (an irqfd signalled by a host thread).
   * @throws VirtioError `INVALID_ARGUMENT` for a bad vCPU or a vector outside 32..255
   */
  inject(vcpu: number, vector: number): boolean {
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= this.vcpuCount) {
      throw new VirtioError('INVALID_ARGUMENT', `no vcpu ${String(vcpu)}`);
    }
    if (!Number.isInteger(vector) || vector < 32 || vector > 255) {
      throw new VirtioError('INVALID_ARGUMENT', `vector ${String(vector)} is not in 32..255`);
    }
    return injectVector(this.ctl, vcpu, vector);
  }

  /** A snapshot of vCPU `vcpu`'s counters (read from shared memory; no message). */
  vcpuStats(vcpu: number): VcpuStats {
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= this.vcpuCount) {
      throw new VirtioError('INVALID_ARGUMENT', `no vcpu ${String(vcpu)}`);
    }
    const c = this.counters;
    const at = vcpu * VCPU_COUNTERS;
    const g = (f: number): number => c[at + f];
    const b = vcpuBase(vcpu);
    const devices = this.machine.devices;
    const registers: RegisterExitStats[] = [];
    const rb = regBase(this.vcpuCount) + vcpu * Math.max(devices.length, 1) * REG_SLOTS * RegKind.COUNT;
    for (const d of devices) {
      for (let s = 0; s < REG_SLOTS; s++) {
        const k = rb + (d.index * REG_SLOTS + s) * RegKind.COUNT;
        const reads = c[k + RegKind.TRAPPED_READ];
        const writes = c[k + RegKind.TRAPPED_WRITE];
        const posted = c[k + RegKind.POSTED_WRITE];
        const local = c[k + RegKind.LOCAL];
        if (reads + writes + posted + local > 0) {
          registers.push({ device: d.name, offset: s * 4, reads, writes, posted, local });
        }
      }
    }
    return {
      vcpu,
      exits: {
        read: g(VcpuCounter.READ_EXITS),
        write: g(VcpuCounter.WRITE_EXITS),
        eoi: g(VcpuCounter.EOI_EXITS),
        hltWakeup: g(VcpuCounter.HLT_WAKEUPS),
        irqchip: g(VcpuCounter.IRQCHIP_EXITS),
      },
      local: {
        reads: g(VcpuCounter.LOCAL_READS),
        writes: g(VcpuCounter.LOCAL_WRITES),
        eois: g(VcpuCounter.LOCAL_EOIS),
      },
      doorbells: g(VcpuCounter.DOORBELLS),
      ringFull: g(VcpuCounter.RING_FULL),
      halts: g(VcpuCounter.HALTS),
      haltPollHits: g(VcpuCounter.HALT_POLL_HITS),
      exitPollHits: g(VcpuCounter.EXIT_POLL_HITS),
      interrupts: g(VcpuCounter.INTERRUPTS),
      spurious: g(VcpuCounter.SPURIOUS),
      takenAtExit: g(VcpuCounter.TAKEN_AT_EXIT),
      injects: Atomics.load(this.ctl, b + Vw.INJECTS),
      coalesced: Atomics.load(this.ctl, b + Vw.COALESCED),
      wakeNotifies: Atomics.load(this.ctl, b + Vw.WAKE_NOTIFIES),
      cpuNs: g(VcpuCounter.CPU_NS),
      wallNs: g(VcpuCounter.WALL_NS),
      registers,
    };
  }

  /** Counts of one register of one device on one vCPU (zeros when never touched). */
  registerStats(vcpu: number, device: string, offset: number): RegisterExitStats {
    const r = this.vcpuStats(vcpu).registers.find((x) => x.device === device && x.offset === (offset & ~3));
    return r ?? { device, offset: offset & ~3, reads: 0, writes: 0, posted: 0, local: 0 };
  }

  /**
   * Zeroes every vCPU counter and (through the VMM) the bus, controller and VMM counters. Call only
   * while no program runs (vCPUs write their counters without synchronization).
   */
  async resetStats(): Promise<void> {
    this.counters.fill(0);
    for (let v = 0; v < this.vcpuCount; v++) {
      const b = vcpuBase(v);
      Atomics.store(this.ctl, b + Vw.INJECTS, 0);
      Atomics.store(this.ctl, b + Vw.COALESCED, 0);
      Atomics.store(this.ctl, b + Vw.WAKE_NOTIFIES, 0);
    }
    await this.control('resetStats');
  }

  /**
   * The VMM thread's view: its counters, the bus (every access dispatched per device and register),
   * the interrupt controller, guest errors, and its thread CPU time since start.
   */
  vmmStats(): Promise<unknown> {
    return this.control('stats');
  }

  /**
   * Gathers and clears the trace rings of the VMM and of every idle vCPU (a busy or dead vCPU is
   * skipped) as a Chrome trace (`JSON.stringify` it to a file; opens in Perfetto). Empty when the
   * machine was started without `trace: true`.
   */
  async trace(): Promise<ChromeTrace> {
    const events = (await this.control('trace')) as TraceEvent[];
    const parts = await Promise.all(
      this.vcpus.map((slot) => {
        if (slot.busy !== null || slot.dead !== null) return Promise.resolve([] as TraceEvent[]);
        const id = this.nextId++;
        return new Promise<TraceEvent[]>((resolve) => {
          const on = (m: { type: string; id?: number; events?: TraceEvent[] }): void => {
            if (m.type !== 'trace' || m.id !== id) return;
            slot.port.off('message', on);
            resolve(m.events ?? []);
          };
          slot.port.on('message', on);
          slot.port.postMessage({ type: 'trace', id });
        });
      }),
    );
    for (const p of parts) events.push(...p);
    return { traceEvents: events, displayTimeUnit: 'ns' };
  }

  /** Sends a control request to the VMM worker and waits for the answer. */
  private control(op: 'stats' | 'resetStats' | 'trace'): Promise<unknown> {
    if (this.status !== 'running') {
      return Promise.reject(new VirtioError('INVALID_STATE', `machine is ${this.status}`));
    }
    const id = this.nextId++;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.replies.delete(id);
        reject(new VirtioError('TIMEOUT', `vmm did not answer ${op} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.replies.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject,
      });
      this.vmmPort.postMessage({ id, op });
      // The message is in the port's queue before the VMM can observe the new count.
      Atomics.add(this.ctl, Hdr.VMM_CONTROL, 1);
      Atomics.add(this.ctl, Hdr.VMM_EVENT, 1);
      Atomics.notify(this.ctl, Hdr.VMM_EVENT, 1);
    });
  }

  /**
   * Stops the machine and joins every worker: idle vCPUs are asked to exit, busy ones are
   * terminated (their runs reject with `stopped`), the VMM loop is told to return; any worker
   * still alive after the worker timeout is terminated. Idempotent. Resolves when every worker
   * has exited and every port is closed.
   */
  async stop(): Promise<void> {
    if (this.status !== 'running') {
      if (this.status === 'stopping') await this.joinAll();
      return;
    }
    this.status = 'stopping';
    for (const slot of this.vcpus) {
      if (slot.busy !== null) void slot.worker.terminate();
      else slot.port.postMessage({ type: 'exit' });
    }
    Atomics.store(this.ctl, Hdr.VMM_STOP, 1);
    Atomics.add(this.ctl, Hdr.VMM_EVENT, 1);
    Atomics.notify(this.ctl, Hdr.VMM_EVENT, 1);
    await this.joinAll();
    for (const p of this.replies.values()) p.reject(new VirtioError('INVALID_STATE', 'machine stopped'));
    this.replies.clear();
    this.status = 'stopped';
  }

  /** Waits for every worker's exit, terminating laggards; closes the ports. */
  private async joinAll(): Promise<void> {
    const all: Array<[Worker, Promise<number>]> = [
      [this.vmm, this.vmmExited],
      ...this.vcpus.map((s) => [s.worker, s.exited] as [Worker, Promise<number>]),
    ];
    await Promise.all(
      all.map(async ([w, exited]) => {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<'late'>((r) => {
          timer = setTimeout(() => r('late'), this.timeoutMs);
        });
        const r = await Promise.race([exited, late]);
        clearTimeout(timer);
        if (r === 'late') {
          await w.terminate();
          await exited;
        }
      }),
    );
    // A port's handle is released when its 'close' event fires, not when close() returns.
    await Promise.all([this.vmmPort, ...this.vcpus.map((s) => s.port)].map(closePort));
  }
}

/** When each port's 'close' event fired (registered at creation: the peer may close first). */
const portClosed = new WeakMap<MessagePort, Promise<void>>();

/** Starts watching `port` for its 'close' event; returns it. */
function watchPort(port: MessagePort): MessagePort {
  portClosed.set(port, new Promise((resolve) => port.once('close', () => resolve())));
  return port;
}

/** Closes `port` and resolves once its handle is gone. */
async function closePort(port: MessagePort): Promise<void> {
  port.close();
  await portClosed.get(port);
}

/** Resolves with the worker's exit code when it exits (never rejects). */
function exitOf(w: Worker): Promise<number> {
  return new Promise((resolve) => {
    w.once('exit', (code) => resolve(code));
  });
}

/** The first message on `port`, or a rejection when the worker dies or the timeout passes. */
function firstMessage(port: MessagePort, w: Worker, timeoutMs: number, what: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new VirtioError('TIMEOUT', `${what} did not start within ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (m: unknown): void => {
      cleanup();
      resolve(m);
    };
    const onError = (e: Error): void => {
      cleanup();
      reject(new VirtioError('DEVICE_FAILED', `${what} failed to start: ${e.message}`));
    };
    const onExit = (code: number): void => {
      cleanup();
      // The worker's last message and its exit travel on different channels: a message posted
      // just before exiting (a setup failure) may still be queued on the port. Take it first.
      const queued = receiveMessageOnPort(port);
      if (queued !== undefined) resolve(queued.message);
      else reject(new VirtioError('DEVICE_FAILED', `${what} exited with code ${code} while starting`));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      port.off('message', onMessage);
      w.off('error', onError);
      w.off('exit', onExit);
    };
    port.on('message', onMessage);
    w.on('error', onError);
    w.on('exit', onExit);
  });
}
