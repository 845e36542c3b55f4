// Bundles fuzz/jazzer/entry.ts (and everything it imports) into one CommonJS file for
// Jazzer.js 2.1, which instruments code through require hooks and so cannot see ES modules.
// Uses rolldown (a dev dependency, the bundler vite 8 under vitest uses too). Usage: node fuzz/jazzer/bundle.mjs <out.cjs>
import { resolve } from 'node:path';
import { build } from 'rolldown';

const out = process.argv[2];
if (out === undefined) {
  console.error('usage: node fuzz/jazzer/bundle.mjs <out.cjs>');
  process.exit(2);
}
await build({
  input: resolve(import.meta.dirname, 'entry.ts'),
  platform: 'node',
  resolve: { extensionAlias: { '.js': ['.ts', '.js'] } },
  // Inline source map: Jazzer.js maps a finding's stack trace back to the .ts sources.
  output: { file: resolve(out), format: 'cjs', sourcemap: 'inline' },
  logLevel: 'warn',
});
