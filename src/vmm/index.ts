/**
 * The threaded VMM runtime: vCPU worker threads whose MMIO accesses are synchronous traps to a VMM
 * worker (a real round trip between threads), posted doorbells (ioeventfd), posted interrupts
 * (irqfd), a waiting policy knob, and exact exit counters. See docs/vmm.md.
 *
 * @packageDocumentation
 */
export * from './bench.js';
export * from './layout.js';
export * from './threadedVm.js';
export * from './trace.js';
export * from './types.js';
export * from './vcpu.js';
export * from './vmmCore.js';
