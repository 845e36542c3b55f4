/**
 * The v86 peer: a real Linux kernel in the v86 emulator drives our device models. The adapter
 * (`adapter.ts`) is also the example of embedding this library into v86 (docs/v86.md).
 *
 * @packageDocumentation
 */

export * from './adapter.js';
export * from './aml.js';
export * from './cpio.js';
export * from './initrd.js';
export * from './linuxCheck.js';
export * from './linuxGuest.js';
