/**
 * Targets (a) and (d): register sequences against an MmioTransport (modern, legacy, seed profile
 * with MSI, multi-line), ops as data: read/write at an offset/width/value, plus "driver shortcuts"
 * (bring the device up, set up a queue) and ring writes so that notifications reach a live device.
 *
 * Invariants: no exception escapes a register handler, a notification or an interrupt path; reads
 * return unsigned 32-bit values; the standard line follows InterruptStatus (single-line, no MSI);
 * every MSI message sent is well formed and their number per access is bounded; no access outside
 * RAM; a ring failure sets DEVICE_NEEDS_RESET and raises the configuration interrupt; after a reset
 * the device comes up again and serves a valid request.
 */

import { RngDevice } from '../../src/device/rng/index.js';
import { RamMemory } from '../../src/memory/index.js';
import {
  DescFlag,
  DeviceStatus,
  InterruptBit,
  MmioLegacyReg,
  MmioReg,
  MsiCmd,
  SeedMmioReg,
  USED_IDX,
} from '../../src/spec/index.js';
import {
  driveLegacyToDriver,
  driveToFeaturesOk,
  programLegacyQueue,
  programQueue,
} from '../../src/testing/index.js';
import { type AccessWidth, type InterruptLine, MmioTransport } from '../../src/transport/index.js';
import { ByteSource, check } from '../lib/bytes.js';
import { CheckedMemory } from '../lib/checkedMemory.js';
import { DATA_BASE, pushAvail, RING_OPS, requestOp, ringOp, ringsOf, writeDesc } from '../lib/ringRig.js';
import { hit } from '../lib/stats.js';
import type { FuzzTarget } from './types.js';

class Line implements InterruptLine {
  level = false;
  changes = 0;
  setLevel(asserted: boolean): void {
    this.level = asserted;
    this.changes++;
  }
}

const REGS: number[] = [
  ...Object.values(MmioReg),
  ...Object.values(MmioLegacyReg),
  ...Object.values(SeedMmioReg),
];

type Profile = 'modern' | 'legacy' | 'seed' | 'lines';

function transportTarget(name: string, profiles: readonly Profile[], msiBias: boolean): FuzzTarget {
  return {
    name,
    run(data: Uint8Array): void {
      const src = new ByteSource(data);
      const profile = src.pick(profiles);
      const mem = new CheckedMemory(new RamMemory(new ArrayBuffer(0x1_0000)));
      const irq = new Line();
      const lines = { config: new Line(), queues: [new Line()] };
      let sent = 0;
      let badMsi = '';
      const dev = new RngDevice({ entropy: { fill: (d) => d.fill(7) }, queueSize: 16 });
      const t = new MmioTransport(dev, {
        mem,
        irq,
        version: profile === 'legacy' ? 1 : 2,
        seed:
          profile === 'seed'
            ? {
                msi: { vectors: 1 + src.below(4), sharing: src.bool() },
                notification: src.bool() || undefined,
              }
            : undefined,
        msiSink:
          profile === 'seed'
            ? {
                send(lo, hi, d) {
                  sent++;
                  for (const v of [lo, hi, d]) {
                    if (!(Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff)) badMsi = `msi value ${v}`;
                  }
                },
              }
            : undefined,
        lines:
          profile === 'lines'
            ? src.bool()
              ? { config: lines.config, sharedQueues: lines.queues[0] }
              : { config: lines.config, queues: lines.queues }
            : undefined,
      });
      const windowEnd = t.windowSize + 0x20;
      const standardLine = profile === 'modern' || profile === 'legacy';
      const up = (): void => {
        if (profile === 'legacy') {
          // Linux writes GuestPageSize once at probe; the fuzzer may have changed it since.
          t.write(MmioLegacyReg.GuestPageSize, 4, 4096);
          driveLegacyToDriver(t);
          programLegacyQueue(t, 0, { size: 16, pfn: ringsOf(0).descTable >> 12, align: 0x400 });
        } else {
          driveToFeaturesOk(t);
          programQueue(t, 0, { size: 16, ...ringsOf(0) });
        }
        t.write(MmioReg.Status, 4, t.read(MmioReg.Status, 4) | DeviceStatus.DRIVER_OK);
      };
      for (let steps = 0; src.more && steps < 400; steps++) {
        const kind = src.below(16);
        const before = sent;
        if (kind < 6) {
          // A raw access; MSI registers favoured in the msi target.
          const off =
            msiBias && src.bool()
              ? src.pick(Object.values(SeedMmioReg))
              : src.u8() < 200
                ? src.pick(REGS)
                : src.below(windowEnd);
          const width = src.pick([4, 4, 4, 1, 2, 8] as const) as AccessWidth;
          if (kind < 2) {
            const v = t.read(off, width);
            check(Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff, `read returned ${v}`);
          } else {
            let value = src.value();
            if (off === SeedMmioReg.MsiCommand && src.u8() < 220) value = src.pick(Object.values(MsiCmd));
            if (off === MmioReg.Status && src.bool()) value = src.u8();
            t.write(off, width, value);
          }
        } else if (kind === 6) {
          up();
        } else if (kind === 7) {
          t.write(MmioReg.Status, 4, 0);
        } else if (kind === 8) {
          t.write(MmioReg.QueueNotify, 4, src.below(3));
        } else if (kind === 9) {
          t.write(MmioReg.InterruptACK, 4, src.below(4));
        } else if (kind === 10 && profile === 'seed') {
          // A whole MSI command: select, stage, command.
          t.write(SeedMmioReg.MsiVecSel, 4, src.below(6));
          t.write(SeedMmioReg.MsiAddrLow, 4, src.bool() ? 0xfee0_0000 : src.u32());
          t.write(SeedMmioReg.MsiAddrHigh, 4, src.u8() < 230 ? 0 : src.u32());
          t.write(SeedMmioReg.MsiData, 4, src.u32());
          t.write(SeedMmioReg.MsiCommand, 4, src.pick(Object.values(MsiCmd)));
        } else if (kind < 13) {
          if (t.queue(0).ready) requestOp(src, mem.inner, t.queue(0));
        } else {
          ringOp(src, src.below(RING_OPS), mem, [t.queue(0)]);
        }
        check(sent - before <= 8, `one access sent ${sent - before} msi messages`);
        check(badMsi === '', badMsi);
        if (standardLine) {
          check(irq.level === (t.interruptStatus !== 0), 'line level does not follow InterruptStatus');
        }
        const status = t.read(MmioReg.Status, 4);
        if (t.queue(0).error !== null && (status & DeviceStatus.DRIVER_OK) !== 0) {
          check((status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0, 'ring failure without DEVICE_NEEDS_RESET');
          if (standardLine) {
            // The config interrupt may have been acknowledged by the guest since; it was raised.
            check(irq.changes > 0, 'ring failure raised no interrupt');
          }
        }
      }
      if (sent > 0) hit('msi-sent');
      if (t.guestErrors > 0) hit('guest-error');
      if (t.queue(0).nextUsed > 0) hit('served');
      if (t.queue(0).error !== null) hit(`fail:${t.queue(0).error?.reason}`);
      check(mem.violations.length === 0, mem.violations[0] ?? '');
      // Reset, bring up again, serve one valid request.
      t.write(MmioReg.Status, 4, 0);
      check(t.read(MmioReg.Status, 4) === 0, 'reset did not read back 0');
      mem.inner.fill(ringsOf(0).descTable, 0x1000, 0);
      up();
      const st = t.read(MmioReg.Status, 4);
      check((st & DeviceStatus.DRIVER_OK) !== 0, `device did not come up after reset: status ${st}`);
      const q0 = t.queue(0);
      writeDesc(mem.inner, q0.descTable, 0, DATA_BASE, 8, DescFlag.WRITE, 0);
      pushAvail(mem.inner, q0, 0);
      t.write(MmioReg.QueueNotify, 4, 0);
      check(mem.inner.read16(q0.usedRing + USED_IDX) === 1, 'valid request not served after reset');
      if (standardLine) check((t.interruptStatus & InterruptBit.VRING) !== 0, 'no used buffer interrupt');
      check(mem.violations.length === 0, mem.violations[0] ?? '');
    },
  };
}

/** (a) register sequences over every layout; (d) the seed profile's MSI commands. */
export const transportTargets: FuzzTarget[] = [
  transportTarget('transport', ['modern', 'legacy', 'seed', 'lines'], false),
  transportTarget('seed-msi', ['seed'], true),
];
