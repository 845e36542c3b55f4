import { describe, expect, it } from 'vitest';
import { VirtioError } from '../../spec/index.js';
import { createNetLink } from './backend.js';

describe('createNetLink', () => {
  it('queues copies and delivers them only on pump, in order, both ways', () => {
    const link = createNetLink();
    const atB: number[] = [];
    const atA: number[] = [];
    link.b.onReceive((f) => atB.push(f[0]));
    link.a.onReceive((f) => atA.push(f[0]));
    const f = Uint8Array.of(1);
    link.a.send(f);
    f[0] = 99;
    link.a.send(Uint8Array.of(2));
    link.b.send(Uint8Array.of(3));
    expect(atB).toEqual([]);
    expect(link.pending).toBe(3);
    expect(link.b.queued).toBe(2);
    expect(link.pump()).toBe(3);
    expect(atB).toEqual([1, 2]);
    expect(atA).toEqual([3]);
    expect(link.a.counters).toEqual({ sent: 1 + 1, delivered: 1, dropped: 0 });
    expect(link.b.counters).toEqual({ sent: 1, delivered: 2, dropped: 0 });
  });

  it('bounds a pump to what was queued when it began, so handlers that answer cannot loop', () => {
    const link = createNetLink();
    link.a.onReceive((f) => link.a.send(f));
    link.b.onReceive((f) => link.b.send(f));
    link.a.send(Uint8Array.of(1));
    expect(link.pump()).toBe(1);
    expect(link.pump()).toBe(1);
    expect(link.pump(0)).toBe(0);
    expect(link.pending).toBe(1);
  });

  it('drops and counts frames past the capacity, without a handler, and after close', () => {
    const link = createNetLink({ capacity: 2 });
    for (let i = 0; i < 5; i++) link.a.send(Uint8Array.of(i));
    expect(link.b.counters.dropped).toBe(3);
    expect(link.pump()).toBe(2);
    expect(link.b.counters.dropped).toBe(5);
    const got: number[] = [];
    link.b.onReceive((f) => got.push(f[0]));
    link.a.send(Uint8Array.of(7));
    link.b.close();
    link.b.close();
    expect(link.b.counters.dropped).toBe(6);
    link.a.send(Uint8Array.of(8));
    expect(link.b.counters.dropped).toBe(7);
    link.b.send(Uint8Array.of(9));
    expect(link.b.counters.sent).toBe(0);
    link.close();
    expect(got).toEqual([]);
  });

  it('delivers on a microtask when asked', async () => {
    const link = createNetLink({ delivery: 'microtask' });
    const got: number[] = [];
    link.b.onReceive((f) => got.push(f[0]));
    link.a.send(Uint8Array.of(1));
    link.a.send(Uint8Array.of(2));
    expect(got).toEqual([]);
    await Promise.resolve();
    await Promise.resolve();
    expect(got).toEqual([1, 2]);
  });

  it('rejects a bad capacity', () => {
    expect(() => createNetLink({ capacity: 0 })).toThrow(VirtioError);
    expect(() => createNetLink({ capacity: 1.5 })).toThrow(VirtioError);
  });
});

describe('in-process link buffers', () => {
  it('recycles small frame buffers after delivery; a handler that keeps a frame must copy it', () => {
    const link = createNetLink();
    const views: Uint8Array[] = [];
    const copies: Uint8Array[] = [];
    link.b.onReceive((f) => {
      views.push(f);
      copies.push(f.slice());
    });
    for (let i = 0; i < 3; i++) {
      link.a.send(new Uint8Array(100).fill(i + 1));
      link.pump();
    }
    // Each frame arrived whole and in order ...
    expect(copies.map((c) => [c.length, c[0], c[99]])).toEqual([
      [100, 1, 1],
      [100, 2, 2],
      [100, 3, 3],
    ]);
    // ... in the same recycled buffer (no allocation per frame): a kept view shows the newest frame.
    expect(views[0].buffer).toBe(views[2].buffer);
    expect(views[0][0]).toBe(3);
    // Frames too big for the pool are plain copies.
    const big: Uint8Array[] = [];
    link.b.onReceive((f) => big.push(f));
    link.a.send(new Uint8Array(4000).fill(9));
    link.a.send(new Uint8Array(4000).fill(8));
    link.pump();
    expect([big[0][0], big[1][0]]).toEqual([9, 8]);
  });
});
