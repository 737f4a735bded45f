#!/usr/bin/env bash
# Set up a Debian 12 host (as root) for vmprobe: the system packages it drives
# (QEMU, gdb, the guest's busybox and SSH server, the module toolchain) via
# apt-get, and vmprobe itself with its Python dependencies in ./.venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 gdb                              # the VM and its debugger
  qemu-system-arm gdb-multiarch                    # arm64 guests (qemu-system-aarch64), foreign-arch gdb
  gcc-12-aarch64-linux-gnu gcc-12-i686-linux-gnu   # module builds for arm64 and i386 guests
  busybox-static dropbear-bin openssh-sftp-server  # the guest's userland and SSH/SFTP server
  musl-tools dpkg-dev linux-libc-dev                # the old-era guest userland: Debian's busybox source built with musl
  gcc-12 make libelf-dev bc flex bison             # out-of-tree kprobe module builds
  cpio kmod xz-utils zstd                          # inspecting initramfs and modules
  debootstrap                                      # build chroots for kernels newer than the host (trixie, sid)
  python3 python3-venv python3-pip ca-certificates debian-archive-keyring
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

stamp=.venv/.vmprobe-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing vmprobe and its Python dependencies into .venv" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip </dev/null
  .venv/bin/python -m pip install -q -e '.[test]' </dev/null
  echo "$want" > "$stamp"
fi
# Byte-compile vmprobe itself (quick when up to date): pip does not compile an editable install,
# and where PYTHONDONTWRITEBYTECODE is set (as on some CI images) Python would otherwise compile
# its ~50 modules from source on every command, ≈60–150 ms each time (benchmarks/loop.py's `--help`).
.venv/bin/python -m compileall -q vmprobe >/dev/null
