/**
 * Tree hygiene: no compiled output next to the sources. An emitted `src/x.js` shadows `src/x.ts`
 * for vitest, which then silently tests stale code.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');

function emitted(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...emitted(p));
    else if (/\.(js|d\.ts|js\.map|d\.ts\.map)$/.test(name)) out.push(relative(ROOT, p));
  }
  return out;
}

describe('source tree', () => {
  it('holds no compiled output next to the TypeScript sources', () => {
    expect(emitted(join(ROOT, 'src'))).toEqual([]);
  });
});
