import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QemuConsoleChannel } from './consoleChannel.js';
import { sleepSync } from './syncPipe.js';

/** Two FIFOs and, when asked, QEMU's side of them (both opened read-write, as char-pipe does). */
let dir: string;
let path: string;
let qemuFds: number[] = [];

function qemuSide(): { inFd: number; outFd: number } {
  const inFd = openSync(`${path}.in`, constants.O_RDWR | constants.O_NONBLOCK);
  const outFd = openSync(`${path}.out`, constants.O_RDWR | constants.O_NONBLOCK);
  qemuFds.push(inFd, outFd);
  return { inFd, outFd };
}

function readAll(fd: number, n: number, timeoutMs = 2000): Uint8Array {
  const out = new Uint8Array(n);
  let off = 0;
  const deadline = Date.now() + timeoutMs;
  while (off < n && Date.now() < deadline) {
    try {
      off += readSync(fd, out, off, n - off, null);
    } catch {
      sleepSync(1);
    }
  }
  return out.subarray(0, off);
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'virtio-mmio-conchan-'));
  path = join(dir, 'console');
  execFileSync('mkfifo', [`${path}.in`, `${path}.out`]);
  qemuFds = [];
});

afterEach(() => {
  for (const fd of qemuFds) {
    try {
      closeSync(fd);
    } catch {
      // closed by the test
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('QemuConsoleChannel (plain FIFOs standing in for QEMU)', () => {
  it('does not open before QEMU has the FIFO open (null, retried by the caller)', () => {
    expect(QemuConsoleChannel.tryOpen(path)).toBeNull();
    expect(() => QemuConsoleChannel.tryOpen(join(dir, 'missing'))).toThrow(/ENOENT/);
  });

  it('moves bytes both ways exactly, reads nothing when nothing came, and times out short', () => {
    const q = qemuSide();
    const ch = QemuConsoleChannel.tryOpen(path);
    expect(ch).not.toBeNull();
    if (ch === null) return;
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    ch.write(all);
    expect(readAll(q.inFd, 256)).toEqual(all);
    expect(ch.written).toBe(256);
    expect(ch.readAvailable()).toEqual(new Uint8Array(0));
    writeSync(q.outFd, all);
    expect(ch.readAtLeast(256, 2000)).toEqual(all);
    expect(ch.read).toBe(256);
    writeSync(q.outFd, all.subarray(0, 10));
    const short = ch.readAtLeast(20, 50);
    expect(short).toEqual(all.subarray(0, 10));
    ch.close();
    ch.close();
    expect(() => ch.readAvailable()).toThrow(/channel closed/);
    expect(() => ch.write(all)).toThrow(/channel closed/);
    expect(() => ch.writeLater(all, 1)).toThrow(/channel closed/);
  });

  it('writes later from another process, while this thread is blocked', () => {
    const q = qemuSide();
    const ch = QemuConsoleChannel.tryOpen(path);
    if (ch === null) throw new Error('not opened');
    const line = new TextEncoder().encode('later\n');
    ch.writeLater(line, 100);
    expect(readAll(q.inFd, 0)).toEqual(new Uint8Array(0));
    // Synchronous wait: the bytes can only come from the child process.
    expect(readAll(q.inFd, line.length, 5000)).toEqual(line);
    ch.close();
  });

  it('reports QEMU gone (end of file) as an error', () => {
    const q = qemuSide();
    const ch = QemuConsoleChannel.tryOpen(path);
    if (ch === null) throw new Error('not opened');
    closeSync(q.outFd);
    expect(() => ch.readAvailable()).toThrow(/qemu closed the channel/);
    ch.close();
  });
});
