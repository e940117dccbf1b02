#!/usr/bin/env bash
# A second, current Nix client next to Debian bookworm's Nix 2.8: Debian trixie's nix-bin (2.26)
# in a debootstrap chroot (adapted from the verified recipe in the project's testbed notes).
# It shares the caller's network namespace: loopback reaches a proxy started outside, and
# `ip netns exec NS modern-nix.sh run ...` runs it inside a test netns.
#
#   modern-nix.sh setup [DIR]      debootstrap trixie (minbase) + nix-bin into DIR (~40 s; idempotent)
#   modern-nix.sh check [DIR]      exit 0 iff DIR holds a working Nix 2.26 (prints `nix --version`)
#   modern-nix.sh run DIR CMD...   run CMD in the chroot, in a private mount namespace holding
#                                  /proc, /dev and every directory of $MODERN_NIX_BIND (space-separated)
#                                  bind-mounted at the same path: a test's chroot stores keep the same
#                                  paths inside and outside, so the test compares files as with 2.8.
#                                  (Bind a parent such as /tmp: the mount point is created in DIR and
#                                  left there, since removing it could detach a concurrent run's mount.)
# DIR defaults to $DS_MODERN_NIX_DIR or /var/cache/distributed-store-test/nix-2.26.
# The private mount namespace (unshare -m) means nothing is left mounted when CMD ends, even when
# it is killed, and concurrent runs never unmount each other's /proc.
# Notes: debootstrap reports a failure configuring libdbd-sqlite3-perl (pulled in by nix-bin); the nix
# binary works regardless, so setup ignores that exit status but checks `nix --version`.
# Callers set NIX_CONFIG as nix-env.sh does, with `sandbox = false` (no builds happen in the chroot).
# Needs: debootstrap (dev/setup installs it), root.
set -euo pipefail
cmd=${1:?usage: modern-nix.sh setup|check|run [DIR] [CMD...]}; shift
dir=${1:-${DS_MODERN_NIX_DIR:-/var/cache/distributed-store-test/nix-2.26}}; [ $# -gt 0 ] && shift
case $cmd in
  setup)
    if ! [ -x "$dir/usr/bin/nix" ]; then
      command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
      # the Debian mirror this machine's apt already uses (TESTBED_MIRROR overrides)
      mirror=${TESTBED_MIRROR:-$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
        grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } | grep -v -- '-security' | head -n1 || true)}
      [ -n "$mirror" ] || { echo "no Debian mirror in apt sources; set TESTBED_MIRROR" >&2; exit 2; }
      mkdir -p "$(dirname "$dir")"
      # a half-made chroot from an interrupted or failed run is started over; anything else
      # in the way is left alone
      if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        [ -d "$dir/debootstrap" ] || [ -f "$dir/etc/debian_version" ] ||
          { echo "$dir exists and is not a debootstrap chroot: not touching it" >&2; exit 2; }
        rm -rf --one-file-system "$dir"
      fi
      debootstrap --variant=minbase --include=nix-bin,ca-certificates,busybox-static trixie "$dir" \
        "$mirror" >"$dir.debootstrap.log" 2>&1 || true
    fi
    "$0" check "$dir" || {
      err=$(grep '^E: ' "$dir.debootstrap.log" 2>/dev/null | tail -n1 || true)
      echo "no working nix in $dir (debootstrap: ${err:-see $dir.debootstrap.log})" >&2; exit 1; } ;;
  check)
    [ -x "$dir/usr/bin/nix" ] || exit 1
    "$0" run "$dir" nix --version ;;
  run)
    [ $# -gt 0 ] || { echo "usage: modern-nix.sh run DIR CMD..." >&2; exit 2; }
    # In the new mount namespace: make mounts private (nothing propagates back to the host),
    # then mount /proc and /dev and the bind directories, then chroot. Nix reads its settings
    # from the environment (NIX_CONFIG, NIX_CONF_DIR, NIX_REMOTE, XDG_*), which chroot keeps.
    exec unshare --mount --propagation private -- /bin/bash -c '
      set -e; dir=$1; shift
      mount -t proc proc "$dir/proc"
      mount --rbind /dev "$dir/dev"
      for b in ${MODERN_NIX_BIND:-}; do
        [ -d "$b" ] || continue
        mkdir -p "$dir$b"; mount --bind "$b" "$dir$b"
      done
      exec chroot "$dir" "$@"' modern-nix "$dir" "$@" ;;
  *) echo "unknown command $cmd (setup|check|run)" >&2; exit 2 ;;
esac
