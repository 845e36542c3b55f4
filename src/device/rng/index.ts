/**
 * virtio-rng (5.4): the device model. The guest driver is exported from this folder too.
 *
 * @packageDocumentation
 */
export * from './device.js';
export * from './driver.js';
