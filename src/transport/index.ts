/**
 * The MMIO transport: the device-side register file and status machine, and the guest-side MMIO
 * driver.
 *
 * @packageDocumentation
 */
export * from './types.js';
