/** Every fuzz target, by name. */
import { deviceTargets } from './devices.js';
import { driverTargets } from './driver.js';
import { netDriverTarget } from './driverNet.js';
import { queueTarget } from './queue.js';
import { transportTargets } from './transport.js';
import type { FuzzTarget } from './types.js';

export type { FuzzTarget } from './types.js';

/** All targets; each name is also its corpus folder under fuzz/corpus/. */
export const TARGETS: readonly FuzzTarget[] = [
  ...transportTargets,
  queueTarget,
  ...deviceTargets,
  ...driverTargets,
  netDriverTarget,
];
