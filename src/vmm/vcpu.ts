/**
 * The vCPU side of the threaded runtime: what guest code running in a vCPU worker sees. An MMIO
 * access is a synchronous trap through the vCPU's mailbox; a notification write can instead be
 * posted to the doorbell ring (ioeventfd); interrupts arrive as bits in the posted-interrupt
 * register and are taken at safe points (after each exit returns) and in {@link VcpuRuntime.halt}.
 *
 * The guest-side MMIO driver and the device drivers run here unchanged: they get an
 * {@link MmioAccess} per window and a {@link GuestIrqPlatform}.
 *
 * @packageDocumentation
 */

import type { GuestAllocator, RamMemory } from '../memory/index.js';
import { FIRST_DEVICE_VECTOR, MSI_LAST_VECTOR, NUM_VECTORS, type ProbeOptions } from '../platform/index.js';
import { composeMsiMessage } from '../platform/msi.js';
import { MmioReg, VirtioError } from '../spec/index.js';
import type {
  GuestIrqPlatform,
  GuestMsiAllocator,
  MmioAccess,
  MmioDriver,
  MsiMessage,
} from '../transport/index.js';
import {
  ExitOp,
  ExitState,
  Hdr,
  injectVector,
  isrBase,
  kickVmm,
  PIR_WORDS,
  REG_SLOTS,
  RegKind,
  RING_ENTRY_WORDS,
  RING_SIZE,
  RingOp,
  regBase,
  ringBase,
  TWO_POW_32,
  VCPU_COUNTERS,
  VcpuCounter,
  Vw,
  vcpuBase,
} from './layout.js';
import { TraceKind, type Tracer, traceNow } from './trace.js';
import type { DeviceInfo, ExitModel, MachineInfo, NotifyMode } from './types.js';

/** Handler runs allowed in one pass over pending vectors before it is called a storm. */
export const VCPU_MAX_HANDLER_RUNS = 10_000;

/**
 * One vCPU's runtime state: mailbox, PIR, halt, doorbells, handlers and counters. Single-threaded
 * (lives in its vCPU worker); only the shared words are touched by other threads.
 */
export class VcpuRuntime {
  /** vCPU number. */
  readonly vcpu: number;
  /** Number of vCPUs of the machine. */
  readonly vcpuCount: number;
  /** The machine description. */
  readonly machine: MachineInfo;
  /** How notification writes travel. */
  readonly notifyMode: NotifyMode;
  private readonly ctl: Int32Array;
  private readonly counters: Float64Array;
  private readonly b: number;
  private readonly c: number;
  private readonly regs: number;
  private readonly ring: number;
  private readonly spin: number;
  private readonly handlers: Array<(() => void) | null> = new Array(NUM_VECTORS).fill(null);
  /** True while taking interrupts: no nesting (IF = 0 inside handlers). */
  private taking = false;
  /** Local copy of RING_HEAD (this thread is its only writer). */
  private head = 0;
  /** Trace ring, or null when tracing is off. */
  readonly tracer: Tracer | null;
  /** Where InterruptStatus, InterruptACK and EOI are served. */
  readonly exitModel: ExitModel;
  private readonly isr: number;

  /**
   * @param ctl - the control block
   * @param counters - the counter block
   * @param vcpu - this vCPU's number
   * @param vcpuCount - number of vCPUs
   * @param machine - the machine description
   * @param notifyMode - trapped or posted notifications
   * @param spin - polls before sleeping (exits and halt)
   * @param tracer - trace ring, or null
   * @param exitModel - 'trap' or 'local'
   */
  constructor(
    ctl: SharedArrayBuffer,
    counters: SharedArrayBuffer,
    vcpu: number,
    vcpuCount: number,
    machine: MachineInfo,
    notifyMode: NotifyMode,
    spin: number,
    tracer: Tracer | null = null,
    exitModel: ExitModel = 'trap',
  ) {
    this.tracer = tracer;
    this.exitModel = exitModel;
    this.isr = isrBase(vcpuCount);
    this.ctl = new Int32Array(ctl);
    this.counters = new Float64Array(counters);
    this.vcpu = vcpu;
    this.vcpuCount = vcpuCount;
    this.machine = machine;
    this.notifyMode = notifyMode;
    this.spin = spin;
    this.b = vcpuBase(vcpu);
    this.c = vcpu * VCPU_COUNTERS;
    this.regs = regBase(vcpuCount) + vcpu * Math.max(machine.devices.length, 1) * REG_SLOTS * RegKind.COUNT;
    this.ring = ringBase(vcpuCount) + vcpu * RING_SIZE * RING_ENTRY_WORDS;
    this.head = Atomics.load(this.ctl, this.b + Vw.RING_HEAD);
  }

  /** Adds one to counter `field` of this vCPU. */
  count(field: number): void {
    this.counters[this.c + field]++;
  }

  /** Sets counter `field` of this vCPU. */
  setCounter(field: number, value: number): void {
    this.counters[this.c + field] = value;
  }

  /** Counts a per-register event for device `dev` at window `offset`. */
  countReg(dev: number, offset: number, kind: number): void {
    const slot = offset >>> 2;
    if (dev >= 0 && slot < REG_SLOTS)
      this.counters[this.regs + (dev * REG_SLOTS + slot) * RegKind.COUNT + kind]++;
  }

  /**
   * A synchronous exit: posts `op` in the mailbox, wakes the VMM, polls `spin` times, then blocks
   * until DONE, and returns the answer. Afterwards takes pending interrupts (the safe point).
   * Allocation-free.
   */
  trap(op: number, addr: number, width: number, value: number): number {
    const ctl = this.ctl;
    const b = this.b;
    const t0 = this.tracer === null ? 0 : traceNow();
    ctl[b + Vw.MB_OP] = op;
    ctl[b + Vw.MB_ADDR_LO] = (addr % TWO_POW_32) | 0;
    ctl[b + Vw.MB_ADDR_HI] = Math.floor(addr / TWO_POW_32) | 0;
    ctl[b + Vw.MB_WIDTH] = width;
    ctl[b + Vw.MB_VAL_LO] = (value % TWO_POW_32) | 0;
    ctl[b + Vw.MB_VAL_HI] = Math.floor(value / TWO_POW_32) | 0;
    // Publishes the fields: the VMM's Atomics.load of REQUEST synchronizes with this store.
    Atomics.store(ctl, b + Vw.MB_STATE, ExitState.REQUEST);
    kickVmm(ctl);
    let polled = false;
    for (let i = 0; i < this.spin; i++) {
      if (Atomics.load(ctl, b + Vw.MB_STATE) !== ExitState.REQUEST) {
        polled = true;
        break;
      }
    }
    if (polled) this.count(VcpuCounter.EXIT_POLL_HITS);
    else {
      while (Atomics.load(ctl, b + Vw.MB_STATE) === ExitState.REQUEST) {
        Atomics.wait(ctl, b + Vw.MB_STATE, ExitState.REQUEST);
      }
    }
    const result = (ctl[b + Vw.MB_VAL_LO] >>> 0) + (ctl[b + Vw.MB_VAL_HI] >>> 0) * TWO_POW_32;
    Atomics.store(ctl, b + Vw.MB_STATE, ExitState.IDLE);
    if (this.tracer !== null) this.tracer.complete(TraceKind.EXIT, t0, op, addr);
    if (!this.taking && this.anyPending()) {
      this.count(VcpuCounter.TAKEN_AT_EXIT);
      this.takePending();
    }
    return result;
  }

  /** A trapped MMIO read (a read exit). */
  read(addr: number, width: 1 | 2 | 4 | 8): number {
    this.count(VcpuCounter.READ_EXITS);
    return this.trap(ExitOp.READ, addr, width, 0);
  }

  /** A trapped MMIO write (a write exit). */
  write(addr: number, width: 1 | 2 | 4 | 8, value: number): void {
    this.count(VcpuCounter.WRITE_EXITS);
    this.trap(ExitOp.WRITE, addr, width, value);
  }

  /**
   * A posted notification write (ioeventfd): appends `(addr, value)` to the doorbell ring, wakes
   * the VMM if it sleeps, and returns without waiting. A full ring falls back to a trapped write.
   */
  post(addr: number, value: number): void {
    if (this.enqueue(RingOp.WRITE, addr, value)) {
      this.count(VcpuCounter.DOORBELLS);
      if (this.tracer !== null) this.tracer.instant(TraceKind.DOORBELL, addr, value);
    } else {
      this.count(VcpuCounter.RING_FULL);
      this.write(addr, 4, value);
    }
  }

  /**
   * Exit model 'local': InterruptStatus of device `dev` from the shared mirror (no exit).
   */
  localStatus(dev: number): number {
    this.count(VcpuCounter.LOCAL_READS);
    return Atomics.load(this.ctl, this.isr + dev) >>> 0;
  }

  /**
   * Exit model 'local': InterruptACK of `bits` on device `dev` at `addr`: clears the mirror bits
   * at once and posts the write for the device (no exit; a full ring traps it instead).
   */
  localAck(dev: number, addr: number, bits: number): void {
    Atomics.and(this.ctl, this.isr + dev, ~bits);
    if (this.enqueue(RingOp.WRITE, addr, bits)) this.count(VcpuCounter.LOCAL_WRITES);
    else {
      this.count(VcpuCounter.RING_FULL);
      this.write(addr, 4, bits);
    }
  }

  /** Appends one ring entry and kicks the VMM; false when the ring is full. Allocation-free. */
  private enqueue(op: number, addr: number, value: number): boolean {
    const ctl = this.ctl;
    const tail = Atomics.load(ctl, this.b + Vw.RING_TAIL);
    if (((this.head - tail) | 0) >= RING_SIZE) return false;
    const at = this.ring + (this.head & (RING_SIZE - 1)) * RING_ENTRY_WORDS;
    ctl[at] = (addr % TWO_POW_32) | 0;
    ctl[at + 1] = Math.floor(addr / TWO_POW_32) | 0;
    ctl[at + 2] = value | 0;
    ctl[at + 3] = op;
    this.head = (this.head + 1) | 0;
    // Publishes the entry: the VMM's Atomics.load of RING_HEAD synchronizes with this store.
    Atomics.store(ctl, this.b + Vw.RING_HEAD, this.head);
    kickVmm(ctl);
    return true;
  }

  /** Spins until the VMM consumed every doorbell this vCPU posted (for benchmarks and tests). */
  drainDoorbells(): void {
    while (Atomics.load(this.ctl, this.b + Vw.RING_TAIL) !== this.head) {
      // Busy wait: the VMM drains the ring without notifying the producer.
    }
  }

  /** Binds `handler` to `vector` (null unbinds). */
  bind(vector: number, handler: (() => void) | null): void {
    this.handlers[vector] = handler;
  }

  /** Whether `vector` has a handler. */
  isBound(vector: number): boolean {
    return this.handlers[vector] !== null;
  }

  /** Whether any vector is pending in the PIR. */
  anyPending(): boolean {
    const ctl = this.ctl;
    const p = this.b + Vw.PIR;
    for (let w = 0; w < PIR_WORDS; w++) if (Atomics.load(ctl, p + w) !== 0) return true;
    return false;
  }

  /** Lowest pending vector, or -1. */
  private lowestPending(): number {
    const ctl = this.ctl;
    const p = this.b + Vw.PIR;
    for (let w = 0; w < PIR_WORDS; w++) {
      const bits = Atomics.load(ctl, p + w);
      if (bits !== 0) return w * 32 + 31 - Math.clz32(bits & -bits);
    }
    return -1;
  }

  /** Whether `vector` is a wired line's (level-triggered: its EOI is broadcast to the controller). */
  private isLineVector(vector: number): boolean {
    const i = vector - this.machine.lineVectorBase;
    return i >= 0 && i < this.machine.lineCount;
  }

  /**
   * Takes every pending vector, lowest first: clear the PIR bit, run the handler (or count it
   * spurious), then EOI, trapped for a level-triggered (line) vector as KVM's EOI-exit bitmap
   * does. Vectors posted meanwhile are taken by the same loop. Returns whether one was taken.
   * @throws VirtioError `TIMEOUT` on an interrupt storm; whatever a handler throws (its vector is
   *   EOI'd first)
   */
  takePending(): boolean {
    if (this.taking) return false;
    this.taking = true;
    let runs = 0;
    try {
      let vector = this.lowestPending();
      while (vector >= 0) {
        if (runs === VCPU_MAX_HANDLER_RUNS) {
          throw new VirtioError(
            'TIMEOUT',
            `interrupt storm: ${runs} interrupts taken and ${vector} is pending again`,
          );
        }
        runs++;
        Atomics.and(this.ctl, this.b + Vw.PIR + (vector >>> 5), ~(1 << (vector & 31)));
        this.count(VcpuCounter.INTERRUPTS);
        const handler = this.handlers[vector];
        const t0 = this.tracer === null ? 0 : traceNow();
        try {
          if (handler !== null) handler();
          else this.count(VcpuCounter.SPURIOUS);
        } finally {
          if (this.isLineVector(vector)) {
            if (this.exitModel === 'local' && this.enqueue(RingOp.EOI, vector, vector)) {
              this.count(VcpuCounter.LOCAL_EOIS);
            } else {
              this.count(VcpuCounter.EOI_EXITS);
              this.trap(ExitOp.EOI, vector, 4, 0);
            }
          }
          if (this.tracer !== null) this.tracer.complete(TraceKind.IRQ, t0, vector, 0);
        }
        vector = this.lowestPending();
      }
    } finally {
      this.taking = false;
    }
    return runs > 0;
  }

  /**
   * `sti; hlt`: takes what is pending; otherwise polls `spin` times, then sleeps on the WAKE word
   * until an injection, and takes it. Runs at least one handler before returning.
   * @throws VirtioError `INVALID_STATE` from inside an interrupt handler; `TIMEOUT` after
   *   `timeoutMs` without an interrupt (when given)
   */
  halt(timeoutMs?: number): void {
    if (this.taking) throw new VirtioError('INVALID_STATE', 'halt called from inside an interrupt handler');
    this.count(VcpuCounter.HALTS);
    if (this.takePending()) return;
    for (let i = 0; i < this.spin; i++) {
      if (this.anyPending()) {
        this.count(VcpuCounter.HALT_POLL_HITS);
        this.takePending();
        return;
      }
    }
    const ctl = this.ctl;
    const b = this.b;
    for (;;) {
      // Dekker with injectVector: announce the halt, read WAKE, then check the PIR.
      Atomics.store(ctl, b + Vw.HALTED, 1);
      const seen = Atomics.load(ctl, b + Vw.WAKE);
      if (this.anyPending()) {
        Atomics.store(ctl, b + Vw.HALTED, 0);
        this.takePending();
        return;
      }
      const t0 = this.tracer === null ? 0 : traceNow();
      const r = Atomics.wait(ctl, b + Vw.WAKE, seen, timeoutMs);
      Atomics.store(ctl, b + Vw.HALTED, 0);
      if (this.tracer !== null) this.tracer.complete(TraceKind.HALT, t0, r === 'timed-out' ? 0 : 1, 0);
      if (r !== 'timed-out') this.count(VcpuCounter.HLT_WAKEUPS);
      if (this.takePending()) return;
      if (r === 'timed-out') {
        throw new VirtioError('TIMEOUT', `vcpu ${this.vcpu}: halted ${timeoutMs} ms with no interrupt`);
      }
    }
  }

  /** Posts `vector` to vCPU `target` (an IPI through the posted-interrupt path; no exit). */
  sendIpi(target: number, vector: number): void {
    if (!Number.isInteger(target) || target < 0 || target >= this.vcpuCount) {
      throw new VirtioError('INVALID_ARGUMENT', `no vcpu ${target}`);
    }
    if (!Number.isInteger(vector) || vector < 32 || vector >= NUM_VECTORS) {
      throw new VirtioError('INVALID_ARGUMENT', `vector ${vector} is not in 32..${NUM_VECTORS - 1}`);
    }
    injectVector(this.ctl, target, vector);
    if (this.tracer !== null) this.tracer.instant(TraceKind.INJECT, target, vector);
  }

  /** Whether the VMM was told to stop (for guest loops that want to end cleanly). */
  get stopping(): boolean {
    return Atomics.load(this.ctl, Hdr.VMM_STOP) === 1;
  }
}

/**
 * The guest-side accessor of one device window: every access is a trapped exit, except that in
 * posted mode a 32-bit write to QueueNotify goes to the doorbell ring. Counts per register.
 */
export class TrappedWindow implements MmioAccess {
  /**
   * @param rt - the vCPU runtime
   * @param base - window base
   * @param dev - device index for counters (-1: not counted per register)
   */
  constructor(
    private readonly rt: VcpuRuntime,
    private readonly base: number,
    private readonly dev: number,
    notify: { readonly start: number; readonly end: number } | null = null,
  ) {
    this.notifyStart = notify === null ? -1 : notify.start;
    this.notifyEnd = notify === null ? -1 : notify.end;
    this.local = rt.exitModel === 'local' && dev >= 0;
  }

  /** Exit model 'local' for this window: InterruptStatus / InterruptACK served here. */
  private readonly local: boolean;

  /** The seed profile's per-queue notification addresses `[notifyStart, notifyEnd)`, or -1. */
  private readonly notifyStart: number;
  private readonly notifyEnd: number;

  read32(offset: number): number {
    if (offset === MmioReg.InterruptStatus && this.local) {
      this.rt.countReg(this.dev, offset, RegKind.LOCAL);
      return this.rt.localStatus(this.dev);
    }
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_READ);
    return this.rt.read(this.base + offset, 4);
  }

  write32(offset: number, value: number): void {
    if (offset === MmioReg.InterruptACK && this.local) {
      this.rt.countReg(this.dev, offset, RegKind.LOCAL);
      this.rt.localAck(this.dev, this.base + offset, value >>> 0);
      return;
    }
    if (
      this.rt.notifyMode === 'posted' &&
      (offset === MmioReg.QueueNotify || (offset >= this.notifyStart && offset < this.notifyEnd))
    ) {
      this.rt.countReg(this.dev, offset, RegKind.POSTED_WRITE);
      this.rt.post(this.base + offset, value >>> 0);
      return;
    }
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_WRITE);
    this.rt.write(this.base + offset, 4, value >>> 0);
  }

  read8(offset: number): number {
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_READ);
    return this.rt.read(this.base + offset, 1);
  }

  read16(offset: number): number {
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_READ);
    return this.rt.read(this.base + offset, 2);
  }

  write8(offset: number, value: number): void {
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_WRITE);
    this.rt.write(this.base + offset, 1, value & 0xff);
  }

  write16(offset: number, value: number): void {
    this.rt.countReg(this.dev, offset, RegKind.TRAPPED_WRITE);
    this.rt.write(this.base + offset, 2, value & 0xffff);
  }
}

/**
 * The {@link GuestIrqPlatform} of a vCPU: wired lines (delivered to vCPU 0 only; requesting one
 * unmasks it at the controller through an IRQCHIP exit), free vectors for IPIs and MSI, halt.
 */
export class VcpuPlatform implements GuestIrqPlatform, GuestMsiAllocator {
  /** MSI vectors handed out by this vCPU's allocator. */
  private readonly msiAllocated = new Uint8Array(NUM_VECTORS);

  /**
   * A halt gives up with `TIMEOUT` after this long without an interrupt (undefined: never). Set per
   * run by the vCPU worker; one platform object serves every run, since drivers keep it.
   */
  haltTimeoutMs: number | undefined;

  /**
   * @param rt - the vCPU runtime
   * @param haltTimeoutMs - initial {@link VcpuPlatform.haltTimeoutMs}
   */
  constructor(
    private readonly rt: VcpuRuntime,
    haltTimeoutMs?: number,
  ) {
    this.haltTimeoutMs = haltTimeoutMs;
  }

  halt(): void {
    this.rt.halt(this.haltTimeoutMs);
  }

  /**
   * Binds `handler` to wired line `line` and unmasks the line (an IRQCHIP exit).
   * @throws VirtioError `IRQ_INVALID_LINE` for a line the controller lacks, one already bound, or a
   *   request from a vCPU other than 0 (the wired controller delivers to vCPU 0)
   */
  requestIrq(line: number, handler: () => void): void {
    const m = this.rt.machine;
    if (!Number.isInteger(line) || line < 0 || line >= m.lineCount) {
      throw new VirtioError('IRQ_INVALID_LINE', `no interrupt line ${line} (controller has ${m.lineCount})`);
    }
    if (this.rt.vcpu !== 0) {
      throw new VirtioError(
        'IRQ_INVALID_LINE',
        `interrupt line ${line} is delivered to vcpu 0, not ${this.rt.vcpu}`,
      );
    }
    const vector = m.lineVectorBase + line;
    if (this.rt.isBound(vector)) {
      throw new VirtioError(
        'IRQ_INVALID_LINE',
        `interrupt line ${line} (vector ${vector}) already has a handler`,
      );
    }
    this.rt.bind(vector, handler);
    this.rt.count(VcpuCounter.IRQCHIP_EXITS);
    this.rt.trap(ExitOp.IRQCHIP, line, 4, 1);
  }

  /**
   * Masks wired line `line` (an IRQCHIP exit) and unbinds its handler.
   * @throws VirtioError `IRQ_INVALID_LINE` for a line the controller lacks
   */
  freeIrq(line: number): void {
    const m = this.rt.machine;
    if (!Number.isInteger(line) || line < 0 || line >= m.lineCount) {
      throw new VirtioError('IRQ_INVALID_LINE', `no interrupt line ${line} (controller has ${m.lineCount})`);
    }
    this.rt.count(VcpuCounter.IRQCHIP_EXITS);
    this.rt.trap(ExitOp.IRQCHIP, line, 4, 0);
    this.rt.bind(m.lineVectorBase + line, null);
  }

  /**
   * Binds `handler` to an edge-triggered vector (IPI or MSI: no EOI exit).
   * @throws VirtioError `INVALID_ARGUMENT` for a vector outside 32..255 or owned by a wired line
   */
  requestVector(vector: number, handler: (() => void) | null): void {
    const m = this.rt.machine;
    if (!Number.isInteger(vector) || vector < 32 || vector >= NUM_VECTORS) {
      throw new VirtioError('INVALID_ARGUMENT', `vector ${vector} is not in 32..${NUM_VECTORS - 1}`);
    }
    if (vector >= m.lineVectorBase && vector < m.lineVectorBase + m.lineCount) {
      throw new VirtioError('INVALID_ARGUMENT', `vector ${vector} belongs to a wired line`);
    }
    this.rt.bind(vector, handler);
  }

  /** Sends an IPI: posts `vector` to vCPU `target` (no exit). */
  sendIpi(target: number, vector: number): void {
    this.rt.sendIpi(target, vector);
  }

  /**
   * The MSI allocator of this vCPU: vectors it hands out are composed with this vCPU as the
   * destination (APIC ID = vCPU number), so a device's messages land on the vCPU whose driver
   * programmed them, with no exit and no EOI exit (edge-triggered).
   */
  get msi(): GuestMsiAllocator {
    return this;
  }

  /**
   * Allocates `count` vectors in 32..MSI_LAST_VECTOR not owned by a wired line or bound, all or
   * nothing.
   * @throws VirtioError `INVALID_ARGUMENT` when `count` is not a positive integer
   */
  allocMsiVectors(count: number): number[] | null {
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `msi vector count ${count} is not a positive integer`);
    }
    const m = this.rt.machine;
    const got: number[] = [];
    for (let v = FIRST_DEVICE_VECTOR; v <= MSI_LAST_VECTOR && got.length < count; v++) {
      const line = v >= m.lineVectorBase && v < m.lineVectorBase + m.lineCount;
      if (!line && this.msiAllocated[v] === 0 && !this.rt.isBound(v)) got.push(v);
    }
    if (got.length < count) return null;
    for (const v of got) this.msiAllocated[v] = 1;
    return got;
  }

  /**
   * The message raising `vector` on this vCPU.
   * @throws VirtioError `INVALID_STATE` for a vector this allocator did not hand out
   */
  msiMessage(vector: number): MsiMessage {
    this.checkMsi(vector);
    return composeMsiMessage(this.rt.vcpu, vector);
  }

  /**
   * Attaches or detaches the handler of an allocated vector.
   * @throws VirtioError `INVALID_STATE` for a vector not allocated, or one already handled
   */
  setMsiHandler(vector: number, handler: (() => void) | null): void {
    this.checkMsi(vector);
    if (handler !== null && this.rt.isBound(vector)) {
      throw new VirtioError('INVALID_STATE', `msi vector ${vector} already has a handler`);
    }
    this.rt.bind(vector, handler);
  }

  /** Detaches and frees `vectors` (unknown ones ignored). */
  freeMsiVectors(vectors: readonly number[]): void {
    for (const v of vectors) {
      if (!Number.isInteger(v) || v < 0 || v >= NUM_VECTORS || this.msiAllocated[v] === 0) continue;
      this.msiAllocated[v] = 0;
      this.rt.bind(v, null);
    }
  }

  private checkMsi(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= NUM_VECTORS || this.msiAllocated[vector] === 0) {
      throw new VirtioError('INVALID_STATE', `vector ${String(vector)} is not an allocated msi vector`);
    }
  }
}

/** What a guest program gets: its vCPU's view of the machine. */
export interface GuestEnv {
  /** This vCPU's number. */
  readonly vcpu: number;
  /** Number of vCPUs. */
  readonly vcpuCount: number;
  /** Guest RAM (shared with every vCPU and the VMM). */
  readonly mem: RamMemory;
  /** The shared buffer behind guest RAM, for `Atomics` on guest memory. */
  readonly ram: SharedArrayBuffer;
  /** This vCPU's DMA allocator (each vCPU owns a disjoint part of RAM). */
  readonly dma: GuestAllocator;
  /** Interrupts, halt, IPIs. */
  readonly platform: VcpuPlatform;
  /** The machine description. */
  readonly devices: readonly DeviceInfo[];
  /** The vCPU runtime (counters, raw traps). */
  readonly runtime: VcpuRuntime;
  /** Arguments passed to the run (structured clone). */
  readonly args: unknown;
  /**
   * The trapped accessor of device `name`'s window.
   * @throws VirtioError `DEVICE_NOT_FOUND`
   */
  mmio(name: string): MmioAccess;
  /** The device named `name`. @throws VirtioError `DEVICE_NOT_FOUND` */
  device(name: string): DeviceInfo;
  /**
   * Probes device `name` with the guest MMIO driver over its trapped window (as `Machine.probe`,
   * with the same options: by default the driver knows the seed profile when the device has it).
   * @throws VirtioError `DEVICE_NOT_FOUND`, and whatever `MmioDriver.probe` throws
   */
  probe(name: string, options?: ProbeOptions): MmioDriver | null;
}

/** A guest program: an exported function of a JavaScript module, run in a vCPU worker. */
export type GuestProgram = (env: GuestEnv) => unknown;
