/**
 * Storage behind a virtio-blk device: the {@link BlockBackend} interface and an in-memory
 * implementation. File-backed storage lives in `src/backend` (it needs `node:fs`).
 *
 * Backends are byte-addressed and synchronous. The device checks every guest-supplied range
 * against {@link BlockBackend.size} before calling, so a backend that sees an out-of-range call
 * is facing a programmer error and throws. A backend also throws for a host I/O failure; the
 * device turns either into VIRTIO_BLK_S_IOERR and a counter, never into an exception out of
 * `notify`.
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../../spec/index.js';

/**
 * A block device's storage. Offsets and lengths are in bytes. Calls are synchronous (a later
 * version may add an asynchronous variant for backends that cannot block the device thread).
 */
export interface BlockBackend {
  /** Size in bytes, fixed for the backend's lifetime. The device exposes `floor(size / 512)` sectors. */
  readonly size: number;
  /** True when the storage cannot be written; the device then offers VIRTIO_BLK_F_RO. */
  readonly readOnly: boolean;
  /** Fills all of `dst` from `offset`. */
  read(offset: number, dst: Uint8Array): void;
  /** Writes all of `src` at `offset`. */
  write(offset: number, src: Uint8Array): void;
  /** Makes every completed write durable (fsync for a file). */
  flush(): void;
  /** The range's contents are no longer needed (they may read back as anything afterwards). */
  discard(offset: number, length: number): void;
  /** The range reads back as zeroes afterwards. */
  writeZeroes(offset: number, length: number): void;
  /** Releases host resources; the backend is unusable afterwards. */
  close?(): void;
}

/**
 * Checks `[offset, offset + length)` against a backend of `size` bytes.
 * @throws VirtioError `BACKEND_IO` when the range is not inside the backend
 */
export function checkBackendRange(what: string, size: number, offset: number, length: number): void {
  // offset and length are non-negative safe integers below, so offset + length is exact.
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > size
  ) {
    throw new VirtioError(
      'BACKEND_IO',
      `${what} of ${String(length)} bytes at ${hex(offset)} outside backend of ${hex(size)} bytes`,
    );
  }
}

/** Options of a {@link MemoryBlockBackend}. */
export interface MemoryBlockBackendOptions {
  /** Refuse writes (the device offers VIRTIO_BLK_F_RO). Default false. */
  readOnly?: boolean;
}

/**
 * A disk held in a `Uint8Array` (a RAM disk, or a test fixture). Discard and write-zeroes both
 * zero the range. `flush` does nothing: there is nothing more durable to commit to.
 */
export class MemoryBlockBackend implements BlockBackend {
  /** The disk contents (live: tests and embedders may inspect or prefill them). */
  readonly bytes: Uint8Array;
  /** Whether writes, discards and write zeroes throw. */
  readonly readOnly: boolean;
  /** Number of {@link MemoryBlockBackend.flush} calls, for tests. */
  flushes = 0;

  /**
   * @param storage - a size in bytes (zero-filled), or the bytes to use (not copied)
   * @throws VirtioError `INVALID_ARGUMENT` for a size that is not a non-negative safe integer, or
   *   one the host cannot allocate
   */
  constructor(storage: number | Uint8Array, options: MemoryBlockBackendOptions = {}) {
    if (typeof storage === 'number') {
      if (!Number.isSafeInteger(storage) || storage < 0) {
        throw new VirtioError('INVALID_ARGUMENT', `invalid memory disk size ${String(storage)}`);
      }
      try {
        this.bytes = new Uint8Array(storage);
      } catch {
        // Past the engine's typed array limit, or out of host memory: a host error, not a RangeError.
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `cannot allocate a memory disk of ${String(storage)} bytes`,
        );
      }
    } else {
      this.bytes = storage;
    }
    this.readOnly = options.readOnly ?? false;
  }

  /** The disk size: the length of {@link MemoryBlockBackend.bytes}. */
  get size(): number {
    return this.bytes.length;
  }

  read(offset: number, dst: Uint8Array): void {
    checkBackendRange('read', this.bytes.length, offset, dst.length);
    dst.set(this.bytes.subarray(offset, offset + dst.length));
  }

  write(offset: number, src: Uint8Array): void {
    this.checkWritable('write');
    checkBackendRange('write', this.bytes.length, offset, src.length);
    this.bytes.set(src, offset);
  }

  /** Counts the call; memory has nothing more durable to commit to. */
  flush(): void {
    this.flushes++;
  }

  discard(offset: number, length: number): void {
    this.checkWritable('discard');
    checkBackendRange('discard', this.bytes.length, offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  writeZeroes(offset: number, length: number): void {
    this.checkWritable('write zeroes');
    checkBackendRange('write zeroes', this.bytes.length, offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  private checkWritable(what: string): void {
    if (this.readOnly) throw new VirtioError('BACKEND_IO', `${what} on a read-only memory disk`);
  }
}
