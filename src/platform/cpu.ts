/**
 * The guest CPU of the single-threaded in-process machine: a local APIC reduced to what a virtio
 * guest needs (a pending-vector register, a handler per vector, EOI) and `hlt`.
 *
 * In-process, device work happens synchronously inside the guest's MMIO accesses, so by the time the
 * guest halts every interrupt that will ever arrive is already latched. {@link InProcessCpu.halt}
 * therefore runs the pending handlers and returns, or throws when nothing is pending (a real guest
 * would sleep forever).
 *
 * Pending register (IRR), one bit per vector:
 *
 * ```
 *   pending[w] bit b  <->  vector w * 32 + b        w = 0..7
 * ```
 *
 * Vector space and what each kind of interrupt costs the guest in trapped accesses (the counting
 * the benchmarks and the interrupt-mode tests rely on):
 *
 * ```
 *   0..31                exceptions (never handed out)
 *   wired lines          vectorBase .. vectorBase + lines - 1 (the controller's), level-triggered:
 *                        the LAPIC EOI is broadcast to the controller (remote IRR, resample).
 *                        Counted in eois and levelEois; it traps even with APICv (KVM sets the
 *                        EOI-exit bitmap for level vectors routed through the IOAPIC).
 *   MSI vectors          every other vector in 32 .. MSI_LAST_VECTOR, handed out by the allocator,
 *                        edge-triggered: the EOI never reaches the controller. Counted in eois and
 *                        edgeEois; it traps only without APICv (x2APIC EOI virtualization).
 * ```
 *
 * So the device-independent part of the cost is read from {@link CpuStats}: `levelEois` is the
 * number of trapped EOIs on any machine, `edgeEois` the extra ones on a machine without APICv.
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../spec/index.js';
import type { GuestIrqPlatform, GuestMsiAllocator, MsiMessage } from '../transport/index.js';
import { FIRST_DEVICE_VECTOR, type InterruptController, type InterruptTarget, NUM_VECTORS } from './irq.js';
import { composeMsiMessage } from './msi.js';

/**
 * Last vector the MSI allocator hands out. Linux x86 keeps 0xec..0xff for system vectors (local
 * timer, IPIs, spurious), so device vectors stop below.
 */
export const MSI_LAST_VECTOR = 0xeb;

/** Default bound on handler runs in one {@link InProcessCpu.halt}. */
export const MAX_HANDLER_RUNS_PER_HALT = 10_000;

/** Construction options of {@link InProcessCpu}. */
export interface InProcessCpuOptions {
  /**
   * Handler runs allowed in one halt before it throws an interrupt-storm `TIMEOUT`. Default
   * {@link MAX_HANDLER_RUNS_PER_HALT}.
   */
  readonly maxHandlerRunsPerHalt?: number;
  /** Local APIC id, the destination in composed MSI messages (0..255). Default 0. */
  readonly apicId?: number;
  /** Whether the CPU offers an MSI vector allocator ({@link InProcessCpu.msi}). Default true. */
  readonly msi?: boolean;
  /**
   * Cap on MSI vectors allocated at once (for tests that make an allocation run out half-way).
   * Default: every free vector of 32..{@link MSI_LAST_VECTOR} the wired controller does not own.
   */
  readonly maxMsiVectors?: number;
}

/** Interrupts taken on one vector. */
export interface CpuVectorStats {
  /** Vector number. */
  readonly vector: number;
  /** Times the vector was taken (its handler ran, or it was spurious). */
  readonly taken: number;
}

/** A snapshot of the CPU counters. */
export interface CpuStats {
  /** Calls of {@link InProcessCpu.halt} that found something pending. */
  readonly halts: number;
  /** Vectors taken, over all vectors (handler runs plus spurious). */
  readonly interrupts: number;
  /** Vectors taken with no handler bound (EOI'd and dropped). */
  readonly spurious: number;
  /** Deliveries of a vector that was already pending (they merge into one, as in an IRR bit). */
  readonly coalesced: number;
  /** EOI writes the CPU made (one per vector taken; each is a trapped LAPIC access without APICv). */
  readonly eois: number;
  /**
   * EOIs of vectors the wired controller owns (level-triggered lines): broadcast to the controller,
   * trapped even with APICv.
   */
  readonly levelEois: number;
  /** EOIs of vectors no line owns (MSI, edge-triggered): never reach the controller. */
  readonly edgeEois: number;
  /** MSI vectors currently allocated. */
  readonly msiVectorsAllocated: number;
  /** MSI vectors with a handler attached. */
  readonly msiHandlers: number;
  /** {@link InProcessCpu.allocMsiVectors} calls that found too few vectors (and returned null). */
  readonly msiAllocFailures: number;
  /** Every vector taken at least once, by ascending vector. */
  readonly vectors: readonly CpuVectorStats[];
}

/**
 * The in-process guest CPU: the {@link InterruptTarget} of an {@link InterruptController} and the
 * {@link GuestIrqPlatform} the guest-side MMIO driver uses.
 *
 * Wired lines start masked at the controller (firmware leaves IOAPIC pins masked);
 * {@link InProcessCpu.requestIrq} unmasks a line and {@link InProcessCpu.freeIrq} masks it again,
 * as Linux `request_irq` / `free_irq` start up and shut down the pin. A device asserting a line no
 * driver listens to therefore cannot storm the CPU.
 *
 * MSI: the CPU is also the guest's {@link GuestMsiAllocator} ({@link InProcessCpu.msi}): it hands
 * out vectors the wired controller does not own, composes the x86 message that targets them, and
 * binds their handlers in the same table; the platform's MSI controller delivers them through
 * {@link InProcessCpu.deliver}.
 *
 * Re-entrancy: {@link InProcessCpu.deliver} only latches the vector, so an interrupt raised while a
 * handler runs (the device completes synchronously inside an MMIO write the handler makes) is taken
 * by the same halt loop after the handler returns, never by a nested call.
 */
export class InProcessCpu implements InterruptTarget, GuestIrqPlatform, GuestMsiAllocator {
  private readonly pending = new Uint32Array(NUM_VECTORS / 32);
  private readonly handlers: Array<(() => void) | null> = new Array(NUM_VECTORS).fill(null);
  private readonly taken = new Float64Array(NUM_VECTORS);
  /** [0] halts, [1] spurious, [2] coalesced, [3] eois, [4] level eois, [5] msi alloc failures. */
  private readonly counts = new Float64Array(6);
  /** 1 for a vector the MSI allocator handed out. */
  private readonly msiAllocated = new Uint8Array(NUM_VECTORS);
  private msiInUse = 0;
  private readonly maxRuns: number;
  private readonly maxMsi: number;
  private readonly msiEnabled: boolean;
  /** Local APIC id (destination of composed MSI messages). */
  readonly apicId: number;
  private halting = false;

  /**
   * Connects to `controller` as its target and masks every line of it.
   * @param controller - the wired interrupt controller (vector mapping and EOI)
   * @param options - see {@link InProcessCpuOptions}
   * @throws VirtioError `INVALID_ARGUMENT` when `maxHandlerRunsPerHalt` is not a positive integer,
   *   `apicId` is not in 0..255, or `maxMsiVectors` is not a non-negative integer
   * @throws VirtioError `INVALID_STATE` when the controller already has another target
   */
  constructor(
    private readonly controller: InterruptController,
    options: InProcessCpuOptions = {},
  ) {
    const maxRuns = options.maxHandlerRunsPerHalt ?? MAX_HANDLER_RUNS_PER_HALT;
    if (!Number.isSafeInteger(maxRuns) || maxRuns < 1) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `maxHandlerRunsPerHalt must be a positive integer, got ${maxRuns}`,
      );
    }
    this.maxRuns = maxRuns;
    const apicId = options.apicId ?? 0;
    if (!Number.isInteger(apicId) || apicId < 0 || apicId > 0xff) {
      throw new VirtioError('INVALID_ARGUMENT', `apic id ${apicId} is not in 0..255`);
    }
    this.apicId = apicId;
    const maxMsi = options.maxMsiVectors ?? NUM_VECTORS;
    if (!Number.isSafeInteger(maxMsi) || maxMsi < 0) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `maxMsiVectors must be a non-negative integer, got ${maxMsi}`,
      );
    }
    this.maxMsi = maxMsi;
    this.msiEnabled = options.msi ?? true;
    controller.connect(this);
    for (let n = 0; n < controller.lineCount; n++) controller.mask(n);
  }

  /**
   * Latches `vector` as pending; never runs a handler. Allocation-free.
   * @throws VirtioError `INVALID_ARGUMENT` when `vector` is not in 0..255
   */
  deliver(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= NUM_VECTORS) {
      throw new VirtioError('INVALID_ARGUMENT', `vector ${vector} is not in 0..${NUM_VECTORS - 1}`);
    }
    const w = vector >>> 5;
    const bit = 1 << (vector & 31);
    if ((this.pending[w] & bit) !== 0) {
      this.counts[2]++;
      return;
    }
    this.pending[w] |= bit;
  }

  /**
   * Binds `handler` to the vector of wired line `line` and unmasks the line (which delivers at once
   * if the line is already high).
   * @throws VirtioError `IRQ_INVALID_LINE` when the controller has no such line, or the line
   *   already has a handler
   */
  requestIrq(line: number, handler: () => void): void {
    const vector = this.controller.vectorOf(line);
    if (this.handlers[vector] !== null) {
      throw new VirtioError(
        'IRQ_INVALID_LINE',
        `interrupt line ${line} (vector ${vector}) already has a handler`,
      );
    }
    this.handlers[vector] = handler;
    this.controller.unmask(line);
  }

  /**
   * Masks wired line `line` and unbinds its handler (no-op when it has none). A vector already
   * pending stays pending and is taken as spurious.
   * @throws VirtioError `IRQ_INVALID_LINE` when the controller has no such line
   */
  freeIrq(line: number): void {
    const vector = this.controller.vectorOf(line);
    this.controller.mask(line);
    this.handlers[vector] = null;
  }

  /** The MSI vector allocator (this CPU), or undefined when built with `msi: false`. */
  get msi(): GuestMsiAllocator | undefined {
    return this.msiEnabled ? this : undefined;
  }

  /**
   * Allocates `count` MSI vectors, all or nothing, lowest free first: vectors in
   * {@link FIRST_DEVICE_VECTOR}..{@link MSI_LAST_VECTOR} that no wired line owns and no one holds.
   * Vectors are taken one at a time; when the range or the `maxMsiVectors` cap runs out half-way,
   * the ones taken are given back and null is returned (counted in `msiAllocFailures`).
   * @throws VirtioError `INVALID_ARGUMENT` when `count` is not a positive integer
   */
  allocMsiVectors(count: number): number[] | null {
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `msi vector count ${count} is not a positive integer`);
    }
    const got: number[] = [];
    let v = FIRST_DEVICE_VECTOR;
    while (got.length < count) {
      while (
        v <= MSI_LAST_VECTOR &&
        (this.msiAllocated[v] === 1 || this.controller.lineOf(v) >= 0 || this.handlers[v] !== null)
      ) {
        v++;
      }
      if (v > MSI_LAST_VECTOR || this.msiInUse === this.maxMsi) {
        // Ran out half-way: nothing stays allocated (platform_msi_domain_alloc_irqs is all or
        // nothing too).
        this.freeMsiVectors(got);
        this.counts[5]++;
        return null;
      }
      this.msiAllocated[v] = 1;
      this.msiInUse++;
      got.push(v);
    }
    return got;
  }

  /**
   * The x86 MSI message for an allocated vector: address 0xfee00000 | apicId << 12 (physical
   * destination mode, no redirection hint), high address 0, data = vector (fixed delivery mode,
   * edge trigger: bits 8..15 zero).
   * @throws VirtioError `INVALID_STATE` for a vector the allocator did not hand out
   */
  msiMessage(vector: number): MsiMessage {
    this.checkMsiVector(vector);
    return composeMsiMessage(this.apicId, vector);
  }

  /**
   * Attaches `handler` to an allocated MSI vector, or detaches with null.
   * @throws VirtioError `INVALID_STATE` for a vector not allocated, or one that already has a
   *   handler when attaching
   */
  setMsiHandler(vector: number, handler: (() => void) | null): void {
    this.checkMsiVector(vector);
    if (handler !== null && this.handlers[vector] !== null) {
      throw new VirtioError('INVALID_STATE', `msi vector ${hex(vector)} already has a handler`);
    }
    this.handlers[vector] = handler;
  }

  /**
   * Detaches the handlers of `vectors` and frees them; vectors not allocated are ignored. A vector
   * already latched stays pending and is taken as spurious (an IRR bit cannot be withdrawn).
   */
  freeMsiVectors(vectors: readonly number[]): void {
    for (const v of vectors) {
      if (!Number.isInteger(v) || v < 0 || v >= NUM_VECTORS || this.msiAllocated[v] === 0) continue;
      this.msiAllocated[v] = 0;
      this.handlers[v] = null;
      this.msiInUse--;
    }
  }

  /** MSI vectors currently allocated. */
  get msiVectorsAllocated(): number {
    return this.msiInUse;
  }

  /** Checks that `vector` was handed out by the MSI allocator. */
  private checkMsiVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= NUM_VECTORS || this.msiAllocated[vector] === 0) {
      throw new VirtioError('INVALID_STATE', `vector ${String(vector)} is not an allocated msi vector`);
    }
  }

  /** Whether `vector` is latched and not yet taken. */
  isPending(vector: number): boolean {
    if (!Number.isInteger(vector) || vector < 0 || vector >= NUM_VECTORS) return false;
    return (this.pending[vector >>> 5] & (1 << (vector & 31))) !== 0;
  }

  /**
   * `sti; hlt`: takes every pending vector, lowest first, until none is pending. For each: clear the
   * pending bit, run the handler (or count it spurious when none is bound), then EOI. The EOI goes to
   * the wired controller only for vectors it owns (the LAPIC broadcasts EOI only for level-triggered
   * vectors; an MSI vector is edge-triggered). Vectors delivered by a handler are taken by this same
   * loop.
   *
   * Why lowest first: deterministic, and it matches line order (line 0 first, like the 8259 PIC's
   * IRQ0-highest priority). A real LAPIC takes the highest priority class first; nothing in a
   * virtio guest depends on the order.
   *
   * When a handler throws, its vector is still EOI'd (so the line is not left in service forever)
   * and the error propagates; vectors still pending are taken by the next halt.
   * @throws VirtioError `TIMEOUT` when nothing is pending (the guest would halt forever), or when
   *   more than `maxHandlerRunsPerHalt` vectors are taken in one halt (an interrupt storm)
   * @throws VirtioError `INVALID_STATE` when called from inside an interrupt handler
   */
  halt(): void {
    if (this.halting) {
      throw new VirtioError('INVALID_STATE', 'halt called from inside an interrupt handler');
    }
    let vector = this.lowestPending();
    if (vector < 0) {
      throw new VirtioError(
        'TIMEOUT',
        'halt with no interrupt pending: the guest would halt forever (in-process, nothing else can raise an interrupt)',
      );
    }
    this.counts[0]++;
    this.halting = true;
    try {
      let runs = 0;
      while (vector >= 0) {
        if (runs === this.maxRuns) {
          throw new VirtioError(
            'TIMEOUT',
            `interrupt storm: ${runs} interrupts taken in one halt and vector ${vector} is pending again`,
          );
        }
        runs++;
        this.pending[vector >>> 5] &= ~(1 << (vector & 31));
        this.taken[vector]++;
        const handler = this.handlers[vector];
        try {
          if (handler !== null) handler();
          else this.counts[1]++;
        } finally {
          this.eoi(vector);
        }
        vector = this.lowestPending();
      }
    } finally {
      this.halting = false;
    }
  }

  /** Times `vector` was taken. */
  takenCount(vector: number): number {
    return Number.isInteger(vector) && vector >= 0 && vector < NUM_VECTORS ? this.taken[vector] : 0;
  }

  /** A snapshot of the counters (allocates; not for the hot path). */
  stats(): CpuStats {
    const vectors: CpuVectorStats[] = [];
    let interrupts = 0;
    for (let v = 0; v < NUM_VECTORS; v++) {
      const n = this.taken[v];
      if (n !== 0) {
        vectors.push({ vector: v, taken: n });
        interrupts += n;
      }
    }
    let msiHandlers = 0;
    for (let v = 0; v < NUM_VECTORS; v++) {
      if (this.msiAllocated[v] === 1 && this.handlers[v] !== null) msiHandlers++;
    }
    return {
      halts: this.counts[0],
      interrupts,
      spurious: this.counts[1],
      coalesced: this.counts[2],
      eois: this.counts[3],
      levelEois: this.counts[4],
      edgeEois: this.counts[3] - this.counts[4],
      msiVectorsAllocated: this.msiInUse,
      msiHandlers,
      msiAllocFailures: this.counts[5],
      vectors,
    };
  }

  /** Zeroes every counter; pending vectors, handlers and MSI allocations stay. */
  resetStats(): void {
    this.taken.fill(0);
    this.counts.fill(0);
  }

  /**
   * The LAPIC EOI write for `vector`, broadcast to the wired controller when it owns the vector (a
   * level-triggered line). An MSI vector is edge-triggered: its EOI is counted but never reaches
   * the controller.
   */
  private eoi(vector: number): void {
    this.counts[3]++;
    if (this.controller.lineOf(vector) >= 0) {
      this.counts[4]++;
      this.controller.eoi(vector);
    }
  }

  /** Lowest pending vector, or -1. Allocation-free. */
  private lowestPending(): number {
    const p = this.pending;
    for (let w = 0; w < p.length; w++) {
      const bits = p[w];
      // bits & -bits isolates the lowest set bit; 31 - clz32 gives its index.
      if (bits !== 0) return w * 32 + 31 - Math.clz32(bits & -bits);
    }
    return -1;
  }
}
