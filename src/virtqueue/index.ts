/**
 * Split virtqueues: the device side ({@link DeviceQueue}) and the driver side ({@link DriverQueue}).
 *
 * @packageDocumentation
 */
export * from './deviceQueue.js';
export * from './driverQueue.js';
export * from './layout.js';
