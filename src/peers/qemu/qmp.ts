/**
 * A synchronous QMP client (QEMU Machine Protocol, one JSON object per line): the greeting,
 * capability negotiation, commands matched to their answers by `id`, and asynchronous events kept
 * aside. Used for `set_link`, which makes virtio-net change its link status and raise a
 * configuration change interrupt.
 *
 * @packageDocumentation
 */

import { VirtioError } from '../../spec/index.js';
import type { SyncPipe } from './syncPipe.js';

/** Default per-command timeout (milliseconds). */
export const QMP_TIMEOUT_MS = 5000;

/** A QMP event as received. */
export interface QmpEvent {
  /** Event name (`NIC_RX_FILTER_CHANGED`, ...). */
  readonly event: string;
  /** Event data. */
  readonly data?: unknown;
}

/** A synchronous QMP client over a {@link SyncPipe}. */
export class QmpClient {
  /** Events received so far, in order. */
  readonly events: QmpEvent[] = [];
  private readonly pipe: SyncPipe;
  private readonly timeoutMs: number;
  private nextId = 1;

  private constructor(pipe: SyncPipe, timeoutMs: number) {
    this.pipe = pipe;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Reads the greeting and negotiates capabilities.
   * @throws VirtioError `BACKEND_IO` for an unexpected greeting, `TIMEOUT` when none comes
   */
  static connect(pipe: SyncPipe, timeoutMs = QMP_TIMEOUT_MS): QmpClient {
    const c = new QmpClient(pipe, timeoutMs);
    const greeting = c.readObject(Date.now() + timeoutMs, 'greeting');
    if (!('QMP' in greeting)) {
      throw new VirtioError('BACKEND_IO', `qmp: unexpected greeting ${JSON.stringify(greeting)}`);
    }
    c.execute('qmp_capabilities');
    return c;
  }

  private readObject(deadline: number, what: string): Record<string, unknown> {
    for (;;) {
      const line = this.pipe.readLineUntil(deadline);
      if (line === null)
        throw new VirtioError('TIMEOUT', `qmp: no ${what} within ${String(this.timeoutMs)} ms`);
      if (line.trim() === '') continue;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch {
        throw new VirtioError('BACKEND_IO', `qmp: not json: '${line}'`);
      }
      if (typeof obj !== 'object' || obj === null) {
        throw new VirtioError('BACKEND_IO', `qmp: not an object: '${line}'`);
      }
      return obj as Record<string, unknown>;
    }
  }

  /**
   * Runs one command and returns its `return` value.
   * @throws VirtioError `BACKEND_IO` for an `error` answer, `TIMEOUT` when none comes
   */
  execute(command: string, args?: Record<string, unknown>): unknown {
    const id = this.nextId++;
    const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    this.pipe.writeLine(JSON.stringify(msg), this.timeoutMs);
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const obj = this.readObject(deadline, `answer to ${command}`);
      if (typeof obj.event === 'string') {
        this.events.push({ event: obj.event, data: obj.data });
        continue;
      }
      if (obj.id !== id) continue;
      if ('error' in obj) {
        const err = obj.error as { desc?: string };
        throw new VirtioError(
          'BACKEND_IO',
          `qmp: ${command} failed: ${err.desc ?? JSON.stringify(obj.error)}`,
        );
      }
      return obj.return;
    }
  }
}
