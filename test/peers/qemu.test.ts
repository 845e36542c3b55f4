/**
 * QEMU peer checks (issue 4, parts 2 and 3). The QEMU suites run when `qemu-system-x86_64-microvm`
 * with the qtest accelerator is installed (scripts/install-qemu.sh); otherwise they are skipped
 * with the reason printed, and with VIRTIO_MMIO_REQUIRE_PEERS=1 a missing QEMU fails instead.
 * The comparison logic itself (normalisation, generator, report formatting) is tested without QEMU.
 */

import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  type AccessRecord,
  attachGuest,
  compareGeneratedRng,
  compareLogs,
  compareRecordedFlow,
  compareRecordedRngFlow,
  DriverFeaturesWordGuard,
  differentialResults,
  formatQemuReport,
  freeUdpPort,
  generateSequence,
  MICROVM_VIRTIO_MMIO_BASE,
  NetPeerCell,
  Prng,
  printQemuCheck,
  probeDepartures,
  QEMU_CONSOLE_PORT_NAME,
  QEMU_DEPARTURES,
  QEMU_NET_BURST,
  QEMU_NET_PINGS,
  QEMU_NET_RR_TRANSACTIONS,
  QemuMicrovm,
  QemuNetPeer,
  type QemuScenario,
  qemuAvailability,
  qemuConsoleScenarios,
  qemuDgramNetdev,
  qemuNetFrameScenarios,
  qemuScenarios,
  type Report,
  runQemuCheck,
  runScenario,
  TWIN_DISK_BYTES,
} from '../../src/peers/index.js';
import { DeviceStatus, MMIO_MAGIC_VALUE, MmioLegacyReg, MmioReg, VirtioError } from '../../src/spec/index.js';

const availability = qemuAvailability();
const required = process.env.VIRTIO_MMIO_REQUIRE_PEERS === '1';
if (!availability.available) {
  console.warn(
    `[qemu peer] SKIPPED: QEMU suites not run: ${availability.reason}${required ? ' (VIRTIO_MMIO_REQUIRE_PEERS=1: failing instead)' : ''}`,
  );
}

describe('qemu availability', () => {
  it('is present when VIRTIO_MMIO_REQUIRE_PEERS=1 (a missing QEMU then fails instead of skipping)', () => {
    const missingButRequired = required && !availability.available;
    expect(missingButRequired, `VIRTIO_MMIO_REQUIRE_PEERS=1 but ${availability.reason}`).toBe(false);
    expect(availability.available || availability.reason !== '').toBe(true);
  });

  it('reports a missing binary with a reason, and the check reports it as a failure', async () => {
    const saved = process.env.QEMU_MICROVM;
    process.env.QEMU_MICROVM = '/nonexistent/qemu-system-x86_64-microvm';
    try {
      const a = qemuAvailability();
      expect(a.available).toBe(false);
      expect(a.reason).toMatch(/not found/);
      const report = await runQemuCheck();
      expect(report.available).toBe(false);
      expect(report.ok).toBe(false);
      expect(report.sections).toEqual([]);
      expect(formatQemuReport(report)).toMatch(/SKIPPED: .*not found/);
      const lines: string[] = [];
      expect(await printQemuCheck({}, (l) => lines.push(l))).toBe(1);
      expect(lines.join('\n')).toMatch(
        /SKIPPED: QEMU_MICROVM=\/nonexistent\/qemu-system-x86_64-microvm not found/,
      );
      await expect(QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] })).rejects.toThrow(
        VirtioError,
      );
    } finally {
      if (saved === undefined) delete process.env.QEMU_MICROVM;
      else process.env.QEMU_MICROVM = saved;
    }
  });
});

/** A log entry. */
function rec(op: 'r' | 'w', offset: number, value: number, irq = false, width: 1 | 2 | 4 = 4): AccessRecord {
  return { op, width, offset, value, irq };
}

describe('differential comparison (no qemu needed)', () => {
  it('accepts identical logs and counts what it compared', () => {
    const log = [
      rec('r', MmioReg.MagicValue, 0x74726976),
      rec('w', MmioReg.Status, 1),
      rec('r', MmioReg.Status, 1),
    ];
    const c = compareLogs(log, log, 2, 0);
    expect(c.mismatches).toEqual([]);
    expect(c.compared).toBe(3);
  });

  it('reports a differing read, a differing write, a differing line and a different access', () => {
    const q = [
      rec('r', MmioReg.Status, 1),
      rec('w', MmioReg.QueueNum, 8),
      rec('r', MmioReg.InterruptStatus, 1, true),
    ];
    const o = [
      rec('r', MmioReg.Status, 3),
      rec('w', MmioReg.QueueNum, 16),
      rec('r', MmioReg.InterruptStatus, 1, false),
    ];
    const c = compareLogs(q, o, 2, 0);
    expect(c.mismatches.map((m) => m.at)).toEqual([0, 1, 2]);
    expect(c.mismatches[0].message).toBe('read32 Status: qemu 0x1, ours 0x3');
    expect(c.mismatches[2].message).toMatch(/line after read32 InterruptStatus: qemu raised, ours low/);
    const d = compareLogs([rec('r', MmioReg.Status, 0)], [rec('r', MmioReg.QueueReady, 0)], 2, 0);
    expect(d.mismatches[0].message).toBe('qemu did read32 Status, ours did read32 QueueReady');
    const e = compareLogs([rec('r', MmioReg.Status, 0)], [], 2, 0);
    expect(e.mismatches[0].message).toMatch(/1 accesses, ours 0/);
  });

  it('normalises exactly the named departures and nothing else', () => {
    const sel = (v: number) => rec('w', MmioReg.DeviceFeaturesSel, v);
    // features-sel-high: selector 2 skipped, selector 1 compared.
    const high = compareLogs(
      [sel(2), rec('r', MmioReg.DeviceFeatures, 0x101)],
      [sel(2), rec('r', MmioReg.DeviceFeatures, 0)],
      2,
      0,
    );
    expect(high.mismatches).toEqual([]);
    expect(high.normalised).toEqual({ 'features-sel-high': 1 });
    const one = compareLogs(
      [sel(1), rec('r', MmioReg.DeviceFeatures, 0x101)],
      [sel(1), rec('r', MmioReg.DeviceFeatures, 0x1)],
      2,
      0,
    );
    expect(one.mismatches).toHaveLength(1);
    // legacy-transport-bits: bits 24 and 27 masked in legacy word 0 only, other bits still compared.
    const legacy = compareLogs(
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x39000000)],
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x30000000)],
      1,
      0,
    );
    expect(legacy.mismatches).toEqual([]);
    const legacyBad = compareLogs(
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x39000000)],
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x20000000)],
      1,
      0,
    );
    expect(legacyBad.mismatches).toHaveLength(1);
    const modernMask = compareLogs(
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x39000000)],
      [sel(0), rec('r', MmioReg.DeviceFeatures, 0x30000000)],
      2,
      0,
    );
    expect(modernMask.mismatches).toHaveLength(1);
    // selectors-survive-reset: after Status = 0 the selected reads are skipped until a selector write.
    const reset = compareLogs(
      [
        rec('w', MmioReg.Status, 0),
        rec('r', MmioReg.QueueNumMax, 0),
        rec('w', MmioReg.QueueSel, 0),
        rec('r', MmioReg.QueueNumMax, 0),
      ],
      [
        rec('w', MmioReg.Status, 0),
        rec('r', MmioReg.QueueNumMax, 1024),
        rec('w', MmioReg.QueueSel, 0),
        rec('r', MmioReg.QueueNumMax, 1024),
      ],
      2,
      0,
    );
    expect(reset.normalised).toEqual({ 'selectors-survive-reset': 1 });
    expect(reset.mismatches).toHaveLength(1);
    expect(reset.mismatches[0].at).toBe(3);
    // shm-base-zero (modern), config-out-of-range (past configSize only).
    const shm = compareLogs(
      [rec('r', MmioReg.SHMBaseLow, 0)],
      [rec('r', MmioReg.SHMBaseLow, 0xffffffff)],
      2,
      0,
    );
    expect(shm.normalised).toEqual({ 'shm-base-zero': 1 });
    const shmLen = compareLogs(
      [rec('r', MmioReg.SHMLenLow, 0)],
      [rec('r', MmioReg.SHMLenLow, 0xffffffff)],
      2,
      0,
    );
    expect(shmLen.mismatches).toHaveLength(1);
    const cfg = compareLogs(
      [rec('r', MmioReg.Config + 4, 0xff, false, 1)],
      [rec('r', MmioReg.Config + 4, 0, false, 1)],
      2,
      4,
    );
    expect(cfg.normalised).toEqual({ 'config-out-of-range': 1 });
    const cfgIn = compareLogs(
      [rec('r', MmioReg.Config + 2, 0xff, false, 1)],
      [rec('r', MmioReg.Config + 2, 0, false, 1)],
      2,
      4,
    );
    expect(cfgIn.mismatches).toHaveLength(1);
    // Every name used inline is documented.
    for (const n of [
      'features-sel-high',
      'legacy-transport-bits',
      'selectors-survive-reset',
      'shm-base-zero',
      'config-out-of-range',
    ]) {
      expect(QEMU_DEPARTURES.some((d) => d.name === n)).toBe(true);
    }
  });

  it('generates deterministic sequences that keep to the generator rules', () => {
    for (const version of [1, 2] as const) {
      const a = generateSequence(new Prng(7), version, 60);
      expect(generateSequence(new Prng(7), version, 60)).toEqual(a);
      expect(generateSequence(new Prng(8), version, 60)).not.toEqual(a);
    }
    for (let seed = 0; seed < 300; seed++) {
      for (const version of [1, 2] as const) {
        const ops = generateSequence(new Prng(seed), version, 40);
        expect(ops[0]).toEqual({ k: 'w', offset: MmioReg.Status, width: 4, value: 0 });
        for (const op of ops) {
          if (op.k !== 'w') continue;
          // Never generated: QueueReset accesses, VERSION_1 refused, legacy QueuePFN = 0.
          expect(op.offset).not.toBe(MmioReg.QueueReset);
          if (version === 1) expect(op.offset === MmioLegacyReg.QueuePFN && op.value === 0).toBe(false);
          if (op.offset === MmioReg.Status && op.width === 4) {
            expect([0, 1, 3, 0xb, 0xf, 7].includes(op.value & ~DeviceStatus.FAILED)).toBe(true);
          }
        }
      }
    }
  });

  it('documents every departure in docs/qemu-departures.md', () => {
    const path = new URL('../../docs/qemu-departures.md', import.meta.url);
    expect(existsSync(path)).toBe(true);
    const text = readFileSync(path, 'utf8');
    for (const d of QEMU_DEPARTURES) expect(text).toContain(`\`${d.name}\``);
  });

  it('formats a report with every result, its time and the departures', () => {
    const report: Report = {
      peer: 'qemu',
      binary: '/usr/bin/qemu-system-x86_64-microvm',
      qemuVersion: 'QEMU emulator version 7.2.22',
      available: true,
      skipped: null,
      sections: [
        {
          title: 'section',
          results: [
            { name: 'good', ok: true, detail: 'fine', ms: 12 },
            { name: 'bad', ok: false, detail: 'broken', ms: 1500 },
          ],
        },
      ],
      ok: false,
      ms: 1512,
    };
    const text = formatQemuReport(report);
    expect(text).toMatch(/PASS {2}good .* 12 ms {2}fine/);
    expect(text).toMatch(/FAIL {2}bad .* 1\.50 s {2}broken/);
    expect(text).toMatch(/result: FAIL: 1 passed, 1 failed/);
    for (const d of QEMU_DEPARTURES) expect(text).toContain(d.name);
  });
});

describe.skipIf(!availability.available)('qemu: our drivers drive QEMU devices over qtest', () => {
  for (const s of qemuScenarios()) {
    it(s.name, async () => {
      const r = await runScenario(s);
      expect(r.detail).toBeTypeOf('string');
      expect(r.ok, r.detail).toBe(true);
    });
  }

  it('stops QEMU and leaves no process behind', async () => {
    const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] });
    const pid = vm.pid as number;
    expect(() => process.kill(pid, 0)).not.toThrow();
    await vm.close();
    await vm.close();
    expect(() => process.kill(pid, 0)).toThrow();
  });

  it('times out a halt with no interrupt coming, and fails a bad qtest command', async () => {
    const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] });
    try {
      const g = attachGuest(vm, 'rng');
      g.platform.timeoutMs = 100;
      g.platform.requestIrq(g.gsi, () => {});
      expect(() => g.platform.halt()).toThrow(/no interrupt on lines/);
      expect(() => g.platform.requestIrq(g.gsi, () => {})).toThrow(/in use/);
      expect(() => g.platform.requestIrq(3, () => {})).toThrow(/not a virtio-mmio line/);
      expect(() => vm.qtest.command('no_such_command')).toThrow(/answered 'FAIL/);
      expect(() => g.t.mem.read32(vm.ramSize)).toThrow(VirtioError);
      expect(vm.qtest.readl(vm.window('rng').base + MmioReg.MagicValue)).toBe(MMIO_MAGIC_VALUE);
      expect(() => vm.window('blk')).toThrow(/no blk device/);
    } finally {
      await vm.close();
    }
  });

  it('reports a dead QEMU as an error, not a hang', async () => {
    const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] });
    try {
      process.kill(vm.pid as number, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 100));
      expect(() => vm.qtest.readl(MICROVM_VIRTIO_MMIO_BASE)).toThrow(VirtioError);
    } finally {
      await vm.close();
    }
  });
});

describe.skipIf(!availability.available)('qemu: differential register behaviour', () => {
  for (const version of [2, 1] as const) {
    it(`v${String(version)}: recorded rng and blk driver flows match access for access`, async () => {
      const vm = await QemuMicrovm.start({
        version,
        devices: [{ kind: 'rng' }, { kind: 'blk', size: TWIN_DISK_BYTES }],
      });
      try {
        const rng = compareRecordedRngFlow(vm);
        expect(rng.mismatches).toEqual([]);
        expect(rng.compared).toBeGreaterThan(40);
        const blk = compareRecordedFlow(vm, 'blk');
        expect(blk.mismatches).toEqual([]);
        expect(blk.compared).toBeGreaterThan(60);
        expect(blk.normalised['blk-features-not-modelled']).toBe(1);
      } finally {
        await vm.close();
      }
    });

    it(`v${String(version)}: 200 generated sequences match`, async () => {
      const vm = await QemuMicrovm.start({ version, devices: [{ kind: 'rng' }] });
      try {
        const g = compareGeneratedRng(vm, 200, 0x5151);
        expect(g.failures).toEqual([]);
        expect(g.accesses).toBeGreaterThan(5000);
        expect(g.requests).toBeGreaterThan(20);
      } finally {
        await vm.close();
      }
    });

    it(`v${String(version)}: every departure the generator avoids is still there`, async () => {
      const vm = await QemuMicrovm.start({ version, devices: [{ kind: 'rng' }, { kind: 'net' }] });
      try {
        const obs = probeDepartures(vm);
        const expected =
          version === 2
            ? [
                'features-ok-without-version1',
                'ring-reset-unimplemented',
                'features-sel-high',
                'config-isr-3',
              ]
            : ['legacy-pfn-zero-resets-device', 'config-isr-3'];
        expect(obs.map((o) => o.name)).toEqual(expected);
        for (const o of obs) expect(o.observed, `${o.name}: ${o.detail}`).toBe(true);
      } finally {
        await vm.close();
      }
    });
  }

  it('prints progress and the report and returns the exit code', async () => {
    const lines: string[] = [];
    const code = await printQemuCheck({ sequences: 2, seed: 9 }, (l) => lines.push(l));
    const text = lines.join('\n');
    expect(code, text).toBe(0);
    expect(text).toMatch(/^PASS v2 probe rng\/blk\/net \(/m);
    // 13 driver scenarios + 4 console scenarios + 7 net frame scenarios + 8 differential results.
    expect(text).toMatch(/result: PASS: 32 passed, 0 failed/);
    expect(text).toMatch(/^PASS v1 net frames no mrg_rxbuf \(/m);
    expect(text).toMatch(/^PASS v2 console multiport both ways \(/m);
  });

  it('differential results feed the report', async () => {
    const results = await differentialResults(2, 3, 1);
    expect(results.map((r) => r.ok)).toEqual([true, true, true, true]);
    expect(results[2].detail).toMatch(/accesses and \d+ rng requests compared \(seeds 1\.\.3\)/);
  });
});

describe.skipIf(!availability.available)('qemu: our console driver against virtio-serial-device', () => {
  for (const s of qemuConsoleScenarios()) {
    it(s.name, async () => {
      const r = await runScenario(s);
      expect(r.ok, r.detail).toBe(true);
    }, 60_000);
  }

  it('gives the console chardev only to machines with a console, and refuses two consoles', async () => {
    await expect(
      QemuMicrovm.start({ version: 2, devices: [{ kind: 'console' }, { kind: 'console' }] }),
    ).rejects.toThrow(/two console devices/);
    const vm = await QemuMicrovm.start({ version: 2, devices: [{ kind: 'rng' }] });
    try {
      expect(vm.console).toBeNull();
      expect(vm.serialPort).toBeNull();
      expect(() => vm.window('console')).toThrow(/no console device/);
    } finally {
      await vm.close();
    }
  }, 60_000);

  it('reads nothing while the guest wrote nothing, and a closed channel refuses use', async () => {
    const vm = await QemuMicrovm.start({
      version: 2,
      devices: [{ kind: 'console', name: QEMU_CONSOLE_PORT_NAME }],
    });
    const ch = vm.console;
    try {
      expect(ch).not.toBeNull();
      expect(vm.serialPort).toBeNull();
      expect(ch?.readAvailable().length).toBe(0);
      expect(ch?.readAtLeast(1, 50).length).toBe(0);
      expect(vm.window('console').base).toBeGreaterThanOrEqual(MICROVM_VIRTIO_MMIO_BASE);
    } finally {
      await vm.close();
    }
    expect(() => ch?.readAvailable()).toThrow(/channel closed/);
    expect(() => ch?.write(Uint8Array.of(1))).toThrow(/channel closed/);
  }, 60_000);
});

describe('net peer worker (no qemu needed)', () => {
  it('starts, binds its own port, answers nothing unasked, and is gone after close', async () => {
    const peer = await QemuNetPeer.start();
    try {
      expect(peer.alive).toBe(true);
      expect(peer.dgram.localPort).toBeGreaterThan(0);
      expect(peer.dgram.remotePort).toBeGreaterThan(0);
      expect(peer.dgram.remotePort).not.toBe(peer.dgram.localPort);
      expect(peer.ip).toBe('10.0.2.2');
      expect(Object.values(peer.counters()).every((v) => v === 0)).toBe(true);
      // No guest MAC learned yet: the bulk send sends nothing.
      expect(peer.bulkSend(0x0a00020f, 5002, 3, 64)).toBe(0);
      // A bad size is refused inside the worker and reported as -1.
      expect(peer.bulkSend(0x0a00020f, 5002, 1, 2)).toBe(-1);
      expect(() => peer.waitCounters(() => false, 'never', 30)).toThrow(/never not reached in 30 ms/);
    } finally {
      await peer.close();
    }
    expect(peer.alive).toBe(false);
    await peer.close();
    expect(() => peer.counters()).not.toThrow();
    expect(() => peer.bulkSend(1, 1, 1, 64)).toThrow(/net peer closed/);
    expect(() => peer.waitCounters(() => true, 'x')).toThrow(/net peer closed/);
  });

  it('fails to start with a reason when the peer cannot be built, leaving no worker', async () => {
    await expect(QemuNetPeer.start({ rrResponseSize: 5 })).rejects.toThrow(
      /net peer worker failed: rr response size 5 not in 8\.\.1472/,
    );
    await expect(QemuNetPeer.start({ ip: '10.0.2' })).rejects.toThrow(/net peer worker failed/);
  });

  it('picks free ports and writes the netdev in both syntaxes', async () => {
    const a = await freeUdpPort();
    expect(a).toBeGreaterThan(0);
    const ports = { localPort: 4000, remotePort: 5000 };
    expect(qemuDgramNetdev('/nonexistent/qemu', 'n0', ports)).toBe(
      'socket,id=n0,udp=127.0.0.1:5000,localaddr=127.0.0.1:4000',
    );
    if (availability.binary !== null && availability.available) {
      expect(qemuDgramNetdev(availability.binary, 'n0', ports)).toBe(
        'dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=4000,remote.type=inet,remote.host=127.0.0.1,remote.port=5000',
      );
    }
    expect(NetPeerCell.failed).toBeGreaterThan(NetPeerCell.commandResult);
  });

  it('always stops the peer: after a failing body and after a failing QEMU start', async () => {
    const peers: QemuNetPeer[] = [];
    const scenario = (run: QemuScenario['run']): QemuScenario => ({
      name: 'failing',
      version: 2,
      devices: [{ kind: 'net' }],
      async prepare() {
        const p = await QemuNetPeer.start();
        peers.push(p);
        return [{ kind: 'net', dgram: p.dgram }];
      },
      async cleanup() {
        await peers[peers.length - 1]?.close();
      },
      run,
    });
    const saved = process.env.QEMU_MICROVM;
    process.env.QEMU_MICROVM = '/nonexistent/qemu-system-x86_64-microvm';
    try {
      const r = await runScenario(scenario(() => 'unreached'));
      expect(r.ok).toBe(false);
      expect(r.detail).toMatch(/not found/);
    } finally {
      if (saved === undefined) delete process.env.QEMU_MICROVM;
      else process.env.QEMU_MICROVM = saved;
    }
    expect(peers).toHaveLength(1);
    expect(peers[0].alive).toBe(false);
    if (availability.available) {
      const r = await runScenario(
        scenario(() => {
          throw new VirtioError('DEVICE_FAILED', 'body failed');
        }),
      );
      expect(r).toMatchObject({ ok: false, detail: 'VirtioError: body failed' });
      expect(peers).toHaveLength(2);
      expect(peers[1].alive).toBe(false);
    }
  });

  it('the feature word guard drops exactly the writes of words 2 and up, and refuses a non-zero one', () => {
    const log: string[] = [];
    const inner = {
      read32: (o: number) => o,
      write32: (o: number, v: number) => log.push(`w${o.toString(16)}=${v.toString(16)}`),
      read8: () => 0,
      read16: () => 0,
      write8: () => {},
      write16: () => {},
    };
    const g = new DriverFeaturesWordGuard(inner);
    for (let i = 0; i < 4; i++) {
      g.write32(MmioReg.DriverFeaturesSel, i);
      g.write32(MmioReg.DriverFeatures, i === 1 ? 1 : i === 0 ? 0x30 : 0);
    }
    g.write32(MmioReg.Status, 0xb);
    expect(log).toEqual(['w24=0', 'w20=30', 'w24=1', 'w20=1', 'w70=b']);
    expect(g.dropped).toBe(4);
    expect(g.read32(MmioReg.Status)).toBe(MmioReg.Status);
    g.write32(MmioReg.DriverFeaturesSel, 2);
    expect(() => g.write32(MmioReg.DriverFeatures, 1)).toThrow(/driver features word 2 is 0x1/);
    // Other registers still pass while a high selector is set.
    g.write32(MmioReg.QueueSel, 1);
    expect(log[log.length - 1]).toBe('w30=1');
  });
});

describe.skipIf(!availability.available)(
  'qemu: our net driver exchanges frames with virtio-net-device',
  () => {
    for (const s of qemuNetFrameScenarios()) {
      it(s.name, async () => {
        const r = await runScenario(s);
        expect(r.ok, r.detail).toBe(true);
        if (s.name.includes('net frames')) {
          expect(r.detail).toContain(`tx ${String(1 + QEMU_NET_PINGS + QEMU_NET_RR_TRANSACTIONS)} frames`);
          expect(r.detail).toContain(`burst of ${String(QEMU_NET_BURST)}: first harvest 64, all in order`);
        }
      }, 60_000);
    }
  },
);
