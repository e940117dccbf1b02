# shellcheck shell=bash
# Shared helpers for the end-to-end tests (source me). Every test:
#   - uses its own work dir ($W), chroot stores and ports;
#   - starts what it needs and stops it by PID (trap cleanup EXIT);
#   - prints "ok ..." / "FAIL ..." lines and ends with "N passed, N failed".
# Needs root (chroot Nix stores, setpriv, network namespaces).
set -uo pipefail
E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E/../.." && pwd)
TESTBED=$ROOT/tests/testbed
BIN=${DS_BIN:-$ROOT/target/release}
PASSED=0; FAILED=0; PIDS=()
W=$(mktemp -d "${TMPDIR:-/tmp}/ds-e2e.XXXXXX"); chmod 755 "$W"

# NIXGEN: which Nix generation the test's clients run (nixc): 2.8 = Debian bookworm's nix-bin on
# the host (default), 2.26 = Debian trixie's nix-bin in the chroot dev/setup makes
# (tests/testbed/modern-nix.sh; DS_MODERN_NIX_DIR overrides its place). Every check label
# carries the generation, so the two runs of a scenario are reported apart.
NIXGEN=${NIXGEN:-2.8}
MODERN_NIX=$TESTBED/modern-nix.sh
MODERN_NIX_DIR=${DS_MODERN_NIX_DIR:-/var/cache/distributed-store-test/nix-2.26}
case $NIXGEN in 2.8|2.26) ;; *) echo "FAIL: NIXGEN=$NIXGEN (want 2.8 or 2.26)"; exit 1 ;; esac
ok()  { echo "  ok   [nix $NIXGEN] $*"; PASSED=$((PASSED+1)); }
bad() { echo "  FAIL [nix $NIXGEN] $*"; FAILED=$((FAILED+1)); }
check() { # check LABEL CMD...  (exit status 0 = pass)
  local label=$1; shift
  if "$@" > "$W/last.out" 2>&1; then ok "$label"; else bad "$label"; sed 's/^/       /' "$W/last.out" | tail -20; fi
}
check_not() { # check_not LABEL CMD...  (must fail)
  local label=$1; shift
  if "$@" > "$W/last.out" 2>&1; then bad "$label (succeeded)"; sed 's/^/       /' "$W/last.out" | tail -20; else ok "$label"; fi
}
check_fails() { # check_fails LABEL EXPECTED_MESSAGE CMD...  (must fail, and say EXPECTED_MESSAGE)
  local label=$1 msg=$2; shift 2
  if "$@" > "$W/last.out" 2>&1; then bad "$label (succeeded)"; sed 's/^/       /' "$W/last.out" | tail -20
  elif grep -q -- "$msg" "$W/last.out"; then ok "$label"
  else bad "$label (no '$msg' in output)"; sed 's/^/       /' "$W/last.out" | tail -20; fi
}
finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ -n "${TB_NS:-}" ] && "$TESTBED/netns-hosts.sh" down >/dev/null 2>&1
  if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT: until something listens on 127.0.0.1:PORT (5 s at most).
wait_port() { local i; for i in $(seq 50); do ss -ltn "sport = :$1" | grep -q LISTEN && return 0; sleep 0.1; done; return 1; }

# nixc STATE SUBSTITUTERS KEYS CMD...: daemonless Nix (generation $NIXGEN) on the fresh chroot
# store W/STATE.
nixc() { local s=$1 u=$2 k=$3; shift 3; ( . "$TESTBED/nix-env.sh" "$W/$s" "$u" "$k"; nix_gen "$@" ); }
# nix_gen CMD...: run CMD (a Nix command, environment from nix-env.sh) with the $NIXGEN client.
# 2.26 runs in the chroot, which shares this network namespace (127.0.0.1 is the proxy; wrap in
# `ip netns exec NS` for a test netns); W's parent is bind-mounted at the same path inside, so
# stores, NIX_CONF_DIR and XDG dirs under W keep their paths and the test reads files as for 2.8.
# No builds run there: sandbox off (the chroot has no user namespaces prepared).
nix_gen() {
  if [ "$NIXGEN" = 2.26 ]; then
    NIX_CONFIG=$(sed 's/^sandbox = true$/sandbox = false/' <<<"$NIX_CONFIG") \
      MODERN_NIX_BIND=$(dirname "$W") "$MODERN_NIX" run "$MODERN_NIX_DIR" "$@"
  else
    "$@"
  fi
}
# modern_nix_missing: prints why the Nix 2.26 chroot cannot be used (status 0), or nothing
# (status 1) when it works.
modern_nix_missing() {
  if "$MODERN_NIX" check "$MODERN_NIX_DIR" >/dev/null 2>&1; then return 1; fi
  if [ -s "$MODERN_NIX_DIR.unavailable" ]; then cat "$MODERN_NIX_DIR.unavailable"
  else echo "no working Nix 2.26 chroot at $MODERN_NIX_DIR (dev/setup makes it; DS_NO_MODERN_NIX=1 skips that)"; fi
}

# fixture NAME: build (once per test) the toy closure into W/NAME; sources its paths.env.
fixture() {
  SALT=${SALT:-$1} "$TESTBED/make-fixture.sh" "$W/$1" > "$W/$1.log" 2>&1 || { cat "$W/$1.log"; bad "fixture $1"; return 1; }
  # shellcheck disable=SC1090
  . "$W/$1/paths.env"
}

# up NAME CONFIG_TOML: run `distributed-store up` in the background with this config;
# waits until it printed that it is up; sets UP_PID, and sources W/NAME/run/up.env
# (DBUS_SYSTEM_BUS_ADDRESS DISTRIBUTED_STORE_URL DISTRIBUTED_STORE_PUBLIC_KEY) into UP_* vars.
up() {
  local name=$1 conf=$2 i
  # These nodes run in the host's network namespace: no mDNS discovery there (it would send
  # multicast off this machine), unless a test sets `discovery` itself.
  case $conf in *discovery*) ;; *) conf="discovery = false
$conf" ;; esac
  mkdir -p "$W/$name"; printf '%s\n' "$conf" > "$W/$name/config.toml"
  rm -f "$W/$name/run/up.env"
  "$BIN/distributed-store" up --config "$W/$name/config.toml" --runtime-dir "$W/$name/run" > "$W/$name/up.log" 2>&1 &
  UP_PID=$!; PIDS+=("$UP_PID")
  for i in $(seq 600); do
    if grep -q '^distributed-store is up' "$W/$name/up.log" 2>/dev/null; then
      # shellcheck disable=SC1090
      . <(sed 's/^/UP_/' "$W/$name/run/up.env"); return 0
    fi
    kill -0 "$UP_PID" 2>/dev/null || break
    sleep 0.1
  done
  bad "distributed-store up ($name) did not come up:"; sed 's/^/       /' "$W/$name/up.log" | tail -30
  return 1
}
# down PID: Ctrl-C (SIGINT) and wait; fails if it does not exit in 20 s.
down() {
  local pid=$1 i
  kill -INT "$pid" 2>/dev/null
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null; return 1
}

need_root() {
  [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (chroot Nix stores, setpriv)"; echo "0 passed, 0 failed"; exit 0; }
  local why
  if [ "$NIXGEN" = 2.26 ] && why=$(modern_nix_missing); then
    echo "SKIP [nix 2.26]: $why"; echo "0 passed, 0 failed"; exit 0
  fi
}
need_bins() {
  local b; for b in distributed-store distributed-store-proxy distributed-store-signer; do
    [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b missing (cargo build --release)"; exit 1; }
  done
}
