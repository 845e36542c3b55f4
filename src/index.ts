/**
 * virtio-mmio: virtio over MMIO in TypeScript, device side and guest side. This entry point holds
 * everything that runs without Node APIs; file and entropy backends are in `virtio-mmio/node`.
 *
 * @packageDocumentation
 */
export * from './device/index.js';
export * from './memory/index.js';
export * from './platform/index.js';
export * from './spec/index.js';
export * from './transport/index.js';
export * from './virtqueue/index.js';
