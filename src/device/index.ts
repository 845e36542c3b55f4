/**
 * The device interface, feature sets, the guest-side transport-neutral driver interface, and one
 * folder per device type with its device model and its guest driver.
 *
 * @packageDocumentation
 */

export * from './blk/index.js';
export * from './configSpace.js';
export * from './console/index.js';
export * from './driverApi.js';
export * from './features.js';
export * from './net/index.js';
export * from './rng/index.js';
export * from './serveQueue.js';
export * from './virtioDevice.js';
