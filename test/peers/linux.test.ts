/**
 * A real Linux kernel (Debian 12 i386) in v86 drives our device models. Runs when the guest files
 * (scripts/fetch-linux-guest.sh) and the pinned v86 package are present; otherwise says what was
 * skipped and why. With VIRTIO_MMIO_REQUIRE_PEERS=1 a missing prerequisite is a failure.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  findLinuxPrerequisites,
  formatLinuxReport,
  LINUX_SCENARIOS,
  type LinuxCheckReport,
  missingV86Internals,
  runLinuxCheck,
  V86_PINNED_VERSION,
  V86GuestMemory,
  V86MmioWindows,
  v86Cpu,
} from '../../src/peers/index.js';
import { MMIO_MAGIC_VALUE, MmioReg } from '../../src/spec/index.js';

const pre = findLinuxPrerequisites();
const requirePeers = process.env.VIRTIO_MMIO_REQUIRE_PEERS === '1';
const haveV86 = pre.wasmPath !== null;
const haveLinux = pre.missing.length === 0;

if (!haveV86) console.warn(`[peers/linux] v86 smoke test skipped: ${pre.missing.join('; ')}`);
if (!haveLinux) {
  console.warn(
    `[peers/linux] Linux guest scenarios skipped (${LINUX_SCENARIOS.map((s) => s.name).join(', ')}): ${pre.missing.join('; ')}`,
  );
}

describe.runIf(requirePeers)('linux peer prerequisites (VIRTIO_MMIO_REQUIRE_PEERS=1)', () => {
  it('are all present', () => {
    expect(pre.missing).toEqual([]);
  });
});

describe.skipIf(!haveV86)('v86 internals the adapter relies on', () => {
  it(`are present in the installed v86 (pinned ${V86_PINNED_VERSION}) and reach our windows`, async () => {
    expect(pre.v86Version?.startsWith(V86_PINNED_VERSION)).toBe(true);
    const { V86 } = (await import('v86')) as unknown as {
      V86: new (o: object) => { add_listener(e: string, f: () => void): void; destroy(): Promise<void> };
    };
    const emulator = new V86({
      wasm_path: pre.wasmPath,
      autostart: false,
      memory_size: 16 << 20,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      log_level: 0,
    });
    await new Promise<void>((resolve) => emulator.add_listener('emulator-loaded', resolve));
    try {
      expect(missingV86Internals(emulator)).toEqual([]);
      const cpu = v86Cpu(emulator);
      const reader = cpu as unknown as { read32s(addr: number): number };
      // A guest-physical 32-bit load of our window goes through mmap_register to the empty slot.
      new V86MmioWindows(cpu, 0xd000_0000, 2);
      expect(reader.read32s(0xd000_0000 + MmioReg.MagicValue) >>> 0).toBe(MMIO_MAGIC_VALUE);
      expect(reader.read32s(0xd000_0200 + MmioReg.Version)).toBe(2);
      // Device writes into RAM land where the CPU reads them.
      const mem = new V86GuestMemory(cpu);
      expect(mem.size).toBe(16 << 20);
      mem.write32(0x1000, 0xcafe_f00d);
      mem.writeBytes(0x2000, Uint8Array.of(0x11, 0x22, 0x33, 0x44));
      expect(reader.read32s(0x1000) >>> 0).toBe(0xcafe_f00d);
      expect(reader.read32s(0x2000) >>> 0).toBe(0x4433_2211);
    } finally {
      await emulator.destroy();
    }
  });
});

describe.skipIf(!haveLinux)('a real Linux guest drives our devices (v86)', () => {
  let report: LinuxCheckReport;

  beforeAll(async () => {
    report = await runLinuxCheck();
  }, 900_000);

  afterAll(() => {
    if (report !== undefined) console.log(formatLinuxReport(report));
  });

  it('boots to the shell and snapshots, with a clean console', () => {
    expect(report.error).toBeUndefined();
    expect(report.bootMs).toBeGreaterThan(0);
    expect(report.bootProblems).toEqual([]);
  });

  for (const s of LINUX_SCENARIOS) {
    it(`${s.name}: ${s.title}`, () => {
      const result = report.scenarios.find((x) => x.name === s.name);
      expect(result, `scenario ${s.name} did not run`).toBeDefined();
      expect(result?.failures).toEqual([]);
      expect(result?.guestProblems).toEqual([]);
      expect(result?.checks.length).toBeGreaterThan(0);
    });
  }
});
