/**
 * The shared-memory layout of the threaded runtime: the control block every thread maps (per-vCPU
 * exit mailbox, posted-interrupt request register, halt word, doorbell ring) and the counter block
 * the vCPUs write and anyone may read. Pure data and `Atomics`: no Node imports, usable from the
 * main thread, the VMM worker and the vCPU workers alike.
 *
 * Control block (`Int32Array` over a `SharedArrayBuffer`):
 *
 * ```
 *   word 0..15                 header
 *     [0] VMM_EVENT            bumped (Atomics.add) by anyone who leaves work for the VMM thread
 *     [1] VMM_SLEEPING         1 while the VMM thread is (about to be) blocked on VMM_EVENT
 *     [2] VMM_STOP             1: the VMM loop returns
 *     [3] VMM_CONTROL          count of control messages posted to the VMM's port
 *   16 + v * VCPU_WORDS        vCPU v
 *     [0] MB_STATE             ExitState: IDLE / REQUEST / DONE
 *     [1] MB_OP                ExitOp
 *     [2] MB_ADDR_LO [3] MB_ADDR_HI    guest physical address (or vector / line for EOI, IRQCHIP)
 *     [4] MB_WIDTH             1, 2, 4 or 8
 *     [5] MB_VAL_LO  [6] MB_VAL_HI     written value / value read
 *     [7] HALTED               1 while the vCPU is (about to be) blocked in halt
 *     [8] WAKE                 bumped by an injector that found HALTED = 1; the vCPU waits on it
 *     [9..16] PIR              posted-interrupt request bits: vector w*32+b is bit b of word w
 *     [17] RING_HEAD           doorbells produced (vCPU is the only writer)
 *     [18] RING_TAIL           doorbells consumed (VMM is the only writer)
 *     [19] INJECTS [20] COALESCED [21] WAKE_NOTIFIES   injector-side counters (Atomics.add)
 *   RING_BASE + (v * RING_SIZE + i) * RING_ENTRY_WORDS   doorbell ring entry i of vCPU v
 *     [0] addr lo [1] addr hi [2] value [3] RingOp (WRITE, or EOI with value = vector)
 *   ISR_BASE + d               exit model 'local': InterruptStatus mirror of device d
 * ```
 *
 * Counter block (`Float64Array`; each vCPU is the only writer of its own rows, exact to 2^53):
 *
 * ```
 *   v * VCPU_COUNTERS + VcpuCounter.*                       per-vCPU exit and interrupt counters
 *   REG_BASE + ((v * devices + d) * REG_SLOTS + slot) * RegKind.COUNT + kind
 *                                                           per-register counts, one 32-bit slot each
 * ```
 *
 * @packageDocumentation
 */

/** Mailbox state of one vCPU. Written only as described in docs/vmm.md ("mailbox protocol"). */
export const ExitState = {
  /** No exit in flight; the vCPU owns the mailbox. */
  IDLE: 0,
  /** The vCPU posted an exit and waits; the VMM owns the mailbox. */
  REQUEST: 1,
  /** The VMM answered; the vCPU owns the mailbox again and resets it to IDLE. */
  DONE: 2,
} as const;

/** What a trapped exit asks of the VMM. */
export const ExitOp = {
  /** MMIO read of MB_WIDTH bytes at the address; the answer goes to MB_VAL. */
  READ: 1,
  /** MMIO write of MB_VAL (MB_WIDTH bytes) at the address. */
  WRITE: 2,
  /** LAPIC EOI broadcast for a level-triggered vector (MB_ADDR_LO = vector). */
  EOI: 3,
  /** IOAPIC redirection entry write: MB_ADDR_LO = line, MB_VAL_LO = 1 unmask / 0 mask. */
  IRQCHIP: 4,
} as const;

/** Words of the control-block header. */
export const HEADER_WORDS = 16;
/** Header word indices. */
export const Hdr = {
  VMM_EVENT: 0,
  VMM_SLEEPING: 1,
  VMM_STOP: 2,
  VMM_CONTROL: 3,
} as const;

/** Words per vCPU in the control block. */
export const VCPU_WORDS = 32;
/** Per-vCPU word offsets (relative to {@link vcpuBase}). */
export const Vw = {
  MB_STATE: 0,
  MB_OP: 1,
  MB_ADDR_LO: 2,
  MB_ADDR_HI: 3,
  MB_WIDTH: 4,
  MB_VAL_LO: 5,
  MB_VAL_HI: 6,
  HALTED: 7,
  WAKE: 8,
  PIR: 9,
  RING_HEAD: 17,
  RING_TAIL: 18,
  INJECTS: 19,
  COALESCED: 20,
  WAKE_NOTIFIES: 21,
} as const;

/** Words of the posted-interrupt request register: 256 vectors. */
export const PIR_WORDS = 8;
/** Doorbell ring entries per vCPU (a power of two). */
export const RING_SIZE = 256;
/** Words per doorbell ring entry. */
export const RING_ENTRY_WORDS = 4;

/** First control word of vCPU `v`. */
export function vcpuBase(v: number): number {
  return HEADER_WORDS + v * VCPU_WORDS;
}

/** First word of the doorbell rings, for `vcpus` vCPUs. */
export function ringBase(vcpus: number): number {
  return HEADER_WORDS + vcpus * VCPU_WORDS;
}

/** What a doorbell ring entry carries. */
export const RingOp = {
  /** A posted 32-bit MMIO write (a notification, or a local-model InterruptACK). */
  WRITE: 0,
  /** A posted EOI of a level-triggered vector (local exit model); value = vector. */
  EOI: 1,
} as const;

/** Devices the 'local' exit model can mirror InterruptStatus for. */
export const MAX_MIRRORED_DEVICES = 64;

/** First word of the InterruptStatus mirrors, for `vcpus` vCPUs. */
export function isrBase(vcpus: number): number {
  return ringBase(vcpus) + vcpus * RING_SIZE * RING_ENTRY_WORDS;
}

/** Bytes of the control block for `vcpus` vCPUs. */
export function controlBytes(vcpus: number): number {
  return (isrBase(vcpus) + MAX_MIRRORED_DEVICES) * 4;
}

/** Per-vCPU counters (Float64 slots of the counter block). */
export const VcpuCounter = {
  /** Trapped MMIO reads (read exits). */
  READ_EXITS: 0,
  /** Trapped MMIO writes (write exits), trapped notifications included. */
  WRITE_EXITS: 1,
  /** Trapped EOIs of level-triggered vectors. */
  EOI_EXITS: 2,
  /** Halts that blocked and were woken by an injection (HLT wake-ups). */
  HLT_WAKEUPS: 3,
  /** Trapped interrupt-controller writes (mask/unmask a line). */
  IRQCHIP_EXITS: 4,
  /** Notifications posted to the doorbell ring (no exit). */
  DOORBELLS: 5,
  /** Posted notifications that found the ring full and trapped instead. */
  RING_FULL: 6,
  /** Calls of halt. */
  HALTS: 7,
  /** Halts satisfied while polling (no sleep). */
  HALT_POLL_HITS: 8,
  /** Exits whose answer arrived while the vCPU was still polling. */
  EXIT_POLL_HITS: 9,
  /** Vectors taken (handler runs plus spurious). */
  INTERRUPTS: 10,
  /** Vectors taken with no handler bound. */
  SPURIOUS: 11,
  /** Interrupts taken at an exit's return (the safe point), not in halt. */
  TAKEN_AT_EXIT: 12,
  /** Thread CPU time of the last program run, in nanoseconds (-1: unknown). */
  CPU_NS: 13,
  /** Wall time of the last program run, in nanoseconds. */
  WALL_NS: 14,
  /** Exit model 'local': InterruptStatus reads served from the shared mirror (no exit). */
  LOCAL_READS: 15,
  /** Exit model 'local': InterruptACK writes applied to the mirror and posted (no exit). */
  LOCAL_WRITES: 16,
  /** Exit model 'local': EOIs posted to the ring (no exit). */
  LOCAL_EOIS: 17,
} as const;
/** Counter slots per vCPU. */
export const VCPU_COUNTERS = 24;

/** Per-register count kinds. */
export const RegKind = {
  TRAPPED_READ: 0,
  TRAPPED_WRITE: 1,
  POSTED_WRITE: 2,
  LOCAL: 3,
  COUNT: 4,
} as const;

/** 32-bit register slots counted per device window (window bytes / 4, capped). */
export const REG_SLOTS = 128;

/** First Float64 slot of the per-register counters. */
export function regBase(vcpus: number): number {
  return vcpus * VCPU_COUNTERS;
}

/** Float64 slots of the counter block. */
export function counterSlots(vcpus: number, devices: number): number {
  return regBase(vcpus) + vcpus * Math.max(devices, 1) * REG_SLOTS * RegKind.COUNT;
}

/** 2^32, to split values into 32-bit halves without BigInt. */
export const TWO_POW_32 = 2 ** 32;

/**
 * Posts `vector` to vCPU `v` (posted interrupt / irqfd): sets the PIR bit, and only when the vCPU
 * announced it is halting bumps its WAKE word and notifies it. Callable from any thread.
 * Allocation-free. Returns false when the vector was already pending (coalesced).
 *
 * Ordering (Dekker, all seq-cst): injector `or(PIR)` then `load(HALTED)`; halting vCPU
 * `store(HALTED, 1)` then `load(WAKE)` then checks PIR. Either the vCPU sees the bit, or the
 * injector sees HALTED = 1 and changes WAKE, so `Atomics.wait(WAKE, seen)` cannot sleep through it.
 */
export function injectVector(ctl: Int32Array, v: number, vector: number): boolean {
  const base = vcpuBase(v);
  const bit = 1 << (vector & 31);
  Atomics.add(ctl, base + Vw.INJECTS, 1);
  const old = Atomics.or(ctl, base + Vw.PIR + (vector >>> 5), bit);
  if ((old & bit) !== 0) {
    Atomics.add(ctl, base + Vw.COALESCED, 1);
    return false;
  }
  if (Atomics.load(ctl, base + Vw.HALTED) === 1) {
    Atomics.add(ctl, base + Vw.WAKE, 1);
    Atomics.add(ctl, base + Vw.WAKE_NOTIFIES, 1);
    Atomics.notify(ctl, base + Vw.WAKE, 1);
  }
  return true;
}

/**
 * Leaves work for the VMM thread: bumps VMM_EVENT and notifies only when the VMM announced it is
 * sleeping (event suppression: a notify with a blocked waiter costs the sender a futex syscall).
 * Same Dekker pairing as {@link injectVector} with the VMM's `store(VMM_SLEEPING, 1)` then
 * `load(VMM_EVENT)`.
 */
export function kickVmm(ctl: Int32Array): void {
  Atomics.add(ctl, Hdr.VMM_EVENT, 1);
  if (Atomics.load(ctl, Hdr.VMM_SLEEPING) === 1) Atomics.notify(ctl, Hdr.VMM_EVENT, 1);
}
