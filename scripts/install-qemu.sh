#!/usr/bin/env bash
# Installs QEMU's microvm binary with the qtest accelerator (Debian package qemu-system-x86) for the
# QEMU peer checks (test/peers/qemu.test.ts, `virtio-mmio check qemu`). Idempotent: does nothing
# when the binary is already there and lists qtest. Needs root (or sudo) on Debian/Ubuntu.
#
#   scripts/install-qemu.sh          # install if missing, then verify
#   scripts/install-qemu.sh --check  # verify only (exit 1 when missing)
set -euo pipefail

BIN=qemu-system-x86_64-microvm

# `-accel help` does not list qtest even where it works, so start the machine under qtest and quit
# it through QMP: a binary without the accelerator fails with "invalid accelerator qtest".
have_qtest() {
  command -v "$BIN" >/dev/null 2>&1 || return 1
  printf '{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n' |
    timeout 20 "$BIN" -M microvm,acpi=off -accel qtest -qmp stdio -display none -nodefaults \
      -serial none -monitor none -m 16M >/dev/null 2>&1
}

if have_qtest; then
  echo "install-qemu: $("$BIN" --version | head -n1) with qtest already present"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "install-qemu: $BIN with the qtest accelerator not found" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-qemu: need root or sudo to install qemu-system-x86" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# A mirror mid-sync can fail an index QEMU does not need; the install below decides.
$SUDO apt-get update -qq || echo "install-qemu: apt-get update reported errors, trying the install anyway" >&2
$SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null

if ! have_qtest; then
  echo "install-qemu: installed qemu-system-x86 but $BIN has no qtest accelerator" >&2
  exit 1
fi
echo "install-qemu: $("$BIN" --version | head -n1) with qtest installed"
