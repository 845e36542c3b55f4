import { describe, expect, it } from 'vitest';
import { DeviceStatus } from '../spec/index.js';
import { findTransition, LEGACY_STATUS_TRANSITIONS, MODERN_STATUS_TRANSITIONS } from './statusMachine.js';

describe('status transition tables (3.1.1 / 3.1.2)', () => {
  for (const [name, table] of [
    ['modern', MODERN_STATUS_TRANSITIONS],
    ['legacy', LEGACY_STATUS_TRANSITIONS],
  ] as const) {
    it(`${name}: every transition adds exactly one bit and keeps the others (2.1.1)`, () => {
      for (const t of table) {
        const added = t.to & ~t.from;
        expect(t.to & t.from, `${t.step}`).toBe(t.from);
        expect(added !== 0 && (added & (added - 1)) === 0, `${t.step}`).toBe(true);
        expect(added & (DeviceStatus.FAILED | DeviceStatus.DEVICE_NEEDS_RESET), `${t.step}`).toBe(0);
      }
    });

    it(`${name}: the transitions chain from 0 to DRIVER_OK`, () => {
      let status = 0;
      for (const t of table) {
        expect(t.from).toBe(status);
        status = t.to;
      }
      expect(status & DeviceStatus.DRIVER_OK).toBe(DeviceStatus.DRIVER_OK);
      expect(table.at(-1)?.step).toBe('driver-ok');
    });
  }

  it('only the modern table has FEATURES_OK', () => {
    expect(MODERN_STATUS_TRANSITIONS.some((t) => t.step === 'features-ok')).toBe(true);
    expect(LEGACY_STATUS_TRANSITIONS.some((t) => t.to & DeviceStatus.FEATURES_OK)).toBe(false);
  });

  it('findTransition finds listed pairs only', () => {
    const ack = DeviceStatus.ACKNOWLEDGE;
    expect(findTransition(MODERN_STATUS_TRANSITIONS, 0, ack)?.step).toBe('acknowledge');
    expect(findTransition(MODERN_STATUS_TRANSITIONS, ack, ack)).toBeUndefined();
    expect(findTransition(MODERN_STATUS_TRANSITIONS, ack, 0)).toBeUndefined();
    expect(findTransition(LEGACY_STATUS_TRANSITIONS, 3, 7)?.step).toBe('driver-ok');
    expect(findTransition(MODERN_STATUS_TRANSITIONS, 3, 7)).toBeUndefined();
  });
});
