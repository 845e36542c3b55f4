import { defineConfig } from 'vitest/config';

/** Fuzz campaigns (not part of `npm test`): `npm run fuzz`, scripts/fuzz-smoke.sh. */
export default defineConfig({
  test: {
    root: `${import.meta.dirname}/..`,
    include: ['fuzz/**/*.fuzz.ts'],
    pool: 'forks',
    testTimeout: 3_600_000,
  },
});
