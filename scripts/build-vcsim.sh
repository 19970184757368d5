#!/usr/bin/env bash
# Build the project's vSphere API simulator (lab/vcsim/main.go) into .cutover/bin/vcsim.
# Idempotent: installs Debian's Go toolchain and govmomi source only when missing, and
# rebuilds only when the binary is missing or older than a lab/vcsim/*.go file. Silent when up to date.
# The build is offline: GOPATH is Debian's /usr/share/gocode, no Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(golang-go golang-github-vmware-govmomi-dev)

source scripts/lib.sh
ensure_apt build-vcsim "${APT_PACKAGES[@]}"

bin=.cutover/bin/vcsim
stale=0
[ -x "$bin" ] || stale=1
for src in lab/vcsim/*.go; do [ "$src" -nt "$bin" ] && stale=1; done
if [ "$stale" = 1 ]; then
  echo "build-vcsim: building $bin" >&2
  mkdir -p .cutover/bin .cutover/gocache
  # Build to a temporary name and rename, so a concurrent reader never sees half a binary.
  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$PWD/.cutover/gocache" GOFLAGS= \
    go build -o "$bin.tmp.$$" ./lab/vcsim
  mv -f "$bin.tmp.$$" "$bin"
fi
