/**
 * A {@link BlockBackend} over a host file (a raw disk image), with synchronous `node:fs` calls.
 *
 * The size is fixed when the file is opened: the backend never writes past it, so a guest can
 * never grow the image. Flush is `fsync`. Discard and write-zeroes both write zeroes: Node has no
 * `fallocate(PUNCH_HOLE)`, so the file does not become sparse again (correct, since a discarded
 * range may read back as anything, zeroes included; only space is not given back).
 *
 * @packageDocumentation
 */

import * as fs from 'node:fs';
import { type BlockBackend, checkBackendRange } from '../device/index.js';
import { VirtioError } from '../spec/index.js';

/** Options of a {@link FileBlockBackend}. */
export interface FileBlockBackendOptions {
  /** Open the file read-only (O_RDONLY): every write, discard and write-zeroes throws. */
  readOnly?: boolean;
  /**
   * When the file does not exist, create it with this size in bytes (sparse, via ftruncate). An
   * existing file is opened as it is and keeps its own size (unless `exclusive`). Not allowed with
   * `readOnly`.
   */
  createSize?: number;
  /** With `createSize`: fail with `BACKEND_IO` when the file already exists (O_EXCL). */
  exclusive?: boolean;
}

/** Chunk for zero-filling (discard, write zeroes): one buffer per backend, made on first use. */
const ZERO_CHUNK = 64 * 1024;

/** The message of a caught value, for wrapping in a `VirtioError`. */
function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A raw disk image in a host file. */
export class FileBlockBackend implements BlockBackend {
  /** The path the file was opened at (for messages). */
  readonly path: string;
  /** The file size at open, in bytes; never changes (the backend never grows the file). */
  readonly size: number;
  /** Opened O_RDONLY. */
  readonly readOnly: boolean;
  private fd: number | null;
  private zeroes: Uint8Array | null = null;

  /**
   * Opens (or creates) the image.
   * @param path - host path of the image
   * @throws VirtioError `BACKEND_IO` when the file cannot be opened, created or sized (the message
   *   names the path), `INVALID_ARGUMENT` for a bad `createSize` or `createSize` with `readOnly`
   */
  constructor(path: string, options: FileBlockBackendOptions = {}) {
    this.path = path;
    this.readOnly = options.readOnly ?? false;
    const createSize = options.createSize;
    if (createSize !== undefined) {
      if (!Number.isSafeInteger(createSize) || createSize < 0) {
        throw new VirtioError(
          'INVALID_ARGUMENT',
          `invalid disk image size ${String(createSize)} for ${path}`,
        );
      }
      if (this.readOnly) {
        throw new VirtioError('INVALID_ARGUMENT', `cannot create read-only disk image ${path}`);
      }
    }
    let fd: number;
    let created = false;
    try {
      if (this.readOnly) {
        fd = fs.openSync(path, fs.constants.O_RDONLY);
      } else if (createSize !== undefined) {
        try {
          fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
          created = true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || options.exclusive === true) throw e;
          fd = fs.openSync(path, fs.constants.O_RDWR);
        }
      } else {
        fd = fs.openSync(path, fs.constants.O_RDWR);
      }
    } catch (e) {
      throw new VirtioError('BACKEND_IO', `cannot open disk image ${path}: ${messageOf(e)}`);
    }
    try {
      if (created) fs.ftruncateSync(fd, createSize);
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new Error('not a regular file');
      this.size = st.size;
    } catch (e) {
      fs.closeSync(fd);
      throw new VirtioError('BACKEND_IO', `cannot size disk image ${path}: ${messageOf(e)}`);
    }
    this.fd = fd;
  }

  /**
   * Creates a new image of `size` bytes (sparse) at `path`; refuses to touch an existing file.
   * @throws VirtioError `BACKEND_IO` when the file exists or cannot be created
   */
  static create(path: string, size: number): FileBlockBackend {
    return new FileBlockBackend(path, { createSize: size, exclusive: true });
  }

  /** True until {@link FileBlockBackend.close}. */
  get isOpen(): boolean {
    return this.fd !== null;
  }

  /** `pread` until `dst` is full. */
  read(offset: number, dst: Uint8Array): void {
    const fd = this.open('read');
    checkBackendRange('read', this.size, offset, dst.length);
    let done = 0;
    while (done < dst.length) {
      const n = this.io('read', () => fs.readSync(fd, dst, done, dst.length - done, offset + done));
      if (n === 0) {
        // The file shrank behind our back: report it rather than hand the guest stale bytes.
        throw new VirtioError(
          'BACKEND_IO',
          `unexpected end of disk image ${this.path} at ${String(offset + done)}`,
        );
      }
      done += n;
    }
  }

  /** `pwrite` until all of `src` is written; never past {@link FileBlockBackend.size}. */
  write(offset: number, src: Uint8Array): void {
    const fd = this.openWritable('write');
    checkBackendRange('write', this.size, offset, src.length);
    this.writeAll(fd, offset, src);
  }

  /** `fsync`: every completed write reaches the disk. */
  flush(): void {
    const fd = this.open('flush');
    this.io('flush', () => fs.fsyncSync(fd));
  }

  /** Zero-fills the range (no hole punching in Node; see the module comment). */
  discard(offset: number, length: number): void {
    this.zeroFill('discard', offset, length);
  }

  /** Zero-fills the range. */
  writeZeroes(offset: number, length: number): void {
    this.zeroFill('write zeroes', offset, length);
  }

  /** Closes the file; further calls throw `INVALID_STATE`. Closing twice is a no-op. */
  close(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    this.io('close', () => fs.closeSync(fd));
  }

  private zeroFill(what: string, offset: number, length: number): void {
    const fd = this.openWritable(what);
    checkBackendRange(what, this.size, offset, length);
    if (this.zeroes === null) this.zeroes = new Uint8Array(ZERO_CHUNK);
    const z = this.zeroes;
    for (let k = 0; k < length; k += z.length) {
      const n = Math.min(z.length, length - k);
      this.writeAll(fd, offset + k, n === z.length ? z : z.subarray(0, n));
    }
  }

  private writeAll(fd: number, offset: number, src: Uint8Array): void {
    let done = 0;
    while (done < src.length) {
      done += this.io('write', () => fs.writeSync(fd, src, done, src.length - done, offset + done));
    }
  }

  private open(what: string): number {
    if (this.fd === null) throw new VirtioError('INVALID_STATE', `${what} on closed disk image ${this.path}`);
    return this.fd;
  }

  private openWritable(what: string): number {
    const fd = this.open(what);
    if (this.readOnly) throw new VirtioError('BACKEND_IO', `${what} on read-only disk image ${this.path}`);
    return fd;
  }

  /** Runs one fs call, wrapping a host failure as `BACKEND_IO` with the path. */
  private io<T>(what: string, call: () => T): T {
    try {
      return call();
    } catch (e) {
      throw new VirtioError('BACKEND_IO', `${what} on disk image ${this.path} failed: ${messageOf(e)}`);
    }
  }
}
