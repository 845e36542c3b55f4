/**
 * The VMM thread's side of the threaded runtime: it owns the MMIO bus, the wired interrupt
 * controller and the device models (the same {@link MmioTransport} and devices the in-process
 * {@link Machine} uses, unchanged), serves trapped exits from the vCPU mailboxes, drains posted
 * doorbells, and delivers interrupts into the vCPUs' posted-interrupt registers.
 *
 * @packageDocumentation
 */

import type { VirtioDevice } from '../device/index.js';
import { RamMemory } from '../memory/index.js';
import {
  allocateDeviceLines,
  InterruptController,
  type InterruptTarget,
  type LineLayout,
  MmioBus,
} from '../platform/index.js';
import { MsiController } from '../platform/msi.js';
import { hex, MMIO_DEFAULT_WINDOW_SIZE, VirtioError } from '../spec/index.js';
import { MmioTransport, type MmioTransportOptions } from '../transport/index.js';
import {
  ExitOp,
  ExitState,
  Hdr,
  injectVector,
  isrBase,
  MAX_MIRRORED_DEVICES,
  RING_ENTRY_WORDS,
  RING_SIZE,
  RingOp,
  ringBase,
  TWO_POW_32,
  Vw,
  vcpuBase,
} from './layout.js';
import { TraceKind, type Tracer, traceNow } from './trace.js';
import type { DeviceInfo, ExitModel, MachineInfo } from './types.js';

/** Options of {@link VmmHost.addDevice}: transport options minus what the VMM supplies. */
export interface VmmDeviceOptions
  extends Omit<MmioTransportOptions, 'mem' | 'irq' | 'onGuestError' | 'msiSink' | 'lines'> {
  /** Name on the bus (default `<type><n>`). */
  name?: string;
  /**
   * Wired lines, as `Machine.addDevice`: 'single' (default), 'per-queue' (standard line, a
   * configuration line and one per queue) or 'shared' (standard, configuration, all queues).
   */
  lines?: LineLayout;
}

/**
 * What a machine setup function sees inside the VMM worker: guest RAM and a way to place devices.
 * A setup module exports `function (host: VmmHost, args: unknown): void`.
 */
export interface VmmHost {
  /** Guest RAM (over the shared buffer the vCPUs map too). */
  readonly mem: RamMemory;
  /** Number of vCPUs of the machine. */
  readonly vcpuCount: number;
  /** Places `device` behind a new MMIO transport on the next window and line (as `Machine`). */
  addDevice(device: VirtioDevice, options?: VmmDeviceOptions): DeviceInfo;
}

/** The InterruptTarget of one vCPU: a posted-interrupt write into its PIR. */
export class VcpuInjector implements InterruptTarget {
  /**
   * @param ctl - the control block
   * @param vcpu - target vCPU
   */
  constructor(
    private readonly ctl: Int32Array,
    readonly vcpu: number,
    private readonly tracer: Tracer | null = null,
  ) {}

  /** Posts `vector`; wakes the vCPU if it is halted. Allocation-free. */
  deliver(vector: number): void {
    injectVector(this.ctl, this.vcpu, vector);
    if (this.tracer !== null) this.tracer.instant(TraceKind.INJECT, this.vcpu, vector);
  }
}

/** VMM-side counters (Float64, single writer: the VMM thread). */
export interface VmmCounters {
  /** Exits served. */
  readonly exits: number;
  /** Ring entries drained: doorbells, and in exit model 'local' the posted InterruptACKs and EOIs. */
  readonly doorbells: number;
  /** Wake-ups from Atomics.wait on the event word. */
  readonly wakeups: number;
  /** Loop passes that found work while polling (no sleep). */
  readonly pollHits: number;
  /** Exceptions thrown by device code while serving an exit (tier 3 bugs; the access is dropped). */
  readonly deviceErrors: number;
}

const DEVICE_NAMES: Record<number, string> = { 1: 'net', 2: 'blk', 3: 'console', 4: 'rng' };

/**
 * The VMM: bus, wired interrupt controller targeting vCPU 0, devices, and the exit loop.
 */
export class VmmCore implements VmmHost {
  /** Guest RAM. */
  readonly mem: RamMemory;
  /** The MMIO bus (counts every access dispatched to a device, trapped or posted). */
  readonly bus = new MmioBus();
  /** The wired interrupt controller (level lines, EOI resample); delivers to vCPU 0. */
  readonly irq: InterruptController;
  /** One injector per vCPU (MSI destinations pick one). */
  readonly injectors: VcpuInjector[] = [];
  /** The MSI controller: APIC ID n is vCPU n; messages go straight to that vCPU's PIR. */
  readonly msi: MsiController;
  /** Number of vCPUs. */
  readonly vcpuCount: number;
  /** Device-side transports, by device index. */
  readonly transports: MmioTransport[] = [];
  private readonly devices: DeviceInfo[] = [];
  /** Next free wired line (devices start at line 5, as QEMU microvm). */
  private nextLine = 5;
  private readonly ctl: Int32Array;
  private readonly spin: number;
  private readonly rings: number;
  /** [0] exits [1] doorbells [2] wakeups [3] pollHits [4] deviceErrors */
  private readonly counts = new Float64Array(5);
  /** Receives guest-error and device-error lines. */
  private readonly errorSink: (message: string) => void;
  /** Trace ring of the VMM thread, or null when tracing is off. */
  readonly tracer: Tracer | null;
  /** Exit model 'local': InterruptStatus mirrored in shared memory. */
  private readonly local: boolean;
  /** First word of the mirrors. */
  private readonly isr: number;

  /**
   * @param ctl - the control block
   * @param ram - guest RAM
   * @param vcpuCount - number of vCPUs
   * @param options - lines of the controller, VMM poll budget, error sink
   */
  constructor(
    ctl: SharedArrayBuffer,
    ram: SharedArrayBuffer,
    vcpuCount: number,
    options: {
      lines?: number;
      spin?: number;
      onError?: (message: string) => void;
      tracer?: Tracer | null;
      exitModel?: ExitModel;
    } = {},
  ) {
    this.ctl = new Int32Array(ctl);
    this.mem = new RamMemory(ram);
    this.vcpuCount = vcpuCount;
    this.tracer = options.tracer ?? null;
    for (let v = 0; v < vcpuCount; v++) this.injectors.push(new VcpuInjector(this.ctl, v, this.tracer));
    // Lines start masked (firmware leaves IOAPIC pins masked); the guest unmasks through an
    // IRQCHIP exit when a driver requests the line.
    this.local = options.exitModel === 'local';
    this.isr = isrBase(vcpuCount);
    // Exit model 'local': the InterruptStatus mirrors are refreshed right before a line vector is
    // posted, inside the device's own signalling call, so the handler the vCPU runs next reads
    // the status that caused the interrupt (the transport updates its status before the level).
    const line0: InterruptTarget = this.local
      ? {
          deliver: (vector: number) => {
            this.refreshMirrors();
            this.injectors[0].deliver(vector);
          },
        }
      : this.injectors[0];
    this.irq = new InterruptController({
      lines: options.lines ?? 24,
      target: line0,
      startMasked: true,
    });
    this.msi = new MsiController(this.injectors.map((inj, v) => [v, inj] as const));
    this.spin = options.spin ?? 0;
    this.rings = ringBase(vcpuCount);
    this.errorSink = options.onError ?? (() => {});
  }

  addDevice(device: VirtioDevice, options: VmmDeviceOptions = {}): DeviceInfo {
    const index = this.devices.length;
    if (this.local && index >= MAX_MIRRORED_DEVICES) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `exit model local mirrors at most ${MAX_MIRRORED_DEVICES} devices`,
      );
    }
    const name = options.name ?? `${DEVICE_NAMES[device.deviceId] ?? 'dev'}${index}`;
    if (this.devices.some((d) => d.name === name)) {
      throw new VirtioError('INVALID_ARGUMENT', `a device named ${name} already exists`);
    }
    const layout = options.lines ?? 'single';
    const line = this.nextLine;
    const { irqLines, standard, lines } = allocateDeviceLines(
      this.irq,
      line,
      layout,
      device.queueMaxSizes.length,
    );
    const count = irqLines.length;
    const { name: _ignored, lines: _layout, ...rest } = options;
    const transport = new MmioTransport(device, {
      ...rest,
      mem: this.mem,
      irq: standard,
      lines,
      msiSink: options.seed?.msi === undefined ? undefined : this.msi,
      onGuestError: (message) => this.errorSink(`${name}: ${message}`),
    });
    this.nextLine = line + count;
    let base = 0xfeb0_0000;
    for (const d of this.devices) base = Math.max(base, d.base + d.size);
    base = Math.ceil(base / MMIO_DEFAULT_WINDOW_SIZE) * MMIO_DEFAULT_WINDOW_SIZE;
    this.bus.map(base, transport, name);
    const info: DeviceInfo = {
      name,
      index,
      base,
      size: transport.windowSize,
      line,
      irqLines,
      deviceId: device.deviceId,
      notify:
        transport.notifyLayout === null
          ? null
          : { start: transport.notifyLayout.base, end: transport.notifyLayout.end },
      seed: options.seed !== undefined,
    };
    this.devices.push(info);
    this.transports.push(transport);
    return info;
  }

  /** Copies every device's InterruptStatus into its shared mirror (exit model 'local'). */
  private refreshMirrors(): void {
    const t = this.transports;
    for (let d = 0; d < t.length; d++) Atomics.store(this.ctl, this.isr + d, t[d].interruptStatus);
  }

  /** The machine description for the guest. */
  describe(): MachineInfo {
    return {
      devices: this.devices.slice(),
      lineVectorBase: this.irq.vectorBase,
      lineCount: this.irq.lineCount,
    };
  }

  /** A snapshot of the VMM-side counters. */
  counters(): VmmCounters {
    const c = this.counts;
    return { exits: c[0], doorbells: c[1], wakeups: c[2], pollHits: c[3], deviceErrors: c[4] };
  }

  /** Zeroes the VMM, bus and controller counters. */
  resetCounters(): void {
    this.counts.fill(0);
    this.bus.resetStats();
    this.irq.resetStats();
    this.msi.resetStats();
  }

  /**
   * One pass over every mailbox and ring: serves each pending exit (answering it at once), drains
   * each doorbell ring, then serves the queues devices deferred. Returns the number of items
   * handled. Allocation-free.
   */
  serviceOnce(): number {
    const ctl = this.ctl;
    let done = 0;
    for (let v = 0; v < this.vcpuCount; v++) {
      const b = vcpuBase(v);
      // Program order per vCPU: every ring entry posted before a trapped request is applied before
      // the request is served (the REQUEST store follows the entries' RING_HEAD stores).
      const request = Atomics.load(ctl, b + Vw.MB_STATE) === ExitState.REQUEST;
      const head = Atomics.load(ctl, b + Vw.RING_HEAD);
      let tail = ctl[b + Vw.RING_TAIL];
      while (tail !== head) {
        const at = this.rings + (v * RING_SIZE + (tail & (RING_SIZE - 1))) * RING_ENTRY_WORDS;
        const addr = (ctl[at] >>> 0) + (ctl[at + 1] >>> 0) * TWO_POW_32;
        const t0 = this.tracer === null ? 0 : traceNow();
        this.guarded(addr, ctl[at + 3] === RingOp.EOI ? ExitOp.EOI : ExitOp.WRITE, 4, ctl[at + 2] >>> 0);
        if (this.tracer !== null) this.tracer.complete(TraceKind.DRAIN, t0, addr, ctl[at + 2] >>> 0);
        tail = (tail + 1) | 0;
        // Releases the slot to the producer only after the entry has been consumed.
        Atomics.store(ctl, b + Vw.RING_TAIL, tail);
        this.counts[1]++;
        done++;
      }
      if (request) {
        this.serveExit(b);
        done++;
      }
    }
    // Queues a device left with buffers (bounded work per notification) get their next pass here,
    // after the vCPUs' exits, so a guest flooding one queue cannot starve the others.
    const ts = this.transports;
    for (let i = 0; i < ts.length; i++) {
      if (ts[i].deferredQueues === 0) continue;
      try {
        done += ts[i].serveDeferred();
      } catch (e) {
        this.counts[4]++;
        this.errorSink(
          `device error serving a deferred queue: ${e instanceof Error ? e.message : String(e)}`,
        );
      }
    }
    return done;
  }

  /** Serves the exit in the mailbox at `b`, then answers it (DONE + notify). */
  private serveExit(b: number): void {
    const ctl = this.ctl;
    // The vCPU's plain stores of the fields happen-before its Atomics.store(REQUEST), which our
    // Atomics.load observed: the fields are visible.
    const op = ctl[b + Vw.MB_OP];
    const addr = (ctl[b + Vw.MB_ADDR_LO] >>> 0) + (ctl[b + Vw.MB_ADDR_HI] >>> 0) * TWO_POW_32;
    const width = ctl[b + Vw.MB_WIDTH];
    const value = (ctl[b + Vw.MB_VAL_LO] >>> 0) + (ctl[b + Vw.MB_VAL_HI] >>> 0) * TWO_POW_32;
    const t0 = this.tracer === null ? 0 : traceNow();
    const result = this.guarded(addr, op, width, value);
    if (this.tracer !== null) this.tracer.complete(TraceKind.SERVE, t0, op, addr);
    ctl[b + Vw.MB_VAL_LO] = (result % TWO_POW_32) | 0;
    ctl[b + Vw.MB_VAL_HI] = Math.floor(result / TWO_POW_32) | 0;
    this.counts[0]++;
    Atomics.store(ctl, b + Vw.MB_STATE, ExitState.DONE);
    Atomics.notify(ctl, b + Vw.MB_STATE, 1);
  }

  /** Runs one access against the bus / controller; device exceptions are recorded, not thrown. */
  private guarded(addr: number, op: number, width: number, value: number): number {
    try {
      switch (op) {
        case ExitOp.READ:
          return this.bus.read(addr, width as 1 | 2 | 4 | 8);
        case ExitOp.WRITE:
          this.bus.write(addr, width as 1 | 2 | 4 | 8, value);
          return 0;
        case ExitOp.EOI:
          this.irq.eoi(addr);
          return 0;
        case ExitOp.IRQCHIP:
          if (addr < 0 || addr >= this.irq.lineCount) return 0;
          if (value === 1) this.irq.unmask(addr);
          else this.irq.mask(addr);
          return 0;
        default:
          this.errorSink(`unknown exit op ${op} at ${hex(addr)}`);
          return 0;
      }
    } catch (e) {
      this.counts[4]++;
      this.errorSink(
        `device error on op ${op} at ${hex(addr)}: ${e instanceof Error ? e.message : String(e)}`,
      );
      return 0;
    }
  }

  /**
   * The VMM loop: serve, then poll `spin` times, then block on VMM_EVENT, until VMM_STOP. Calls
   * `control(count)` whenever VMM_CONTROL moved past what it has consumed (control-plane
   * messages); it returns how many it consumed, and the loop keeps polling until it caught up.
   * Returns when stopped.
   */
  run(control: (count: number) => number): void {
    const ctl = this.ctl;
    let seenControl = 0;
    for (;;) {
      const ev = Atomics.load(ctl, Hdr.VMM_EVENT);
      const n = this.serviceOnce();
      const c = Atomics.load(ctl, Hdr.VMM_CONTROL);
      if (c !== seenControl) seenControl = control(c);
      if (Atomics.load(ctl, Hdr.VMM_STOP) === 1) return;
      if (n > 0 || seenControl !== c) continue;
      let hit = false;
      for (let i = 0; i < this.spin; i++) {
        if (Atomics.load(ctl, Hdr.VMM_EVENT) !== ev) {
          hit = true;
          break;
        }
      }
      if (hit) {
        this.counts[3]++;
        continue;
      }
      // Dekker with kickVmm: announce sleep, then re-read the event word inside Atomics.wait.
      Atomics.store(ctl, Hdr.VMM_SLEEPING, 1);
      const r = Atomics.wait(ctl, Hdr.VMM_EVENT, ev);
      Atomics.store(ctl, Hdr.VMM_SLEEPING, 0);
      if (r === 'ok') this.counts[2]++;
    }
  }
}
