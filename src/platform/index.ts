/**
 * The platform: the MMIO bus that maps device windows, the wired interrupt controller (level lines,
 * remote IRR, resample on EOI), and the in-process guest CPU that takes the interrupts.
 *
 * @packageDocumentation
 */
export * from './bus.js';
export * from './cpu.js';
export * from './irq.js';
export * from './machine.js';
