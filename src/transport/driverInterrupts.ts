/**
 * The guest driver's interrupt modes and the order of its fallback cascade (Linux `vm_find_vqs`
 * with the seed's MSI steps, "[PATCH v2 4/5]", and the multi-IRQ steps of the 2014 RFC
 * `vm_try_to_find_vqs`):
 *
 * ```
 *   msi-per-queue    seed MSI, non-sharing: vector 0 = config, vector N+1 = queue N (fixed)
 *   msi-shared       seed MSI: one vector for config, one for every queue
 *   lines-per-queue  wired lines from the machine description: config line + one per queue
 *   lines-shared     config line + one line for every queue
 *   line             the single standard line (irqLines[0]), InterruptStatus / InterruptACK
 * ```
 *
 * The driver tries them in this order and keeps the first that works; each step that fails
 * unwinds what it set up before the next is tried (see {@link MmioDriver.setupQueues}).
 *
 * @packageDocumentation
 */

/** How interrupts reach the guest driver, best first. */
export type InterruptMode = 'msi-per-queue' | 'msi-shared' | 'lines-per-queue' | 'lines-shared' | 'line';

/** Every {@link InterruptMode}, in cascade order. */
export const INTERRUPT_MODES: readonly InterruptMode[] = [
  'msi-per-queue',
  'msi-shared',
  'lines-per-queue',
  'lines-shared',
  'line',
];

/** The modes that use the seed's MSI registers. */
export const MSI_MODES: readonly InterruptMode[] = ['msi-per-queue', 'msi-shared'];

/** A step of the cascade that was skipped or failed, and why (for reports and tests). */
export interface InterruptFallback {
  /** The mode that was not used. */
  readonly mode: InterruptMode;
  /** Why (lowercase, as error messages). */
  readonly reason: string;
}

/** Options of the driver's interrupt setup. */
export interface DriverInterruptOptions {
  /**
   * Modes the cascade may use (order does not matter: the cascade order is fixed). Default: all of
   * {@link INTERRUPT_MODES}. `['line']` is a driver with the extensions disabled.
   */
  readonly allow?: readonly InterruptMode[];
}
