/**
 * Target (b): the device side of the split queue over arbitrary memory contents. The fuzzer writes
 * descriptors, available entries and indices, and calls pop / addUsed / needsNotification /
 * enableNotification / disableNotification / pending in any order.
 *
 * Invariants: nothing throws for ring contents; no access outside RAM; a pop reads a bounded
 * number of words; every popped chain lies in RAM, keeps readable before writable, holds at most
 * chainLimit segments and at most 2^32 bytes; once failed, a queue stays stopped; after a reset the
 * queue serves a valid chain again.
 */

import { RamMemory } from '../../src/memory/index.js';
import { MAX_CHAIN_BYTES, VirtioError } from '../../src/spec/index.js';
import { DescriptorChain, DeviceQueue } from '../../src/virtqueue/index.js';
import { ByteSource, check } from '../lib/bytes.js';
import { CheckedMemory } from '../lib/checkedMemory.js';
import {
  DATA_BASE,
  pushAvail,
  RIG_MAX_QUEUE,
  RING_OPS,
  requestOp,
  ringOp,
  ringsOf,
  writeDesc,
} from '../lib/ringRig.js';
import { hit } from '../lib/stats.js';
import type { FuzzTarget } from './types.js';

/** Most memory accesses one pop may make: 4 per descriptor over the direct and indirect tables, plus the ring. */
function popBound(q: DeviceQueue): number {
  return 4 * (q.size + q.chainLimit) + 16;
}

export const queueTarget: FuzzTarget = {
  name: 'queue',
  run(data: Uint8Array): void {
    const src = new ByteSource(data);
    const mem = new CheckedMemory(new RamMemory(new ArrayBuffer(0x1_0000)));
    const maxSize = src.pick([1, 2, 4, 8, 16, 32, 64]);
    const q = new DeviceQueue(maxSize);
    q.size = Math.min(maxSize, RIG_MAX_QUEUE);
    Object.assign(q, ringsOf(0));
    q.eventIdx = src.bool();
    q.indirectDesc = src.bool();
    check(q.validate(mem) === null, 'queue must validate');
    q.ready = true;
    const chain = q.newChain();
    const inflight: number[] = [];
    for (let steps = 0; src.more && steps < 512; steps++) {
      let kind = src.below(RING_OPS + 10);
      if (kind < RING_OPS) {
        ringOp(src, kind, mem, [q]);
        continue;
      }
      if (kind >= RING_OPS + 8) {
        requestOp(src, mem.inner, q);
        continue;
      }
      if (kind >= RING_OPS + 6) kind = RING_OPS;
      mem.resetCount();
      const failedBefore = q.error !== null;
      switch (kind - RING_OPS) {
        case 0: {
          const ok = q.pop(mem, chain);
          check(mem.accesses <= popBound(q), `pop made ${mem.accesses} accesses`);
          if (failedBefore) check(!ok, 'a failed queue popped a chain');
          if (ok) {
            check(chain.count >= 1 && chain.count <= q.chainLimit, `chain of ${chain.count} segments`);
            check(chain.head < q.size, 'head outside the queue');
            let total = 0;
            for (let i = 0; i < chain.count; i++) {
              check(mem.isValid(chain.addr[i], chain.len[i]), `segment ${i} outside ram`);
              check(chain.len[i] > 0, 'zero-length segment');
              total += chain.len[i];
            }
            check(total <= MAX_CHAIN_BYTES, 'chain over 2^32 bytes');
            check(total === chain.readableBytes + chain.writableBytes, 'byte counts disagree');
            inflight.push(chain.head);
            hit(chain.indirect ? 'pop-indirect' : 'pop');
          } else if (q.error !== null) {
            if (!failedBefore) hit(`fail:${q.error.reason}`);
            check(typeof q.error.reason === 'string' && q.error.message.length > 0, 'error without reason');
          }
          break;
        }
        case 1: {
          const head = inflight.shift();
          if (head !== undefined) q.addUsed(mem, head, src.u32());
          break;
        }
        case 2:
          q.needsNotification(mem);
          break;
        case 3:
          q.enableNotification(mem);
          break;
        case 4:
          q.disableNotification(mem);
          break;
        default: {
          const n = q.pending(mem);
          check(n >= -1 && n <= q.size, `pending ${n}`);
          break;
        }
      }
      check(mem.accesses <= popBound(q), `call made ${mem.accesses} accesses`);
    }
    check(mem.violations.length === 0, mem.violations[0] ?? '');
    // Host API misuse stays a VirtioError: a short chain is refused.
    let threw = false;
    try {
      q.pop(mem, new DescriptorChain(1));
    } catch (e) {
      threw = e instanceof VirtioError;
    }
    check(threw, 'a short chain object was accepted');
    // Reset, reprogram, and serve one valid chain.
    q.reset();
    q.size = Math.min(maxSize, RIG_MAX_QUEUE);
    Object.assign(q, ringsOf(0));
    mem.inner.fill(ringsOf(0).descTable, 0x1000, 0);
    q.ready = true;
    writeDesc(mem.inner as RamMemory, q.descTable, 0, DATA_BASE, 64, 0, 0);
    pushAvail(mem.inner as RamMemory, q, 0);
    check(q.pop(mem, chain), `reset queue did not pop a valid chain: ${q.error?.message ?? 'nothing'}`);
    q.addUsed(mem, chain.head, 0);
  },
};
