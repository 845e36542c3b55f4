/**
 * Counts summed over the timed runs of one benchmark mode, and their per-operation figures for a
 * result entry.
 *
 * @packageDocumentation
 */

import { MmioReg } from '../../../spec/index.js';
import type { VcpuStats } from '../../../vmm/index.js';
import type { SeedsResultEntry } from './results.js';

/** Counts summed over the timed runs of a mode (every vCPU that took part). */
export class Tally {
  read = 0;
  write = 0;
  eoi = 0;
  irqchip = 0;
  doorbells = 0;
  interrupts = 0;
  handler = 0;
  hltWakeups = 0;
  /** Inter-processor interrupts sent (multiqueue forwarding), summed by the caller. */
  ipis = 0;
  /** Operations the counts are divided by. */
  ops = 0;

  /**
   * Adds one vCPU's counters of one run (`device`: whose handler registers count; `ops`: the
   * operations that run performed, 0 for a second vCPU of the same run).
   */
  add(s: VcpuStats, device: string | null, ops: number): void {
    this.read += s.exits.read;
    this.write += s.exits.write;
    this.eoi += s.exits.eoi;
    this.irqchip += s.exits.irqchip;
    this.doorbells += s.doorbells;
    this.interrupts += s.interrupts;
    this.hltWakeups += s.exits.hltWakeup;
    this.ops += ops;
    if (device !== null) {
      for (const r of s.registers) {
        if (r.device !== device) continue;
        if (r.offset === MmioReg.InterruptStatus) this.handler += r.reads + r.local;
        if (r.offset === MmioReg.InterruptACK) this.handler += r.writes + r.posted + r.local;
      }
      this.handler += s.exits.eoi + s.local.eois;
    }
  }

  /** `x` per operation. */
  per(x: number): number {
    return this.ops > 0 ? x / this.ops : 0;
  }

  /** The per-operation fields of a result entry. */
  entry(): Pick<
    SeedsResultEntry,
    'exits' | 'doorbells' | 'interrupts' | 'handlerAccesses' | 'hltWakeups' | 'exitDetail' | 'operations'
  > {
    return {
      exits: this.per(this.read + this.write + this.eoi + this.irqchip),
      doorbells: this.per(this.doorbells),
      interrupts: this.per(this.interrupts),
      handlerAccesses: this.per(this.handler),
      hltWakeups: this.per(this.hltWakeups),
      exitDetail: {
        read: this.per(this.read),
        write: this.per(this.write),
        eoi: this.per(this.eoi),
        irqchip: this.per(this.irqchip),
      },
      operations: this.ops,
    };
  }
}
