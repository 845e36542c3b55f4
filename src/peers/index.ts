/**
 * Reference peers: harnesses that put our code against implementations nobody here wrote (QEMU's
 * devices through qtest, a real Linux kernel in v86).
 *
 * @packageDocumentation
 */
export {};
