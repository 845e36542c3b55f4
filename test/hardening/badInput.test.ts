/**
 * Bad input at the CLI and the host API (issue 9): a clear one-line error naming the problem and a
 * non-zero exit, never a stack trace. The CLI is the built binary (dist/cli/main.js, `npx tsc -b`).
 */

import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileBlockBackend } from '../../src/backend/index.js';
import { BlkDevice, MemoryBlockBackend } from '../../src/device/blk/index.js';
import { RngDevice } from '../../src/device/rng/index.js';
import { RamMemory } from '../../src/memory/index.js';
import { Machine, MmioBus } from '../../src/platform/index.js';
import { VirtioError } from '../../src/spec/index.js';
import { MmioTransport } from '../../src/transport/index.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'virtio-badinput-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('cli: bad commands and options', () => {
  const cases: Array<[string[], RegExp]> = [
    [['--bogus'], /unknown option '--bogus'/],
    [['demo', '--bogus'], /unknown option '--bogus'/],
    [['nosuch'], /unknown command 'nosuch'/],
    [['demo', 'extra'], /unknown command 'extra'/],
    [['check', 'nosuch'], /unknown command 'nosuch'/],
    [['check', 'qemu', '--sequences', '-3'], /--sequences must be a whole number, not -3/],
    [['check', 'qemu', '--sequences', 'many'], /--sequences must be a whole number, not many/],
    [['check', 'qemu', '--sequences'], /argument missing/],
    [['bench', '--json'], /argument missing/],
  ];
  for (const [args, message] of cases) {
    it(`virtio-mmio ${args.join(' ')}: one line, exit 1`, () => {
      const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 15_000 });
      expect(r.status).toBe(1);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    });
  }
});

/** Runs `f` and returns the VirtioError it throws (one line, lowercase start). */
function hostError(f: () => unknown, code: string): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(VirtioError);
    expect((e as VirtioError).code).toBe(code);
    const m = (e as VirtioError).message;
    expect(m).not.toContain('\n');
    return m;
  }
  throw new Error('expected a VirtioError');
}

const entropy = { fill: (d: Uint8Array) => d.fill(0) };

describe('api: bad host input is a VirtioError naming the problem', () => {
  it('a nonexistent backing file names the path', () => {
    expect(hostError(() => new FileBlockBackend(join(dir, 'no', 'such.img')), 'BACKEND_IO')).toContain(
      'such.img',
    );
    expect(
      hostError(() => new FileBlockBackend(join(dir, 'no', 'such.img'), { createSize: 4096 }), 'BACKEND_IO'),
    ).toContain('such.img');
  });

  it('an unwritable backing file (a directory, or read-only when not root) is refused', () => {
    expect(hostError(() => new FileBlockBackend(dir), 'BACKEND_IO')).toContain('EISDIR');
    const ro = join(dir, 'ro.img');
    writeFileSync(ro, new Uint8Array(4096));
    chmodSync(ro, 0o444);
    if (process.getuid?.() !== 0)
      expect(hostError(() => new FileBlockBackend(ro), 'BACKEND_IO')).toContain('ro.img');
    // Read-only open works, and the device then offers VIRTIO_BLK_F_RO.
    const b = new FileBlockBackend(ro, { readOnly: true });
    expect(new BlkDevice({ backend: b }).readOnly).toBe(true);
    b.close();
  });

  it('negative, non-integer and huge sizes', () => {
    hostError(() => new FileBlockBackend(join(dir, 'neg.img'), { createSize: -1 }), 'INVALID_ARGUMENT');
    hostError(
      () => new FileBlockBackend(join(dir, 'nan.img'), { createSize: Number.NaN }),
      'INVALID_ARGUMENT',
    );
    hostError(() => new FileBlockBackend(join(dir, 'huge.img'), { createSize: 2 ** 62 }), 'INVALID_ARGUMENT');
    hostError(() => new MemoryBlockBackend(-1), 'INVALID_ARGUMENT');
    // Past the engine's typed array limit: was a RangeError before the fix.
    expect(hostError(() => new MemoryBlockBackend(2 ** 40), 'INVALID_ARGUMENT')).toContain('cannot allocate');
    hostError(() => new Machine({ ramSize: 0 }), 'INVALID_ARGUMENT');
    hostError(() => new Machine({ ramSize: 2 ** 40 }), 'INVALID_ARGUMENT');
    hostError(() => new RamMemory(new ArrayBuffer(0)), 'MEMORY_INVALID_REGION');
    hostError(() => new RngDevice({ entropy, queueSize: 0 }), 'INVALID_ARGUMENT');
    hostError(
      () => new BlkDevice({ backend: new MemoryBlockBackend(4096), queueSize: 3 }),
      'INVALID_ARGUMENT',
    );
  });

  it('a zero-size disk is a valid empty disk: capacity 0', () => {
    expect(new BlkDevice({ backend: new MemoryBlockBackend(0) }).capacity).toBe(0);
  });

  it('overlapping device addresses and windows that do not fit', () => {
    const bus = new MmioBus();
    const mem = new RamMemory(new ArrayBuffer(4096));
    const irq = { setLevel() {} };
    bus.map(0x1000, new MmioTransport(new RngDevice({ entropy }), { mem, irq }), 'a');
    expect(
      hostError(
        () => bus.map(0x1100, new MmioTransport(new RngDevice({ entropy }), { mem, irq }), 'b'),
        'BUS_OVERLAP',
      ),
    ).toContain('overlaps a');
    const m = new Machine({ mmioBase: -4096 });
    hostError(() => m.addDevice(new RngDevice({ entropy })), 'BUS_INVALID_RANGE');
    const m2 = new Machine({ mmioBase: 2 ** 53 });
    hostError(() => m2.addDevice(new RngDevice({ entropy })), 'BUS_INVALID_RANGE');
    const m3 = new Machine({ firstLine: 100 });
    hostError(() => m3.addDevice(new RngDevice({ entropy })), 'IRQ_INVALID_LINE');
  });
});
