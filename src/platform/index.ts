/**
 * The platform: the MMIO bus that maps device windows, the wired interrupt controller (level lines,
 * remote IRR, resample on EOI), the MSI controller (x86 address/data decoding), and the in-process
 * guest CPU that takes the interrupts.
 *
 * @packageDocumentation
 */
export * from './bus.js';
export * from './cpu.js';
export * from './irq.js';
export * from './lines.js';
export * from './machine.js';
export * from './msi.js';
