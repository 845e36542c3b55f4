/** A fuzz target: a pure function of its input that throws an InvariantViolation on a finding. */
export interface FuzzTarget {
  /** Name, also the corpus folder (fuzz/corpus/<name>/). */
  readonly name: string;
  /** Runs one input. Throws on a finding (any exception is a finding). */
  run(data: Uint8Array): void;
}
