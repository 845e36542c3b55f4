/**
 * virtio-net (5.1): the device model, the backend interface with the in-process link, the
 * host-side peer, the Ethernet/ARP/IPv4/ICMP/UDP helpers, and the guest driver.
 *
 * @packageDocumentation
 */
export * from './backend.js';
export * from './device.js';
export * from './driver.js';
export * from './hostPeer.js';
export * from './packet.js';
export * from './queuePair.js';
