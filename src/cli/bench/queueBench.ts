/**
 * Device-side chain processing benchmark: a driver-side queue keeps the ring full of chains of
 * `segments` descriptors (direct or through an indirect table); the device pops each chain and
 * returns it; the driver harvests. The figure is chains/s through pop + addUsed, with the driver's
 * own work included (it is the same in every variant).
 *
 * @packageDocumentation
 */

import { GuestAllocator, RamMemory } from '../../memory/index.js';
import { DeviceQueue, DriverQueue, type Segment } from '../../virtqueue/index.js';
import { type BenchResult, type MeasureOptions, measure } from './harness.js';

const QUEUE_SIZE = 256;

/** Runs the chain benchmark for one shape. */
export function benchChains(segments: number, indirect: boolean, options: MeasureOptions): BenchResult {
  const mem = new RamMemory(new ArrayBuffer(4 << 20));
  const alloc = new GuestAllocator(0x1000, (4 << 20) - 0x1000);
  const descTable = alloc.alloc(16 * QUEUE_SIZE, 16);
  const availRing = alloc.alloc(6 + 2 * QUEUE_SIZE, 2);
  const usedRing = alloc.alloc(6 + 8 * QUEUE_SIZE, 4);
  const driver = new DriverQueue<number>(
    mem,
    0,
    QUEUE_SIZE,
    { descTable, availRing, usedRing },
    { indirectAllocator: indirect ? alloc : undefined, minIndirectSegments: 1 },
  );
  const device = new DeviceQueue(QUEUE_SIZE);
  device.size = QUEUE_SIZE;
  device.descTable = descTable;
  device.availRing = availRing;
  device.usedRing = usedRing;
  device.indirectDesc = indirect;
  device.ready = true;
  const data = alloc.alloc(64 * segments, 64);
  const out: Segment[] = [];
  const inSegs: Segment[] = [];
  for (let s = 0; s < segments; s++) {
    const seg = { addr: data + 64 * s, len: 64 };
    if (s < segments / 2 || segments === 1) out.push(seg);
    else inSegs.push(seg);
  }
  const chain = device.newChain();
  const perChain = indirect ? 1 : segments;
  const batch = Math.floor(QUEUE_SIZE / perChain);
  const op = (n: number): void => {
    let done = 0;
    while (done < n) {
      const k = Math.min(batch, n - done);
      for (let i = 0; i < k; i++) driver.add(out, inSegs, i);
      for (let i = 0; i < k; i++) {
        if (!device.pop(mem, chain)) throw new Error(`pop failed: ${device.error?.message ?? 'empty'}`);
        device.addUsed(mem, chain.head, 0);
      }
      for (let i = 0; i < k; i++) driver.getUsed();
      done += k;
    }
  };
  return measure(`chain ${segments} desc ${indirect ? 'indirect' : 'direct'}`, 'chains/s', op, options);
}
