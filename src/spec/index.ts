/**
 * Spec constants: register offsets, bits and layouts, named as the virtio specification names them.
 *
 * @packageDocumentation
 */
export * from './devices.js';
export * from './errors.js';
export * from './features.js';
export * from './mmio.js';
export * from './ring.js';
export * from './seed.js';
export * from './status.js';
