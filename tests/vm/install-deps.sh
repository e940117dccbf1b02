#!/usr/bin/env bash
# Host packages for the QEMU/TCG VM tests (Debian bookworm host, run as root). Idempotent.
#   qemu-system-x86 + qemu-utils  from bookworm-backports (10.x)
#   debootstrap vde2 e2fsprogs python3  from bookworm
# Both qemu packages come from bookworm-backports: bookworm's own qemu-system-x86 (7.2)
# would replace the newer qemu-utils some machines ship with, and qemu-img would vanish.
# Only the Debian mirror already configured in /etc/apt is used.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 2; }
src=/etc/apt/sources.list.d/bookworm-backports.sources
updated=0
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
              grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } 2>/dev/null | grep -v -- '-security' | head -n1 || true)
  [ -n "$mirror" ] || { echo "install-deps.sh: no Debian mirror in apt sources" >&2; exit 2; }
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" > "$src"
  apt-get update -qq; updated=1
fi
need_qemu=0
command -v qemu-system-x86_64 >/dev/null || need_qemu=1
command -v qemu-img >/dev/null || need_qemu=1
need=()
for p in debootstrap:debootstrap vde_switch:vde2 mkfs.ext4:e2fsprogs python3:python3 flock:util-linux; do
  command -v "${p%%:*}" >/dev/null || need+=("${p##*:}")
done
if [ "$need_qemu" = 1 ] || [ ${#need[@]} -gt 0 ]; then
  # a fresh machine may have the source but no package lists yet
  if [ "$updated" = 0 ] && ! apt-cache policy qemu-system-x86 2>/dev/null | grep -q bookworm-backports; then
    apt-get update -qq
  fi
fi
if [ "$need_qemu" = 1 ]; then
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
[ ${#need[@]} -eq 0 ] || apt-get install -y -qq "${need[@]}" >/dev/null
echo "vm test deps ok: $(qemu-system-x86_64 --version | head -1); $(qemu-img --version | head -1)"
