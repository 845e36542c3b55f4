/**
 * QEMU as a peer: a synchronous qtest and QMP client over pipe chardevs, the microvm machine
 * runner, adapters that run our guest drivers over QEMU's devices, the scenarios, the differential
 * register comparison and the `check qemu` runner.
 *
 * @packageDocumentation
 */
export * from './adapters.js';
export * from './check.js';
export * from './consoleChannel.js';
export * from './consoleScenarios.js';
export * from './differential.js';
export * from './netPeer.js';
export * from './netScenarios.js';
export * from './qemuProcess.js';
export * from './qmp.js';
export * from './qtest.js';
export * from './scenarios.js';
export * from './syncPipe.js';
