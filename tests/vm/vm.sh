#!/bin/bash
# Manage the test VMs (QEMU/TCG, Debian bookworm image from build-image.sh).
# Only VMs and the switch recorded under $DSVM_RUN are ever signalled, by PID.
#   vm.sh start NAME IDX      boot NAME with IP 10.78.0.(10+IDX)/24, wait for the agent
#   vm.sh exec NAME CMD...    run CMD (joined by spaces, via /bin/sh -c) in NAME as root;
#                             prints its stdout/stderr, returns its exit code
#   vm.sh stop NAME           kill NAME, delete its overlay (stops the switch after the last VM)
#   vm.sh stop-all | status | console NAME
# Env: DSVM_CACHE (image cache), DSVM_RUN (state dir, default $DSVM_CACHE/run),
#      DSVM_SHARE (host dir mounted read-only at /mnt/host, default $DSVM_RUN/share),
#      DSVM_MEM (MiB, 1024), DSVM_SMP (1), DSVM_BOOT_TIMEOUT (300),
#      DSVM_EXEC_TIMEOUT (600), DSVM_KEEP=1 (keep overlay on stop)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DSVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distributed-store-vm}"
RUN="${DSVM_RUN:-$CACHE/run}"
SHARE="${DSVM_SHARE:-$RUN/share}"
QEMU="${DSVM_QEMU:-qemu-system-x86_64}"
die() { echo "vm.sh: $*" >&2; exit 125; }
# A pid file is "alive" only if its process runs AND was started for this
# run dir (its command line names $RUN): a recycled PID is never signalled.
alive() {
  local pid; [ -f "$1" ] || return 1; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$RUN/"
}

ensure_switch() {
  mkdir -p "$RUN"
  exec 9>"$RUN/switch.lock"; flock 9     # parallel "start"s share one switch
  alive "$RUN/switch.pid" && { flock -u 9; return 0; }
  rm -rf "$RUN/switch.ctl"
  # Pure L2 switch on unix sockets: no IP traffic on the host at all.
  vde_switch --sock "$RUN/switch.ctl" --daemon --pidfile "$RUN/switch.pid" >/dev/null 2>&1 \
    || die "vde_switch failed (apt-get install vde2)"
  for _ in $(seq 50); do [ -e "$RUN/switch.ctl/ctl" ] && { flock -u 9; return 0; }; sleep 0.1; done
  die "vde_switch did not come up"
}

maybe_stop_switch() {
  local p
  exec 9>"$RUN/switch.lock"; flock 9
  for p in "$RUN"/*/qemu.pid; do alive "$p" && return 0; done
  if alive "$RUN/switch.pid"; then kill "$(cat "$RUN/switch.pid")"; fi
  rm -rf "$RUN/switch.pid" "$RUN/switch.ctl"
}

agent() { # NAME TIMEOUT CMD
  python3 "$HERE/agent-client.py" "$RUN/$1/agent.sock" "$2" "$3"
}

cmd_start() {
  local name="$1" idx="$2" d="$RUN/$1" t0 ip mac mid
  [[ "$idx" =~ ^[0-9]+$ ]] && [ "$idx" -le 200 ] || die "IDX must be 0..200"
  [ -f "$CACHE/base.qcow2" ] || die "no image in $CACHE; run build-image.sh \"$CACHE\""
  alive "$d/qemu.pid" && die "$name is already running"
  t0=$(date +%s.%N)
  rm -rf "$d"; mkdir -p "$d" "$SHARE"
  ensure_switch
  ip="10.78.0.$((10 + idx))/24"
  mac=$(printf '52:54:00:4e:00:%02x' "$idx")
  mid=$(printf '%s' "$name" | md5sum | cut -c1-32)
  qemu-img create -q -f qcow2 -F qcow2 -b "$CACHE/base.qcow2" "$d/disk.qcow2"
  echo "$idx" >"$d/idx"
  "$QEMU" -name "$name" -machine q35,accel=tcg -cpu max \
    -smp "${DSVM_SMP:-1}" -m "${DSVM_MEM:-1024}" \
    -nodefaults -display none -vga none -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet systemd.show_status=0 systemd.hostname=$name systemd.machine_id=$mid testbed.ip=$ip testbed.share=1 ${DSVM_APPEND:-}" \
    -drive "file=$d/disk.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
    -netdev "vde,id=net0,sock=$RUN/switch.ctl" -device "virtio-net-pci,netdev=net0,mac=$mac" \
    -virtfs "local,path=$SHARE,mount_tag=host,security_model=none,readonly=on" \
    -chardev "socket,id=agent,path=$d/agent.sock,server=on,wait=off" \
    -device virtio-serial-pci -device virtserialport,chardev=agent,name=testbed.agent \
    -serial "file:$d/console.log" \
    -monitor "unix:$d/monitor.sock,server=on,wait=off" \
    -daemonize -pidfile "$d/qemu.pid" || die "qemu failed to start"
  local deadline=$((SECONDS + ${DSVM_BOOT_TIMEOUT:-300}))
  until agent "$name" 3 true >/dev/null 2>&1; do
    alive "$d/qemu.pid" || { tail -20 "$d/console.log" >&2; die "$name: qemu exited during boot"; }
    [ $SECONDS -lt $deadline ] || { tail -20 "$d/console.log" >&2; die "$name: agent did not answer"; }
    sleep 0.3
  done
  local state; state=$(agent "$name" 120 "systemctl is-system-running --wait" 2>/dev/null || true)
  printf '%s: up (ip %s, system %s) in %.1f s\n' "$name" "$ip" "$state" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
}

cmd_stop() {
  local d="$RUN/$1" pid
  if alive "$d/qemu.pid"; then
    pid=$(cat "$d/qemu.pid"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  [ "${DSVM_KEEP:-0}" = 1 ] || rm -rf "$d"
  maybe_stop_switch
}

case "${1:-}" in
  start)   [ $# -eq 3 ] || die "usage: vm.sh start NAME IDX"; cmd_start "$2" "$3" ;;
  exec)    [ $# -ge 3 ] || die "usage: vm.sh exec NAME CMD..."; n="$2"; shift 2
           [ -S "$RUN/$n/agent.sock" ] || die "$n is not running"
           agent "$n" "${DSVM_EXEC_TIMEOUT:-600}" "$*" ;;
  stop)    [ $# -eq 2 ] || die "usage: vm.sh stop NAME"; cmd_stop "$2" ;;
  stop-all) for p in "$RUN"/*/qemu.pid; do [ -e "$p" ] && cmd_stop "$(basename "$(dirname "$p")")"; done; maybe_stop_switch ;;
  status)  for p in "$RUN"/*/qemu.pid; do [ -e "$p" ] || continue; n=$(basename "$(dirname "$p")")
             alive "$p" && echo "$n running pid $(cat "$p") ip 10.78.0.$((10 + $(cat "$RUN/$n/idx")))" || echo "$n dead"; done ;;
  console) cat "$RUN/$2/console.log" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
