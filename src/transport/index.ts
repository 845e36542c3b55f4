/**
 * The MMIO transport: the device-side register file and status machine, and the guest-side MMIO
 * driver.
 *
 * @packageDocumentation
 */

export * from './driverInterrupts.js';
export * from './interrupts.js';
export * from './mmioDriver.js';
export * from './mmioTransport.js';
export * from './registers.js';
export * from './seed/index.js';
export * from './statusMachine.js';
export * from './types.js';
