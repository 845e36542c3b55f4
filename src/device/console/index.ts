/**
 * virtio-console (5.3): the device model, its stream backend interface, and the guest driver.
 *
 * @packageDocumentation
 */
export * from './backend.js';
export * from './device.js';
export * from './driver.js';
export * from './utf8.js';
