/**
 * Host backends that need Node: a file-backed block device and an entropy source over
 * `node:crypto`.
 *
 * @packageDocumentation
 */
export * from './fileBlockBackend.js';
export * from './nodeEntropy.js';
