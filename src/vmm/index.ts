/**
 * The threaded VMM runtime: vCPU workers, trapped MMIO exits, doorbells and interrupt injection.
 *
 * @packageDocumentation
 */
export {};
