/**
 * The seed v2 profile's message-signalled interrupts ("[PATCH v2 4/5] virtio-mmio: add MSI
 * interrupt feature support" and "[PATCH v2 5/5] virtio-mmio: MSI vector and event mapping",
 * Feb 2020), as an {@link InterruptDelivery}: while MSI is enabled every event becomes a message
 * (address, data) sent through an {@link MsiSink}; while it is disabled the events go to the
 * fallback delivery (the standard line, or several lines). Normative text: docs/profiles/seed-v2.md.
 *
 * ```
 * per vector v (0 .. vectorCount-1):  address low/high, data   latched by CONFIGURE
 *                                     configured, masked, pending bits
 * event -> vector:  non-sharing  config -> 0, queue i -> i + 1 (fixed; NO_VECTOR past the last vector)
 *                   sharing      config -> MAP_CONFIG'd vector, queue i -> MAP_QUEUE'd vector
 *                                (both NO_VECTOR after reset)
 * a vector sends when configured and not masked; otherwise it sets its pending bit, and the one
 * message is sent when it is unmasked (or configured): never lost, never doubled.
 * ```
 *
 * Register semantics live here; the register rows (profile.ts) check negotiation first and then
 * call {@link MsiDelivery.selectVector}, {@link MsiDelivery.command} and so on. Commands a guest
 * gets wrong are reported through the `onGuestError` callback and ignored (tier 1).
 *
 * @packageDocumentation
 */

import { InterruptBit, MSI_NO_VECTOR, MsiCmd, MsiStateBit, VirtioError } from '../../spec/index.js';
import type { InterruptDelivery } from '../interrupts.js';
import type { MsiSink } from '../types.js';

/** MSI configuration of a seed-profile device (`seed.msi`). */
export interface SeedMsiOptions {
  /**
   * MsiVecNum: number of vectors, 1..{@link MAX_MSI_VECTORS}. The seed's spec text says a
   * non-sharing device SHOULD have more vectors than queues and a sharing device SHOULD have at
   * least 2; fewer are accepted (to model a limited device the driver must fall back from).
   */
  readonly vectors: number;
  /** MsiState msi_sharing: dynamic mapping through MAP_CONFIG / MAP_QUEUE (true) or fixed (false). */
  readonly sharing: boolean;
}

/** Largest MsiVecNum accepted (the MSI-X table limit of PCI). */
export const MAX_MSI_VECTORS = 2048;

/** Counters of an {@link MsiDelivery}. */
export interface MsiDeliveryStats {
  /** Messages sent through the sink. */
  readonly messages: number;
  /** Messages sent, by vector. */
  readonly perVector: readonly number[];
  /** Events that set a pending bit (vector masked or not configured); coalesced ones included. */
  readonly latched: number;
  /** Events dropped while MSI was enabled because their event is mapped to NO_VECTOR. */
  readonly unmapped: number;
}

/** Counter slots. */
enum Count {
  Messages = 0,
  Latched = 1,
  Unmapped = 2,
}

/**
 * MSI state of one seed-profile device, and its interrupt delivery. Construct one per transport.
 */
export class MsiDelivery implements InterruptDelivery {
  /** MsiVecNum. */
  readonly vectorCount: number;
  /** MsiState msi_sharing. */
  readonly sharing: boolean;

  private readonly fallback: InterruptDelivery;
  private readonly sink: MsiSink;
  private readonly onGuestError: (message: string) => void;
  private readonly numQueues: number;

  private enabled = false;
  private vecSel = 0;
  private stagedLow = 0;
  private stagedHigh = 0;
  private stagedData = 0;
  /** Latched messages: [3v] address low, [3v+1] address high, [3v+2] data. */
  private readonly messages: Uint32Array;
  private readonly configured: Uint8Array;
  private readonly masked: Uint8Array;
  private readonly pending: Uint8Array;
  /** Scratch for ENABLE: vectors already signalled by the transfer. */
  private readonly transferred: Uint8Array;
  private configVector = MSI_NO_VECTOR;
  private readonly queueVector: Uint32Array;
  private readonly sent: Float64Array;
  private readonly counts = new Float64Array(3);

  /**
   * @param fallback - the wired delivery used while MSI is disabled
   * @param sink - where messages go
   * @param options - vector count and mapping mode
   * @param numQueues - the device's number of queues
   * @param onGuestError - reports a command the guest got wrong (the caller counts it)
   * @throws VirtioError `INVALID_ARGUMENT` for a vector count outside 1..{@link MAX_MSI_VECTORS}
   */
  constructor(
    fallback: InterruptDelivery,
    sink: MsiSink,
    options: SeedMsiOptions,
    numQueues: number,
    onGuestError: (message: string) => void,
  ) {
    const n = options.vectors;
    if (!Number.isInteger(n) || n < 1 || n > MAX_MSI_VECTORS) {
      throw new VirtioError(
        'INVALID_ARGUMENT',
        `msi vectors ${String(n)} outside 1..${String(MAX_MSI_VECTORS)}`,
      );
    }
    if (typeof options.sharing !== 'boolean') {
      throw new VirtioError('INVALID_ARGUMENT', 'msi sharing must be a boolean');
    }
    this.vectorCount = n;
    this.sharing = options.sharing;
    this.fallback = fallback;
    this.sink = sink;
    this.onGuestError = onGuestError;
    this.numQueues = numQueues;
    this.messages = new Uint32Array(3 * n);
    this.configured = new Uint8Array(n);
    this.masked = new Uint8Array(n);
    this.pending = new Uint8Array(n);
    this.transferred = new Uint8Array(n);
    this.queueVector = new Uint32Array(numQueues);
    this.sent = new Float64Array(n);
    this.resetMapping();
  }

  // ---------------------------------------------------------------------------------------------
  // Register semantics (called by the profile rows once VIRTIO_F_MMIO_MSI is negotiated).

  /** Whether MSI is enabled (MsiState msi_enabled). */
  get isEnabled(): boolean {
    return this.enabled;
  }

  /** MsiState: enabled bit 31, sharing bit 30 (the seed's driver header; its spec text says bits 0/1). */
  get state(): number {
    return ((this.enabled ? MsiStateBit.ENABLED : 0) | (this.sharing ? MsiStateBit.SHARING : 0)) >>> 0;
  }

  /** The MsiVecSel value last written. */
  get selectedVector(): number {
    return this.vecSel;
  }

  /**
   * MsiVecSel. A value that is neither a vector nor NO_VECTOR is a guest error; it is kept, so a
   * command that follows fails too instead of acting on an older selection.
   */
  selectVector(value: number): void {
    if (value !== MSI_NO_VECTOR && value >= this.vectorCount) {
      this.onGuestError(`MsiVecSel ${String(value)} out of range (${String(this.vectorCount)} vectors)`);
    }
    this.vecSel = value >>> 0;
  }

  /** MsiAddrLow: staged until CONFIGURE. */
  stageAddressLow(value: number): void {
    this.stagedLow = value >>> 0;
  }

  /** MsiAddrHigh: staged until CONFIGURE. */
  stageAddressHigh(value: number): void {
    this.stagedHigh = value >>> 0;
  }

  /** MsiData: staged until CONFIGURE. */
  stageData(value: number): void {
    this.stagedData = value >>> 0;
  }

  /** MsiCommand. `queueSel` is the transport's QueueSel (MAP_QUEUE acts on it). */
  command(cmd: number, queueSel: number): void {
    switch (cmd) {
      case MsiCmd.ENABLE:
        this.enable();
        return;
      case MsiCmd.DISABLE:
        this.disable();
        return;
      case MsiCmd.CONFIGURE:
        this.configure();
        return;
      case MsiCmd.MASK:
        this.mask();
        return;
      case MsiCmd.UNMASK:
        this.unmask();
        return;
      case MsiCmd.MAP_CONFIG:
      case MsiCmd.MAP_QUEUE:
        this.map(cmd, queueSel);
        return;
      default:
        this.onGuestError(`unknown MsiCommand ${String(cmd)}`);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Introspection (tests, reports).

  /** The message latched in vector `v`, or null when it was never configured (allocates). */
  message(v: number): { addressLow: number; addressHigh: number; data: number } | null {
    if (!Number.isInteger(v) || v < 0 || v >= this.vectorCount || this.configured[v] === 0) return null;
    return {
      addressLow: this.messages[3 * v],
      addressHigh: this.messages[3 * v + 1],
      data: this.messages[3 * v + 2],
    };
  }

  /** Whether vector `v` is masked. */
  isMasked(v: number): boolean {
    return this.masked[v] === 1;
  }

  /** Whether vector `v` holds a pending event. */
  isPending(v: number): boolean {
    return this.pending[v] === 1;
  }

  /** The vector the configuration event goes to (NO_VECTOR: none). */
  get configEventVector(): number {
    return this.configVector;
  }

  /** The vector the used-buffer event of queue `index` goes to (NO_VECTOR: none). */
  queueEventVector(index: number): number {
    return index >= 0 && index < this.numQueues ? this.queueVector[index] : MSI_NO_VECTOR;
  }

  /** Counters (allocates). */
  stats(): MsiDeliveryStats {
    return {
      messages: this.counts[Count.Messages],
      perVector: Array.from(this.sent),
      latched: this.counts[Count.Latched],
      unmapped: this.counts[Count.Unmapped],
    };
  }

  // ---------------------------------------------------------------------------------------------
  // InterruptDelivery.

  get definedBits(): number {
    return this.fallback.definedBits;
  }

  signalQueue(index: number): void {
    if (!this.enabled) {
      this.fallback.signalQueue(index);
      return;
    }
    this.event(this.queueVector[index]);
  }

  signalConfig(): void {
    if (!this.enabled) {
      this.fallback.signalConfig();
      return;
    }
    this.event(this.configVector);
  }

  readStatus(): number {
    // Seed: while MSI is enabled the device does not set InterruptStatus.
    return this.enabled ? 0 : this.fallback.readStatus();
  }

  ack(bits: number): void {
    // Seed: while MSI is enabled InterruptACK is ignored (there is nothing to acknowledge).
    if (!this.enabled) this.fallback.ack(bits);
  }

  /**
   * Device reset: MSI disabled, every vector unconfigured, unmasked and not pending, the staged
   * registers and MsiVecSel zero, sharing-mode mappings NO_VECTOR; the fallback is reset too.
   */
  reset(): void {
    this.enabled = false;
    this.vecSel = 0;
    this.stagedLow = 0;
    this.stagedHigh = 0;
    this.stagedData = 0;
    this.messages.fill(0);
    this.configured.fill(0);
    this.masked.fill(0);
    this.pending.fill(0);
    this.resetMapping();
    this.fallback.reset();
  }

  // ---------------------------------------------------------------------------------------------
  // Internals.

  /** Non-sharing: the fixed mapping; sharing: everything unmapped. */
  private resetMapping(): void {
    if (this.sharing) {
      this.configVector = MSI_NO_VECTOR;
      this.queueVector.fill(MSI_NO_VECTOR);
      return;
    }
    // Seed 5/5: "The first vector is for device configuration change event, the second vector is
    // for virtqueue 1, the third vector is for virtqueue 2 and so on" (driver: vector N+1 = queue N).
    this.configVector = 0;
    for (let i = 0; i < this.numQueues; i++) {
      this.queueVector[i] = i + 1 < this.vectorCount ? i + 1 : MSI_NO_VECTOR;
    }
  }

  /** An event for vector `v` while MSI is enabled. */
  private event(v: number): void {
    if (v === MSI_NO_VECTOR) {
      // Seed: "Setting a special NO_VECTOR value means disabling an interrupt for an event type."
      this.counts[Count.Unmapped]++;
      return;
    }
    if (this.masked[v] === 1 || this.configured[v] === 0) {
      // Seed 001 (MST): "as long as device does not lose interrupts while masked, all's well".
      this.pending[v] = 1;
      this.counts[Count.Latched]++;
      return;
    }
    this.send(v);
  }

  private send(v: number): void {
    this.counts[Count.Messages]++;
    this.sent[v]++;
    const m = this.messages;
    this.sink.send(m[3 * v], m[3 * v + 1], m[3 * v + 2]);
  }

  /** Sends the pending event of `v` if it may send now. */
  private flush(v: number): void {
    if (this.enabled && this.pending[v] === 1 && this.masked[v] === 0 && this.configured[v] === 1) {
      this.pending[v] = 0;
      this.send(v);
    }
  }

  /** The selected vector if it names one, else -1 after reporting `what`. */
  private selected(what: string): number {
    const v = this.vecSel;
    if (v >= this.vectorCount) {
      const name = v === MSI_NO_VECTOR ? 'no_vector' : String(v);
      this.onGuestError(`${what} with MsiVecSel ${name}, not a vector (${String(this.vectorCount)} vectors)`);
      return -1;
    }
    return v;
  }

  private enable(): void {
    if (this.enabled) {
      this.onGuestError('msi enable while msi is enabled');
      return;
    }
    // Events still pending on the wired line move to their vectors, and the line is lowered: while
    // MSI is enabled nobody reads InterruptStatus or writes InterruptACK, so a line left high would
    // stay high, and dropping the events would lose them. A queue bit does not say which queue, so
    // every queue's vector is signalled (a spurious interrupt is harmless, a lost one is not), each
    // vector once.
    const status = this.fallback.readStatus();
    this.fallback.reset();
    this.enabled = true;
    this.transferred.fill(0);
    if ((status & InterruptBit.CONFIG) !== 0) this.transfer(this.configVector);
    if ((status & InterruptBit.VRING) !== 0) {
      for (let i = 0; i < this.numQueues; i++) this.transfer(this.queueVector[i]);
    }
  }

  /** One event of the ENABLE transfer: at most once per vector. */
  private transfer(v: number): void {
    if (v !== MSI_NO_VECTOR) {
      if (this.transferred[v] === 1) return;
      this.transferred[v] = 1;
    }
    this.event(v);
  }

  private disable(): void {
    if (!this.enabled) {
      this.onGuestError('msi disable while msi is disabled');
      return;
    }
    this.enabled = false;
    // Pending vector events move to the line, for the same reason as in enable().
    for (let v = 0; v < this.vectorCount; v++) {
      if (this.pending[v] === 0) continue;
      this.pending[v] = 0;
      if (this.configVector === v) this.fallback.signalConfig();
      for (let i = 0; i < this.numQueues; i++) if (this.queueVector[i] === v) this.fallback.signalQueue(i);
    }
  }

  private configure(): void {
    const v = this.selected('msi configure');
    if (v < 0) return;
    // R5 (MST): "An interrupt sent between the writel operations will then be directed
    // incorrectly": the three staged words change the vector only here, in one step.
    const m = this.messages;
    m[3 * v] = this.stagedLow;
    m[3 * v + 1] = this.stagedHigh;
    m[3 * v + 2] = this.stagedData;
    this.configured[v] = 1;
    this.flush(v);
  }

  private mask(): void {
    const v = this.selected('msi mask');
    if (v >= 0) this.masked[v] = 1;
  }

  private unmask(): void {
    const v = this.selected('msi unmask');
    if (v < 0) return;
    this.masked[v] = 0;
    this.flush(v);
  }

  private map(cmd: number, queueSel: number): void {
    const what = cmd === MsiCmd.MAP_CONFIG ? 'msi map_config' : 'msi map_queue';
    if (!this.sharing) {
      // Seed 5/5: MAP_CONFIG and MAP_QUEUE "SHOULD only be used in MSI sharing mode"; the fixed
      // mapping of non-sharing mode cannot change.
      this.onGuestError(`${what} in non-sharing mode`);
      return;
    }
    const v = this.vecSel;
    if (v !== MSI_NO_VECTOR && v >= this.vectorCount) {
      this.onGuestError(`${what} with MsiVecSel ${String(v)}, not a vector or no_vector`);
      return;
    }
    if (cmd === MsiCmd.MAP_CONFIG) {
      this.configVector = v;
      return;
    }
    if (queueSel >= this.numQueues) {
      this.onGuestError(`msi map_queue for queue ${String(queueSel)}, which does not exist`);
      return;
    }
    this.queueVector[queueSel] = v;
  }
}
