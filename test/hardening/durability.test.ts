/**
 * Nothing lost (issue 9): a blk write acknowledged after FLUSH, or with the write cache off
 * (writeback 0), survives the process being killed right after the acknowledgement. A child
 * process writes through our driver and device to a FileBlockBackend and prints ACK; we SIGKILL it
 * at once and reopen the image. Also: with the cache off, the backend is synced before every
 * completion (the device calls flush, which is fsync for FileBlockBackend).
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlkDevice, BlkDriver, type BlockBackend, MemoryBlockBackend } from '../../src/device/blk/index.js';
import { Machine } from '../../src/platform/index.js';

const ROOT = join(import.meta.dirname, '..', '..');
const WRITER = join(import.meta.dirname, 'durableWriter.mjs');
const dir = mkdtempSync(join(tmpdir(), 'virtio-durable-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the writer, SIGKILLs it right after ACK number `killAfter`, returns the acknowledged count. */
function runAndKill(path: string, mode: string, writes: number, killAfter: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, path, mode, String(writes)], { cwd: ROOT });
    let acked = -1;
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      for (const m of out.matchAll(/ACK (\d+)\n/g)) acked = Math.max(acked, Number(m[1]));
      if (acked >= killAfter) child.kill('SIGKILL');
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString();
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve(acked + 1);
      else reject(new Error(`writer exited ${String(code)} without being killed: ${err}`));
    });
  });
}

describe('acknowledged writes survive SIGKILL', () => {
  it('needs the built package (npx tsc -b)', () => {
    expect(existsSync(join(ROOT, 'dist', 'index.js'))).toBe(true);
  });
  for (const mode of ['flush', 'writethrough']) {
    it(`${mode}: every acknowledged write is in the image after the kill`, async () => {
      const path = join(dir, `${mode}.img`);
      const acked = await runAndKill(path, mode, 16, 5);
      expect(acked).toBeGreaterThanOrEqual(6);
      const img = readFileSync(path);
      for (let i = 0; i < acked; i++) {
        const sector = img.subarray(i * 4096, (i + 1) * 4096);
        expect(
          sector.every((b) => b === ((i * 37 + 1) & 0xff)),
          `write ${i} lost`,
        ).toBe(true);
      }
    }, 20_000);
  }
});

/** A backend that records the order of writes and flushes. */
class Recording extends MemoryBlockBackend implements BlockBackend {
  readonly log: string[] = [];
  override write(offset: number, src: Uint8Array): void {
    this.log.push('write');
    super.write(offset, src);
  }
  override flush(): void {
    this.log.push('flush');
    super.flush();
  }
}

describe('writethrough syncs before completing', () => {
  it('with writeback 0 every write is followed by a flush before the driver sees it', () => {
    const backend = new Recording(1 << 20);
    const m = new Machine({ ramSize: 8 << 20 });
    m.addDevice(new BlkDevice({ backend }), { name: 'blk0' });
    const d = BlkDriver.probe(m.probe('blk0')!);
    d.setWriteback(false);
    for (let i = 0; i < 3; i++) {
      d.write(i, new Uint8Array(512).fill(i));
      expect(backend.log.at(-1)).toBe('flush');
    }
    expect(backend.log.filter((x) => x === 'flush').length).toBe(3);
  });

  it('with writeback 1 writes are not synced until FLUSH', () => {
    const backend = new Recording(1 << 20);
    const m = new Machine({ ramSize: 8 << 20 });
    m.addDevice(new BlkDevice({ backend }), { name: 'blk0' });
    const d = BlkDriver.probe(m.probe('blk0')!);
    d.write(0, new Uint8Array(512));
    expect(backend.log).toEqual(['write']);
    d.flush();
    expect(backend.log).toEqual(['write', 'flush']);
  });
});
