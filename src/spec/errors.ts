/**
 * The host/programmer error tier: a {@link VirtioError} carries a string `code`. Guest mistakes
 * never produce one (they are counted as guest errors, or stop a descriptor chain with a recorded
 * reason); a `VirtioError` means the embedding program passed something invalid.
 *
 * This is the one class in `spec`: it has no behaviour beyond carrying its fields, and every layer
 * needs it.
 *
 * @packageDocumentation
 */

/** Every error code a {@link VirtioError} can carry. */
export type VirtioErrorCode =
  | 'MEMORY_OUT_OF_BOUNDS'
  | 'MEMORY_INVALID_REGION'
  | 'MEMORY_OVERLAP'
  | 'ALLOC_FAILED'
  | 'QUEUE_INVALID_SIZE'
  | 'QUEUE_NOT_READY'
  | 'QUEUE_FULL'
  | 'INVALID_ARGUMENT'
  | 'INVALID_STATE'
  | 'BUS_OVERLAP'
  | 'BUS_INVALID_RANGE'
  | 'IRQ_INVALID_LINE'
  | 'DEVICE_NOT_FOUND'
  | 'DEVICE_REJECTED'
  | 'FEATURES_REJECTED'
  | 'DEVICE_FAILED'
  | 'BACKEND_IO'
  | 'TIMEOUT';

/** A host or programmer error: bad construction arguments, misuse of the API, I/O failure. */
export class VirtioError extends Error {
  /** Machine-readable error code. */
  readonly code: VirtioErrorCode;

  /**
   * @param code - machine-readable code
   * @param message - lowercase, no trailing period, addresses in hex
   */
  constructor(code: VirtioErrorCode, message: string) {
    super(message);
    this.name = 'VirtioError';
    this.code = code;
  }
}

/**
 * An access outside guest RAM. Carries the guest physical address and length of the access.
 */
export class MemoryError extends VirtioError {
  /** Guest physical address of the failed access. */
  readonly gpa: number;
  /** Length in bytes of the failed access. */
  readonly length: number;

  /**
   * @param gpa - guest physical address of the access
   * @param length - length of the access in bytes
   */
  constructor(gpa: number, length: number) {
    super(
      'MEMORY_OUT_OF_BOUNDS',
      `guest memory access out of bounds: 0x${gpa.toString(16)} length 0x${length.toString(16)}`,
    );
    this.name = 'MemoryError';
    this.gpa = gpa;
    this.length = length;
  }
}

/** Formats a number as a lowercase hex literal (`0x1f`), for messages. */
export function hex(value: number): string {
  return `0x${value.toString(16)}`;
}
