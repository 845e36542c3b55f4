/**
 * A synchronous client of QEMU's qtest protocol (`softmmu/qtest.c`): one text command per line,
 * one `OK [value]` or `FAIL reason` answer per command, and asynchronous `IRQ raise N` /
 * `IRQ lower N` lines for intercepted interrupt inputs, which may arrive before an answer or
 * between commands. Every request has a timeout.
 *
 * @packageDocumentation
 */

import { hex, VirtioError } from '../../spec/index.js';
import type { SyncPipe } from './syncPipe.js';

/** Default per-request timeout (milliseconds). */
export const QTEST_REQUEST_TIMEOUT_MS = 5000;

/** 2^32, to combine 64-bit answers without BigInt. */
const TWO_POW_32 = 2 ** 32;

/** Largest number of lines the interrupt model tracks. */
const MAX_LINES = 256;

/** Parses an `IRQ raise N` / `IRQ lower N` line into the level table; false for other lines. */
function parseIrq(
  line: string,
  levels: Uint8Array,
  onIrq: ((n: number, up: boolean) => void) | null,
): boolean {
  if (!line.startsWith('IRQ ')) return false;
  const m = /^IRQ (raise|lower) (\d+)$/.exec(line);
  if (m === null) throw new VirtioError('BACKEND_IO', `qtest: malformed interrupt line '${line}'`);
  const n = Number(m[2]);
  if (n >= MAX_LINES) throw new VirtioError('BACKEND_IO', `qtest: interrupt line ${m[2]} out of range`);
  const up = m[1] === 'raise';
  levels[n] = up ? 1 : 0;
  if (onIrq !== null) onIrq(n, up);
  return true;
}

/** A synchronous qtest client over a {@link SyncPipe}. */
export class QtestClient {
  /** Per-request timeout in milliseconds. */
  timeoutMs: number;
  /** Current level of every intercepted line (1 raised), as the IRQ lines reported it. */
  private readonly levels = new Uint8Array(MAX_LINES);
  /** Called for every interrupt line change, in order (for recorders). */
  onIrq: ((line: number, raised: boolean) => void) | null = null;
  private readonly pipe: SyncPipe;
  /** Commands sent (for reports). */
  requests = 0;

  constructor(pipe: SyncPipe, timeoutMs = QTEST_REQUEST_TIMEOUT_MS) {
    this.pipe = pipe;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Sends one command and returns the text after `OK` (empty for a bare `OK`). Interrupt lines
   * that arrive first are applied to the level table.
   * @throws VirtioError `BACKEND_IO` for a `FAIL` answer or a lost QEMU, `TIMEOUT` when no answer comes
   */
  command(cmd: string): string {
    this.requests++;
    this.pipe.writeLine(cmd, this.timeoutMs);
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const line = this.pipe.readLineUntil(deadline);
      if (line === null) {
        throw new VirtioError('TIMEOUT', `qtest: no answer to '${cmd}' within ${String(this.timeoutMs)} ms`);
      }
      if (parseIrq(line, this.levels, this.onIrq)) continue;
      if (line === 'OK') return '';
      if (line.startsWith('OK ')) return line.slice(3);
      throw new VirtioError('BACKEND_IO', `qtest: '${cmd}' answered '${line}'`);
    }
  }

  /** Applies interrupt lines already readable, without waiting. */
  drainEvents(): void {
    for (let line = this.pipe.pollLine(); line !== null; line = this.pipe.pollLine()) {
      if (!parseIrq(line, this.levels, this.onIrq)) {
        throw new VirtioError('BACKEND_IO', `qtest: unexpected line '${line}' between commands`);
      }
    }
  }

  /** Level of intercepted line `n` as last reported (after draining readable events). */
  irqLevel(n: number): boolean {
    this.drainEvents();
    return this.levels[n] === 1;
  }

  /**
   * Waits until line `n` is raised; returns false after `timeoutMs` without it.
   * @throws VirtioError `BACKEND_IO` when QEMU is gone or sends something else
   */
  waitIrq(n: number, timeoutMs: number): boolean {
    const deadline = Date.now() + timeoutMs;
    this.drainEvents();
    while (this.levels[n] !== 1) {
      const line = this.pipe.readLineUntil(deadline);
      if (line === null) return false;
      if (!parseIrq(line, this.levels, this.onIrq)) {
        throw new VirtioError(
          'BACKEND_IO',
          `qtest: unexpected line '${line}' while waiting for an interrupt`,
        );
      }
    }
    return true;
  }

  /**
   * Waits up to `timeoutMs` for the next interrupt line (any line); false when none came.
   * @throws VirtioError `BACKEND_IO` when QEMU is gone or sends something else
   */
  waitAnyEvent(timeoutMs: number): boolean {
    const line = this.pipe.readLineUntil(Date.now() + timeoutMs);
    if (line === null) return false;
    if (!parseIrq(line, this.levels, this.onIrq)) {
      throw new VirtioError('BACKEND_IO', `qtest: unexpected line '${line}' while waiting for an interrupt`);
    }
    return true;
  }

  /** Parses an `OK 0x...` value of up to 64 bits (exact below 2^53). */
  private value(answer: string): number {
    const m = /^0x([0-9a-fA-F]{1,16})$/.exec(answer.trim());
    if (m === null) throw new VirtioError('BACKEND_IO', `qtest: malformed value '${answer}'`);
    const digits = m[1].padStart(16, '0');
    return Number.parseInt(digits.slice(0, 8), 16) * TWO_POW_32 + Number.parseInt(digits.slice(8), 16);
  }

  /** `readb`. */
  readb(addr: number): number {
    return this.value(this.command(`readb ${hex(addr)}`));
  }
  /** `readw`. */
  readw(addr: number): number {
    return this.value(this.command(`readw ${hex(addr)}`));
  }
  /** `readl`. */
  readl(addr: number): number {
    return this.value(this.command(`readl ${hex(addr)}`));
  }
  /** `readq` (exact below 2^53). */
  readq(addr: number): number {
    return this.value(this.command(`readq ${hex(addr)}`));
  }
  /** `writeb`. */
  writeb(addr: number, value: number): void {
    this.command(`writeb ${hex(addr)} ${hex(value & 0xff)}`);
  }
  /** `writew`. */
  writew(addr: number, value: number): void {
    this.command(`writew ${hex(addr)} ${hex(value & 0xffff)}`);
  }
  /** `writel`. */
  writel(addr: number, value: number): void {
    this.command(`writel ${hex(addr)} ${hex(value >>> 0)}`);
  }
  /** `writeq` of a value below 2^53, sent as hex digits (no BigInt). */
  writeq(addr: number, value: number): void {
    const hi = Math.floor(value / TWO_POW_32) >>> 0;
    const lo = (value % TWO_POW_32) >>> 0;
    this.command(`writeq ${hex(addr)} 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}`);
  }
  /** `b64read`: `length` bytes of guest memory into `dst`. */
  readMem(addr: number, dst: Uint8Array): void {
    if (dst.length === 0) return;
    const answer = this.command(`b64read ${hex(addr)} ${hex(dst.length)}`);
    const bytes = Buffer.from(answer.trim(), 'base64');
    if (bytes.length !== dst.length) {
      throw new VirtioError(
        'BACKEND_IO',
        `qtest: b64read of ${String(dst.length)} bytes at ${hex(addr)} gave ${String(bytes.length)}`,
      );
    }
    dst.set(bytes);
  }
  /** `b64write`: `src` into guest memory. */
  writeMem(addr: number, src: Uint8Array): void {
    if (src.length === 0) return;
    const b64 = Buffer.from(src.buffer, src.byteOffset, src.byteLength).toString('base64');
    this.command(`b64write ${hex(addr)} ${hex(src.length)} ${b64}`);
  }
  /** `memset`. */
  memset(addr: number, length: number, byte: number): void {
    if (length === 0) return;
    this.command(`memset ${hex(addr)} ${hex(length)} ${hex(byte & 0xff)}`);
  }
  /** `irq_intercept_in <qom path>`: interrupt inputs of that device are reported as IRQ lines. */
  interceptIn(qomPath: string): void {
    this.command(`irq_intercept_in ${qomPath}`);
  }
  /** `clock_step [ns]`: advances the virtual clock (to the next deadline without an argument). */
  clockStep(ns?: number): number {
    const answer = this.command(ns === undefined ? 'clock_step' : `clock_step ${String(ns)}`);
    return Number(answer.trim());
  }
}
