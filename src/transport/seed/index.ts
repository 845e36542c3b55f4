/**
 * The seed v2 profile (non-standard, opt-in per device): MSI through the Msi* registers and
 * per-queue notification addresses. docs/profiles/seed-v2.md.
 *
 * @packageDocumentation
 */
export * from './msiDelivery.js';
export * from './profile.js';
