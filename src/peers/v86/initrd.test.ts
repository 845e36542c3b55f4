import { describe, expect, it } from 'vitest';
import { ACPI_HEADER_SIZE } from './aml.js';
import { parseCpio } from './cpio.js';
import {
  ACPI_UPGRADE_DIR,
  buildAcpiCpio,
  buildInitrd,
  CONSOLE_LINE_MARKER,
  CONSOLE_READY_MARKER,
  GUEST_LIB,
  GUEST_MODULES,
  guestPattern,
  INIT_SCRIPT,
} from './initrd.js';

const devices = [
  { base: 0xd000_0000, size: 0x200, irq: 5 },
  { base: 0xd000_0200, size: 0x200, irq: 3 },
];

describe('initrd', () => {
  it('puts the SSDT first, uncompressed, then busybox, modules, /init and the scenario library', () => {
    const busybox = Uint8Array.of(0x7f, 0x45, 0x4c, 0x46);
    const modules = { virtio: Uint8Array.of(1), virtio_mmio: Uint8Array.of(2) };
    const img = buildInitrd({ devices, busybox, modules });
    // The early archive alone is a prefix: the kernel's table upgrade reads only the first archive.
    const early = buildAcpiCpio(devices);
    expect(img.subarray(0, early.length)).toEqual(early);
    const members = parseCpio(img);
    const paths = members.map((m) => m.path);
    expect(paths.indexOf(`${ACPI_UPGRADE_DIR}/virtio.aml`)).toBe(3);
    const aml = members.find((m) => m.path.endsWith('virtio.aml'))?.data;
    expect(aml && new TextDecoder().decode(aml.subarray(0, 4))).toBe('SSDT');
    expect(aml?.length).toBeGreaterThan(ACPI_HEADER_SIZE);
    for (const p of [
      'bin/busybox',
      'init',
      's/lib.sh',
      'dev/console',
      'mods/virtio.ko',
      'mods/virtio_mmio.ko',
    ]) {
      expect(paths).toContain(p);
    }
    expect(members.find((m) => m.path === 'bin/busybox')?.data).toEqual(busybox);
    expect((members.find((m) => m.path === 'init')?.mode ?? 0) & 0o111).not.toBe(0);
  });

  it('/init mounts, loads the early modules and prints the ready marker', () => {
    expect(INIT_SCRIPT.startsWith('#!/bin/busybox sh\n')).toBe(true);
    expect(INIT_SCRIPT).toContain('insmod /mods/virtio.ko');
    expect(INIT_SCRIPT).toContain('echo @READY');
    expect(INIT_SCRIPT).toContain('ENV=/s/lib.sh');
    // The library's result lines all start with '@' (the host's parser relies on it).
    for (const m of GUEST_LIB.matchAll(/echo "([^"]*)"/g)) expect(m[1].startsWith('@')).toBe(true);
  });

  it('carries virtio_console and the console functions with the markers the host waits for', () => {
    expect(GUEST_MODULES).toContain('virtio_console');
    expect(GUEST_LIB).toMatch(/^conecho\(\) \{$/m);
    expect(GUEST_LIB).toMatch(/^vport\(\) \{$/m);
    expect(GUEST_LIB).toContain(`echo "${CONSOLE_READY_MARKER}"`);
    expect(GUEST_LIB).toContain(`echo "${CONSOLE_LINE_MARKER} $line"`);
    // Raw mode on the held-open descriptor: hvc resets termios when the last descriptor closes.
    expect(GUEST_LIB).toContain('stty raw -echo -iexten <&3');
    // The markers never occur in the text typed on the serial console (its echo would match).
    for (const m of [CONSOLE_READY_MARKER, CONSOLE_LINE_MARKER]) {
      expect(m.startsWith('@')).toBe(true);
    }
  });

  it('carries the queue and cpu probes of the blk-mq and net scenarios', () => {
    for (const fn of ['mqmap', 'cpus', 'pin', 'netq'])
      expect(GUEST_LIB).toMatch(new RegExp(`^${fn}\\(\\) \\{`, 'm'));
    // Split so the literal is not read as a template placeholder.
    expect(GUEST_LIB).toContain('echo "@MQHW $' + '{d##*/} $(cat $d/cpu_list)"');
    expect(GUEST_LIB).toContain(
      'possible=$(cat $c/possible) online=$(cat $c/online) present=$(cat $c/present)',
    );
    // taskset fails for a cpu that is not online; its error text stays off the console.
    expect(GUEST_LIB).toContain('taskset -c $1 true 2>/dev/null');
  });

  it('models the guest pattern exactly (19 bytes per line)', () => {
    expect(guestPattern(2)).toBe('virtio-mmio 000000\nvirtio-mmio 000001\n');
    expect(guestPattern(4096).length).toBe(4096 * 19);
  });
});
