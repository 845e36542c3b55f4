/**
 * Guest memory: bounds-checked little-endian access over RAM regions, and the guest-side DMA
 * allocator drivers use.
 *
 * @packageDocumentation
 */
export * from './allocator.js';
export * from './guestMemory.js';
