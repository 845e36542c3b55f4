/**
 * {@link ConsoleBackend}s over Node streams: the process's stdin/stdout (for the CLI), files
 * (output appended, input read from a file), and TCP sockets on loopback (connecting to a server,
 * or listening for one client).
 *
 * Every backend copies the bytes the device hands it before returning (they may be a view of
 * guest memory), reports congestion through `writable()` once its stream holds more than
 * `highWaterMark` bytes, and forwards the device's pause/resume to its input stream, so a fast
 * producer (a large input file, a chatty peer) is slowed down instead of overflowing the device's
 * bounded input buffer.
 *
 * @packageDocumentation
 */

import { closeSync, createReadStream, openSync, type ReadStream, writeSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { ConsoleBackend } from '../device/index.js';
import { VirtioError } from '../spec/index.js';

/** Default bytes a backend lets its output stream hold before it reports congestion. */
export const CONSOLE_STREAM_HIGH_WATER = 64 * 1024;

/** Counters of a Node console backend. */
export interface ConsoleStreamCounters {
  /** Bytes handed to the output stream. */
  bytesOut: number;
  /** Bytes read from the input stream. */
  bytesIn: number;
  /** Output bytes discarded because no output was connected (a listening socket without client). */
  outputDropped: number;
  /** Errors the streams reported. */
  errors: number;
}

/** Options of a {@link StreamConsoleBackend}. */
export interface StreamConsoleOptions {
  /** Bytes the output stream may hold before `writable()` turns false. Default 64 KiB. */
  highWaterMark?: number;
  /** Destroy the input and end the output on close (default true; false for stdin/stdout). */
  closeStreams?: boolean;
  /** Receives one line per stream error. */
  log?: (message: string) => void;
}

/** A console backend over a readable (input, may be null) and a writable (output, may be null). */
export class StreamConsoleBackend implements ConsoleBackend {
  /** Counters since construction. */
  readonly counters: ConsoleStreamCounters = { bytesOut: 0, bytesIn: 0, outputDropped: 0, errors: 0 };
  private readonly input: Readable | null;
  private readonly output: Writable | null;
  private readonly highWaterMark: number;
  private readonly closeStreams: boolean;
  private readonly log: ((message: string) => void) | undefined;
  private readonly onError = (e: Error): void => {
    this.counters.errors++;
    this.log?.(`console stream: ${e.message}`);
  };
  private dataListener: ((chunk: Buffer | string) => void) | null = null;
  private drainListener: (() => void) | null = null;
  private closed = false;

  /**
   * @throws VirtioError `INVALID_ARGUMENT` for a high-water mark that is not a positive integer
   */
  constructor(input: Readable | null, output: Writable | null, options: StreamConsoleOptions = {}) {
    const hwm = options.highWaterMark ?? CONSOLE_STREAM_HIGH_WATER;
    if (!Number.isSafeInteger(hwm) || hwm < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `console stream high-water mark ${String(hwm)} is invalid`);
    }
    this.input = input;
    this.output = output;
    this.highWaterMark = hwm;
    this.closeStreams = options.closeStreams ?? true;
    this.log = options.log;
    input?.on('error', this.onError);
    if (output !== null && (output as unknown) !== input) output.on('error', this.onError);
  }

  /** Copies `bytes` and writes them to the output (discarded and counted without one). */
  write(bytes: Uint8Array): void {
    const out = this.output;
    if (out === null || this.closed || out.destroyed) {
      this.counters.outputDropped += bytes.length;
      return;
    }
    this.counters.bytesOut += bytes.length;
    out.write(Buffer.from(bytes));
  }

  /** False while the output stream holds `highWaterMark` bytes or more. */
  writable(): boolean {
    const out = this.output;
    return out === null || out.destroyed || out.writableLength < this.highWaterMark;
  }

  /** Calls `handler` on the output stream's `drain`. */
  onDrain(handler: () => void): void {
    if (this.output === null) return;
    if (this.drainListener !== null) this.output.off('drain', this.drainListener);
    this.drainListener = handler;
    this.output.on('drain', handler);
  }

  /** Starts reading the input (flowing mode), handing every chunk to `handler`. */
  onData(handler: (bytes: Uint8Array) => void): void {
    const input = this.input;
    if (input === null) return;
    if (this.dataListener !== null) input.off('data', this.dataListener);
    this.dataListener = (chunk: Buffer | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      this.counters.bytesIn += bytes.length;
      handler(bytes);
    };
    input.on('data', this.dataListener);
  }

  /** Pauses the input stream. */
  pause(): void {
    this.input?.pause();
  }

  /** Resumes the input stream. */
  resume(): void {
    if (!this.closed) this.input?.resume();
  }

  /** Detaches from the streams; destroys the input and ends the output unless told not to. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const { input, output } = this;
    if (input !== null && this.dataListener !== null) input.off('data', this.dataListener);
    if (output !== null && this.drainListener !== null) output.off('drain', this.drainListener);
    if (this.closeStreams) {
      input?.destroy();
      if (output !== null && (output as unknown) !== input) output.end();
    } else {
      input?.pause();
    }
  }
}

/** Options of {@link stdioConsole}. */
export interface StdioConsoleOptions extends Omit<StreamConsoleOptions, 'closeStreams'> {
  /** Input stream (default `process.stdin`). */
  stdin?: Readable & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
  /** Output stream (default `process.stdout`). */
  stdout?: Writable;
  /**
   * Put a terminal stdin in raw mode, so keys reach the guest as typed (Ctrl-C included) and the
   * guest does the echo; restored on close. Default false.
   */
  raw?: boolean;
}

/** A console backend over the process's stdin and stdout (the CLI's terminal). */
export class StdioConsoleBackend extends StreamConsoleBackend {
  private readonly stdin: StdioConsoleOptions['stdin'];
  private readonly rawSet: boolean;

  /** @param options - streams (default the process's), raw mode */
  constructor(options: StdioConsoleOptions = {}) {
    const stdin = options.stdin ?? process.stdin;
    const stdout = options.stdout ?? process.stdout;
    super(stdin, stdout, { ...options, closeStreams: false });
    this.stdin = stdin;
    this.rawSet = (options.raw ?? false) && stdin.isTTY === true && typeof stdin.setRawMode === 'function';
    if (this.rawSet) stdin.setRawMode?.(true);
  }

  /** Detaches; restores cooked mode when raw mode was set. */
  override close(): void {
    super.close();
    if (this.rawSet) this.stdin?.setRawMode?.(false);
  }
}

/** Options of {@link FileConsoleBackend.open}. */
export interface FileConsoleOptions {
  /** File the guest's output is appended to (created if missing). Omit to discard output. */
  output?: string;
  /** File whose contents are the guest's input, read once from the start. Omit for no input. */
  input?: string;
  /** Bytes per input read (default 4096). */
  chunkSize?: number;
}

/**
 * A console backend over files: output appended with one synchronous write per segment (never
 * congested, nothing buffered in the process), input read from a file in chunks, paced by the
 * device's pause/resume.
 */
export class FileConsoleBackend implements ConsoleBackend {
  /** Counters since construction. */
  readonly counters: ConsoleStreamCounters = { bytesOut: 0, bytesIn: 0, outputDropped: 0, errors: 0 };
  /** Settles when the whole input file was delivered (at once when there is no input file). */
  readonly inputDone: Promise<void>;
  private fd: number | null;
  private readonly inputPath: string | undefined;
  private readonly chunkSize: number;
  private stream: ReadStream | null = null;
  private paused = false;
  private finish: () => void = () => {};

  private constructor(fd: number | null, options: FileConsoleOptions) {
    this.fd = fd;
    this.inputPath = options.input;
    this.chunkSize = options.chunkSize ?? 4096;
    this.inputDone = new Promise((resolve) => {
      this.finish = resolve;
    });
    if (this.inputPath === undefined) this.finish();
  }

  /**
   * Opens the output file for appending; the input file is opened when the device registers.
   * @throws VirtioError `INVALID_ARGUMENT` for a chunk size that is not a positive integer
   * @throws Error from `fs.openSync` when the output cannot be opened
   */
  static open(options: FileConsoleOptions): FileConsoleBackend {
    const chunk = options.chunkSize ?? 4096;
    if (!Number.isSafeInteger(chunk) || chunk < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `console file chunk size ${String(chunk)} is invalid`);
    }
    const fd = options.output === undefined ? null : openSync(options.output, 'a');
    return new FileConsoleBackend(fd, options);
  }

  /** Appends `bytes` to the output file (discarded and counted without one, or after close). */
  write(bytes: Uint8Array): void {
    if (this.fd === null) {
      this.counters.outputDropped += bytes.length;
      return;
    }
    let off = 0;
    while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
    this.counters.bytesOut += bytes.length;
  }

  /** Starts reading the input file into `handler`. */
  onData(handler: (bytes: Uint8Array) => void): void {
    if (this.inputPath === undefined || this.stream !== null) return;
    const s = createReadStream(this.inputPath, { highWaterMark: this.chunkSize });
    this.stream = s;
    s.on('data', (chunk: Buffer | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      this.counters.bytesIn += bytes.length;
      handler(bytes);
    });
    s.on('end', () => this.finish());
    s.on('error', () => {
      this.counters.errors++;
      this.finish();
    });
    if (this.paused) s.pause();
  }

  /** Pauses reading the input file. */
  pause(): void {
    this.paused = true;
    this.stream?.pause();
  }

  /** Resumes reading the input file. */
  resume(): void {
    this.paused = false;
    this.stream?.resume();
  }

  /** Closes the output file and stops reading input. */
  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
    this.stream?.destroy();
    this.finish();
  }
}

/** Options of {@link SocketConsoleBackend.connect} and {@link SocketConsoleBackend.listen}. */
export interface SocketConsoleOptions {
  /** TCP port (0 to listen on any free port). */
  port: number;
  /** Address (default `127.0.0.1`: the console is a shell, keep it on loopback). */
  host?: string;
  /** Bytes the socket may hold before `writable()` turns false. Default 64 KiB. */
  highWaterMark?: number;
}

/**
 * A console backend over one TCP connection: either connected to a server
 * ({@link SocketConsoleBackend.connect}) or accepting one client at a time
 * ({@link SocketConsoleBackend.listen}; further clients are refused while one is connected).
 * Output while no client is connected is discarded and counted (`outputDropped`), as QEMU's
 * socket chardev does; input exists only while a client is connected.
 */
export class SocketConsoleBackend implements ConsoleBackend {
  /** Counters since construction. */
  readonly counters: ConsoleStreamCounters = { bytesOut: 0, bytesIn: 0, outputDropped: 0, errors: 0 };
  private socket: Socket | null = null;
  private server: Server | null = null;
  private readonly highWaterMark: number;
  private dataHandler: ((bytes: Uint8Array) => void) | null = null;
  private drainHandler: (() => void) | null = null;
  private paused = false;
  private closed = false;
  private waiters: Array<() => void> = [];

  private constructor(highWaterMark: number | undefined) {
    const hwm = highWaterMark ?? CONSOLE_STREAM_HIGH_WATER;
    if (!Number.isSafeInteger(hwm) || hwm < 1) {
      throw new VirtioError('INVALID_ARGUMENT', `console socket high-water mark ${String(hwm)} is invalid`);
    }
    this.highWaterMark = hwm;
  }

  /**
   * Connects to `host:port` and resolves once connected.
   * @throws VirtioError `INVALID_ARGUMENT` for a bad high-water mark; rejects with the socket error
   */
  static connect(options: SocketConsoleOptions): Promise<SocketConsoleBackend> {
    const b = new SocketConsoleBackend(options.highWaterMark);
    return new Promise((resolve, reject) => {
      const s = createConnection({ port: options.port, host: options.host ?? '127.0.0.1' });
      const fail = (e: Error): void => reject(e);
      s.once('error', fail);
      s.once('connect', () => {
        s.off('error', fail);
        b.attach(s);
        resolve(b);
      });
    });
  }

  /**
   * Listens on `host:port` and resolves once listening ({@link SocketConsoleBackend.port} tells
   * the port chosen for port 0).
   * @throws VirtioError `INVALID_ARGUMENT` for a bad high-water mark; rejects with the listen error
   */
  static listen(options: SocketConsoleOptions): Promise<SocketConsoleBackend> {
    const b = new SocketConsoleBackend(options.highWaterMark);
    return new Promise((resolve, reject) => {
      const server = createServer((s) => {
        if (b.socket !== null || b.closed) {
          s.destroy();
          return;
        }
        b.attach(s);
      });
      b.server = server;
      server.once('error', reject);
      server.listen(options.port, options.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        server.on('error', () => b.counters.errors++);
        resolve(b);
      });
    });
  }

  /** The listening port (listen mode), or the local port of the connection. */
  get port(): number {
    const a = this.server?.address();
    if (a !== null && a !== undefined && typeof a === 'object') return a.port;
    return this.socket?.localPort ?? 0;
  }

  /** True while a peer is connected. */
  get connected(): boolean {
    return this.socket !== null;
  }

  /** Resolves when a peer is connected (at once if one is). */
  waitForPeer(): Promise<void> {
    if (this.socket !== null) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private attach(s: Socket): void {
    this.socket = s;
    s.on('data', (chunk: Buffer) => {
      this.counters.bytesIn += chunk.length;
      this.dataHandler?.(chunk);
    });
    s.on('drain', () => this.drainHandler?.());
    s.on('error', () => this.counters.errors++);
    s.on('close', () => {
      if (this.socket === s) this.socket = null;
      // Output no longer waits for a peer that is gone.
      this.drainHandler?.();
    });
    if (this.paused) s.pause();
    for (const w of this.waiters.splice(0)) w();
  }

  /** Copies `bytes` to the peer (discarded and counted without one). */
  write(bytes: Uint8Array): void {
    const s = this.socket;
    if (s === null || s.destroyed) {
      this.counters.outputDropped += bytes.length;
      return;
    }
    this.counters.bytesOut += bytes.length;
    s.write(Buffer.from(bytes));
  }

  /** False while the socket holds `highWaterMark` bytes or more. */
  writable(): boolean {
    const s = this.socket;
    return s === null || s.destroyed || s.writableLength < this.highWaterMark;
  }

  /** Registers the drain handler. */
  onDrain(handler: () => void): void {
    this.drainHandler = handler;
  }

  /** Registers the input handler. */
  onData(handler: (bytes: Uint8Array) => void): void {
    this.dataHandler = handler;
  }

  /** Pauses reading from the peer. */
  pause(): void {
    this.paused = true;
    this.socket?.pause();
  }

  /** Resumes reading from the peer. */
  resume(): void {
    this.paused = false;
    this.socket?.resume();
  }

  /** Closes the connection and the listening socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.destroy();
    this.socket = null;
    this.server?.close();
    this.server = null;
  }
}
