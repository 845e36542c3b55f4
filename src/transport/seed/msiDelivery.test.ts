import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Features } from '../../device/index.js';
import {
  DeviceStatus,
  FeatureBit,
  InterruptBit,
  MmioReg,
  MSI_NO_VECTOR,
  MsiCmd,
  MsiStateBit,
  SeedFeatureBit,
  SeedMmioReg,
} from '../../spec/index.js';
import {
  addStatus,
  createTransportHarness,
  driveToFeaturesOk,
  IrqRecorder,
  mmioRead32,
  mmioWrite32,
  programQueue,
  readDeviceFeatures,
  type TransportHarness,
} from '../../testing/index.js';
import { queueInterruptBit } from '../interrupts.js';
import type { MsiSink } from '../types.js';
import type { SeedMsiOptions } from './msiDelivery.js';

/** An MsiSink that records every message. */
class RecordingSink implements MsiSink {
  readonly sent: Array<[number, number, number]> = [];
  send(addressLow: number, addressHigh: number, data: number): void {
    this.sent.push([addressLow, addressHigh, data]);
  }
}

interface SeedHarness extends TransportHarness {
  readonly sink: RecordingSink;
}

const MSI_FEATURES = new Features([FeatureBit.VERSION_1, SeedFeatureBit.MMIO_MSI]);

/** A seed-profile device with MSI, `queueMaxSizes` queues (default 2), not yet negotiated. */
function seedDevice(msi: SeedMsiOptions, queueMaxSizes: number[] = [16, 8]): SeedHarness {
  const sink = new RecordingSink();
  const h = createTransportHarness({
    device: { queueMaxSizes },
    transport: { seed: { msi }, msiSink: sink },
  });
  return { ...h, sink };
}

/** Negotiated (FEATURES_OK with VIRTIO_F_MMIO_MSI), queues programmed, DRIVER_OK. */
function live(msi: SeedMsiOptions, queueMaxSizes: number[] = [16, 8]): SeedHarness {
  const h = seedDevice(msi, queueMaxSizes);
  expect(driveToFeaturesOk(h.t, MSI_FEATURES) & DeviceStatus.FEATURES_OK).toBe(DeviceStatus.FEATURES_OK);
  for (let i = 0; i < queueMaxSizes.length; i++) {
    const at = 0x1000 + i * 0x1000;
    programQueue(h.t, i, { size: 8, descTable: at, availRing: at + 0x400, usedRing: at + 0x800 });
  }
  addStatus(h.t, DeviceStatus.DRIVER_OK);
  return h;
}

function cmd(h: TransportHarness, command: number, vecSel?: number): void {
  if (vecSel !== undefined) mmioWrite32(h.t, SeedMmioReg.MsiVecSel, vecSel);
  mmioWrite32(h.t, SeedMmioReg.MsiCommand, command);
}

/** The seed driver's `mmio_write_msi_msg`: VecSel, AddrLow, AddrHigh, Data, CONFIGURE. */
function configure(h: TransportHarness, v: number, low: number, high: number, data: number): void {
  mmioWrite32(h.t, SeedMmioReg.MsiVecSel, v);
  mmioWrite32(h.t, SeedMmioReg.MsiAddrLow, low);
  mmioWrite32(h.t, SeedMmioReg.MsiAddrHigh, high);
  mmioWrite32(h.t, SeedMmioReg.MsiData, data);
  mmioWrite32(h.t, SeedMmioReg.MsiCommand, MsiCmd.CONFIGURE);
}

/** Message of vector v in tests: address 0xfee00000 + v * 0x10, data 0x40 + v. */
function msg(v: number): [number, number, number] {
  return [0xfee0_0000 + v * 0x10, 0, 0x40 + v];
}

function configureAll(h: TransportHarness, n: number): void {
  for (let v = 0; v < n; v++) configure(h, v, ...msg(v));
}

/** The device uses a buffer on queue `i` and signals it. */
function complete(h: TransportHarness, i: number): boolean {
  h.t.queue(i).addUsed(h.mem, 0, 0);
  const ctx = h.dev.ctx;
  if (ctx === null) throw new Error('device not active');
  return ctx.notifyUsed(i);
}

function configEvent(h: TransportHarness): void {
  h.dev.changeConfig(0, [7]);
}

const MSI_REGS = [
  ['MsiVecNum', SeedMmioReg.MsiVecNum, 'r'],
  ['MsiState', SeedMmioReg.MsiState, 'r'],
  ['MsiCommand', SeedMmioReg.MsiCommand, 'w'],
  ['MsiVecSel', SeedMmioReg.MsiVecSel, 'w'],
  ['MsiAddrLow', SeedMmioReg.MsiAddrLow, 'w'],
  ['MsiAddrHigh', SeedMmioReg.MsiAddrHigh, 'w'],
  ['MsiData', SeedMmioReg.MsiData, 'w'],
] as const;

const MODES = [
  ['non-sharing', false],
  ['sharing', true],
] as const;

describe('seed profile: feature bits, collisions and construction', () => {
  it('offers VIRTIO_F_MMIO_MSI, never RING_RESET or NOTIF_CONFIG_DATA', () => {
    const h = seedDevice({ vectors: 3, sharing: false });
    const offered = readDeviceFeatures(h.t);
    expect(offered.has(SeedFeatureBit.MMIO_MSI)).toBe(true);
    expect(offered.has(SeedFeatureBit.MMIO_NOTIFICATION)).toBe(false);
    // Bit 40 is RING_RESET in the standard: here it means MMIO_MSI, and RING_RESET is not offered.
    expect(SeedFeatureBit.MMIO_MSI).toBe(FeatureBit.RING_RESET);
    expect(SeedFeatureBit.MMIO_NOTIFICATION).toBe(FeatureBit.NOTIF_CONFIG_DATA);
    expect(h.t.registers.find((r) => r.offset === MmioReg.QueueReset)?.name).toBe('MsiVecNum');
    expect(h.t.registers.some((r) => r.name === 'QueueReset')).toBe(false);
  });

  it('a device without the profile keeps the standard meaning of bit 40 and 0x0c0', () => {
    const h = createTransportHarness();
    const offered = readDeviceFeatures(h.t);
    expect(offered.has(FeatureBit.RING_RESET)).toBe(true);
    expect(offered.has(FeatureBit.NOTIF_CONFIG_DATA)).toBe(false);
    expect(h.t.registers.find((r) => r.offset === SeedMmioReg.MsiVecNum)?.name).toBe('QueueReset');
    expect(h.t.msi).toBeNull();
    // MsiState and the rest are undescribed offsets for a standard device.
    for (const [, offset] of MSI_REGS.slice(1)) mmioRead32(h.t, offset);
    expect(h.t.guestErrorCounts.offset + h.t.guestErrorCounts.direction).toBe(MSI_REGS.length - 1);
  });

  it('refuses impossible profile options (host errors)', () => {
    const sink = new RecordingSink();
    const make = (transport: object) => () => createTransportHarness({ transport });
    const bad = [
      { seed: { msi: { vectors: 2, sharing: true } }, msiSink: sink, ringReset: true },
      { seed: { msi: { vectors: 2, sharing: true } } },
      { seed: {}, msiSink: sink },
      { seed: { msi: { vectors: 2, sharing: true } }, msiSink: sink, version: 1 },
      { seed: { msi: { vectors: 0, sharing: true } }, msiSink: sink },
      { seed: { msi: { vectors: 2049, sharing: true } }, msiSink: sink },
      { seed: { msi: { vectors: 1.5, sharing: true } }, msiSink: sink },
      { seed: { msi: { vectors: 2, sharing: 1 } }, msiSink: sink },
    ];
    for (const options of bad)
      expect(make(options)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    // ringReset: false is fine (it is what the profile implies).
    expect(
      make({ seed: { msi: { vectors: 2, sharing: true } }, msiSink: sink, ringReset: false }),
    ).not.toThrow();
  });
});

describe.each(MODES)('seed MSI registers, %s mode', (_mode, sharing) => {
  it('every Msi register is a guest error before VIRTIO_F_MMIO_MSI is negotiated, and does nothing', () => {
    const h = seedDevice({ vectors: 3, sharing });
    // Status 0, then DRIVER without FEATURES_OK, then FEATURES_OK without the bit.
    const phases = [
      () => mmioWrite32(h.t, MmioReg.Status, 0),
      () => {
        addStatus(h.t, DeviceStatus.ACKNOWLEDGE);
        addStatus(h.t, DeviceStatus.DRIVER);
      },
      () => driveToFeaturesOk(h.t, new Features([FeatureBit.VERSION_1])),
    ];
    let expected = 0;
    for (const phase of phases) {
      phase();
      for (const [, offset, access] of MSI_REGS) {
        if (access === 'r') expect(mmioRead32(h.t, offset)).toBe(0);
        else mmioWrite32(h.t, offset, MsiCmd.ENABLE);
        expected++;
      }
      expect(h.t.guestErrorCounts.msi).toBe(expected);
      expect(h.t.msi?.isEnabled).toBe(false);
    }
    expect(h.errors.at(-1)).toBe('MsiData write without virtio_f_mmio_msi negotiated');
  });

  it('reads of write-only and writes of read-only Msi registers are direction errors', () => {
    const h = live({ vectors: 3, sharing });
    let n = 0;
    for (const [, offset, access] of MSI_REGS) {
      if (access === 'w') expect(mmioRead32(h.t, offset)).toBe(0);
      else mmioWrite32(h.t, offset, 1);
      n++;
    }
    expect(h.t.guestErrorCounts.direction).toBe(n);
    expect(h.t.guestErrorCounts.msi).toBe(0);
    // 0x0cc, between MsiCommand and MsiVecSel, is not a register.
    mmioRead32(h.t, SeedMmioReg.MsiCommand + 4);
    expect(h.t.guestErrorCounts.offset).toBe(1);
    // Control registers are 32-bit only, the seed ones too.
    h.t.read(SeedMmioReg.MsiVecNum, 2);
    expect(h.t.guestErrorCounts.width).toBe(1);
  });

  it('MsiVecNum reports the vectors; MsiState the sharing bit (30) and the enabled bit (31)', () => {
    const h = live({ vectors: 5, sharing });
    expect(mmioRead32(h.t, SeedMmioReg.MsiVecNum)).toBe(5);
    const sharingBit = sharing ? MsiStateBit.SHARING : 0;
    expect(mmioRead32(h.t, SeedMmioReg.MsiState)).toBe(sharingBit);
    cmd(h, MsiCmd.ENABLE);
    expect(mmioRead32(h.t, SeedMmioReg.MsiState)).toBe((MsiStateBit.ENABLED | sharingBit) >>> 0);
    cmd(h, MsiCmd.DISABLE);
    expect(mmioRead32(h.t, SeedMmioReg.MsiState)).toBe(sharingBit);
    expect(h.t.guestErrors).toBe(0);
  });

  it('refuses commands in the wrong state and unknown commands', () => {
    const h = live({ vectors: 3, sharing });
    cmd(h, MsiCmd.DISABLE);
    cmd(h, MsiCmd.ENABLE);
    cmd(h, MsiCmd.ENABLE);
    for (const unknown of [0, 8, 0x100, 0xffff_ffff]) cmd(h, unknown);
    expect(h.t.guestErrorCounts.msi).toBe(6);
    expect(h.errors).toEqual([
      'msi disable while msi is disabled',
      'msi enable while msi is enabled',
      'unknown MsiCommand 0',
      'unknown MsiCommand 8',
      'unknown MsiCommand 256',
      'unknown MsiCommand 4294967295',
    ]);
    expect(h.t.msi?.isEnabled).toBe(true);
  });

  it('refuses out-of-range selections, and the commands that would use them', () => {
    const h = live({ vectors: 3, sharing });
    configure(h, 1, ...msg(1));
    mmioWrite32(h.t, SeedMmioReg.MsiVecSel, 3);
    expect(h.errors).toEqual(['MsiVecSel 3 out of range (3 vectors)']);
    // The bad selection is kept: nothing acts on vector 1 by accident.
    for (const c of [MsiCmd.CONFIGURE, MsiCmd.MASK, MsiCmd.UNMASK]) cmd(h, c);
    expect(h.t.guestErrorCounts.msi).toBe(4);
    // NO_VECTOR is a valid selection (for MAP_*), but not a vector to configure or mask.
    for (const c of [MsiCmd.CONFIGURE, MsiCmd.MASK, MsiCmd.UNMASK]) cmd(h, c, MSI_NO_VECTOR);
    expect(h.t.guestErrorCounts.msi).toBe(7);
    expect(h.errors.at(-1)).toBe('msi unmask with MsiVecSel no_vector, not a vector (3 vectors)');
    expect(h.t.msi?.message(1)).toEqual({ addressLow: msg(1)[0], addressHigh: 0, data: msg(1)[2] });
    expect(h.t.msi?.isMasked(1)).toBe(false);
  });

  it('while enabled: no InterruptStatus, InterruptACK ignored, line untouched; after DISABLE the line again', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) {
      cmd(h, MsiCmd.MAP_CONFIG, 0);
      mmioWrite32(h.t, MmioReg.QueueSel, 0);
      cmd(h, MsiCmd.MAP_QUEUE, 1);
    }
    cmd(h, MsiCmd.ENABLE);
    expect(complete(h, 0)).toBe(true);
    configEvent(h);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
    mmioWrite32(h.t, MmioReg.InterruptACK, InterruptBit.VRING | InterruptBit.CONFIG);
    expect(h.irq.calls).toEqual([]);
    expect(h.sink.sent).toEqual([msg(1), msg(0)]);

    cmd(h, MsiCmd.DISABLE);
    complete(h, 0);
    expect(h.sink.sent).toHaveLength(2);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(InterruptBit.VRING);
    expect(h.irq.level).toBe(true);
    mmioWrite32(h.t, MmioReg.InterruptACK, InterruptBit.VRING);
    expect(h.irq.calls).toEqual([true, false]);
    // Vector programming survives DISABLE: enabling again needs no CONFIGURE.
    cmd(h, MsiCmd.ENABLE);
    configEvent(h);
    expect(h.sink.sent).toEqual([msg(1), msg(0), msg(0)]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('ENABLE moves events pending on the line to their vectors and lowers the line', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) {
      cmd(h, MsiCmd.MAP_CONFIG, 2);
      for (const q of [0, 1]) {
        mmioWrite32(h.t, MmioReg.QueueSel, q);
        cmd(h, MsiCmd.MAP_QUEUE, 1);
      }
    }
    configEvent(h);
    complete(h, 1);
    expect(h.irq.level).toBe(true);
    cmd(h, MsiCmd.ENABLE);
    expect(h.irq.level).toBe(false);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(0);
    // Config, then every queue's vector, each vector once (the VRING bit does not say which queue).
    expect(h.sink.sent).toEqual(sharing ? [msg(2), msg(1)] : [msg(0), msg(1), msg(2)]);
  });

  it('DISABLE moves events pending on masked vectors to the line', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) {
      cmd(h, MsiCmd.MAP_CONFIG, 0);
      mmioWrite32(h.t, MmioReg.QueueSel, 1);
      cmd(h, MsiCmd.MAP_QUEUE, 2);
    }
    cmd(h, MsiCmd.ENABLE);
    cmd(h, MsiCmd.MASK, 0);
    cmd(h, MsiCmd.MASK, 2);
    configEvent(h);
    complete(h, 1);
    expect(h.sink.sent).toEqual([]);
    cmd(h, MsiCmd.DISABLE);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(InterruptBit.VRING | InterruptBit.CONFIG);
    expect(h.irq.level).toBe(true);
    expect(h.t.msi?.isPending(0)).toBe(false);
    // Re-enabling later does not send them again: they went to the line.
    mmioWrite32(h.t, MmioReg.InterruptACK, InterruptBit.VRING | InterruptBit.CONFIG);
    cmd(h, MsiCmd.ENABLE);
    cmd(h, MsiCmd.UNMASK, 0);
    cmd(h, MsiCmd.UNMASK, 2);
    expect(h.sink.sent).toEqual([]);
  });

  it('CONFIGURE is atomic: an event between the register writes goes to the old message', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) cmd(h, MsiCmd.MAP_CONFIG, 0);
    cmd(h, MsiCmd.ENABLE);
    const next: [number, number, number] = [0xfee0_1000, 0, 0x77];
    mmioWrite32(h.t, SeedMmioReg.MsiVecSel, 0);
    configEvent(h);
    mmioWrite32(h.t, SeedMmioReg.MsiAddrLow, next[0]);
    configEvent(h);
    mmioWrite32(h.t, SeedMmioReg.MsiAddrHigh, next[1]);
    configEvent(h);
    mmioWrite32(h.t, SeedMmioReg.MsiData, next[2]);
    configEvent(h);
    expect(h.sink.sent).toEqual([msg(0), msg(0), msg(0), msg(0)]);
    cmd(h, MsiCmd.CONFIGURE);
    configEvent(h);
    expect(h.sink.sent.at(-1)).toEqual(next);
    expect(h.sink.sent).toHaveLength(5);
  });

  it('a masked vector keeps one pending bit: delivered exactly once on unmask, never lost or doubled', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) cmd(h, MsiCmd.MAP_CONFIG, 2);
    const v = sharing ? 2 : 0;
    cmd(h, MsiCmd.ENABLE);
    cmd(h, MsiCmd.MASK, v);
    cmd(h, MsiCmd.MASK, v); // masking twice is harmless
    configEvent(h);
    configEvent(h);
    configEvent(h);
    expect(h.sink.sent).toEqual([]);
    expect(h.t.msi?.isPending(v)).toBe(true);
    cmd(h, MsiCmd.UNMASK, v);
    expect(h.sink.sent).toEqual([msg(v)]);
    cmd(h, MsiCmd.UNMASK, v);
    expect(h.sink.sent).toEqual([msg(v)]);
    configEvent(h);
    expect(h.sink.sent).toEqual([msg(v), msg(v)]);
    expect(h.t.msi?.stats()).toMatchObject({ messages: 2, latched: 3 });
    expect(h.t.guestErrors).toBe(0);
  });

  it('an event on a vector never configured waits for CONFIGURE (nothing goes to address 0)', () => {
    const h = live({ vectors: 3, sharing });
    if (sharing) cmd(h, MsiCmd.MAP_CONFIG, 1);
    const v = sharing ? 1 : 0;
    cmd(h, MsiCmd.ENABLE);
    configEvent(h);
    expect(h.sink.sent).toEqual([]);
    expect(h.t.msi?.message(v)).toBeNull();
    configure(h, v, ...msg(v));
    expect(h.sink.sent).toEqual([msg(v)]);
  });

  it('reprogramming a vector while events fire: each event goes to exactly one message, old or new', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) {
      mmioWrite32(h.t, MmioReg.QueueSel, 0);
      cmd(h, MsiCmd.MAP_QUEUE, 1);
    }
    cmd(h, MsiCmd.ENABLE);
    const moved: [number, number, number] = [0xfee0_3000, 0, 0x99];
    // Linux irq affinity change: mask, write the new message, unmask; events keep coming.
    complete(h, 0);
    cmd(h, MsiCmd.MASK, 1);
    complete(h, 0);
    mmioWrite32(h.t, SeedMmioReg.MsiAddrLow, moved[0]);
    complete(h, 0);
    mmioWrite32(h.t, SeedMmioReg.MsiAddrHigh, moved[1]);
    mmioWrite32(h.t, SeedMmioReg.MsiData, moved[2]);
    cmd(h, MsiCmd.CONFIGURE);
    complete(h, 0);
    expect(h.sink.sent).toEqual([msg(1)]);
    cmd(h, MsiCmd.UNMASK);
    // The three events while masked become one message, to the new address.
    expect(h.sink.sent).toEqual([msg(1), moved]);
    complete(h, 0);
    // Without masking: the event before CONFIGURE goes to the old message, after it to the new.
    const back = msg(1);
    mmioWrite32(h.t, SeedMmioReg.MsiAddrLow, back[0]);
    mmioWrite32(h.t, SeedMmioReg.MsiData, back[2]);
    complete(h, 0);
    cmd(h, MsiCmd.CONFIGURE);
    complete(h, 0);
    expect(h.sink.sent).toEqual([msg(1), moved, moved, moved, back]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('device reset turns everything off and gates the registers again', () => {
    const h = live({ vectors: 3, sharing });
    configureAll(h, 3);
    if (sharing) cmd(h, MsiCmd.MAP_CONFIG, 1);
    cmd(h, MsiCmd.MASK, 1);
    cmd(h, MsiCmd.ENABLE);
    mmioWrite32(h.t, MmioReg.Status, 0);
    expect(mmioRead32(h.t, SeedMmioReg.MsiState)).toBe(0);
    expect(h.t.guestErrorCounts.msi).toBe(1);
    const msi = h.t.msi;
    expect(msi?.isEnabled).toBe(false);
    expect(msi?.message(0)).toBeNull();
    expect(msi?.isMasked(1)).toBe(false);
    expect(msi?.selectedVector).toBe(0);
    expect(msi?.configEventVector).toBe(sharing ? MSI_NO_VECTOR : 0);
    // Negotiated again, without ENABLE: events use the line.
    driveToFeaturesOk(h.t, MSI_FEATURES);
    programQueue(h.t, 0, { size: 8, descTable: 0x1000, availRing: 0x1400, usedRing: 0x1800 });
    addStatus(h.t, DeviceStatus.DRIVER_OK);
    configEvent(h);
    expect(h.irq.level).toBe(true);
    expect(h.sink.sent).toEqual([]);
  });
});

describe('seed MSI, non-sharing mode: the fixed mapping', () => {
  it('vector 0 is the configuration event and vector N+1 is queue N; MAP commands are refused', () => {
    const h = live({ vectors: 3, sharing: false });
    configureAll(h, 3);
    cmd(h, MsiCmd.ENABLE);
    complete(h, 1);
    complete(h, 0);
    configEvent(h);
    expect(h.sink.sent).toEqual([msg(2), msg(1), msg(0)]);
    cmd(h, MsiCmd.MAP_CONFIG, 2);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    cmd(h, MsiCmd.MAP_QUEUE, 2);
    expect(h.errors).toEqual(['msi map_config in non-sharing mode', 'msi map_queue in non-sharing mode']);
    configEvent(h);
    expect(h.sink.sent.at(-1)).toEqual(msg(0));
    expect(h.t.msi?.stats().perVector).toEqual([2, 1, 1]);
  });

  it('a device with fewer vectors than queues + 1 has no vector for the last queues', () => {
    const h = live({ vectors: 2, sharing: false }, [8, 8, 8]);
    configureAll(h, 2);
    cmd(h, MsiCmd.ENABLE);
    expect(h.t.msi?.queueEventVector(0)).toBe(1);
    expect(h.t.msi?.queueEventVector(1)).toBe(MSI_NO_VECTOR);
    complete(h, 2);
    complete(h, 0);
    expect(h.sink.sent).toEqual([msg(1)]);
    expect(h.t.msi?.stats().unmapped).toBe(1);
  });
});

describe('seed MSI, sharing mode: dynamic mapping', () => {
  it('starts unmapped: events are dropped (NO_VECTOR) until MAP_CONFIG / MAP_QUEUE', () => {
    const h = live({ vectors: 2, sharing: true });
    configureAll(h, 2);
    cmd(h, MsiCmd.ENABLE);
    configEvent(h);
    complete(h, 0);
    expect(h.sink.sent).toEqual([]);
    expect(h.t.msi?.stats().unmapped).toBe(2);
  });

  it('maps any event to any vector, several events to one vector, and NO_VECTOR unmaps', () => {
    const h = live({ vectors: 2, sharing: true });
    configureAll(h, 2);
    cmd(h, MsiCmd.MAP_CONFIG, 0);
    for (const q of [0, 1]) {
      mmioWrite32(h.t, MmioReg.QueueSel, q);
      cmd(h, MsiCmd.MAP_QUEUE, 1);
    }
    cmd(h, MsiCmd.ENABLE);
    configEvent(h);
    complete(h, 0);
    complete(h, 1);
    expect(h.sink.sent).toEqual([msg(0), msg(1), msg(1)]);
    // Config onto the queue vector; queue 1 unmapped.
    cmd(h, MsiCmd.MAP_CONFIG, 1);
    mmioWrite32(h.t, MmioReg.QueueSel, 1);
    cmd(h, MsiCmd.MAP_QUEUE, MSI_NO_VECTOR);
    configEvent(h);
    complete(h, 1);
    expect(h.sink.sent).toEqual([msg(0), msg(1), msg(1), msg(1)]);
    expect(h.t.msi?.queueEventVector(1)).toBe(MSI_NO_VECTOR);
    cmd(h, MsiCmd.MAP_CONFIG, MSI_NO_VECTOR);
    configEvent(h);
    expect(h.sink.sent).toHaveLength(4);
    expect(h.t.guestErrors).toBe(0);
  });

  it('refuses MAP_QUEUE for a missing queue and MAP with an out-of-range selection', () => {
    const h = live({ vectors: 2, sharing: true });
    mmioWrite32(h.t, MmioReg.QueueSel, 2);
    cmd(h, MsiCmd.MAP_QUEUE, 0);
    mmioWrite32(h.t, MmioReg.QueueSel, 0);
    cmd(h, MsiCmd.MAP_QUEUE, 5);
    cmd(h, MsiCmd.MAP_CONFIG);
    expect(h.errors).toEqual([
      'msi map_queue for queue 2, which does not exist',
      'MsiVecSel 5 out of range (2 vectors)',
      'msi map_queue with MsiVecSel 5, not a vector or no_vector',
      'msi map_config with MsiVecSel 5, not a vector or no_vector',
    ]);
    expect(h.t.msi?.configEventVector).toBe(MSI_NO_VECTOR);
    expect(h.t.msi?.queueEventVector(0)).toBe(MSI_NO_VECTOR);
  });
});

describe('seed MSI: random register traffic (property)', () => {
  type Op =
    | { kind: 'reg'; reg: number; value: number }
    | { kind: 'queueSel'; value: number }
    | { kind: 'config' }
    | { kind: 'queue'; q: number }
    | { kind: 'ack'; value: number };
  const regs = [
    SeedMmioReg.MsiVecNum,
    SeedMmioReg.MsiState,
    SeedMmioReg.MsiCommand,
    SeedMmioReg.MsiVecSel,
    SeedMmioReg.MsiAddrLow,
    SeedMmioReg.MsiAddrHigh,
    SeedMmioReg.MsiData,
  ];
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('reg' as const),
      reg: fc.constantFrom(...regs),
      value: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.constant(MSI_NO_VECTOR), fc.nat()),
    }),
    fc.record({ kind: fc.constant('queueSel' as const), value: fc.integer({ min: 0, max: 3 }) }),
    fc.record({ kind: fc.constant('config' as const) }),
    fc.record({ kind: fc.constant('queue' as const), q: fc.integer({ min: 0, max: 1 }) }),
    fc.record({ kind: fc.constant('ack' as const), value: fc.integer({ min: 0, max: 3 }) }),
  );

  it.each(MODES)(
    '%s: never throws, never asserts the line while enabled, and leaves nothing latched',
    (_m, sharing) => {
      fc.assert(
        fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
          const h = live({ vectors: 3, sharing });
          for (const o of ops) {
            const before = h.sink.sent.length;
            if (o.kind === 'reg') {
              if (o.reg === SeedMmioReg.MsiVecNum || o.reg === SeedMmioReg.MsiState) mmioRead32(h.t, o.reg);
              else mmioWrite32(h.t, o.reg, o.value);
            } else if (o.kind === 'queueSel') {
              mmioWrite32(h.t, MmioReg.QueueSel, o.value);
            } else if (o.kind === 'config') {
              configEvent(h);
            } else if (o.kind === 'queue') {
              complete(h, o.q);
            } else {
              mmioWrite32(h.t, MmioReg.InterruptACK, o.value);
            }
            const msi = h.t.msi;
            if (msi === null) throw new Error('no msi');
            expect((mmioRead32(h.t, SeedMmioReg.MsiState) & MsiStateBit.ENABLED) !== 0).toBe(msi.isEnabled);
            if (msi.isEnabled) {
              expect(h.t.interruptStatus).toBe(0);
              expect(h.irq.level).toBe(false);
            } else {
              expect(h.sink.sent.length).toBe(before);
              expect(h.irq.level).toBe(h.t.interruptStatus !== 0);
            }
          }
          // Liveness: once enabled, configured and unmasked, no vector keeps an event latched.
          if (!h.t.msi?.isEnabled) cmd(h, MsiCmd.ENABLE);
          for (let v = 0; v < 3; v++) {
            configure(h, v, ...msg(v));
            cmd(h, MsiCmd.UNMASK, v);
            expect(h.t.msi?.isPending(v)).toBe(false);
          }
        }),
        { numRuns: 200 },
      );
    },
  );
});

describe('seed MSI: interoperation', () => {
  it('a driver that accepts every offered bit but knows nothing of the profile works on the line', () => {
    // A standard driver may accept bit 40 believing it is RING_RESET (and never touch QueueReset)
    // and bit 39 believing it is NOTIF_CONFIG_DATA: MSI then simply stays disabled.
    const sink = new RecordingSink();
    const h = createTransportHarness({
      transport: { seed: { msi: { vectors: 3, sharing: false }, notification: true }, msiSink: sink },
    });
    driveToFeaturesOk(h.t);
    expect(h.t.isNegotiated(SeedFeatureBit.MMIO_MSI)).toBe(true);
    programQueue(h.t, 0, { size: 8, descTable: 0x1000, availRing: 0x1400, usedRing: 0x1800 });
    addStatus(h.t, DeviceStatus.DRIVER_OK);
    mmioWrite32(h.t, MmioReg.QueueNotify, 0);
    expect(h.dev.notifyLog).toEqual([0]);
    complete(h, 0);
    const st = mmioRead32(h.t, MmioReg.InterruptStatus);
    expect(st).toBe(InterruptBit.VRING);
    mmioWrite32(h.t, MmioReg.InterruptACK, st);
    expect(h.irq.calls).toEqual([true, false]);
    expect(sink.sent).toEqual([]);
    expect(h.t.guestErrors).toBe(0);
  });

  it('MSI over several wired lines: DISABLE falls back to the lines, ENABLE lowers them', () => {
    const sink = new RecordingSink();
    const config = new IrqRecorder();
    const queues = [new IrqRecorder(), new IrqRecorder()];
    const h = createTransportHarness({
      transport: { seed: { msi: { vectors: 3, sharing: false } }, msiSink: sink, lines: { config, queues } },
    });
    driveToFeaturesOk(h.t, MSI_FEATURES);
    programQueue(h.t, 1, { size: 8, descTable: 0x1000, availRing: 0x1400, usedRing: 0x1800 });
    addStatus(h.t, DeviceStatus.DRIVER_OK);
    complete(h, 1);
    expect(queues[1].level).toBe(true);
    expect(mmioRead32(h.t, MmioReg.InterruptStatus)).toBe(InterruptBit.VRING | queueInterruptBit(1));
    configureAll(h, 3);
    cmd(h, MsiCmd.ENABLE);
    expect([h.irq.level, queues[1].level]).toEqual([false, false]);
    // Every queue's vector gets the VRING event (the transfer does not look at per-queue bits).
    expect(sink.sent).toEqual([msg(1), msg(2)]);
    cmd(h, MsiCmd.MASK, 2);
    complete(h, 1);
    cmd(h, MsiCmd.DISABLE);
    expect([h.irq.level, config.level, queues[0].level, queues[1].level]).toEqual([true, false, false, true]);
    mmioWrite32(h.t, MmioReg.InterruptACK, queueInterruptBit(1));
    expect(h.irq.level).toBe(false);
    expect(h.t.guestErrors).toBe(0);
  });
});
