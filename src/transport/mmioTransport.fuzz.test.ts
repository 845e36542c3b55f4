import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DeviceStatus, MmioReg } from '../spec/index.js';
import { createTransportHarness } from '../testing/index.js';
import type { AccessWidth } from './types.js';

/** One guest access, as data. */
type Op = { op: 'read' | 'write'; offset: number; width: AccessWidth; value: number };

/** Offsets biased to the registers, with some noise around and past them. */
const offsetArb = fc.oneof(
  fc.constantFrom(...Object.values(MmioReg)),
  fc.integer({ min: 0, max: 0x1ff }),
  fc.integer({ min: -8, max: 0x1_0000 }),
);
const valueArb = fc.oneof(
  fc.constantFrom(0, 1, 2, 3, 4, 0xf, 0xff, 0xffff, 0xffff_ffff, 0x8000_0000),
  fc.constantFrom(
    DeviceStatus.ACKNOWLEDGE,
    DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER,
    DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK,
    DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK,
  ),
  fc.integer({ min: 0, max: 0xffff_ffff }),
);
const opArb: fc.Arbitrary<Op> = fc.record({
  op: fc.constantFrom('read', 'write'),
  offset: offsetArb,
  width: fc.constantFrom(1, 2, 4, 4, 4, 8) as fc.Arbitrary<AccessWidth>,
  value: valueArb,
});

describe('guest accesses never throw (property)', () => {
  for (const version of [2, 1] as const) {
    it(`version ${version}: any access sequence leaves a consistent transport`, () => {
      fc.assert(
        fc.property(fc.array(opArb, { maxLength: 300 }), (ops) => {
          const h = createTransportHarness({ transport: { version } });
          let errors = 0;
          for (const o of ops) {
            if (o.op === 'read') {
              const v = h.t.read(o.offset, o.width);
              expect(Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff).toBe(true);
            } else {
              h.t.write(o.offset, o.width, o.value);
            }
            expect(h.t.guestErrors).toBeGreaterThanOrEqual(errors);
            errors = h.t.guestErrors;
            // The line follows InterruptStatus exactly.
            expect(h.irq.level).toBe(h.t.interruptStatus !== 0);
          }
          expect(h.errors.length).toBe(h.t.guestErrors);
          const counts = Object.values(h.t.guestErrorCounts).reduce((a, b) => a + b, 0);
          expect(counts).toBe(h.t.guestErrors);
        }),
        { numRuns: 200, seed: 0x5eed },
      );
    });
  }
});
