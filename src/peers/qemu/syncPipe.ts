/**
 * A synchronous, line-oriented channel to a QEMU character device of type `pipe` (two FIFOs,
 * `<path>.in` that QEMU reads and `<path>.out` that QEMU writes). Our guest drivers are
 * synchronous (an MMIO read returns a number), so the qtest and QMP clients cannot wait on Node
 * events: both FIFO ends are opened non-blocking and polled with a bounded sleep, and every wait
 * has a deadline.
 *
 * QEMU opens both FIFOs read-write, so once it is up our reads see EAGAIN (no data) rather than
 * end-of-file; end-of-file means QEMU has gone.
 *
 * @packageDocumentation
 */

import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs';
import { VirtioError } from '../../spec/index.js';

/** A one-word shared buffer for {@link sleepSync}. */
const SLEEP_CELL = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the calling thread for `ms` milliseconds (fractions allowed). */
export function sleepSync(ms: number): void {
  Atomics.wait(SLEEP_CELL, 0, 0, ms);
}

/** Polls before the first sleep: qtest answers in tens of microseconds. */
const SPIN_POLLS = 200;

/** Sleep between polls once spinning gave nothing (milliseconds). */
const POLL_SLEEP_MS = 0.2;

/** Largest chunk read at once. */
const READ_CHUNK = 64 * 1024;

/** Error codes of a non-blocking FIFO that mean "try again". */
function isRetry(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK';
}

/** A synchronous line channel over a QEMU pipe chardev. */
export class SyncPipe {
  /** Name for messages (`qtest`, `qmp`). */
  readonly name: string;
  private readonly readFd: number;
  private readonly writeFd: number;
  private readonly chunk = Buffer.allocUnsafe(READ_CHUNK);
  private pending = '';
  private closed = false;

  private constructor(name: string, readFd: number, writeFd: number) {
    this.name = name;
    this.readFd = readFd;
    this.writeFd = writeFd;
  }

  /**
   * Opens both ends once QEMU has opened its side. Returns null while QEMU has not opened `<path>.in`
   * yet (the caller retries, watching the process); throws for any other failure.
   */
  static tryOpen(name: string, path: string): SyncPipe | null {
    let writeFd: number;
    try {
      // O_NONBLOCK: fails with ENXIO until a reader (QEMU) has the FIFO open, instead of hanging.
      writeFd = openSync(`${path}.in`, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENXIO') return null;
      throw e;
    }
    const readFd = openSync(`${path}.out`, constants.O_RDONLY | constants.O_NONBLOCK);
    return new SyncPipe(name, readFd, writeFd);
  }

  /**
   * Writes one line (a newline is appended).
   * @throws VirtioError `BACKEND_IO` when QEMU is gone, `TIMEOUT` when it stops reading
   */
  writeLine(line: string, timeoutMs: number): void {
    this.checkOpen();
    const data = Buffer.from(`${line}\n`, 'latin1');
    const deadline = Date.now() + timeoutMs;
    let off = 0;
    let polls = 0;
    while (off < data.length) {
      try {
        off += writeSync(this.writeFd, data, off, data.length - off);
        polls = 0;
        continue;
      } catch (e) {
        if (!isRetry(e)) {
          throw new VirtioError('BACKEND_IO', `${this.name}: write failed: ${(e as Error).message}`);
        }
      }
      if (Date.now() > deadline) {
        throw new VirtioError('TIMEOUT', `${this.name}: qemu stopped reading for ${String(timeoutMs)} ms`);
      }
      if (++polls > SPIN_POLLS) sleepSync(POLL_SLEEP_MS);
    }
  }

  /** Moves whatever is readable now into the pending text: true if some came, false if none, 'eof' when QEMU is gone. */
  private fill(): boolean | 'eof' {
    try {
      const n = readSync(this.readFd, this.chunk, 0, READ_CHUNK, null);
      if (n === 0) return 'eof';
      this.pending += this.chunk.toString('latin1', 0, n);
      return true;
    } catch (e) {
      if (isRetry(e)) return false;
      throw new VirtioError('BACKEND_IO', `${this.name}: read failed: ${(e as Error).message}`);
    }
  }

  /** The next complete line if one is buffered or readable now, else null. Never waits. */
  pollLine(): string | null {
    this.checkOpen();
    let nl = this.pending.indexOf('\n');
    if (nl < 0) {
      const r = this.fill();
      if (r === 'eof') throw new VirtioError('BACKEND_IO', `${this.name}: qemu closed the channel`);
      nl = this.pending.indexOf('\n');
      if (nl < 0) return null;
    }
    const line = this.pending.slice(0, nl).replace(/\r$/, '');
    this.pending = this.pending.slice(nl + 1);
    return line;
  }

  /**
   * Waits for the next line until the deadline (an absolute `Date.now()` value); null on timeout.
   * @throws VirtioError `BACKEND_IO` when QEMU is gone
   */
  readLineUntil(deadline: number): string | null {
    let polls = 0;
    for (;;) {
      const line = this.pollLine();
      if (line !== null) return line;
      if (Date.now() > deadline) return null;
      if (++polls > SPIN_POLLS) sleepSync(POLL_SLEEP_MS);
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new VirtioError('INVALID_STATE', `${this.name}: channel closed`);
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
