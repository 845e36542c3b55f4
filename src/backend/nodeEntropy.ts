/**
 * An {@link EntropySource} over the host's cryptographic random generator (`node:crypto`).
 *
 * @packageDocumentation
 */

import { randomFillSync } from 'node:crypto';
import type { EntropySource } from '../device/index.js';

/**
 * Entropy from `crypto.randomFillSync` (the OS CSPRNG: getrandom on Linux). Blocking only until the
 * OS pool is initialised at boot; never fails afterwards in practice, and any failure it throws is
 * counted by the rng device.
 */
export class NodeEntropySource implements EntropySource {
  /** `crypto.randomFillSync(dst)`. */
  fill(dst: Uint8Array): void {
    randomFillSync(dst);
  }
}

/** A shared {@link NodeEntropySource} (it holds no state). */
export const nodeEntropy: EntropySource = new NodeEntropySource();
