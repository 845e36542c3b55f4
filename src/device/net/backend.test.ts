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
