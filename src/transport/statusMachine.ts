/**
 * The device status machine as data (Firecracker's `VALID_TRANSITIONS`): the transitions a driver
 * may make by writing Status, one table per layout version. Writing 0 (reset) and writing a value
 * with FAILED are handled before the table is consulted; DEVICE_NEEDS_RESET is owned by the device
 * and is masked out of both sides of the comparison.
 *
 * ```
 * modern (3.1.1):  0 -> ACK -> ACK|DRIVER -> ACK|DRIVER|FEATURES_OK -> ACK|DRIVER|FEATURES_OK|DRIVER_OK
 * legacy (3.1.2):  0 -> ACK -> ACK|DRIVER -> ACK|DRIVER|DRIVER_OK          (no FEATURES_OK)
 * any state:       write 0 -> reset;  write with FAILED -> status |= FAILED
 * ```
 *
 * 2.1.1: "The driver MUST NOT clear a device status bit", so every transition adds exactly one bit
 * and keeps the others; writing the current value again is not a transition.
 *
 * @packageDocumentation
 */

import { DeviceStatus } from '../spec/index.js';

/** What a transition does besides setting the new status. */
export type StatusStep = 'acknowledge' | 'driver' | 'features-ok' | 'driver-ok';

/** One valid status transition. */
export interface StatusTransition {
  /** Status before the write (DEVICE_NEEDS_RESET masked out). */
  readonly from: number;
  /** Value written (DEVICE_NEEDS_RESET masked out). */
  readonly to: number;
  /** The step of the initialization sequence this is. */
  readonly step: StatusStep;
}

const ACK = DeviceStatus.ACKNOWLEDGE;
const DRIVER = DeviceStatus.DRIVER;
const FEATURES_OK = DeviceStatus.FEATURES_OK;
const DRIVER_OK = DeviceStatus.DRIVER_OK;

/** Valid transitions of a modern (Version 2) device: 3.1.1 steps 2, 3, 5 and 8. */
export const MODERN_STATUS_TRANSITIONS: readonly StatusTransition[] = [
  { from: 0, to: ACK, step: 'acknowledge' },
  { from: ACK, to: ACK | DRIVER, step: 'driver' },
  { from: ACK | DRIVER, to: ACK | DRIVER | FEATURES_OK, step: 'features-ok' },
  { from: ACK | DRIVER | FEATURES_OK, to: ACK | DRIVER | FEATURES_OK | DRIVER_OK, step: 'driver-ok' },
];

/**
 * Valid transitions of a legacy (Version 1) device. 3.1.2: "Legacy device interfaces did not support
 * the FEATURES_OK status bit"; the features are taken as written when DRIVER_OK is set.
 */
export const LEGACY_STATUS_TRANSITIONS: readonly StatusTransition[] = [
  { from: 0, to: ACK, step: 'acknowledge' },
  { from: ACK, to: ACK | DRIVER, step: 'driver' },
  { from: ACK | DRIVER, to: ACK | DRIVER | DRIVER_OK, step: 'driver-ok' },
];

/** The transition from `from` to `to` in `table`, or undefined when the write is not valid. */
export function findTransition(
  table: readonly StatusTransition[],
  from: number,
  to: number,
): StatusTransition | undefined {
  for (const t of table) if (t.from === from && t.to === to) return t;
  return undefined;
}
