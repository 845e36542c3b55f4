/**
 * The host end of QEMU's console port in the peer checks: a `pipe` chardev (two FIFOs,
 * `<path>.in` that QEMU reads and `<path>.out` that QEMU writes) behind a `virtconsole`, read and
 * written byte for byte, synchronously, with deadlines: our guest driver runs synchronously over
 * qtest, so the test reads what the guest wrote after its write returns, and writes what the guest
 * should read before the driver halts for the interrupt.
 *
 * @packageDocumentation
 */

import { spawn } from 'node:child_process';
import { closeSync, constants, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { VirtioError } from '../../spec/index.js';
import { sleepSync } from './syncPipe.js';

/** Sleep between polls of the FIFO (milliseconds). */
const POLL_SLEEP_MS = 0.5;

/** Largest chunk read at once. */
const READ_CHUNK = 64 * 1024;

function isRetry(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK';
}

/** A synchronous byte channel to a QEMU pipe chardev. */
export class QemuConsoleChannel {
  /** Bytes written to QEMU so far. */
  written = 0;
  /** Bytes read from QEMU so far. */
  read = 0;
  private readonly chunk = Buffer.allocUnsafe(READ_CHUNK);
  private closed = false;
  private later = 0;

  private constructor(
    /** The FIFOs' common path (`<path>.in`, `<path>.out`). */
    readonly path: string,
    private readonly readFd: number,
    private readonly writeFd: number,
  ) {}

  /**
   * Opens both FIFOs once QEMU has opened its side; null while it has not (the caller retries).
   * @throws the open error for anything but "no reader yet"
   */
  static tryOpen(path: string): QemuConsoleChannel | null {
    let writeFd: number;
    try {
      writeFd = openSync(`${path}.in`, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENXIO') return null;
      throw e;
    }
    const readFd = openSync(`${path}.out`, constants.O_RDONLY | constants.O_NONBLOCK);
    return new QemuConsoleChannel(path, readFd, writeFd);
  }

  /**
   * Writes all of `bytes` for the guest (QEMU takes them as the guest posts receive buffers; the
   * FIFO holds 64 KiB meanwhile).
   * @throws VirtioError `TIMEOUT` when the FIFO stays full, `BACKEND_IO` when QEMU is gone
   */
  write(bytes: Uint8Array, timeoutMs = 5000): void {
    this.checkOpen();
    const deadline = Date.now() + timeoutMs;
    let off = 0;
    while (off < bytes.length) {
      try {
        off += writeSync(this.writeFd, bytes, off, bytes.length - off);
        continue;
      } catch (e) {
        if (!isRetry(e))
          throw new VirtioError('BACKEND_IO', `console chardev: write failed: ${(e as Error).message}`);
      }
      if (Date.now() > deadline) {
        throw new VirtioError('TIMEOUT', `console chardev: qemu took no input for ${String(timeoutMs)} ms`);
      }
      sleepSync(POLL_SLEEP_MS);
    }
    this.written += bytes.length;
  }

  /**
   * Has a separate process write `bytes` for the guest after `delayMs`, so that they arrive while
   * the (synchronous) guest driver is halted waiting for an interrupt. The child is not waited for.
   */
  writeLater(bytes: Uint8Array, delayMs: number): void {
    this.checkOpen();
    const file = `${this.path}.later${String(this.later++)}`;
    writeFileSync(file, bytes);
    const child = spawn(
      'sh',
      ['-c', `sleep ${String(delayMs / 1000)}; cat "$0" > "$1"`, file, `${this.path}.in`],
      {
        stdio: 'ignore',
      },
    );
    child.unref();
    this.written += bytes.length;
  }

  /** What QEMU wrote and nobody read yet, possibly empty. Never waits. */
  readAvailable(): Uint8Array {
    this.checkOpen();
    const parts: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      let n: number;
      try {
        n = readSync(this.readFd, this.chunk, 0, READ_CHUNK, null);
      } catch (e) {
        if (isRetry(e)) break;
        throw new VirtioError('BACKEND_IO', `console chardev: read failed: ${(e as Error).message}`);
      }
      if (n === 0) throw new VirtioError('BACKEND_IO', 'console chardev: qemu closed the channel');
      parts.push(Uint8Array.prototype.slice.call(this.chunk, 0, n));
      total += n;
    }
    const out = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    this.read += total;
    return out;
  }

  /**
   * Reads until `n` bytes came or the deadline passed, and returns what came (shorter on timeout:
   * the caller compares, so a short read shows what was lost). Bytes past `n` are returned too.
   */
  readAtLeast(n: number, timeoutMs = 5000): Uint8Array {
    const deadline = Date.now() + timeoutMs;
    const parts: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const got = this.readAvailable();
      if (got.length > 0) {
        parts.push(got);
        total += got.length;
      }
      if (total >= n || Date.now() > deadline) break;
      if (got.length === 0) sleepSync(POLL_SLEEP_MS);
    }
    const out = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }

  private checkOpen(): void {
    if (this.closed) throw new VirtioError('INVALID_STATE', 'console chardev: channel closed');
  }

  /** Closes both ends (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of [this.readFd, this.writeFd]) {
      try {
        closeSync(fd);
      } catch {
        // Already gone with the process.
      }
    }
  }
}
