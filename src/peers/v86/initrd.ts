/**
 * The initrd a stock Linux kernel boots in the v86 check: an uncompressed early cpio archive that
 * carries the SSDT (`kernel/firmware/acpi/virtio.aml`, the kernel's ACPI table upgrade, which
 * only looks at the first, uncompressed archive), followed by the initramfs proper: busybox, the
 * virtio modules, an `/init` and the scenario shell library `/s/lib.sh`.
 *
 * @packageDocumentation
 */

import { type AmlVirtioDevice, buildVirtioSsdt } from './aml.js';
import { type CpioEntry, writeCpio } from './cpio.js';

/** Where the kernel looks for ACPI tables to upgrade or add (CONFIG_ACPI_TABLE_UPGRADE). */
export const ACPI_UPGRADE_DIR = 'kernel/firmware/acpi';

/** Printed by `/init` once the shell is about to start. */
export const GUEST_READY_MARKER = '@READY';

/** Modules `/init` loads before the snapshot (they touch no device). */
export const EARLY_MODULES = ['virtio', 'virtio_ring'] as const;

/** Every module the scenarios use, as file names without `.ko`. */
export const GUEST_MODULES = [
  'virtio',
  'virtio_ring',
  'virtio_mmio',
  'virtio_blk',
  'virtio-rng',
  'virtio_console',
  'failover',
  'net_failover',
  'virtio_net',
] as const;

/** Printed by {@link GUEST_LIB}'s `conecho` once /dev/hvcN is open in raw mode (the host may type). */
export const CONSOLE_READY_MARKER = '@CONREADY';

/** Printed by `conecho` after the echoed line went out (the host may send the bulk input). */
export const CONSOLE_LINE_MARKER = '@CONLINE';

/** Inputs of {@link buildInitrd}. */
export interface InitrdOptions {
  /** The virtio windows to declare in the SSDT. */
  devices: readonly AmlVirtioDevice[];
  /** Static i386 busybox binary. */
  busybox: Uint8Array;
  /** Kernel modules by name (file name without `.ko`). */
  modules: Readonly<Record<string, Uint8Array>>;
}

/** The `/init` script: mounts, verbose console, early modules, marker, interactive shell on ttyS0. */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# quiet sped up the boot; from here every kernel message (info and up) reaches the console
echo 7 > /proc/sys/kernel/printk
# v86 timers follow the host clock: a busy host is not a hung task
echo 0 > /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
${EARLY_MODULES.map((m) => `insmod /mods/${m}.ko || echo "@ERR insmod ${m}"`).join('\n')}
echo ${GUEST_READY_MARKER}
# ENV makes the interactive shell source the scenario library
export ENV=/s/lib.sh
exec setsid cttyhack sh
`;

/**
 * Shell functions the host calls over the serial console. Every result line starts with `@`, so
 * the host parses results out of the console stream and never mistakes the echo of the command it
 * typed (which never contains a line starting with `@`).
 */
export const GUEST_LIB = `# virtio-mmio v86 check: guest side
ins() { for m in "$@"; do insmod /mods/$m.ko || echo "@ERR insmod $m"; done; }
rmm() { for m in "$@"; do rmmod $m || echo "@ERR rmmod $m"; done; }
waitblk() { i=0; while [ ! -b /dev/$1 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; [ -b /dev/$1 ] || echo "@ERR no /dev/$1"; }
devs() {
  for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] || continue
    drv=$(readlink $d/driver); drv=\${drv##*/}
    echo "@DEV $(basename $d) device=$(cat $d/device) vendor=$(cat $d/vendor) status=$(cat $d/status) features=$(cat $d/features) driver=$drv parent=$(basename $(readlink -f $d/..))"
  done
  grep virtio /proc/interrupts | sed 's/^ */@IRQ /'
  grep LNRO /proc/iomem | sed 's/^ */@IOMEM /'
}
rngread() {
  echo "@RNGCUR $(cat /sys/devices/virtual/misc/hw_random/rng_current)"
  head -c $1 /dev/hwrng | od -An -v -tx1 | sed 's/^/@RNG/'
}
blkinfo() { echo "@BLKSIZE $1 $(cat /sys/block/$1/size)"; echo "@BLKMQ $1 $(ls /sys/block/$1/mq | wc -l)"; echo "@BLKSUM $1 $(sha256sum /dev/$1 | cut -d' ' -f1)"; }
# mqmap dev: each blk-mq hardware context of dev and the cpus it serves
mqmap() { for d in /sys/block/$1/mq/*; do echo "@MQHW \${d##*/} $(cat $d/cpu_list)"; done; }
# cpus: possible (cpu_possible_mask, so nr_cpu_ids), online and present cpus
cpus() { c=/sys/devices/system/cpu; echo "@CPUS possible=$(cat $c/possible) online=$(cat $c/online) present=$(cat $c/present)"; }
# pin cpu: can a process run on cpu? (sched_setaffinity refuses a cpu that is not online)
pin() { if taskset -c $1 true 2>/dev/null; then echo "@PIN $1 ran"; else echo "@PIN $1 refused"; fi; }
pattern() { printf 'virtio-mmio %06d\\n' $(seq 0 $(($1-1))); }
blkwrite() {
  pattern $2 > /tmp/pat
  dd if=/tmp/pat of=/dev/$1 bs=512 seek=$3 conv=fsync 2>/dev/null || echo "@ERR dd write"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  echo "@PATSUM $(sha256sum /tmp/pat | cut -d' ' -f1)"
  echo "@READBACK $(dd if=/dev/$1 bs=512 skip=$3 count=$(( $(wc -c < /tmp/pat) / 512 )) 2>/dev/null | sha256sum | cut -d' ' -f1)"
}
waitchr() { i=0; while [ ! -c /dev/$1 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ -c /dev/$1 ] || echo "@ERR no /dev/$1"; }
# conecho tty bulk lines: raw mode on /dev/tty (held open: hvc resets termios on last close), echo
# one line back uppercase, checksum bulk bytes of input, write the pattern of lines.
conecho() {
  exec 3<>/dev/$1 || { echo "@ERR open /dev/$1"; return; }
  stty raw -echo -iexten <&3 || echo "@ERR stty $1"
  echo "@CONREADY"
  read -r line <&3 || echo "@ERR read $1"
  printf '%s\\n' "$line" | tr a-z A-Z >&3
  echo "@CONLINE $line"
  echo "@CONSIZE $(stty size <&3)"
  echo "@CONBULK $(head -c $2 <&3 | sha256sum | cut -d' ' -f1)"
  pattern $3 >&3
  exec 3>&-
}
# vport dev bulk lines: name of a generic port, checksum of bulk bytes read from it, pattern written
vport() {
  echo "@VPNAME $(cat /sys/class/virtio-ports/$1/name)"
  echo "@VPBULK $(head -c $2 /dev/$1 | sha256sum | cut -d' ' -f1)"
  pattern $3 > /dev/$1 || echo "@ERR write /dev/$1"
}
waitnet() { i=0; while [ ! -e /sys/class/net/$1 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; [ -e /sys/class/net/$1 ] || echo "@ERR no $1"; }
# netping iface addr peer count: bring the interface up with an address and ping the host peer
netping() {
  ip link set $1 up || echo "@ERR link $1"
  ip addr add $2/24 dev $1 || echo "@ERR addr $1"
  echo "@MAC $(cat /sys/class/net/$1/address)"
  ping -c $4 -W 10 $3 2>&1 | sed 's/^/@PING /'
}
netq() { for q in /sys/class/net/$1/queues/*; do echo "@NETQ \${q##*/}"; done; }
fin() { echo "@END $1"; }
`;

/** The text {@link GUEST_LIB}'s `pattern n` writes: n lines `virtio-mmio %06d`, for host checks. */
export function guestPattern(lines: number): string {
  let s = '';
  for (let i = 0; i < lines; i++) s += `virtio-mmio ${String(i).padStart(6, '0')}\n`;
  return s;
}

/** The early archive alone: the SSDT at `kernel/firmware/acpi/virtio.aml`. */
export function buildAcpiCpio(devices: readonly AmlVirtioDevice[]): Uint8Array {
  return writeCpio([
    { type: 'dir', path: 'kernel' },
    { type: 'dir', path: 'kernel/firmware' },
    { type: 'dir', path: ACPI_UPGRADE_DIR },
    { type: 'file', path: `${ACPI_UPGRADE_DIR}/virtio.aml`, data: buildVirtioSsdt(devices) },
  ]);
}

/** The initramfs archive alone (busybox, modules, /init, /s/lib.sh, /dev/console). */
export function buildInitramfsCpio(options: Omit<InitrdOptions, 'devices'>): Uint8Array {
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'dir', path: 'dev' },
    { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'mods' },
    { type: 'dir', path: 's' },
    { type: 'file', path: 'bin/busybox', data: options.busybox, mode: 0o755 },
    { type: 'file', path: 'init', data: INIT_SCRIPT, mode: 0o755 },
    { type: 'file', path: 's/lib.sh', data: GUEST_LIB, mode: 0o644 },
  ];
  for (const [name, data] of Object.entries(options.modules)) {
    entries.push({ type: 'file', path: `mods/${name}.ko`, data });
  }
  return writeCpio(entries);
}

/** The whole initrd: the ACPI archive first, then the initramfs, both uncompressed. */
export function buildInitrd(options: InitrdOptions): Uint8Array {
  const early = buildAcpiCpio(options.devices);
  const main = buildInitramfsCpio(options);
  const out = new Uint8Array(early.length + main.length);
  out.set(early, 0);
  out.set(main, early.length);
  return out;
}
