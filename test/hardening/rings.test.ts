/**
 * Bounded work on hostile rings, case by case (issue 9): circular chains, indirect inside
 * indirect, zero-length descriptors, chains past 2^32 bytes, avail.idx running ahead, huge
 * indirect tables. Each ends with a recorded reason, within a bounded number of memory accesses,
 * and never touches memory outside RAM. Then the transport view: ring corruption sets
 * DEVICE_NEEDS_RESET and raises the configuration interrupt, and the device serves again after a
 * reset.
 */

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CheckedMemory } from '../../fuzz/lib/checkedMemory.js';
import { DATA_BASE, pushAvail, ringsOf, writeDesc } from '../../fuzz/lib/ringRig.js';
import { RngDevice } from '../../src/device/rng/index.js';
import { RamMemory } from '../../src/memory/index.js';
import { AVAIL_IDX, DescFlag, DeviceStatus, InterruptBit, MmioReg, USED_IDX } from '../../src/spec/index.js';
import { driveToFeaturesOk, IrqRecorder, programQueue } from '../../src/testing/index.js';
import { MmioTransport } from '../../src/transport/index.js';
import { DeviceQueue, MAX_INDIRECT_DESCRIPTORS } from '../../src/virtqueue/index.js';

function queue(size: number, memSize = 0x1_0000, indirect = true) {
  const mem = new CheckedMemory(new RamMemory(new ArrayBuffer(memSize)));
  const q = new DeviceQueue(size);
  Object.assign(q, ringsOf(0));
  q.indirectDesc = indirect;
  expect(q.validate(mem)).toBeNull();
  q.ready = true;
  return { mem, raw: mem.inner as RamMemory, q, chain: q.newChain() };
}

/** Pops once and returns the failure reason (null when a chain was popped), checking the bounds. */
function popReason(r: ReturnType<typeof queue>): string | null {
  r.mem.resetCount();
  const ok = r.q.pop(r.mem, r.chain);
  expect(r.mem.accesses).toBeLessThanOrEqual(4 * (r.q.size + r.q.chainLimit) + 16);
  expect(r.mem.violations).toEqual([]);
  return ok ? null : (r.q.error?.reason ?? 'none');
}

describe('hostile chains end with a recorded reason', () => {
  it('a circular chain of any length in any queue size: chain-too-long', () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 2, 4, 8, 16, 32, 64), fc.nat(63), fc.nat(63), (size, len0, start0) => {
        const r = queue(size);
        const len = 1 + (len0 % size);
        const start = start0 % size;
        for (let k = 0; k < len; k++) {
          const i = (start + k) % size;
          writeDesc(r.raw, r.q.descTable, i, DATA_BASE, 16, DescFlag.NEXT, (start + ((k + 1) % len)) % size);
        }
        pushAvail(r.raw, r.q, start);
        expect(popReason(r)).toBe('chain-too-long');
      }),
      { numRuns: 200, seed: 1 },
    );
  });

  it('a circular indirect table: chain-too-long', () => {
    const r = queue(8);
    const table = DATA_BASE + 0x1000;
    for (let i = 0; i < 4; i++) writeDesc(r.raw, table, i, DATA_BASE, 16, DescFlag.NEXT, (i + 1) % 4);
    writeDesc(r.raw, r.q.descTable, 0, table, 64, DescFlag.INDIRECT, 0);
    pushAvail(r.raw, r.q, 0);
    expect(popReason(r)).toBe('chain-too-long');
  });

  it('an indirect descriptor inside an indirect table: nested-indirect', () => {
    const r = queue(8);
    const table = DATA_BASE + 0x1000;
    writeDesc(r.raw, table, 0, table, 16, DescFlag.INDIRECT, 0);
    writeDesc(r.raw, r.q.descTable, 0, table, 16, DescFlag.INDIRECT, 0);
    pushAvail(r.raw, r.q, 0);
    expect(popReason(r)).toBe('nested-indirect');
  });

  it('a zero-length descriptor: zero-length-desc', () => {
    const r = queue(8);
    writeDesc(r.raw, r.q.descTable, 0, DATA_BASE, 0, 0, 0);
    pushAvail(r.raw, r.q, 0);
    expect(popReason(r)).toBe('zero-length-desc');
  });

  it('buffers summing past 2^32 bytes (overlapping, all in RAM): chain-too-large', () => {
    const ram = 8 << 20;
    const r = queue(8, ram);
    const table = ram - MAX_INDIRECT_DESCRIPTORS * 16;
    const each = (4 << 20) + 1; // 1024 * (4 MiB + 1) > 2^32
    for (let i = 0; i < MAX_INDIRECT_DESCRIPTORS; i++) {
      writeDesc(r.raw, table, i, 0x10_0000, each, DescFlag.NEXT, i + 1);
    }
    writeDesc(r.raw, table, MAX_INDIRECT_DESCRIPTORS - 1, 0x10_0000, each, 0, 0);
    writeDesc(r.raw, r.q.descTable, 0, table, MAX_INDIRECT_DESCRIPTORS * 16, DescFlag.INDIRECT, 0);
    pushAvail(r.raw, r.q, 0);
    expect(popReason(r)).toBe('chain-too-large');
  });

  it('an indirect table longer than the limit: chain-too-long, before reading it', () => {
    const r = queue(8, 1 << 20);
    writeDesc(r.raw, r.q.descTable, 0, DATA_BASE, (MAX_INDIRECT_DESCRIPTORS + 1) * 16, DescFlag.INDIRECT, 0);
    pushAvail(r.raw, r.q, 0);
    expect(popReason(r)).toBe('chain-too-long');
  });

  it('buffers outside RAM or wrapping past 2^64: desc-out-of-memory', () => {
    for (const [addr, len] of [
      [0xffff_fff0, 0x20],
      [0x1_0000 - 8, 16],
      [2 ** 53 - 1, 1],
      [0xffff_ffff_ffff_f000, 0x2000],
    ]) {
      const r = queue(8);
      writeDesc(r.raw, r.q.descTable, 0, Math.min(addr, 2 ** 53 - 1), len, 0, 0);
      pushAvail(r.raw, r.q, 0);
      expect(popReason(r)).toBe('desc-out-of-memory');
    }
  });

  it('avail.idx more than a queue ahead: avail-idx-too-far, for every distance past the size', () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 8, 64), fc.integer({ min: 1, max: 0xffff }), (size, extra) => {
        const r = queue(size);
        const ahead = size + extra;
        fc.pre(ahead <= 0xffff);
        r.raw.write16(r.q.availRing + AVAIL_IDX, ahead);
        expect(popReason(r)).toBe('avail-idx-too-far');
        // Stopped: nothing more is popped, even after the index is repaired.
        r.raw.write16(r.q.availRing + AVAIL_IDX, 1);
        expect(r.q.pop(r.mem, r.chain)).toBe(false);
      }),
      { numRuns: 100, seed: 2 },
    );
  });
});

describe('ring corruption through the transport', () => {
  it('sets DEVICE_NEEDS_RESET, raises the config interrupt, and the device serves again after reset', () => {
    const mem = new CheckedMemory(new RamMemory(new ArrayBuffer(0x1_0000)));
    const irq = new IrqRecorder();
    const dev = new RngDevice({ entropy: { fill: (d) => d.fill(9) }, queueSize: 16 });
    const t = new MmioTransport(dev, { mem, irq });
    const up = () => {
      driveToFeaturesOk(t);
      programQueue(t, 0, { size: 16, ...ringsOf(0) });
      t.write(MmioReg.Status, 4, t.read(MmioReg.Status, 4) | DeviceStatus.DRIVER_OK);
    };
    up();
    const raw = mem.inner as RamMemory;
    writeDesc(raw, ringsOf(0).descTable, 0, DATA_BASE, 1, DescFlag.NEXT | DescFlag.WRITE, 0); // loops on itself
    pushAvail(raw, t.queue(0), 0);
    expect(() => t.write(MmioReg.QueueNotify, 4, 0)).not.toThrow();
    expect(t.read(MmioReg.Status, 4) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    expect(t.read(MmioReg.InterruptStatus, 4) & InterruptBit.CONFIG).toBe(InterruptBit.CONFIG);
    expect(irq.level).toBe(true);
    // Further notifications do nothing while failed.
    t.write(MmioReg.QueueNotify, 4, 0);
    expect(raw.read16(ringsOf(0).usedRing + USED_IDX)).toBe(0);
    // Reset and a valid request.
    t.write(MmioReg.Status, 4, 0);
    raw.fill(ringsOf(0).descTable, 0x1000, 0);
    up();
    writeDesc(raw, ringsOf(0).descTable, 0, DATA_BASE, 8, DescFlag.WRITE, 0);
    pushAvail(raw, t.queue(0), 0);
    t.write(MmioReg.QueueNotify, 4, 0);
    expect(raw.read16(ringsOf(0).usedRing + USED_IDX)).toBe(1);
    expect(raw.read8(DATA_BASE)).toBe(9);
    expect(mem.violations).toEqual([]);
  });
});
