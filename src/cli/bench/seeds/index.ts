/**
 * `virtio-mmio bench`: the seeds' measurements on the threaded runtime (docs/benchmarks.md). A
 * netperf TCP_RR-like request/response through virtio-net in every interrupt and notification
 * mode, beside the ideal bound measured in the same run, as a seeds-shaped table, JSON and a
 * Markdown report.
 *
 * @packageDocumentation
 */
export * from './charts.js';
export * from './modes.js';
export * from './mq.js';
export * from './report.js';
export * from './results.js';
export * from './run.js';
