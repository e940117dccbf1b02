# shellcheck shell=bash
# Backend test helpers (source me), on top of tests/e2e/lib.sh ($W, $BIN, $TESTBED, nixc,
# free_port, wait_port, nix_gen, modern_nix_missing, the cleanup trap).
#
# The shape of every scenario: a fixture closure is exported to a plain directory
# (`nix copy --to file://DIR`, zstd, signed with the fixture key); some real server serves it
# through ONE backend (an external program, HTTP mirrors, kubo, S3, BitTorrent); a client node
# (`distributed-store up`) whose config has NO upstreams, NO peers and discovery = false (so that
# backend is its only way to the NARs) serves a fresh chroot store to a real Nix client, which
# substitutes the closure through it. Then: every path valid and `--verify-path` clean in the
# client store, its NarHash the exported one, and the server's own counters or log show that
# it served the bytes.
#
# Every check appends to $W/tally, so checks made in scenario subshells count too; `finish`
# prints exactly one "N passed, N failed" line.
BK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../e2e/lib.sh
. "$BK/../e2e/lib.sh"
FLEET_DIR=$BK/../fleet
: > "$W/tally"
SCENARIO=${SCENARIO:-}

ok()  { echo "  ok   [nix $NIXGEN] ${SCENARIO:+$SCENARIO: }$*"; echo ok >> "$W/tally"; }
bad() { echo "  FAIL [nix $NIXGEN] ${SCENARIO:+$SCENARIO: }$*"; echo FAIL >> "$W/tally"; }
info() { echo "  ..   $*"; }
skip() { echo "  SKIP ${SCENARIO:+$SCENARIO: }$*"; }
finish() {
  local p f
  p=$(grep -c '^ok$' "$W/tally"); f=$(grep -c '^FAIL$' "$W/tally")
  echo "$p passed, $f failed"
  [ "$f" = 0 ]
}
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
# kill_tree PID: PID and its descendants (by PID)
kill_tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done; kill "$1" 2>/dev/null; }
# bg CMD...: start CMD in the background, remember its PID (stopped by the cleanup trap); BG_PID
bg() { "$@" & BG_PID=$!; PIDS+=("$BG_PID"); }
# stop_pid PID: TERM, wait (5 s), KILL
stop_pid() {
  local n; kill "$1" 2>/dev/null
  for n in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; return 0
}

# ---- the fixture ----------------------------------------------------------------------------
# fixture_build: tests/testbed/make-fixture.sh (leaf <- lib <- app -> big, BIG_MIB=12 MiB of
# random bytes; key.sec/key.pub) into FX/build, then its closure exported with
# `nix copy --to file://FX/export?compression=zstd&secret-key=key.sec`: the binary-cache
# directory every backend serves its own way. BACKENDS_FIXTURE_DIR=DIR reuses DIR when complete
# (FX/ok), else builds there. Sets FX, EXPORT, CLOSURE (4 paths), APP BIG LIB LEAF PUBKEY WRONG_PUBKEY.
fixture_build() {
  FX=${BACKENDS_FIXTURE_DIR:-$W/fx}
  if [ ! -f "$FX/ok" ]; then
    local t0; t0=$(now_ms)
    mkdir -p "$FX"; rm -rf "$FX/export"
    if ! { SALT=backends-v1 timeout 300 "$TESTBED/make-fixture.sh" "$FX/build" &&
           ( . "$FX/build/paths.env"; . "$TESTBED/nix-env.sh" "$FX/build/store"
             timeout 300 nix copy --to "file://$FX/export?compression=zstd&secret-key=$KEY_SEC" "$APP" ); } \
         > "$W/fixture.log" 2>&1; then
      bad "fixture build (make-fixture.sh, nix copy --to file://)"; tail -30 "$W/fixture.log" | sed 's/^/       /'; return 1
    fi
    touch "$FX/ok"
    info "fixture built in $(secs $(($(now_ms) - t0))) s"
  fi
  # shellcheck disable=SC1091
  . "$FX/build/paths.env"
  EXPORT=$FX/export
  CLOSURE="$LEAF $LIB $BIG $APP"
}
hash_of() { local b; b=$(basename "$1"); echo "${b%%-*}"; }   # hash_of STORE_PATH -> hash part
# narinfo_field STORE_PATH FIELD: from the export
narinfo_field() { sed -n "s/^$2: //p" "$EXPORT/$(hash_of "$1").narinfo"; }
# closure_file_bytes: sum of the FileSize of the closure's NAR files in the export
closure_file_bytes() { local p s=0; for p in $CLOSURE; do s=$((s + $(narinfo_field "$p" FileSize))); done; echo "$s"; }
# nar_files: the export's NAR file names (nar/xxx.nar.zst), one per closure path
nar_files() { local p; for p in $CLOSURE; do narinfo_field "$p" URL; done; }

# ---- the client node --------------------------------------------------------------------------
# node_up NAME EXTRA_TOML: `distributed-store up` serving the fresh chroot store W/NAME/client/root,
# trusting only the fixture key, with NO upstreams, NO peers, discovery off; EXTRA_TOML adds the
# mappers and the backend under test; UPSTREAMS=TOML_LIST (one call) adds upstreams, for the
# fallback variants only (PEERS=TOML_LIST likewise, for the benchmark). Sets NODE_URL and NODE_PID (stopped by the cleanup trap).
node_up() { node_config "$@" && node_start "$1"; }
# node_config NAME EXTRA_TOML: only write W/NAME/config.toml (and init the client store); sets NODE_URL
node_config() {
  local name=$1 extra=${2:-} d=$W/$1 port
  mkdir -p "$d/state" "$d/cache"
  ( . "$TESTBED/nix-env.sh" "$d/client"; nix-store --init ) || { bad "$name: nix-store --init"; return 1; }
  port=$(free_port)
  cat > "$d/config.toml" <<TOML
listen = "127.0.0.1:$port"
store = "local?root=$d/client/root"
trustedPublicKeys = ["$PUBKEY"]
upstreams = ${UPSTREAMS:-[]}
peers = ${PEERS:-[]}
discovery = false
stateDirectory = "$d/state"
cacheDirectory = "$d/cache"
cacheSize = "1G"
upstreamTimeoutMs = 2000
$extra
TOML
  NODE_URL=http://127.0.0.1:$port
}
# node_start NAME: `distributed-store up` with W/NAME/config.toml; sets NODE_PID
node_start() {
  local name=$1 d=$W/$1 n
  rm -f "$d/run/up.env"
  "$BIN/distributed-store" up --config "$d/config.toml" --runtime-dir "$d/run" > "$d/up.log" 2>&1 &
  NODE_PID=$!; PIDS+=("$NODE_PID")
  NODE_URL=http://$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$d/config.toml")
  for n in $(seq 300); do
    grep -q '^distributed-store is up' "$d/up.log" 2>/dev/null && return 0
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.1
  done
  bad "$name: distributed-store up did not come up"; sed 's/^/       /' "$d/up.log" | tail -20
  return 1
}
# node_down: Ctrl-C the node (by PID), wait up to 20 s
node_down() { [ -n "${NODE_PID:-}" ] && down "$NODE_PID"; NODE_PID=; return 0; }
# cnix NAME CMD...: the Nix client ($NIXGEN) of node NAME: store W/NAME/client, only substituter
# the node, trusts only the fixture key.
cnix() { local name=$1; shift; nixc "$name/client" "$NODE_URL" "$PUBKEY" "$@"; }
# subst NAME PATH...: `nix-store -r` (120 s at most); log in W/NAME/subst.log
subst() { local name=$1; shift; cnix "$name" timeout "${TIMEOUT:-120}" nix-store -r "$@" > "$W/$name/subst.log" 2>&1; }
# check_subst LABEL NAME PATH...: substitution succeeds (else its log and the node's)
check_subst() {
  local label=$1 name=$2 t0; shift 2; t0=$(now_ms)
  if subst "$name" "$@"; then ok "$label ($(secs $(($(now_ms) - t0))) s)"
  else bad "$label"; grep -v '^copying path' "$W/$name/subst.log" | tail -8 | sed 's/^/       /'
    tail -15 "$W/$name/up.log" | sed 's/^/       up.log: /'; fi
}
# verified NAME PATH...: valid, `nix-store --verify-path` clean, NarHash = the export's
verified() {
  local name=$1 p got want; shift
  cnix "$name" nix-store --check-validity "$@" || return 1
  cnix "$name" nix-store --verify-path "$@" || return 1
  for p in "$@"; do
    got=$(cnix "$name" nix-store -q --hash "$p") || return 1
    want=$(narinfo_field "$p" NarHash)
    [ "$got" = "$want" ] || { echo "$p: store has $got, export says $want"; return 1; }
  done
}
# holds_none NAME PATH...: none of PATHs valid nor present as files in the client store
holds_none() {
  local name=$1 p; shift
  for p in "$@"; do
    cnix "$name" nix-store --check-validity "$p" >/dev/null 2>&1 && { echo "$p is valid"; return 1; }
    [ -e "$W/$name/client/root$p" ] && { echo "$p exists on disk"; return 1; }
  done
  return 0
}
# check_isolated NAME: the node has no way to the closure but the backend under test; call it
# on a node WITHOUT the backend: the client cannot substitute, and nothing is stored.
check_isolated() {
  local name=$1
  if TIMEOUT=60 subst "$name" "$APP"; then bad "$name: substituted without any backend (the node is not isolated)"
  else ok "$name: without the backend the closure cannot be had (no upstream, no peer)"; fi
  check "$name: nothing stored" holds_none "$name" $CLOSURE
}

# ---- servers ----------------------------------------------------------------------------------
# http_cache DIR [RATE]: tests/fleet/upstream.py serving DIR on 127.0.0.1 (byte counters at
# /_stats); sets HTTP_URL, HTTP_PID.
http_cache() {
  local port n; port=$(free_port)
  python3 "$FLEET_DIR/upstream.py" "$1" 127.0.0.1 "$port" --rate "${2:-0}" --delay-ms 0 > "$W/http-$port.log" 2>&1 &
  HTTP_PID=$!; PIDS+=("$HTTP_PID"); HTTP_URL=http://127.0.0.1:$port
  for n in $(seq 100); do
    curl -sf --noproxy '*' -o /dev/null "$HTTP_URL/_stats" && return 0
    kill -0 "$HTTP_PID" 2>/dev/null || break; sleep 0.1
  done
  bad "upstream.py on $1 did not come up"; cat "$W/http-$port.log"; return 1
}
# http_stat URL PYEXPR(d): a value from that server's /_stats
http_stat() { curl -sf --noproxy '*' "$1/_stats" | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)"; }
# served_all URL: that server sent every NAR file of the closure, whole
served_all() {
  local url=$1 f want got
  for f in $(nar_files); do
    want=$(stat -c %s "$EXPORT/$f")
    got=$(http_stat "$url" "d['files'].get('$f', 0)")
    [ "$got" -ge "$want" ] || { echo "$url sent $got of $want bytes of $f"; return 1; }
  done
}
# corrupt_copy SRC DST MODE: a copy of the export whose NAR files are damaged:
#   flip     one byte in the middle of each NAR file flipped (same size)
#   truncate each NAR file cut at half
corrupt_copy() {
  local src=$1 dst=$2 mode=$3 f n
  rm -rf "$dst"; cp -a "$src" "$dst"
  for f in "$dst"/nar/*; do
    n=$(stat -c %s "$f")
    case $mode in
      flip) python3 - "$f" "$((n / 2))" <<'PY'
import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0xFF]))
PY
      ;;
      truncate) truncate -s $((n / 2)) "$f" ;;
    esac
  done
}
# servers_up KIND DIR: tests/backends/servers.sh KIND DIR (kubo nodes, a torrent swarm); its PIDs
# join ours; sources DIR/env. A missing server binary (status 3) is a SKIP line naming it, a FAIL
# with BACKENDS_REQUIRE_SERVERS=1.
servers_up() {
  local kind=$1 dir=$2 rc
  bash "$BK/servers.sh" "$kind" "$dir" > "$dir.log" 2>&1; rc=$?
  [ -f "$dir/pids" ] && mapfile -t -O "${#PIDS[@]}" PIDS < "$dir/pids"
  if [ "$rc" = 3 ]; then
    if [ "${BACKENDS_REQUIRE_SERVERS:-0}" = 1 ]; then bad "server missing: $(tail -1 "$dir.log")"
    else skip "server missing: $(tail -1 "$dir.log") (tests/backends/install.sh installs it)"; fi
    return 1
  elif [ "$rc" != 0 ]; then bad "servers.sh $kind failed"; tail -10 "$dir.log" | sed 's/^/       /'; return 1; fi
  # shellcheck disable=SC1091
  . "$dir/env"
}
