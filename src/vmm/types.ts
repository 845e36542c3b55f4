/**
 * Plain data shared by the main thread, the VMM worker and the vCPU workers: the machine
 * description, the waiting policy and the messages of the control plane. Everything here crosses
 * threads by structured clone.
 *
 * @packageDocumentation
 */

/** How a notification write (QueueNotify) reaches the device. */
export type NotifyMode = 'trapped' | 'posted';

/**
 * Waiting policy of one side: spin this many `Atomics.load` polls before blocking in
 * `Atomics.wait` (KVM `halt_poll_ns` as an iteration budget). 0 blocks at once. Budgets under
 * ~1000 polls collapse into blocking on this machine (docs/vmm.md, "waiting policy").
 */
export interface WaitPolicy {
  /** Polls a vCPU makes before sleeping, for an exit's answer and in halt. Default 0. */
  readonly vcpuSpin?: number;
  /** Polls the VMM thread makes before sleeping on its event word. Default 0. */
  readonly vmmSpin?: number;
}

/**
 * Where InterruptStatus, InterruptACK and the EOI are served: `'trap'` (default) makes each an
 * exit to the VMM thread; `'local'` serves them on the vCPU thread from shared memory, as
 * Firecracker's vCPU threads run device register code: InterruptStatus reads a mirror the VMM
 * refreshes before every line delivery, InterruptACK clears mirror bits and is posted to the
 * ring, the EOI is posted to the ring. Same number of accesses, no exits for these three.
 */
export type ExitModel = 'trap' | 'local';

/** A module and one of its exports, loaded inside a worker (module path or file URL). */
export interface ModuleRef {
  /** Absolute path or `file:` URL of an ES module (compiled JavaScript). */
  readonly module: string;
  /** Name of the exported function. */
  readonly export: string;
}

/** One device as the guest's machine description (device tree) lists it. */
export interface DeviceInfo {
  /** Name on the bus. */
  readonly name: string;
  /** Index in the description (per-register counters are kept by this index). */
  readonly index: number;
  /** Guest physical address of the register window. */
  readonly base: number;
  /** Window size in bytes. */
  readonly size: number;
  /** The standard wired interrupt line (`irqLines[0]`). */
  readonly line: number;
  /** Every wired line, in the order of `Machine`'s description (standard, config, queues). */
  readonly irqLines: readonly number[];
  /** Virtio device type. */
  readonly deviceId: number;
  /**
   * The seed profile's per-queue notification addresses, `[start, end)` as window offsets, or
   * null. Writes there are notifications like QueueNotify (posted in posted mode).
   */
  readonly notify: { readonly start: number; readonly end: number } | null;
  /** The device speaks the seed v2 profile (the guest driver is told so at probe). */
  readonly seed: boolean;
}

/** The machine description the VMM worker publishes once its devices exist. */
export interface MachineInfo {
  /** Devices in bus order of creation. */
  readonly devices: readonly DeviceInfo[];
  /** Vector of wired line 0 (line n delivers `lineVectorBase + n`). */
  readonly lineVectorBase: number;
  /** Number of wired lines. */
  readonly lineCount: number;
}

/** What the vCPU worker gets at start (besides its control port). */
export interface VcpuInit {
  readonly vcpu: number;
  readonly vcpuCount: number;
  readonly ctl: SharedArrayBuffer;
  readonly counters: SharedArrayBuffer;
  readonly ram: SharedArrayBuffer;
  readonly machine: MachineInfo;
  readonly notify: NotifyMode;
  readonly exitModel: ExitModel;
  readonly spin: number;
  /** Record a trace. */
  readonly trace: boolean;
  /** DMA window of this vCPU's guest allocator. */
  readonly dmaBase: number;
  readonly dmaSize: number;
}

/** What the VMM worker gets at start. */
export interface VmmInit {
  readonly vcpuCount: number;
  readonly ctl: SharedArrayBuffer;
  readonly ram: SharedArrayBuffer;
  readonly setup: ModuleRef | null;
  readonly setupArgs: unknown;
  readonly spin: number;
  readonly lines: number;
  readonly exitModel: ExitModel;
  /** Record a trace. */
  readonly trace: boolean;
}

/** An error as it crosses a thread boundary. */
export interface ErrorInfo {
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly stack?: string;
}

/** Turns anything thrown into an {@link ErrorInfo}. */
export function errorInfo(e: unknown): ErrorInfo {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return {
      name: e.name,
      message: e.message,
      code: typeof code === 'string' ? code : undefined,
      stack: e.stack,
    };
  }
  return { name: 'Error', message: String(e) };
}
