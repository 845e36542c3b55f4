import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleDeviceOptions,
  ConsoleDriver,
} from '../device/index.js';
import { Machine } from '../platform/index.js';
import { VirtioError } from '../spec/index.js';
import {
  FileConsoleBackend,
  SocketConsoleBackend,
  StdioConsoleBackend,
  StreamConsoleBackend,
} from './consoleStreams.js';

function pattern(n: number, seed = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed + i * 11 + (i >> 10)) & 0xff);
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A machine with a console on `backend` and the probed guest driver. */
function machine(backend: ConsoleBackend, options: Partial<ConsoleDeviceOptions> = {}) {
  const m = new Machine({ ramSize: 8 << 20 });
  const dev = new ConsoleDevice({ backend, ...options });
  m.addDevice(dev, { name: 'console0' });
  const drv = ConsoleDriver.probe(m.probe('console0')!, { bufferSize: 1024 });
  return { m, dev, drv };
}

/** Lets the event loop run until the guest has read `n` bytes (input arrives asynchronously). */
async function guestRead(drv: ConsoleDriver, n: number, ms = 10_000): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let got = 0;
  const deadline = Date.now() + ms;
  while (got < n) {
    if (Date.now() > deadline) throw new Error(`guest read ${got} of ${n} bytes before the deadline`);
    await tick();
    const c = drv.read();
    chunks.push(c);
    got += c.length;
  }
  return Buffer.concat(chunks);
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met before the deadline');
    await tick();
  }
}

describe('StreamConsoleBackend', () => {
  it('copies output before returning, reads input, and forwards pause and resume', async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const b = new StreamConsoleBackend(input, output);
    const got: Buffer[] = [];
    output.on('data', (c: Buffer) => got.push(c));
    const src = Uint8Array.from([1, 2, 3]);
    b.write(src);
    src.fill(9);
    const seen: number[] = [];
    b.onData((bytes) => seen.push(...bytes));
    input.write(Buffer.from([7, 8]));
    await tick();
    expect(seen).toEqual([7, 8]);
    b.pause();
    input.write(Buffer.from([5]));
    await tick();
    expect(seen).toEqual([7, 8]);
    b.resume();
    await tick();
    expect(seen).toEqual([7, 8, 5]);
    expect([...Buffer.concat(got)]).toEqual([1, 2, 3]);
    expect(b.counters).toMatchObject({ bytesOut: 3, bytesIn: 3 });
    b.close();
    expect(input.destroyed).toBe(true);
    b.write(Uint8Array.from([1]));
    expect(b.counters.outputDropped).toBe(1);
  });

  it('reports congestion past the high-water mark and calls the drain handler', async () => {
    const output = new PassThrough({ highWaterMark: 4 });
    const b = new StreamConsoleBackend(null, output, { highWaterMark: 8 });
    let drains = 0;
    b.onDrain(() => drains++);
    b.write(pattern(10));
    expect(b.writable()).toBe(false);
    output.resume();
    await until(() => drains > 0);
    expect(b.writable()).toBe(true);
    expect(() => new StreamConsoleBackend(null, null, { highWaterMark: 0 })).toThrow(VirtioError);
  });

  it('stdio backend: stdin to the guest, guest to stdout, streams left open on close', async () => {
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const out: Buffer[] = [];
    stdout.on('data', (c: Buffer) => out.push(c));
    const backend = new StdioConsoleBackend({ stdin, stdout, raw: true });
    const { drv } = machine(backend);
    drv.write('login: ');
    stdin.write('root\n');
    expect(Buffer.from(await guestRead(drv, 5)).toString()).toBe('root\n');
    await tick();
    expect(Buffer.concat(out).toString()).toBe('login: ');
    backend.close();
    expect(stdin.destroyed).toBe(false);
    expect(stdout.writableEnded).toBe(false);
  });
});

describe('FileConsoleBackend', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const dir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'vmmio-console-'));
    dirs.push(d);
    return d;
  };

  it('appends guest output to the file, keeping what was there', () => {
    const path = join(dir(), 'out.log');
    writeFileSync(path, 'previous\n');
    const backend = FileConsoleBackend.open({ output: path });
    const { drv } = machine(backend);
    const data = pattern(50_000);
    drv.write(data);
    drv.write('\nend\n');
    appendFileSync(path, '');
    expect(readFileSync(path)).toEqual(
      Buffer.concat([Buffer.from('previous\n'), data, Buffer.from('\nend\n')]),
    );
    expect(backend.counters.bytesOut).toBe(50_005);
    backend.close();
    backend.write(Uint8Array.from([1]));
    expect(backend.counters.outputDropped).toBe(1);
  });

  it('feeds a file larger than the input buffer to the guest without a byte lost (paced by pause/resume)', async () => {
    const path = join(dir(), 'in.bin');
    const data = pattern(300_000, 5);
    writeFileSync(path, data);
    const backend = FileConsoleBackend.open({ input: path, chunkSize: 4096 });
    let pauses = 0;
    const pause = backend.pause.bind(backend);
    backend.pause = () => {
      pauses++;
      pause();
    };
    const { drv, dev } = machine(backend, { inputBufferBytes: 16 * 1024 });
    // The guest reads nothing yet: the device fills its 16 KiB and pauses the file instead of dropping.
    await until(() => pauses > 0);
    expect(dev.port(0).pendingInput).toBe(16 * 1024);
    const got = await guestRead(drv, data.length);
    await backend.inputDone;
    expect(Buffer.compare(Buffer.from(got), Buffer.from(data))).toBe(0);
    expect(dev.counters.inputDropped).toBe(0);
    expect(pauses).toBeGreaterThan(0);
    expect(backend.counters.bytesIn).toBe(data.length);
    // Without an output file, output is discarded and counted.
    drv.write('lost');
    expect(backend.counters.outputDropped).toBe(4);
    backend.close();
    expect(() => FileConsoleBackend.open({ chunkSize: 0 })).toThrow(VirtioError);
  });
});

describe('SocketConsoleBackend on 127.0.0.1', () => {
  const cleanups: Array<() => void> = [];
  afterEach(() => {
    for (const c of cleanups.splice(0)) c();
  });

  function echoServer(): Promise<Server> {
    return new Promise((resolve) => {
      const server = createServer((s) => s.pipe(s));
      server.listen(0, '127.0.0.1', () => resolve(server));
      cleanups.push(() => server.close());
    });
  }

  it('echoes guest output back to the guest through a socket peer, byte for byte', async () => {
    const server = await echoServer();
    const addr = server.address();
    if (addr === null || typeof addr !== 'object') throw new Error('no address');
    const backend = await SocketConsoleBackend.connect({ port: addr.port });
    cleanups.push(() => backend.close());
    expect(backend.connected).toBe(true);
    const { drv, dev } = machine(backend);
    drv.write('ping\n');
    expect(Buffer.from(await guestRead(drv, 5)).toString()).toBe('ping\n');
    const data = pattern(200_000, 3);
    // Write without blocking, letting the event loop carry the echo back while the guest writes on.
    const got: Uint8Array[] = [];
    let n = 0;
    let off = 0;
    const deadline = Date.now() + 10_000;
    while (n < data.length) {
      if (Date.now() > deadline) throw new Error(`echo stalled at ${n} of ${data.length}`);
      if (off < data.length) off += drv.writeSome(data.subarray(off, Math.min(off + 10_000, data.length)));
      await tick();
      const c = drv.read();
      got.push(c);
      n += c.length;
    }
    const all = Buffer.concat(got);
    expect(all.length).toBe(data.length);
    expect(Buffer.compare(all, Buffer.from(data))).toBe(0);
    expect(dev.counters.inputDropped).toBe(0);
    expect(dev.counters.txBytes).toBe(5 + data.length);
  });

  it('listens for one client: client input reaches the guest, guest output the client; others are refused', async () => {
    const backend = await SocketConsoleBackend.listen({ port: 0 });
    cleanups.push(() => backend.close());
    const { drv } = machine(backend);
    // No client yet: output is discarded and counted.
    drv.write('nobody');
    expect(backend.counters.outputDropped).toBe(6);
    const client: Socket = createConnection({ port: backend.port, host: '127.0.0.1' });
    cleanups.push(() => client.destroy());
    const received: Buffer[] = [];
    client.on('data', (c: Buffer) => received.push(c));
    await backend.waitForPeer();
    const second = createConnection({ port: backend.port, host: '127.0.0.1' });
    const secondClosed = new Promise<void>((r) => second.on('close', () => r()));
    second.on('error', () => {});
    await secondClosed;
    client.write('hello guest');
    expect(Buffer.from(await guestRead(drv, 11)).toString()).toBe('hello guest');
    drv.write('hello host');
    await until(() => Buffer.concat(received).length >= 10);
    expect(Buffer.concat(received).toString()).toBe('hello host');
    client.destroy();
    await until(() => !backend.connected);
  });

  it('rejects a connection nobody accepts and bad options', async () => {
    const server = await echoServer();
    const addr = server.address();
    if (addr === null || typeof addr !== 'object') throw new Error('no address');
    server.close();
    await new Promise((r) => setTimeout(r, 10));
    await expect(SocketConsoleBackend.connect({ port: addr.port })).rejects.toThrow();
    expect(() => SocketConsoleBackend.connect({ port: 1, highWaterMark: -1 })).toThrow(VirtioError);
  });
});
