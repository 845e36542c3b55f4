import { describe, expect, it } from 'vitest';
import { Features } from '../device/index.js';
import { AvailFlag, DeviceStatus, FeatureBit, InterruptBit, MmioReg, VirtioError } from '../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveToFeaturesOk,
  IrqRecorder,
  mmioRead32,
  mmioWrite32,
  programQueue,
  type TransportHarness,
} from '../testing/index.js';
import { LineInterrupt } from './interrupts.js';

const VRING = InterruptBit.VRING;
const CONFIG = InterruptBit.CONFIG;
const DRIVER_OK = DeviceStatus.DRIVER_OK;

/** A live device with queues 0 and 1 ready; `features` as accepted (default: no EVENT_IDX). */
function live(features = new Features([FeatureBit.VERSION_1])): TransportHarness {
  const h = createTransportHarness();
  driveToFeaturesOk(h.t, features);
  programQueue(h.t, 0, { size: 16, descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 });
  programQueue(h.t, 1, { size: 8, descTable: 0x4000, availRing: 0x4800, usedRing: 0x5000 });
  addStatus(h.t, DRIVER_OK);
  return h;
}

/** The device completes one buffer on queue `i` and asks the transport to notify. */
function complete(h: TransportHarness, i: number): boolean {
  h.t.queue(i).addUsed(h.mem, 0, 0);
  const ctx = h.dev.ctx;
  if (ctx === null) throw new Error('device not active');
  return ctx.notifyUsed(i);
}

function ack(h: TransportHarness, bits: number): void {
  mmioWrite32(h.t, MmioReg.InterruptACK, bits);
}

describe('4.2.3.4 notifications from the device: InterruptStatus and the level line', () => {
  it('asserts the line on the first bit and keeps it while any bit is set', () => {
    const h = live();
    expect(complete(h, 0)).toBe(true);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(VRING);
    expect(h.irq.calls).toEqual([true]);
    expect(complete(h, 1)).toBe(true);
    h.dev.changeConfig(0, [1]);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(VRING | CONFIG);
    // setLevel only on changes: still one call.
    expect(h.irq.calls).toEqual([true]);
    ack(h, VRING);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(CONFIG);
    expect(h.irq.level).toBe(true);
    expect(h.irq.calls).toEqual([true]);
    ack(h, CONFIG);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
    expect(h.irq.calls).toEqual([true, false]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('acknowledging bits that are not set, or none, changes nothing', () => {
    const h = live();
    ack(h, VRING | CONFIG);
    ack(h, 0);
    expect(h.irq.calls).toEqual([]);
    complete(h, 0);
    ack(h, CONFIG);
    ack(h, 0);
    expect(h.t.interruptStatus).toBe(VRING);
    expect(h.irq.calls).toEqual([true]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('acknowledging everything at once (Linux vm_interrupt writes back what it read) lowers the line', () => {
    const h = live();
    complete(h, 0);
    h.dev.changeConfig(0, [1]);
    ack(h, mmioRead32(h.t, MmioReg.InterruptStatus));
    expect(h.irq.calls).toEqual([true, false]);
  });

  it('raises the line again for an event after the acknowledgement', () => {
    const h = live();
    complete(h, 0);
    ack(h, VRING);
    complete(h, 0);
    expect(h.irq.calls).toEqual([true, false, true]);
  });

  it('counts undefined bits in InterruptACK but still acknowledges the defined ones', () => {
    const h = live();
    complete(h, 0);
    ack(h, 0xffff_fffc);
    expect(h.t.interruptStatus).toBe(VRING);
    ack(h, 0x8000_0001);
    expect(h.t.interruptStatus).toBe(0);
    expect(h.irq.level).toBe(false);
    expect(h.t.guestErrorCounts.interrupt).toBe(2);
    expect(h.errors).toEqual([
      'InterruptACK of undefined bits 0xfffffffc',
      'InterruptACK of undefined bits 0x80000001',
    ]);
  });

  it('does not notify when the driver suppressed notifications (2.7.7.2 VIRTQ_AVAIL_F_NO_INTERRUPT)', () => {
    const h = live();
    h.mem.write16(0x2000, AvailFlag.NO_INTERRUPT);
    expect(complete(h, 0)).toBe(false);
    expect(h.t.interruptStatus).toBe(0);
    expect(h.irq.calls).toEqual([]);
  });

  it('does not notify twice for the same used index, and notifies with EVENT_IDX on the first buffer', () => {
    const h = live(new Features([FeatureBit.VERSION_1, FeatureBit.EVENT_IDX]));
    expect(complete(h, 0)).toBe(true);
    ack(h, VRING);
    expect(h.dev.ctx?.notifyUsed(0)).toBe(false);
    expect(h.irq.calls).toEqual([true, false]);
  });

  it('does not notify for a stopped queue', () => {
    const h = live();
    h.t.queue(1).addUsed(h.mem, 0, 0);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    mmioWrite32(h.t, MmioReg.QueueReady, 0);
    expect(h.dev.ctx?.notifyUsed(1)).toBe(false);
    expect(h.t.interruptStatus).toBe(0);
  });

  it('throws for a queue index the device does not have (a device bug, tier 3)', () => {
    const h = live();
    expect(() => h.dev.ctx?.notifyUsed(2)).toThrow(VirtioError);
    expect(() => h.dev.ctx?.notifyUsed(-1)).toThrow(/does not exist/);
  });

  it('lowers the line on device reset (4.2.2.1)', () => {
    const h = live();
    complete(h, 0);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.irq.calls).toEqual([true, false]);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
  });
});

describe('4.2.2 / 2.5 configuration change notifications and ConfigGeneration', () => {
  it('before DRIVER_OK: ConfigGeneration moves, no interrupt', () => {
    const h = createTransportHarness();
    driveToFeaturesOk(h.t);
    h.dev.changeConfig(0, [0x55]);
    expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(1);
    expect(h.t.read(MmioReg.Config, 1)).toBe(0x55);
    expect(h.t.interruptStatus).toBe(0);
    expect(h.irq.calls).toEqual([]);
  });

  it('after DRIVER_OK: ConfigGeneration moves and the configuration bit raises the line', () => {
    const h = live();
    h.dev.changeConfig(0, [0x55]);
    h.dev.changeConfig(1, [0x66]);
    expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(2);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(CONFIG);
    expect(h.irq.calls).toEqual([true]);
  });

  it('after FAILED with DRIVER_OK still set, still notifies', () => {
    const h = live();
    addStatus(h.t, DeviceStatus.FAILED);
    h.dev.changeConfig(0, [1]);
    expect(h.t.interruptStatus).toBe(CONFIG);
  });

  it('moves ConfigGeneration once per change, in every status', () => {
    const h = createTransportHarness();
    for (let i = 0; i < 3; i++) h.dev.changeConfig(0, [i]);
    expect(h.t.configGeneration).toBe(3);
    expect(mmioRead32(h.t, MmioReg.ConfigGeneration)).toBe(3);
  });
});

describe('2.1.2 DEVICE_NEEDS_RESET after ring corruption', () => {
  it('sets the bit, logs the queue error and sends a configuration change notification', () => {
    const h = live();
    h.dev.ctx?.queueFailed(1, { reason: 'next-out-of-range', message: 'descriptor 3 names next 9 of 8' });
    expect(mmioRead32(h.t, MmioReg.Status) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(
      DeviceStatus.DEVICE_NEEDS_RESET,
    );
    expect(h.errors).toEqual(['queue 1 stopped: descriptor 3 names next 9 of 8']);
    expect(h.t.guestErrorCounts.ring).toBe(1);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(CONFIG);
    expect(h.irq.calls).toEqual([true]);
    // ConfigGeneration is about the configuration space, which did not change.
    expect(h.t.configGeneration).toBe(0);
    // The driver's answer: reset, which clears the bit and the line.
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(h.t.status).toBe(0);
    expect(h.irq.calls).toEqual([true, false]);
  });
});

describe('LineInterrupt', () => {
  it('calls setLevel only on level changes', () => {
    const line = new IrqRecorder();
    const li = new LineInterrupt(line);
    li.signalQueue(0);
    li.signalQueue(5);
    li.signalConfig();
    expect(li.readStatus()).toBe(VRING | CONFIG);
    li.ack(VRING);
    li.ack(VRING);
    expect(line.calls).toEqual([true]);
    li.ack(CONFIG);
    expect(line.calls).toEqual([true, false]);
    li.reset();
    expect(line.calls).toEqual([true, false]);
    li.signalConfig();
    li.reset();
    expect(line.calls).toEqual([true, false, true, false]);
    expect(li.level).toBe(false);
  });

  it('survives a line that runs the handler synchronously (the handler acknowledges inside setLevel)', () => {
    const calls: boolean[] = [];
    let li: LineInterrupt;
    const line = {
      setLevel(asserted: boolean) {
        calls.push(asserted);
        if (asserted) li.ack(li.readStatus());
      },
    };
    li = new LineInterrupt(line);
    li.signalQueue(0);
    expect(calls).toEqual([true, false]);
    expect(li.readStatus()).toBe(0);
    expect(li.level).toBe(false);
  });
});
