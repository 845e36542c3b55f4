/**
 * A {@link VirtioDevice} for transport tests (Firecracker's `DummyDevice`): it does no work, records
 * every call the transport makes, and has knobs to make it refuse things.
 *
 * ```
 * const dev = new DummyDevice({ queueMaxSizes: [16, 8], configSize: 8 });
 * dev.acceptFeatures = false;         // the next FEATURES_OK is refused (2.2.2)
 * dev.acceptConfigWrites = false;     // configuration writes are refused
 * dev.changeConfig(0, [1, 2]);        // host-side change: ConfigGeneration moves
 * ```
 *
 * @packageDocumentation
 */

import type { DeviceContext, DeviceHost, VirtioDevice } from '../device/index.js';
import { Features } from '../device/index.js';
import { DeviceId, VirtioError } from '../spec/index.js';

/** Options of a {@link DummyDevice}. */
export interface DummyDeviceOptions {
  /** DeviceID; default {@link DeviceId.ENTROPY}. */
  deviceId?: number;
  /** QueueNumMax of each queue; default `[16, 8]`. */
  queueMaxSizes?: readonly number[];
  /** Device-specific feature bits offered; default bits 0 and 5. */
  features?: Iterable<number>;
  /** Configuration space size; default 16. Initial contents are 0x00, 0x01, 0x02, ... */
  configSize?: number;
}

/** One configuration write the transport passed through. */
export interface ConfigWrite {
  /** Offset into the configuration space. */
  readonly offset: number;
  /** Access width. */
  readonly width: 1 | 2 | 4;
  /** Value written. */
  readonly value: number;
}

/** A recording device with failure knobs. */
export class DummyDevice implements VirtioDevice {
  /** DeviceID. */
  readonly deviceId: number;
  /** QueueNumMax of each queue. */
  readonly queueMaxSizes: readonly number[];
  /** Device-specific features offered. */
  readonly features: Features;
  /** Configuration space size. */
  readonly configSize: number;
  /** The configuration bytes (little-endian fields). */
  readonly config: Uint8Array;

  /** Knob: what {@link DummyDevice.validateFeatures} answers. */
  acceptFeatures = true;
  /** Knob: what {@link DummyDevice.writeConfig} answers (false leaves the bytes unchanged). */
  acceptConfigWrites = true;

  /** The host interface the transport attached, or null. */
  host: DeviceHost | null = null;
  /** The live context, from activate until reset. */
  ctx: DeviceContext | null = null;
  /** Calls of attach. */
  attaches = 0;
  /** Calls of activate. */
  activations = 0;
  /** Calls of reset. */
  resets = 0;
  /** Queue index of every notify call, in order. */
  readonly notifyLog: number[] = [];
  /** Queue index of every resetQueue call, in order. */
  readonly queueResets: number[] = [];
  /** The feature set of every validateFeatures call, in order. */
  readonly validated: Features[] = [];
  /** Every configuration write passed through, accepted or not. */
  readonly configWrites: ConfigWrite[] = [];

  private readonly view: DataView;

  /** @param options - see {@link DummyDeviceOptions} */
  constructor(options: DummyDeviceOptions = {}) {
    this.deviceId = options.deviceId ?? DeviceId.ENTROPY;
    this.queueMaxSizes = options.queueMaxSizes ?? [16, 8];
    this.features = new Features(options.features ?? [0, 5]);
    this.configSize = options.configSize ?? 16;
    this.config = new Uint8Array(this.configSize);
    for (let i = 0; i < this.configSize; i++) this.config[i] = i & 0xff;
    this.view = new DataView(this.config.buffer);
  }

  attach(host: DeviceHost): void {
    this.host = host;
    this.attaches++;
  }

  validateFeatures(accepted: Features): boolean {
    this.validated.push(accepted);
    return this.acceptFeatures;
  }

  readConfig(offset: number, width: 1 | 2 | 4): number {
    if (width === 1) return this.view.getUint8(offset);
    if (width === 2) return this.view.getUint16(offset, true);
    return this.view.getUint32(offset, true);
  }

  writeConfig(offset: number, width: 1 | 2 | 4, value: number): boolean {
    this.configWrites.push({ offset, width, value });
    if (!this.acceptConfigWrites) return false;
    if (width === 1) this.view.setUint8(offset, value);
    else if (width === 2) this.view.setUint16(offset, value, true);
    else this.view.setUint32(offset, value, true);
    return true;
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.activations++;
  }

  notify(index: number): void {
    this.notifyLog.push(index);
  }

  resetQueue(index: number): void {
    this.queueResets.push(index);
  }

  reset(): void {
    this.ctx = null;
    this.resets++;
  }

  /**
   * A host-side configuration change: writes `bytes` at `offset` and tells the transport.
   * @throws VirtioError `INVALID_STATE` when no transport is attached
   */
  changeConfig(offset: number, bytes: ArrayLike<number>): void {
    if (this.host === null) throw new VirtioError('INVALID_STATE', 'dummy device is not attached');
    this.config.set(bytes, offset);
    this.host.configChanged();
  }
}
