/**
 * The small interfaces at the edges of the transport layer: what a bus maps (device side), how the
 * device side raises its wired interrupt, and what the guest side needs from the guest platform.
 * The platform layer implements them; the transport never imports the platform.
 *
 * @packageDocumentation
 */

import type { GuestPlatform } from '../device/index.js';

/** Width of an MMIO access in bytes. */
export type AccessWidth = 1 | 2 | 4 | 8;

/**
 * A device window as a bus sees it: `offset` is relative to the window base. Implementations never
 * throw for guest-chosen offsets, widths or values (a hostile guest chooses them).
 */
export interface MmioDevice {
  /** Size of the window in bytes. */
  readonly windowSize: number;
  /** A guest read of `width` bytes at `offset`; returns the value (unsigned, low `8*width` bits). */
  read(offset: number, width: AccessWidth): number;
  /** A guest write of `width` bytes at `offset`. */
  write(offset: number, width: AccessWidth, value: number): void;
}

/**
 * A level-triggered interrupt line as the device side drives it: asserted while the device has an
 * interrupt pending (InterruptStatus != 0), deasserted when the driver acknowledges the last bit.
 */
export interface InterruptLine {
  /** Sets the line level. Called only when the level changes. */
  setLevel(asserted: boolean): void;
}

/**
 * How the guest driver reaches the device window: 32-bit accesses for control registers, 8/16/32
 * for configuration space. In-process it is a bus window; in the threaded VMM a trapped access; in
 * the QEMU check a qtest socket.
 */
export interface MmioAccess {
  /** 32-bit read of a control register (offset relative to the window). */
  read32(offset: number): number;
  /** 32-bit write of a control register. */
  write32(offset: number, value: number): void;
  /** 8-bit read (configuration space). */
  read8(offset: number): number;
  /** 16-bit read (configuration space). */
  read16(offset: number): number;
  /** 8-bit write (configuration space). */
  write8(offset: number, value: number): void;
  /** 16-bit write (configuration space). */
  write16(offset: number, value: number): void;
}

/**
 * The guest platform as the guest-side MMIO driver needs it: waiting for interrupts, and wired
 * interrupt lines it can attach handlers to (Linux `request_irq` on `platform_get_irq(i)`). The
 * platform acknowledges the line at the interrupt controller (EOI) after the handler returns.
 */
export interface GuestIrqPlatform extends GuestPlatform {
  /**
   * Attaches `handler` to wired line `line`.
   * @throws VirtioError `IRQ_INVALID_LINE` for a line the platform does not have or already in use
   */
  requestIrq(line: number, handler: () => void): void;
  /** Detaches the handler of `line` (no-op when none). */
  freeIrq(line: number): void;
}
