/**
 * Mocks and helpers shared by tests, benchmarks and fuzzers: raw ring writers, dummy devices, fake
 * device contexts, register-level transport harnesses.
 *
 * @packageDocumentation
 */
export * from './dummyDevice.js';
export * from './fakeContext.js';
export * from './mmioHarness.js';
export * from './ringWriter.js';
