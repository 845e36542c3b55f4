/**
 * `virtio-mmio console`: a machine whose virtio-console is backed by this process's stdin/stdout,
 * a file or a loopback socket, and a guest that echoes each line it receives back through the
 * device, upper-cased. It shows the console path end to end: host input → device receive queue →
 * guest driver → device transmit queue → host output.
 *
 * @packageDocumentation
 */

import { FileConsoleBackend, SocketConsoleBackend, StdioConsoleBackend } from '../backend/index.js';
import { type ConsoleBackend, ConsoleDevice, ConsoleDriver } from '../device/index.js';
import { Machine } from '../platform/index.js';
import { VirtioError } from '../spec/index.js';

/** Parses `--backend`: `stdio`, `file:OUT[,in=IN]`, `tcp:PORT` (listen on 127.0.0.1). */
export async function openConsoleBackend(spec: string): Promise<ConsoleBackend> {
  if (spec === 'stdio') return new StdioConsoleBackend({ raw: false });
  if (spec.startsWith('file:')) {
    const [output, ...rest] = spec.slice(5).split(',');
    const input = rest.find((r) => r.startsWith('in='))?.slice(3);
    if (output === '') throw new VirtioError('INVALID_ARGUMENT', 'file: needs an output path');
    return FileConsoleBackend.open({ output, input });
  }
  if (spec.startsWith('tcp:')) {
    const port = Number(spec.slice(4));
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new VirtioError('INVALID_ARGUMENT', `tcp: needs a port number, not ${spec.slice(4)}`);
    }
    return SocketConsoleBackend.listen({ port, host: '127.0.0.1' });
  }
  throw new VirtioError(
    'INVALID_ARGUMENT',
    `unknown console backend ${spec} (stdio, file:OUT[,in=IN], tcp:PORT)`,
  );
}

/**
 * Wraps a backend so that every input delivery is followed (on the next turn of the event loop)
 * by `afterInput`: the in-process guest runs when the host gives it something to do.
 */
function withInputHook(inner: ConsoleBackend, afterInput: () => void): ConsoleBackend {
  return {
    write: (bytes) => inner.write(bytes),
    onData: (handler) =>
      inner.onData((bytes) => {
        handler(bytes);
        setImmediate(afterInput);
      }),
    writable: inner.writable?.bind(inner),
    onDrain: inner.onDrain?.bind(inner),
    pause: inner.pause?.bind(inner),
    resume: inner.resume?.bind(inner),
    close: inner.close?.bind(inner),
  };
}

/** Runs the echo guest until the backend's input ends or `stop()` is called; resolves with counters. */
export function runConsoleEcho(
  backend: ConsoleBackend,
  log: (line: string) => void,
): { done: Promise<{ echoed: number }>; stop: () => void } {
  let guest: (() => void) | null = null;
  const machine = new Machine({ ramSize: 8 << 20 });
  const device = new ConsoleDevice({ backend: withInputHook(backend, () => guest?.()) });
  machine.addDevice(device, { name: 'console0' });
  const t = machine.probe('console0');
  if (t === null) throw new VirtioError('DEVICE_NOT_FOUND', 'console0 not found');
  const driver = ConsoleDriver.probe(t);
  let echoed = 0;
  let line = '';
  const decoder = new TextDecoder();
  guest = () => {
    // The guest takes its interrupts, reads what arrived, and echoes whole lines.
    try {
      machine.cpu.halt();
    } catch (e) {
      if (!(e instanceof VirtioError && e.code === 'TIMEOUT')) throw e;
    }
    line += decoder.decode(driver.read(), { stream: true });
    let nl = line.indexOf('\n');
    while (nl >= 0) {
      driver.write(`${line.slice(0, nl).toUpperCase()}\n`);
      echoed++;
      line = line.slice(nl + 1);
      nl = line.indexOf('\n');
    }
  };
  log('virtio-console on the machine: type lines, the guest echoes them upper-cased (end input to stop)');
  let stop: () => void = () => {};
  const done = new Promise<{ echoed: number }>((resolve) => {
    stop = () => {
      driver.remove();
      backend.close?.();
      resolve({ echoed });
    };
    if (backend instanceof StdioConsoleBackend) process.stdin.once('end', () => setImmediate(stop));
    if (backend instanceof FileConsoleBackend) void backend.inputDone.then(() => setImmediate(stop));
  });
  return { done, stop };
}
