#!/usr/bin/env bash
# Idempotent setup on a fresh Debian 12 machine: apt packages, the venv, locked Python deps.
# Re-running it does nothing when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# haproxy, bind9 (+utils) and prometheus are the real traffic/monitoring components the
# tests and the lab drive; their services are never enabled, the tests start them.
# qemu-utils, qemu-system-x86 and the libvirt daemon/driver are the KVM target the tests
# define real domains on (libvirtd and embedded QEMU are started by the tests themselves).
# restic, prometheus-alertmanager and nftables are the day-two systems the backup,
# alert-routing and network-policy probes are tested against (adapters/probes/).
# chromium is the headless browser tests/test_ui.py drives the Temporal Web UI with (through
# the `playwright` package of the dev extra; never `playwright install`).
APT_PACKAGES=(python3-venv python3-dev gcc pkg-config libvirt-dev openssl haproxy bind9
  bind9-utils prometheus qemu-utils qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu
  libvirt-clients chromium linux-image-cloud-amd64 busybox-static syslinux syslinux-common mtools dosfstools systemd-boot-efi ovmf
  restic prometheus-alertmanager nftables)

source scripts/lib.sh
ensure_apt setup "${APT_PACKAGES[@]}"

# libvirt's QEMU driver looks its default user and group up even when qemu.conf overrides
# them (no systemd here creates them).
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  $SUDO useradd -r -g libvirt-qemu -s /usr/sbin/nologin libvirt-qemu
# What Debian's udev rule does where no udev runs: QEMU, as libvirt-qemu, may use KVM
# (group kvm, 0660). Without /dev/kvm, domains run under TCG.
if [ -c /dev/kvm ]; then
  getent group kvm >/dev/null || $SUDO groupadd -r kvm
  id -nG libvirt-qemu | grep -qw kvm || $SUDO usermod -aG kvm libvirt-qemu
  [ "$(stat -c %G:%a /dev/kvm)" = "kvm:660" ] || { $SUDO chgrp kvm /dev/kvm; $SUDO chmod 660 /dev/kvm; }
fi

# Our vSphere API simulator (Debian's govmomi source + lab/vcsim/main.go), for tests and lab.
bash scripts/build-vcsim.sh

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi

# Reinstall only when the lock or the project metadata changed.
stamp=.venv/.cutover-setup
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing locked Python dependencies" >&2
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r requirements.lock
  log=$(mktemp)
  .venv/bin/pip install -q --no-deps -e . >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
  echo "$want" > "$stamp"
fi
