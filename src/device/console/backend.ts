/**
 * The host side of a console port: a byte stream in each direction. Pure (no Node): the Node
 * implementations (stdin/stdout, files, sockets) live in the `backend` layer; this module holds the
 * interface and an in-memory implementation for tests and embedders.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../spec/index.js';
import { utf8Decode, utf8Encode } from './utf8.js';

/**
 * A byte stream behind one console port.
 *
 * Output (guest to host): the device calls {@link ConsoleBackend.write} once per buffer segment, as
 * the guest's data arrives; nothing is gathered first. Flow control is optional: a backend that
 * implements {@link ConsoleBackend.writable} and {@link ConsoleBackend.onDrain} makes the device
 * leave transmit buffers in the ring while it is congested, so nothing is buffered without bound.
 *
 * Input (host to guest): the backend calls the handler given to {@link ConsoleBackend.onData}.
 * The device keeps what the guest has no buffer for in a bounded buffer, and may ask the backend
 * to {@link ConsoleBackend.pause} and {@link ConsoleBackend.resume} its input.
 */
export interface ConsoleBackend {
  /**
   * Takes bytes the guest wrote. `bytes` may be a view of guest memory valid only during the call:
   * a backend that keeps them must copy. May throw on a host failure (counted by the device).
   */
  write(bytes: Uint8Array): void;
  /** Registers the one handler of input bytes (the device copies them before returning). */
  onData(handler: (bytes: Uint8Array) => void): void;
  /** False while output is congested: the device stops taking transmit buffers until drain. */
  writable?(): boolean;
  /** Registers the handler called when output is no longer congested. */
  onDrain?(handler: () => void): void;
  /** Asks the backend to stop delivering input (the device's input buffer is full). */
  pause?(): void;
  /** Asks the backend to deliver input again (the guest took buffered input). */
  resume?(): void;
  /** Releases host resources (files, sockets, listeners). */
  close?(): void;
}

/**
 * An in-memory {@link ConsoleBackend}: collects output, injects input with
 * {@link MemoryConsoleBackend.push}, and can simulate congestion with
 * {@link MemoryConsoleBackend.setWritable}.
 */
export class MemoryConsoleBackend implements ConsoleBackend {
  /** Number of {@link ConsoleBackend.write} calls (segments handed over). */
  writes = 0;
  /** Whether the device asked input to pause (and has not resumed it). */
  paused = false;
  /** Times {@link ConsoleBackend.close} was called. */
  closed = 0;
  private chunks: Uint8Array[] = [];
  private total = 0;
  private handler: ((bytes: Uint8Array) => void) | null = null;
  private drain: (() => void) | null = null;
  private canWrite = true;

  /** Copies the bytes into the output log. */
  write(bytes: Uint8Array): void {
    this.writes++;
    this.chunks.push(bytes.slice());
    this.total += bytes.length;
  }

  /** Registers the device's input handler. */
  onData(handler: (bytes: Uint8Array) => void): void {
    this.handler = handler;
  }

  /** The congestion state set by {@link MemoryConsoleBackend.setWritable}. */
  writable(): boolean {
    return this.canWrite;
  }

  /** Registers the device's drain handler. */
  onDrain(handler: () => void): void {
    this.drain = handler;
  }

  /** Records the request. */
  pause(): void {
    this.paused = true;
  }

  /** Records the request. */
  resume(): void {
    this.paused = false;
  }

  /** Counts the call. */
  close(): void {
    this.closed++;
  }

  /**
   * Sends input to the device as a host stream would.
   * @throws VirtioError `INVALID_STATE` when no device registered a handler
   */
  push(bytes: Uint8Array | string): void {
    if (this.handler === null) throw new VirtioError('INVALID_STATE', 'console backend has no device');
    this.handler(typeof bytes === 'string' ? utf8Encode(bytes) : bytes);
  }

  /** Sets the congestion state; going writable calls the drain handler. */
  setWritable(writable: boolean): void {
    this.canWrite = writable;
    if (writable) this.drain?.();
  }

  /** Everything written so far, concatenated, and clears the log. */
  take(): Uint8Array {
    const out = this.output();
    this.chunks = [];
    this.total = 0;
    return out;
  }

  /** Everything written so far, concatenated. */
  output(): Uint8Array {
    const out = new Uint8Array(this.total);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }

  /** The output so far decoded as UTF-8. */
  text(): string {
    return utf8Decode(this.output());
  }
}
