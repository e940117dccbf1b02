#!/usr/bin/env bash
# The proxy under real socket activation (systemd-socket-activate passes the
# listening socket as LISTEN_FDS, as a .socket unit does): it answers its first
# request, reports READY=1 and WATCHDOG=1 over sd_notify, exits cleanly on
# SIGTERM, and exits by itself after idleExitSec (activation would restart it).
. "$(dirname "$0")/lib.sh"
need_root; need_bins
command -v systemd-socket-activate >/dev/null || { echo "FAIL: systemd-socket-activate missing (apt-get install systemd)"; exit 1; }
echo "== socket activation + sd_notify"
BIG_MIB=1 fixture s || { finish; exit 1; }

# notify_listener FILE: a datagram socket at FILE.sock; every message appended to FILE.
notify_listener() {
  python3 - "$1" <<'PY' &
import socket, sys, os
path = sys.argv[1] + ".sock"
try: os.unlink(path)
except FileNotFoundError: pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path)
with open(sys.argv[1], "a") as f:
    while True:
        f.write(s.recv(4096).decode() + "\n---\n"); f.flush()
PY
  PIDS+=($!)
  for _ in $(seq 50); do [ -S "$1.sock" ] && return; sleep 0.1; done
}

# activate NAME PORT CONFIG: proxy behind systemd-socket-activate on 127.0.0.1:PORT; sets PROXY_PID.
activate() {
  local name=$1 port=$2
  mkdir -p "$W/$name"; printf '%s\n' "$3" > "$W/$name/config.toml"
  notify_listener "$W/$name/notify"
  systemd-socket-activate -l "127.0.0.1:$port" \
    -E DISTRIBUTED_STORE_CONFIG="$W/$name/config.toml" -E NOTIFY_SOCKET="$W/$name/notify.sock" \
    -E WATCHDOG_USEC=400000 -E RUST_LOG=info -E DBUS_SYSTEM_BUS_ADDRESS="unix:path=$W/no-bus.sock" \
    "$BIN/distributed-store-proxy" > "$W/$name/proxy.log" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  for _ in $(seq 50); do ss -ltn "sport = :$port" | grep -q LISTEN && return; sleep 0.1; done
}
exited_within() { # exited_within PID SECONDS -> status 0 iff PID exited with status 0 in time
  local i; for i in $(seq $(($2 * 10))); do kill -0 "$1" 2>/dev/null || { wait "$1"; return $?; }; sleep 0.1; done; return 1
}

PORT=$(free_port)
# listen points elsewhere on purpose: an activated proxy must use the passed socket
activate a "$PORT" "store = \"local?root=$STORE_ROOT\"
listen = \"127.0.0.1:1\""
check "first request on the activated socket is answered" grep -q 'StoreDir: /nix/store' <(curl -sf --noproxy '*' "http://127.0.0.1:$PORT/nix-cache-info")
check "narinfo served" grep -q "^StorePath: $APP" <(curl -sf --noproxy '*' "http://127.0.0.1:$PORT/${APP:11:32}.narinfo")
check "a real Nix client substitutes through the activated socket" nixc c1 "http://127.0.0.1:$PORT" "" nix-store -r "$CA"
check "sd_notify READY=1 received" grep -qx 'READY=1' "$W/a/notify"
sleep 0.5
check "sd_notify WATCHDOG=1 pings (WATCHDOG_USEC=400ms)" [ "$(grep -cx 'WATCHDOG=1' "$W/a/notify")" -ge 2 ]
check "log says socket_activated=true" grep -q 'socket_activated=true' "$W/a/proxy.log"
check "runs without a D-Bus system bus (warns, serves)" grep -q 'D-Bus' "$W/a/proxy.log"
kill -TERM "$PROXY_PID"
check "SIGTERM: exits with status 0 within 5 s" exited_within "$PROXY_PID" 5
check "SIGTERM: STOPPING=1 sent" grep -qx 'STOPPING=1' "$W/a/notify"
check_not "no panic in the log" grep -qi panic "$W/a/proxy.log"

PORT=$(free_port)
activate b "$PORT" "store = \"local?root=$STORE_ROOT\"
idleExitSec = 1"
check "idle exit: answers" grep -q 'StoreDir' <(curl -sf --noproxy '*' "http://127.0.0.1:$PORT/nix-cache-info")
check "idle exit: exits by itself (status 0) after idleExitSec" exited_within "$PROXY_PID" 6
check "idle exit: logged" grep -q 'idle for 1s' "$W/b/proxy.log"
finish
