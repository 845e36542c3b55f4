/**
 * Real peers: QEMU (qtest) drives-our-driver checks and differential register comparisons.
 *
 * @packageDocumentation
 */
export * from './qemu/index.js';
export * from './v86/index.js';
