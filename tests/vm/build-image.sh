#!/bin/bash
# Build (and cache) a Debian bookworm guest image for the QEMU/TCG testbed.
# Usage: build-image.sh [CACHE_DIR]
#   (default: $DSVM_CACHE or ${XDG_CACHE_HOME:-$HOME/.cache}/distributed-store-vm)
# Produces in CACHE_DIR: base.qcow2 (ext4 root, no partition table), vmlinuz, initrd.img
# Stage 1 (debootstrap -> rootfs/, ~2-3 min) is keyed on the package list;
# stage 2 (guest/ files + mkfs.ext4 -d -> base.qcow2, ~20 s) on the guest/ files.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${1:-${DSVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distributed-store-vm}}"
# The Debian mirror this machine's apt already uses (first URIs:/deb line that serves the main archive).
host_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } 2>/dev/null | grep -v -- '-security' | head -n1 || true
}
MIRROR="${DSVM_MIRROR:-$(host_mirror)}"
[ -n "$MIRROR" ] || { echo "no Debian mirror found in apt sources; set DSVM_MIRROR" >&2; exit 2; }
SUITE=bookworm
IMG_SIZE="${DSVM_IMG_SIZE:-6G}"
PKGS="systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,initramfs-tools,iproute2,procps,curl,ca-certificates,python3-minimal,python3-gi,nix-bin,libdbi-perl,busybox-static,xz-utils"
PKGS="$PKGS${DSVM_EXTRA_PKGS:+,$DSVM_EXTRA_PKGS}"

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
log() { printf '[build-image %(%T)T] %s\n' -1 "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
# Concurrent runs sharing one cache wait for each other instead of racing on rootfs/.
exec 8>"$CACHE/build.lock"; flock 8

# Runs once after debootstrap: small initrd, drop docs/caches/unneeded modules.
post_debootstrap() {
  local R="$1" k
  # initrd with only what is needed to mount /dev/vda (ext4 on virtio-blk):
  # MODULES=most made the kernel+initrd phase ~12 s under TCG.
  sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
  printf '%s\n' virtio_pci virtio_blk crc32c_generic ext4 >"$R/etc/initramfs-tools/modules"
  rm -rf "$R"/usr/lib/modules/*/kernel/{sound,drivers/gpu,drivers/media,drivers/net/wireless,drivers/infiniband,drivers/staging,drivers/bluetooth,drivers/iio,drivers/hid,drivers/usb,drivers/input/touchscreen,drivers/isdn,net/wireless,net/mac80211,net/bluetooth}
  for k in "$R"/usr/lib/modules/*; do
    k=$(basename "$k"); chroot "$R" depmod "$k"; chroot "$R" update-initramfs -u -k "$k" >/dev/null
  done
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* \
         "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/*
}

# ---- stage 1: debootstrap rootfs --------------------------------------------
s1_key="$( (printf '%s\n' "$SUITE" "$MIRROR" "$PKGS"; declare -f post_debootstrap) | sha256sum | cut -c1-16)"
if [ "$(cat "$CACHE/rootfs.stamp" 2>/dev/null)" != "$s1_key" ]; then
  t0=$SECONDS
  log "stage 1: debootstrap $SUITE (packages: $PKGS)"
  rm -rf "$CACHE/rootfs" "$CACHE/rootfs.stamp" "$CACHE/image.stamp"
  mkdir -p "$CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PKGS" \
    "$SUITE" "$CACHE/rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE/debootstrap.log" >&2; exit 1; }
  post_debootstrap "$CACHE/rootfs"
  echo "$s1_key" >"$CACHE/rootfs.stamp"
  log "stage 1 done in $((SECONDS - t0)) s"
fi

# ---- stage 2: customize + ext4 image ----------------------------------------
s2_key="$( (echo "$s1_key" "$IMG_SIZE"; cat "$HERE/build-image.sh"; find "$HERE/guest" -type f ! -name "*.pyc" | sort | xargs cat) | sha256sum | cut -c1-16)"
if [ "$(cat "$CACHE/image.stamp" 2>/dev/null)" = "$s2_key" ] && [ -f "$CACHE/base.qcow2" ]; then
  log "cached: $CACHE/base.qcow2"
  exit 0
fi
t0=$SECONDS
log "stage 2: customizing rootfs and creating ext4 image"
R="$CACHE/rootfs"
install -d "$R/usr/local/lib/testbed" "$R/mnt/host"
install -m 755 "$HERE/guest/testbed-agent.py" "$HERE/guest/testbed-setup.sh" "$R/usr/local/lib/testbed/"
install -m 644 "$HERE/guest/testbed-agent.service" "$HERE/guest/testbed-setup.service" "$R/etc/systemd/system/"
for u in testbed-agent testbed-setup; do
  ln -sfn "/etc/systemd/system/$u.service" "$R/etc/systemd/system/multi-user.target.wants/$u.service"
done
install -D -m 644 "$HERE/guest/nix.conf" "$R/etc/nix/nix.conf"
echo "/dev/vda / ext4 rw,noatime,errors=remount-ro 0 1" >"$R/etc/fstab"
echo testbed >"$R/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"                      # no DNS, no route out
# Valid machine-id in the image (avoids first-boot preset-all); each VM gets its
# own via systemd.machine_id= on the kernel command line.
[ -s "$R/etc/machine-id" ] || echo 00000000000000000000000000000001 >"$R/etc/machine-id"
# Boot speed: mask units that are useless in a throwaway test VM.
for u in getty@tty1.service serial-getty@ttyS0.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service \
         man-db.timer dpkg-db-backup.timer; do
  ln -sfn /dev/null "$R/etc/systemd/system/$u"
done
# journald: keep logs in RAM only (faster, no flushing to the overlay)
mkdir -p "$R/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$R/etc/systemd/journald.conf.d/testbed.conf"
# Kernel + initrd for direct (-kernel) boot
cp -L "$R/vmlinuz" "$CACHE/vmlinuz.new" && mv "$CACHE/vmlinuz.new" "$CACHE/vmlinuz"
cp -L "$R/initrd.img" "$CACHE/initrd.img.new" && mv "$CACHE/initrd.img.new" "$CACHE/initrd.img"
rm -f "$CACHE/base.raw" "$CACHE/base.qcow2.new"
truncate -s "$IMG_SIZE" "$CACHE/base.raw"
mkfs.ext4 -q -F -L testbed-root -E lazy_itable_init=1 -d "$R" "$CACHE/base.raw"
qemu-img convert -f raw -O qcow2 "$CACHE/base.raw" "$CACHE/base.qcow2.new"
rm -f "$CACHE/base.raw"
mv "$CACHE/base.qcow2.new" "$CACHE/base.qcow2"
echo "$s2_key" >"$CACHE/image.stamp"
log "stage 2 done in $((SECONDS - t0)) s: $CACHE/base.qcow2 ($(du -h "$CACHE/base.qcow2" | cut -f1))"
