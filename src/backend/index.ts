/**
 * Host backends that need Node: a file-backed block device and an entropy source over
 * `node:crypto`.
 *
 * @packageDocumentation
 */

export * from './consoleStreams.js';
export * from './fileBlockBackend.js';
export * from './nodeEntropy.js';
export * from './udpNet.js';
