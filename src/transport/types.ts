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
 * Where a device sends its message-signalled interrupts: the platform's MSI controller, which
 * decodes (address, data) into a CPU and a vector. A send is a posted memory write on a real bus:
 * it never fails from the device's point of view (an address nobody decodes is the platform's
 * problem, counted there). Called from inside device MMIO handlers: implementations only latch.
 */
export interface MsiSink {
  /** Sends the message `data` to the 64-bit address `addressHigh:addressLow` (each an unsigned 32-bit value). */
  send(addressLow: number, addressHigh: number, data: number): void;
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
 * A message-signalled interrupt as a guest programs it into a device: the device raises the
 * interrupt by writing `data` (32 bits) to the 64-bit address `addressHigh:addressLow`.
 */
export interface MsiMessage {
  /** Low 32 bits of the message address. */
  readonly addressLow: number;
  /** High 32 bits of the message address (0 on x86: the LAPIC window is below 4 GiB). */
  readonly addressHigh: number;
  /** The 32-bit message data. */
  readonly data: number;
}

/**
 * The guest's MSI vector allocator (Linux: the MSI irq domain behind
 * `platform_msi_domain_alloc_irqs`, `irq_msi_compose_msg`, `request_irq` on each vector,
 * `platform_msi_domain_free_irqs`). Vectors are CPU vectors: a device raises one by writing the
 * composed message, and the platform's MSI controller delivers it edge-triggered, with no
 * interrupt-controller acknowledgement.
 */
export interface GuestMsiAllocator {
  /**
   * Allocates `count` vectors, all or nothing: returns them (ascending), or null when fewer than
   * `count` are available, in which case nothing stays allocated.
   * @throws VirtioError `INVALID_ARGUMENT` when `count` is not a positive integer
   */
  allocMsiVectors(count: number): number[] | null;
  /**
   * The message that raises `vector` (x86: address 0xfee00000 | destination APIC id << 12, data =
   * vector, fixed delivery, edge).
   * @throws VirtioError `INVALID_STATE` for a vector this allocator did not hand out
   */
  msiMessage(vector: number): MsiMessage;
  /**
   * Attaches `handler` to an allocated vector, or detaches it with null.
   * @throws VirtioError `INVALID_STATE` for a vector not allocated, or one that already has a
   *   handler when attaching
   */
  setMsiHandler(vector: number, handler: (() => void) | null): void;
  /** Detaches the handlers of `vectors` and returns them to the free pool (unknown ones ignored). */
  freeMsiVectors(vectors: readonly number[]): void;
}

/**
 * The guest platform as the guest-side MMIO driver needs it: waiting for interrupts, and wired
 * interrupt lines it can attach handlers to (Linux `request_irq` on `platform_get_irq(i)`). The
 * platform acknowledges the line at the interrupt controller (EOI) after the handler returns.
 * A platform with message-signalled interrupts also offers {@link GuestIrqPlatform.msi}.
 */
export interface GuestIrqPlatform extends GuestPlatform {
  /** The MSI vector allocator; absent on a platform without MSI (the driver then uses lines). */
  readonly msi?: GuestMsiAllocator;
  /**
   * Attaches `handler` to wired line `line`.
   * @throws VirtioError `IRQ_INVALID_LINE` for a line the platform does not have or already in use
   */
  requestIrq(line: number, handler: () => void): void;
  /** Detaches the handler of `line` (no-op when none). */
  freeIrq(line: number): void;
}
