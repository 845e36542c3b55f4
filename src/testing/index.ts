export * from './dummyDevice.js';
export * from './fakeContext.js';
export * from './mmioHarness.js';
export * from './ringWriter.js';
