/**
 * virtio-blk (5.2): the device model and its storage backends. The guest driver is exported from
 * this folder too.
 *
 * @packageDocumentation
 */
export * from './backend.js';
export * from './device.js';
export * from './driver.js';
