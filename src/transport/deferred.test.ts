import { describe, expect, it } from 'vitest';
import { beginInit, Features, finishInit } from '../device/index.js';
import { RngDevice } from '../device/rng/device.js';
import { Machine } from '../platform/index.js';
import { FeatureBit } from '../spec/index.js';
import type { DriverQueue } from '../virtqueue/index.js';

/**
 * A machine whose rng driver refills the ring from inside the device's work, as a driver on
 * another vCPU would while the device serves: each notification ends at its bound with buffers
 * left, and nothing kicks again (the driver saw notifications enabled when it published them).
 */
function refillingMachine(maxRefills: number) {
  const m = new Machine({ ramSize: 8 << 20 });
  const box: { q: DriverQueue | null; refills: number; bufs: number } = { q: null, refills: 0, bufs: 0 };
  const dev = new RngDevice({
    queueSize: 4,
    entropy: {
      fill(dst) {
        dst.fill(7);
        const q = box.q;
        if (q === null || box.refills >= maxRefills) return;
        box.refills++;
        while (q.getUsed() !== null) {}
        while (q.numFree > 0) q.add([], [{ addr: box.bufs, len: 4 }], 0);
      },
    },
  });
  m.addDevice(dev, { name: 'rng0' });
  const t = m.probe('rng0');
  if (t === null) throw new Error('no device');
  beginInit(t, new Features([FeatureBit.VERSION_1]));
  const [q] = t.setupQueues([{ index: 0, callback: null, size: 4 }]);
  finishInit(t);
  box.bufs = t.dma.alloc(4, 4);
  box.q = q;
  return { m, t, q, dev, box, transport: m.slot('rng0').transport };
}

describe('deferred queues (DeviceContext.defer)', () => {
  it('a notification that ends at its bound with buffers left is served again by serveDeferred, until none are left', () => {
    const { t, q, dev, box, transport } = refillingMachine(40);
    while (q.numFree > 0) q.add([], [{ addr: box.bufs, len: 4 }], 0);
    expect(transport.deferredQueues).toBe(0);
    t.notify(q);
    expect(dev.counters.deferred).toBe(1);
    expect(transport.deferredQueues).toBe(1);
    const afterKick = dev.counters.requests;
    let rounds = 0;
    while (transport.deferredQueues > 0 && rounds < 100) {
      expect(transport.serveDeferred()).toBe(1);
      rounds++;
    }
    // Every buffer the "other vCPU" published was served without another kick.
    expect(transport.deferredQueues).toBe(0);
    expect(rounds).toBeGreaterThan(0);
    expect(box.refills).toBe(40);
    expect(dev.counters.requests).toBeGreaterThan(afterKick);
    while (q.getUsed() !== null) {}
    expect(q.inFlight).toBe(0);
    expect(transport.serveDeferred()).toBe(0);
  });

  it('a reset forgets deferred queues; a queue no longer ready is not served', () => {
    const { t, q, box, transport } = refillingMachine(1000);
    while (q.numFree > 0) q.add([], [{ addr: box.bufs, len: 4 }], 0);
    t.notify(q);
    expect(transport.deferredQueues).toBe(1);
    t.reset();
    expect(transport.deferredQueues).toBe(0);
    expect(transport.serveDeferred()).toBe(0);
  });
});
