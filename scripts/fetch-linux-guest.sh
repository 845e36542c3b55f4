#!/usr/bin/env bash
# Fetches the Linux guest used by the v86 peer check (test/peers/linux.test.ts, `virtio-mmio check linux`):
# Debian's i386 686 kernel, busybox-static and SeaBIOS, downloaded with apt (never installed) and
# extracted into a cache folder. Idempotent: does nothing when the cache is complete.
#
#   scripts/fetch-linux-guest.sh [cache-dir]      (default: .cache/linux-guest, or $VIRTIO_MMIO_LINUX_GUEST)
#
# Result (all paths inside the cache dir):
#   vmlinuz   bios.bin   busybox   modules/*.ko   kernel-version   manifest.txt
# Needs root (dpkg --add-architecture, apt-get update) on a Debian/Ubuntu host with network.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${1:-${VIRTIO_MMIO_LINUX_GUEST:-$ROOT/.cache/linux-guest}}"
MODULES=(virtio virtio_ring virtio_mmio virtio_blk virtio-rng virtio_console failover net_failover virtio_net)

complete() {
  [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/bios.bin" ] && [ -s "$CACHE/busybox" ] || return 1
  for m in "${MODULES[@]}"; do [ -s "$CACHE/modules/$m.ko" ] || return 1; done
  return 0
}

if complete; then
  echo "linux guest: cache complete in $CACHE ($(cat "$CACHE/kernel-version" 2>/dev/null || echo '?'))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! dpkg --print-foreign-architectures | grep -qx i386; then
  $SUDO dpkg --add-architecture i386
fi
# A mirror mid-sync can fail one index (seen on bookworm-security): retry, then go on with what was
# fetched; the package lookup below fails clearly if the index is really missing.
if ! $SUDO apt-get update -qq; then
  sleep 5
  $SUDO apt-get update -qq || echo "linux guest: apt-get update reported errors; continuing with the indexes it fetched" >&2
fi

# The kernel package behind the metapackage (its ABI number changes with Debian point releases).
KPKG="$(apt-cache depends linux-image-686:i386 | awk '/Depends: linux-image-/{print $2; exit}' | sed 's/:i386$//')"
if [ -z "$KPKG" ]; then
  echo "linux guest: cannot resolve the kernel behind linux-image-686:i386" >&2
  exit 1
fi

DL="$CACHE/debs"
X="$CACHE/extract"
mkdir -p "$DL" "$CACHE/modules"
rm -rf "$X"
start=$(date +%s)
# apt-get download writes into the current directory; run it as _apt-readable when root.
(cd "$DL" && apt-get download "$KPKG:i386" busybox-static:i386 seabios)
echo "linux guest: downloaded $(du -sh "$DL" | cut -f1) in $(( $(date +%s) - start )) s"
for d in "$DL"/*.deb; do dpkg-deb -x "$d" "$X"; done

KVER="$(ls "$X/lib/modules" | head -n1)"
cp "$X/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
cp "$X/usr/share/seabios/bios.bin" "$CACHE/bios.bin"
cp "$X/bin/busybox" "$CACHE/busybox"
for m in "${MODULES[@]}"; do
  f="$(find "$X/lib/modules/$KVER" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)"
  if [ -z "$f" ]; then echo "linux guest: module $m not found in $KPKG" >&2; exit 1; fi
  case "$f" in
    *.ko) cp "$f" "$CACHE/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$CACHE/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$CACHE/modules/$m.ko" ;;
  esac
done
echo "$KVER" > "$CACHE/kernel-version"
{
  echo "kernel-package $KPKG"
  for d in "$DL"/*.deb; do dpkg-deb -f "$d" Package Version Architecture | paste -sd' '; done
} > "$CACHE/manifest.txt"
rm -rf "$X" "$DL"
complete
echo "linux guest: ready in $CACHE ($KVER)"
