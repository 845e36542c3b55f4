/**
 * `virtio-mmio console`: host input through the device to the guest and back, through the real
 * CLI binary (dist/, built by npm test before vitest runs) with stdin/stdout as the backend.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

describe('virtio-mmio console', () => {
  it('echoes stdin lines through a virtio-console and the guest driver, upper-cased', () => {
    const r = spawnSync(process.execPath, [CLI, 'console'], {
      input: 'hello virtio\nsecond line\n',
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('HELLO VIRTIO\nSECOND LINE\n');
    expect(r.stderr).toContain('guest echoed 2 lines');
  });

  it('echoes a file backend: input file in, output file out', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmmio-console-'));
    try {
      writeFileSync(join(dir, 'in.txt'), 'abc\ndef\n');
      const r = spawnSync(
        process.execPath,
        [CLI, 'console', '--backend', `file:${join(dir, 'out.txt')},in=${join(dir, 'in.txt')}`],
        { encoding: 'utf8', timeout: 20_000 },
      );
      expect(r.status).toBe(0);
      expect(readFileSync(join(dir, 'out.txt'), 'utf8')).toBe('ABC\nDEF\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses an unknown backend with one line and a non-zero exit', () => {
    const r = spawnSync(process.execPath, [CLI, 'console', '--backend', 'carrier-pigeon'], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('unknown console backend carrier-pigeon');
  });
});
