# shellcheck shell=bash
# Fleet test helpers (source me), on top of tests/e2e/lib.sh (ok/bad/check/check_not/
# check_fails/finish, $W, $BIN, $TESTBED, cleanup trap). Simulated hosts are network
# namespaces ${TB_NS}-hI at 10.77.0.(10+I) (tests/testbed/netns-hosts.sh):
#   hosts 1..N          fleet hosts: `distributed-store up` + a daemonless Nix client each
#   host N+1 (UHOST)    upstream.py, the signed static cache behind a "WAN" (rate, delay)
#   host N+2 (SPARE)    hostile peers, plain-client helpers
# Every check appends to $W/tally, so checks made in scenario subshells count too;
# `finish` prints exactly one "N passed, N failed" line.
export TB_NS=${TB_NS:-fl$$}
FLEET=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../e2e/lib.sh
. "$FLEET/../e2e/lib.sh"
NB=$TESTBED/netns-hosts.sh
NODE_PORT=5496 UP_PORT=8080 HOSTILE_PORT=5496
UP_RATE=${UP_RATE:-50000000} UP_DELAY_MS=${UP_DELAY_MS:-20}
PEER_TIMEOUT_MS=${PEER_TIMEOUT_MS:-250}
FLEET_N=0 UHOST=0 SPARE=0
: > "$W/tally"

ok()  { echo "  ok   $*"; echo ok >> "$W/tally"; }
bad() { echo "  FAIL $*"; echo FAIL >> "$W/tally"; }
info() { echo "  ..   $*"; }
finish() {
  local p f
  p=$(grep -c '^ok$' "$W/tally"); f=$(grep -c '^FAIL$' "$W/tally")
  echo "$p passed, $f failed"
  [ "$f" = 0 ]
}
fleet_cleanup() {
  local i
  for i in $(seq 1 $((FLEET_N + 2))); do kill_host "$i" 2>/dev/null; done
  cleanup
}
trap fleet_cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }   # secs MS -> "1.23"
hip() { echo "10.77.0.$((10 + $1))"; }
node_url() { echo "http://$(hip "$1"):$NODE_PORT"; }
upstream_url() { echo "http://$(hip "$UHOST"):$UP_PORT"; }
inh() { local i=$1; shift; "$NB" exec "$i" "$@"; }             # inh I CMD...: run CMD inside host I
hcurl() { local i=$1; shift; "$NB" exec "$i" curl -s --noproxy '*' "$@"; }

# ---- the fixture (built once per run; FLEET_FIXTURE_DIR=DIR reuses DIR if complete) -----------
fixture_build() {
  FX=${FLEET_FIXTURE_DIR:-$W/fx}
  if [ ! -f "$FX/ok" ]; then
    local t0; t0=$(now_ms)
    timeout 1200 "$FLEET/make-closure.sh" "$FX" > "$W/fixture.log" 2>&1 || {
      bad "fixture build (make-closure.sh)"; tail -30 "$W/fixture.log" | sed 's/^/       /'; return 1; }
    info "fixture built in $(secs $(($(now_ms) - t0))) s"
  fi
  # shellcheck disable=SC1091
  . "$FX/fixture.env"
  CLOSURE=$(tr '\n' ' ' < "$FX/closure")
  CLOSURE_BYTES=$(closure_bytes)
  BIG_BYTES=$(path_file_size "$BIG_PATH")
}
narinfo_field() { # narinfo_field STORE_PATH FIELD  (from the upstream export)
  local h; h=$(basename "$1"); h=${h%%-*}
  sed -n "s/^$2: //p" "$CACHE_DIR/$h.narinfo"
}
path_file_size() { narinfo_field "$1" FileSize; }
# The egress of ONE copy of the closure: sum of the FileSize of its NARs in the upstream dir.
closure_bytes() {
  local p s=0
  for p in $(cat "$FX/closure"); do s=$((s + $(path_file_size "$p"))); done
  echo "$s"
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

# ---- hosts ----------------------------------------------------------------------------------
# fleet_up N: hosts 1..N (fleet), N+1 (upstream), N+2 (spare).
fleet_up() {
  FLEET_N=$1 UHOST=$(($1 + 1)) SPARE=$(($1 + 2))
  "$NB" up "$SPARE" > "$W/netns.log" 2>&1 || { bad "netns-hosts up"; cat "$W/netns.log"; return 1; }
}
# pids of everything running inside host I
host_pids() { ip netns pids "$TB_NS-h$1" 2>/dev/null; }
# pids of our product inside host I (distributed-store*, its dbus-daemon)
ds_pids() {
  local p c
  for p in $(host_pids "$1"); do
    c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    case $c in distributed-sto*|dbus-daemon) echo "$p" ;; esac
  done
}
# kill_host I: stop everything inside host I (SIGINT to nodes first, then TERM, then KILL).
kill_host() {
  local i=$1 p n
  [ -n "${NODE_PID[$i]:-}" ] && kill -INT "${NODE_PID[$i]}" 2>/dev/null
  for n in $(seq 50); do [ -z "$(ds_pids "$i")" ] && break; sleep 0.1; done
  p=$(host_pids "$i"); [ -n "$p" ] && { kill $p 2>/dev/null; sleep 0.2; }
  p=$(host_pids "$i"); [ -n "$p" ] && kill -9 $p 2>/dev/null
  [ -n "${NODE_PID[$i]:-}" ] && wait "${NODE_PID[$i]}" 2>/dev/null
  NODE_PID[$i]=
  return 0
}

# ---- upstream -------------------------------------------------------------------------------
# start_upstream [RATE_BYTES_PER_S [DELAY_MS]]
start_upstream() {
  local rate=${1:-$UP_RATE} delay=${2:-$UP_DELAY_MS} i
  "$NB" exec "$UHOST" python3 "$FLEET/upstream.py" "$CACHE_DIR" "$(hip "$UHOST")" "$UP_PORT" \
    --rate "$rate" --delay-ms "$delay" > "$W/upstream.log" 2>&1 &
  UPSTREAM_PID=$!; PIDS+=("$UPSTREAM_PID")
  for i in $(seq 100); do
    hcurl "$UHOST" -f -o /dev/null "$(upstream_url)/_stats" && return 0
    kill -0 "$UPSTREAM_PID" 2>/dev/null || break; sleep 0.1
  done
  bad "upstream.py did not come up"; cat "$W/upstream.log"; return 1
}
stop_upstream() { [ -n "${UPSTREAM_PID:-}" ] && { kill "$UPSTREAM_PID" 2>/dev/null; wait "$UPSTREAM_PID" 2>/dev/null; }; UPSTREAM_PID=; return 0; }
stats() { hcurl "$UHOST" -f "$(upstream_url)/_stats"; }
stat_get() { stats | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }  # stat_get PYEXPR(d)
egress() { stat_get 'd["total"]'; }
egress_reset() { hcurl "$UHOST" -f -X POST -o /dev/null "$(upstream_url)/_reset"; }
# host index whose IP received the most upstream bytes (and how many)
top_client() { stat_get 'max(d["clients"].items(), key=lambda kv: kv[1], default=("0.0.0.0", 0))[0]' | awk -F. '{print $4 - 10}'; }

# ---- nodes and their Nix clients ------------------------------------------------------------
# Each scenario sets SD (its dir); host I keeps SD/hI/{client,state,cache,run,config.toml,up.log}.
declare -a NODE_PID=()
hdir() { echo "$SD/h$1"; }
toml_list() { local s= x; for x in "$@"; do s="$s${s:+, }\"$x\""; done; echo "[$s]"; }
peers_of() { local j; for j in $(seq 1 "$FLEET_N"); do [ "$j" = "$1" ] || node_url "$j"; done; }
# start_node I [EXTRA_TOML]. Overrides (env, for one call): PEERS="url url" (default: all other
# fleet hosts), TRUST="key key" (default: the fleet key), KEYFILE=path (default: none),
# PEER_TIMEOUT_MS, DISCOVERY=true (mDNS discovery; default false). Initialises the host's client store first (the store the node serves).
start_node() {
  local i=$1 extra=${2:-} d n
  d=$(hdir "$i"); mkdir -p "$d/state" "$d/cache"
  local peers; peers=${PEERS-$(peers_of "$i" | tr '\n' ' ')}
  local trust=${TRUST-$FLEET_PUB}
  ( . "$TESTBED/nix-env.sh" "$d/client"; nix-store --init ) || { bad "h$i: nix-store --init"; return 1; }
  {
    echo "listen = \"$(hip "$i"):$NODE_PORT\""
    echo "store = \"local?root=$d/client/root\""
    [ -n "${KEYFILE:-}" ] && echo "privateKeyFile = \"$KEYFILE\""
    # shellcheck disable=SC2086
    echo "trustedPublicKeys = $(toml_list $trust)"
    echo "upstreams = [{ url = \"$(upstream_url)\", publicKeys = [\"$UPSTREAM_PUB\"] }]"
    # shellcheck disable=SC2086
    echo "peers = $(toml_list $peers)"
    # LAN discovery off unless DISCOVERY=true: the scenarios rely on exactly the PEERS they set
    echo "discovery = ${DISCOVERY:-false}"
    echo "stateDirectory = \"$d/state\""
    echo "cacheDirectory = \"$d/cache\""
    echo "cacheSize = \"1G\""
    echo "peerTimeoutMs = ${PEER_TIMEOUT_MS}"
    echo "upstreamTimeoutMs = 2000"
    [ -n "$extra" ] && printf '%s\n' "$extra"
  } > "$d/config.toml"
  rm -f "$d/run/up.env"
  "$NB" exec "$i" "$BIN/distributed-store" up --config "$d/config.toml" --runtime-dir "$d/run" > "$d/up.log" 2>&1 &
  NODE_PID[$i]=$!; PIDS+=("$!")
  for n in $(seq 300); do
    grep -q '^distributed-store is up' "$d/up.log" 2>/dev/null && return 0
    kill -0 "${NODE_PID[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  bad "h$i: distributed-store up did not come up"; sed 's/^/       /' "$d/up.log" | tail -20
  return 1
}
# start_nodes I...: start several nodes in parallel-ish (each waits for its own "is up")
start_nodes() { local i r=0; for i in "$@"; do start_node "$i" || r=1; done; return $r; }
# stop_node I: Ctrl-C (SIGINT) by PID and wait (20 s); fails if it (or a child) is left.
stop_node() {
  local i=$1 pid=${NODE_PID[$1]:-} n
  [ -z "$pid" ] && return 0
  kill -INT "$pid" 2>/dev/null
  for n in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; NODE_PID[$i]=; return 1; fi
  wait "$pid" 2>/dev/null; NODE_PID[$i]=
  for n in $(seq 30); do [ -z "$(ds_pids "$i")" ] && return 0; sleep 0.1; done
  # shellcheck disable=SC2046
  kill -9 $(ds_pids "$i") 2>/dev/null; return 1
}
# kill_node_hard I: SIGKILL every distributed-store process (and its dbus-daemon) in host I.
kill_node_hard() {
  local i=$1 p; p=$(ds_pids "$i")
  # shellcheck disable=SC2086
  [ -n "$p" ] && kill -9 $p 2>/dev/null
  [ -n "${NODE_PID[$i]:-}" ] && wait "${NODE_PID[$i]}" 2>/dev/null
  NODE_PID[$i]=; return 0
}
# nixh I CMD...: host I's Nix client (store SD/hI/client/root = what its node serves), inside
# its netns; only substituter: its own node; trusts KEYS (default: the upstream key).
# Hosts listed in NIX226_HOSTS ("3 ..."; set by a scenario) run Debian trixie's Nix 2.26 from
# the chroot dev/setup makes (tests/e2e/lib.sh nix_gen), on the same store paths.
nixh() {
  local i=$1; shift
  ( . "$TESTBED/nix-env.sh" "$(hdir "$i")/client" "$(node_url "$i")" "${KEYS-$UPSTREAM_PUB}"
    if host_nix226 "$i"; then
      NIX_CONFIG=$(sed 's/^sandbox = true$/sandbox = false/' <<<"$NIX_CONFIG") MODERN_NIX_BIND=$(dirname "$W") \
        "$NB" exec "$i" "$MODERN_NIX" run "$MODERN_NIX_DIR" "$@"
    else
      "$NB" exec "$i" "$@"
    fi )
}
host_nix226() { case " ${NIX226_HOSTS:-} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# gen_of I: "2.26" or "2.8", host I's client generation (for labels)
gen_of() { if host_nix226 "$1"; then echo 2.26; else echo 2.8; fi; }
# nixp I STATE CMD...: a plain Nix client in host I whose substituter is upstream directly.
nixp() {
  local i=$1 s=$2; shift 2
  ( . "$TESTBED/nix-env.sh" "$SD/$s" "$(upstream_url)" "$UPSTREAM_PUB"; "$NB" exec "$i" "$@" )
}
# store_of I: the physical store root of host I's client
store_of() { echo "$(hdir "$1")/client/root"; }
# has_paths I PATH...: all valid in host I's client store, and their NAR hashes verify
has_paths() { nixh "$1" nix-store --check-validity "${@:2}" && nixh "$1" nix-store --verify-path "${@:2}"; }
# hashes_match I PATH...: the client DB's NarHash of each path equals the upstream narinfo's
hashes_match() {
  local i=$1 p got want; shift
  for p in "$@"; do
    got=$(nixh "$i" nix-store -q --hash "$p") || return 1
    want=$(narinfo_field "$p" NarHash)
    [ "$got" = "$want" ] || { echo "$p: store has $got, upstream says $want"; return 1; }
  done
}
# holds_any I PATH...: true if host I's store holds (valid or as files) any of PATHs
holds_any() {
  local i=$1 p; shift
  for p in "$@"; do
    nixh "$i" nix-store --check-validity "$p" >/dev/null 2>&1 && return 0
    [ -e "$(store_of "$i")$p" ] && return 0
  done
  return 1
}
# within LIMIT_MS MS: MS <= LIMIT_MS
le() { [ "$1" -le "$2" ]; }
ratio_le() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN { exit !(a <= b * r) }'; }   # a <= b*r

# wait_converged I...: wait (up to 15 s) until the mapper of every node I lists each of its
# configured peers as "up" (so all compute the same rendezvous order); a scenario that
# starts its clients "at the same moment" measures coalescing, not start-up discovery.
wait_converged() {
  local i n want up bus
  for i in "$@"; do
    want=$(peers_of "$i" | wc -l)
    for n in $(seq 150); do
      bus=$(sed -n 's/^DBUS_SYSTEM_BUS_ADDRESS=//p' "$(hdir "$i")/run/up.env" 2>/dev/null)
      up=$(DBUS_SYSTEM_BUS_ADDRESS=$bus "$BIN/distributed-store" status 2>/dev/null | grep -c '^  peer .* up (')
      [ "$up" -ge "$want" ] && break
      sleep 0.1
    done
    [ "$up" -ge "$want" ] || { info "h$i: only $up of $want peers up after 15 s"; return 1; }
  done
}
