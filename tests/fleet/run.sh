#!/usr/bin/env bash
# tests/fleet/run.sh [--selftest] [SCENARIO...]   (root; KEEP=1 keeps the work dir)
#
# Multi-host fleet tests: 4 simulated hosts (network namespaces), each running
# `distributed-store up` and a daemonless Nix client whose only substituter is its own
# node; an upstream cache (upstream.py: signed, zstd, global rate limit, WAN delay,
# egress counters) in host 5; hostile peers in host 6. Scenarios (default: all, in order):
#   staggered      hosts 1..4 one after the other: everyone has the closure, egress <= 1.05x;
#                  host 3's client is Nix 2.26 (chroot from dev/setup; 2.8 with a SKIP line if missing)
#   together       hosts 1..4 at the same moment: egress <= 1.05x; vs 4 plain clients: faster
#   fleet-key      host2 builds a path, its node signs it: host3 (trusts fleet key) gets it, host4 refuses
#   hostile        every hostile-peer.py MODE as a peer: substitution still succeeds, nothing bad stored
#   upstream-down  upstream killed: host2 gets the closure from host1; unknown path fails fast
#   peer-killed    host1's node SIGKILLed while serving a 56 MiB NAR to host2: host2 still gets it
#   blackhole      a peer that drops packets costs at most peerTimeoutMs (+ tolerance)
#   leader-dies    all 4 together, the node fetching upstream is killed: others finish, egress <= 2x
#   discovery      no static peers, mDNS on: h2 finds h1 (source mdns) and gets the closure from it;
#                  with discovery off a node has no 5353/udp socket; a stopped node is dropped
# --selftest validates the harness itself (no distributed-store needed): fixture, upstream.py
# (rate limit, Range, counters), 4 plain Nix clients through the netns hosts, every hostile mode.
# Env: DS_BIN (binaries dir), FLEET_FIXTURE_DIR (reuse a built fixture), UP_RATE (bytes/s,
# default 50e6), UP_DELAY_MS (20), PEER_TIMEOUT_MS (250), FLEET_TOL_MS (1500), FLEET_STAGGER_S (1).
# Last line: "N passed, N failed"; exit status 0 iff no check failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
ALL=(staggered together fleet-key hostile upstream-down peer-killed blackhole leader-dies discovery slow-lead)
MODES=(honest wrong-bytes other-nar truncated bad-sig unknown-key other-narinfo drip endless blackhole)
SELFTEST=0; SCEN=()
for a in "$@"; do case $a in --selftest) SELFTEST=1 ;; -h|--help) sed -n '2,/^# Last line/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; *) SCEN+=("$a") ;; esac; done
[ "$SELFTEST" = 0 ] && [ ${#SCEN[@]} = 0 ] && SCEN=("${ALL[@]}")
for s in "${SCEN[@]}"; do case " ${ALL[*]} " in *" $s "*) ;; *) echo "unknown scenario: $s (one of: ${ALL[*]})"; exit 2 ;; esac; done

# kill_tree PID: PID and its descendants (by PID)
kill_tree() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done; kill "$1" 2>/dev/null; }
# run_scenario NAME LIMIT_S FUNC: FUNC in a subshell with its own dir SD, fresh upstream; bounded
# by LIMIT_S; afterwards everything inside our hosts is stopped and SD removed.
run_scenario() {
  local name=$1 limit=$2 fn=$3 pid n t0 i
  SD=$W/$name; mkdir -p "$SD"; chmod 755 "$SD"
  echo "== $name"
  t0=$(now_ms)
  ( start_upstream || exit 1; "$fn" ) &
  pid=$!
  for n in $(seq $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then bad "$name: did not finish within $limit s"; kill_tree "$pid"; fi
  wait "$pid" 2>/dev/null
  for i in $(seq 1 "$SPARE"); do kill_host "$i"; done
  info "$name took $(secs $(($(now_ms) - t0))) s"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$SD"
}

# timed VAR CMD...: run CMD, store its wall time (ms) in VAR; returns CMD's status
timed() { local __v=$1 __t0 __r; shift; __t0=$(now_ms); "$@"; __r=$?; printf -v "$__v" '%s' $(($(now_ms) - __t0)); return $__r; }
# subst I PATH... [with TIMEOUT env, default 120]: host I's client realises PATHs; log in SD/hI/subst.log
subst() { local i=$1; shift; nixh "$i" timeout "${TIMEOUT:-120}" nix-store -r "$@" > "$(hdir "$i")/subst.log" 2>&1; }
subst_log() { sed 's/^/       /' "$(hdir "$1")/subst.log" | grep -v "^       copying path" | tail -"${2:-10}"; }
check_subst() { # check_subst LABEL I PATH...
  local label=$1 i=$2; shift 2
  if subst "$i" "$@"; then ok "$label"; else bad "$label"; subst_log "$i"; sed 's/^/       up.log: /' "$(hdir "$i")/up.log" | tail -15; fi
}
egress_check() { # egress_check LABEL MAX_RATIO: 0.95 x one copy <= upstream egress <= MAX_RATIO x one copy
  local e one=$CLOSURE_BYTES; e=$(egress)
  if ratio_le "$e" "$one" "$2" && ! ratio_le "$e" "$one" 0.95; then ok "$1: egress $(mb "$e") within [0.95, $2] x one copy $(mb "$one")"
  else bad "$1: egress $(mb "$e") not within [0.95, $2] x one copy $(mb "$one")"; fi
}

# ===================================== scenarios =====================================
# hop_status I PATH HOP: HTTP status of host I's node for PATH's narinfo, asked as a peer
# (X-Distributed-Store-Hop: HOP; empty HOP: as a client)
hop_status() {
  local h=${2#/nix/store/}; h=${h%%-*}
  hcurl "$1" -o /dev/null -w '%{http_code}' ${3:+-H "X-Distributed-Store-Hop: $3"} "$(node_url "$1")/$h.narinfo"
}

sc_staggered() {
  local why
  if why=$(modern_nix_missing); then info "SKIP [nix 2.26] h3 runs Nix 2.8: $why"; else NIX226_HOSTS=3; fi
  start_nodes 1 2 3 4 || return
  # No relaying: a node answers a peer only from what it holds or fetches; a lead
  # request (this node fetches for the fleet) and a client may use upstream.
  check "h2 answers a peer 404 for a path only upstream has (no relay)" [ "$(hop_status 2 "$ROOT_PATH" peer)" = 404 ]
  check "h2 answers a client 200 for it (upstream through the mapper)" [ "$(hop_status 2 "$ROOT_PATH")" = 200 ]
  check "h3 answers a lead request 200 for it (its upstream)" [ "$(hop_status 3 "$ROOT_PATH" lead)" = 200 ]
  check "h4 answers a peer 404 for it (nothing held, nothing fetched)" [ "$(hop_status 4 "$ROOT_PATH" peer)" = 404 ]
  egress_reset
  local i t
  for i in 1 2 3 4; do
    if timed t subst "$i" "$ROOT_PATH"; then ok "h$i [nix $(gen_of "$i")]: nix-store -r ROOT ($NCLOSURE paths) in $(secs "$t") s, egress so far $(mb "$(egress)")"
    else bad "h$i [nix $(gen_of "$i")]: nix-store -r ROOT"; subst_log "$i"; fi
    check "h$i [nix $(gen_of "$i")]: whole closure valid, nix-store --verify-path passes" has_paths "$i" $CLOSURE
    sleep "${FLEET_STAGGER_S:-1}"
  done
  egress_check "staggered" 1.05
  for i in 1 2 3 4; do check "h$i: Ctrl-C stops the node cleanly" stop_node "$i"; done
}

sc_together() {
  start_nodes 1 2 3 4 || return
  check "all 4 nodes see each other" wait_converged 1 2 3 4
  egress_reset
  local i t0 tf tp ef ep r
  declare -a P=()
  t0=$(now_ms)
  for i in 1 2 3 4; do subst "$i" "$ROOT_PATH" & P[$i]=$!; done
  for i in 1 2 3 4; do wait "${P[$i]}"; r=$?
    if [ "$r" = 0 ]; then ok "h$i: nix-store -r ROOT (all 4 at once)"; else bad "h$i: nix-store -r ROOT (all 4 at once)"; subst_log "$i"; fi
  done
  tf=$(($(now_ms) - t0)); ef=$(egress)
  for i in 1 2 3 4; do check "h$i: whole closure valid and verified" has_paths "$i" $CLOSURE; done
  egress_check "together" 1.05
  for i in 1 2 3 4; do stop_node "$i"; done
  # the same with 4 plain Nix clients straight from upstream, at the same moment
  egress_reset
  t0=$(now_ms)
  for i in 1 2 3 4; do nixp "$i" "plain$i" timeout 300 nix-store -r "$ROOT_PATH" > "$SD/plain$i.log" 2>&1 & P[$i]=$!; done
  for i in 1 2 3 4; do wait "${P[$i]}" || { bad "plain client h$i failed"; tail -5 "$SD/plain$i.log"; }; done
  tp=$(($(now_ms) - t0)); ep=$(egress)
  info "fleet: $(secs "$tf") s, egress $(mb "$ef");  plain: $(secs "$tp") s, egress $(mb "$ep");  one copy $(mb "$CLOSURE_BYTES")"
  check "fleet wall time $(secs "$tf") s < plain wall time $(secs "$tp") s" le "$tf" "$((tp - 1))"
}

sc_fleet_key() {
  KEYFILE=$FLEET_SEC start_node 2 || return
  start_node 3 || return
  TRUST="" start_node 4 || return
  start_node 1 || return
  cat > "$SD/fleetpath.nix" <<NIX
derivation {
  name = "fleet-built"; salt = "$TB_NS-$(date +%s%N)";
  system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "mkdir -p \$out; echo built on host2 > \$out/msg; head -c 300000 /dev/urandom > \$out/data" ];
}
NIX
  local fp h n r
  fp=$(nixh 2 timeout 120 nix-build "$SD/fleetpath.nix" --no-out-link --quiet 2> "$SD/build.log") || { bad "h2 builds the fleet path"; tail "$SD/build.log"; return; }
  ok "h2 built $fp in its own store"
  h=$(basename "$fp"); h=${h%%-*}
  check "h2's node signs the path it built with the fleet key" \
    grep -q '^Sig: fleet-1:' <(hcurl 3 -H 'X-Distributed-Store-Hop: peer' "$(node_url 2)/$h.narinfo")
  # host3 trusts the fleet key (node and client): may need an announce round to learn of it
  r=1
  local end=$((SECONDS + 15)); n=0
  while [ "$SECONDS" -lt "$end" ]; do n=$((n + 1)); KEYS="$UPSTREAM_PUB $FLEET_PUB" TIMEOUT=30 subst 3 "$fp" && { r=0; break; }; sleep 1; done
  if [ "$r" = 0 ]; then ok "h3 substitutes the fleet path through its node (attempt $n)"; else bad "h3 substitutes the fleet path"; subst_log 3; fi
  check "h3: fleet path valid and verified" has_paths 3 "$fp"
  check "h3: built-on-host2 content" grep -qx 'built on host2' "$(store_of 3)$fp/msg"
  # host4: node does not trust the fleet key; client trusts only upstream
  if KEYS="$UPSTREAM_PUB" TIMEOUT=30 subst 4 "$fp"; then bad "h4 (untrusting) substituted the fleet path"
  elif grep -qE "not signed by any of the keys|lacks a valid signature|don't know how to build|does not exist|not valid|no substitute" "$(hdir 4)/subst.log"; then ok "h4 refuses the fleet path cleanly"
  else bad "h4 failed, but not cleanly:"; subst_log 4; fi
  # even a client that would trust the key gets nothing through a node that does not
  if KEYS="$UPSTREAM_PUB $FLEET_PUB" TIMEOUT=30 subst 4 "$fp"; then bad "h4's node relayed a narinfo signed by a key it does not trust"
  else ok "h4's node does not relay a peer narinfo signed by a key it does not trust"; fi
  check_not "h4's store does not hold the fleet path" holds_any 4 "$fp"
  # host2 signs only what it built: a substituted upstream path gets no fleet signature
  local small; small=$(head -1 "$FX/closure")
  if subst 2 "$small"; then
    h=$(basename "$small"); h=${h%%-*}
    check_not "h2 does not sign a path it substituted from upstream with the fleet key" \
      grep -q '^Sig: fleet-1:' <(hcurl 3 -H 'X-Distributed-Store-Hop: peer' "$(node_url 2)/$h.narinfo")
  else bad "h2 substitutes an upstream path"; subst_log 2; fi
}

# the paths scenario "hostile" realises: the largest closure path and two small ones, with references
hostile_set() {
  local big small
  big=$(for p in $CLOSURE; do echo "$(narinfo_field "$p" NarSize) $p"; done | grep -v bench-root | sort -n | tail -1 | cut -d' ' -f2)
  small=$(grep -v bench-root "$FX/closure" | head -2 | tr '\n' ' ')
  echo "$big $small"
}
sc_hostile() {
  local mode t e ip sdroot=$SD req all valid want bytes p
  ip=$(hip "$SPARE")
  # shellcheck disable=SC2046
  req=$(hostile_set)
  # shellcheck disable=SC2086
  all=$(NIX_REMOTE="local?root=$FIXTURE_STORE" NIX_CONFIG="build-users-group =" nix-store -qR $req 2>/dev/null | sort)
  bytes=0; for p in $all; do bytes=$((bytes + $(path_file_size "$p"))); done
  info "hostile: realising $(echo "$all" | wc -l) paths ($(mb "$bytes") from upstream) per mode"
  for mode in "${MODES[@]}"; do
    SD=$sdroot/$mode; mkdir -p "$SD"
    "$NB" exec "$SPARE" python3 "$FLEET/hostile-peer.py" "$mode" "$CACHE_DIR" "$ip" "$HOSTILE_PORT" "$UNKNOWN_DIR" > "$SD/hostile.log" 2>&1 &
    local hp=$!
    sleep 0.5
    PEERS="http://$ip:$HOSTILE_PORT" start_node 1 || { kill "$hp"; continue; }
    sleep 0.5  # one announce round
    egress_reset
    # shellcheck disable=SC2086
    if TIMEOUT=60 timed t subst 1 $req; then
      ok "[$mode] substitution succeeds in $(secs "$t") s (bound 60 s)"
    else bad "[$mode] substitution failed or took > 60 s ($(secs "$t") s)"; subst_log 1; sed 's/^/       up.log: /' "$(hdir 1)/up.log" | tail -10; fi
    # shellcheck disable=SC2086
    check "[$mode] nix-store --verify-path passes" has_paths 1 $all
    # shellcheck disable=SC2086
    check "[$mode] stored NAR hashes are upstream's" hashes_match 1 $all
    valid=$(nixh 1 nix path-info --all 2>/dev/null | sort)
    check "[$mode] the store holds exactly the requested closure, nothing else" [ "$valid" = "$all" ]
    e=$(stat_get 'sum(v for k, v in d["files"].items() if k.startswith("nar/"))')
    if [ "$mode" = honest ]; then
      check "[honest] NARs came from the peer (upstream NAR egress $(mb "$e") < 10% of $(mb "$bytes"))" ratio_le "$e" "$bytes" 0.1
    else info "[$mode] upstream NAR egress $(mb "$e")"; fi
    check "[$mode] node stops cleanly" stop_node 1
    kill "$hp" 2>/dev/null; wait "$hp" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] || rm -rf "$SD"
  done
  SD=$sdroot
}

fake_path() { python3 -c 'import random; print("/nix/store/" + "".join(random.choice("0123456789abcdfghijklmnpqrsvwxyz") for _ in range(32)) + "-nobody-holds-this")'; }
sc_upstream_down() {
  start_nodes 1 2 || return
  check_subst "h1: nix-store -r ROOT from upstream" 1 "$ROOT_PATH"
  stop_upstream
  check_not "upstream is down" hcurl 1 -f --max-time 2 -o /dev/null "$(upstream_url)/nix-cache-info"
  local t fp
  if timed t subst 2 "$ROOT_PATH"; then ok "h2: nix-store -r ROOT with upstream down, from h1, in $(secs "$t") s"
  else bad "h2: nix-store -r ROOT with upstream down"; subst_log 2; fi
  check "h2: whole closure valid and verified" has_paths 2 $CLOSURE
  fp=$(fake_path)
  if TIMEOUT=30 timed t subst 2 "$fp"; then
    bad "a path nobody holds was 'substituted'"
  else check "a path nobody holds fails fast: $(secs "$t") s < 10 s" le "$t" 10000; fi
}

big_ok() { has_paths 2 "$BIG_PATH" && hashes_match 2 "$BIG_PATH"; }
# tx_bytes I: bytes host I sent on eth0 (netlink, no sysfs mount: `ip netns exec`'s remount of
# /sys can fail under load, which once read as "0 bytes sent")
tx_bytes() { ip -n "$TB_NS-h$1" -s link show dev eth0 | awk '/TX:/ { getline; print $1; exit }'; }
# A NAR that takes longer than the proxy's keep-alive delay (20 s) to reach a follower: h1
# fetches BIG over a 2 MB/s uplink, h2 and h3 follow it (their proxies give Nix only verified
# bytes, so their responses start with zstd keep-alive frames). Both Nix generations decode
# them (h3 runs 2.26 where the chroot exists); the uplink carries BIG once.
sc_slow_lead() {
  local why p1 p2 p3 i
  if why=$(modern_nix_missing); then info "SKIP [nix 2.26] h3 runs Nix 2.8: $why"; else NIX226_HOSTS=3; fi
  stop_upstream; start_upstream 2000000 "$UP_DELAY_MS" || return
  PEERS="$(node_url 2) $(node_url 3)" start_node 1 || return
  PEERS="$(node_url 1) $(node_url 3)" start_node 2 || return
  PEERS="$(node_url 1) $(node_url 2)" start_node 3 || return
  sleep 2  # a poll round: every node sees the others
  egress_reset
  TIMEOUT=110 subst 1 "$BIG_PATH" & p1=$!
  sleep 2  # h1's fetch is under way and announced as in flight
  TIMEOUT=110 subst 2 "$BIG_PATH" & p2=$!
  TIMEOUT=110 subst 3 "$BIG_PATH" & p3=$!
  for i in 1 2 3; do
    local -n pid="p$i"
    if wait "$pid"; then ok "h$i [nix $(gen_of "$i")]: BIG ($(mb "$BIG_BYTES")) over a 2 MB/s uplink"; else bad "h$i: BIG over a 2 MB/s uplink"; subst_log "$i"; fi
  done
  for i in 2 3; do
    check "h$i: BIG valid and verified" has_paths "$i" "$BIG_PATH"
    check "h$i: its proxy kept the transfer alive while BIG was not yet verified" \
      grep -q "keeping the transfer alive" "$(hdir "$i")/up.log"
  done
  local e; e=$(egress)
  if ratio_le "$e" "$BIG_BYTES" 1.05; then ok "slow-lead: egress $(mb "$e") <= 1.05 x BIG"; else bad "slow-lead: egress $(mb "$e") > 1.05 x BIG"; fi
}

sc_peer_killed() {
  # h2 starts after h1 got BIG: were both up, rendezvous hashing could make h2 the node
  # that fetches BIG from upstream for h1, and h2 would then serve it from its own cache.
  start_node 1 || return
  check_subst "h1: nix-store -r BIG ($(mb "$BIG_BYTES")) from upstream" 1 "$BIG_PATH"
  start_node 2 || return
  sleep 1  # one announce round
  # slow host1's link so that the kill lands mid-transfer (~10 MB/s)
  inh 1 tc qdisc add dev eth0 root tbf rate 80mbit burst 64kb latency 100ms 2>/dev/null || info "tc unavailable: host1's link not slowed"
  egress_reset
  local tx0 tx n sz pid killed=0
  sz=$(narinfo_field "$BIG_PATH" NarSize)
  tx0=$(tx_bytes 1)
  [ -n "$tx0" ] || { bad "reading h1's eth0 counters"; return; }
  subst 2 "$BIG_PATH" & pid=$!
  for n in $(seq 400); do
    tx=$(( $(tx_bytes 1) - tx0 ))
    if [ "$tx" -ge $((sz / 5)) ]; then kill_node_hard 1; killed=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ "$killed" = 1 ] && [ "$tx" -lt "$sz" ]; then ok "h1 killed (SIGKILL) after sending $(mb "$tx") of $(mb "$sz") to h2"
  else bad "h1 was not killed mid-transfer (h1 sent $(mb "$tx") of $(mb "$sz"))"; fi
  if wait "$pid"; then ok "h2 still gets BIG"; else bad "h2 still gets BIG"; subst_log 2; fi
  check "h2: BIG valid, verified, NAR hash is upstream's" big_ok
  info "upstream egress after the kill: $(mb "$(egress)") (BIG is $(mb "$BIG_BYTES") compressed)"
}

sc_blackhole() {
  local t0 t1 tol=${FLEET_TOL_MS:-1500} base=$SD bh=10.77.0.99 r
  SD=$base/a; PEERS="" start_node 1 || return
  if timed t0 subst 1 "$ROOT_PATH"; then ok "h1 without peers: ROOT in $(secs "$t0") s"; else bad "h1 without peers: ROOT"; subst_log 1; SD=$base; return; fi
  stop_node 1
  # a peer address whose packets vanish: a static neighbour entry to a MAC nobody has
  inh 1 ip neigh replace "$bh" lladdr 02:00:00:00:00:99 dev eth0 nud permanent
  hcurl 1 --max-time 1 -o /dev/null "http://$bh:$NODE_PORT/nix-cache-info"; r=$?
  check "the blackholed peer address swallows a connection attempt (curl rc $r = 28)" [ "$r" = 28 ]
  SD=$base/b; PEERS="http://$bh:$NODE_PORT" start_node 1 || { SD=$base; return; }
  if timed t1 subst 1 "$ROOT_PATH"; then ok "h1 with a blackholed peer: ROOT in $(secs "$t1") s"; else bad "h1 with a blackholed peer: ROOT"; subst_log 1; fi
  check "h1: closure verified" has_paths 1 $CLOSURE
  local lim=$((t0 + PEER_TIMEOUT_MS + tol + t0 * 15 / 100))
  check "blackholed peer costs $(( t1 - t0 )) ms <= peerTimeoutMs $PEER_TIMEOUT_MS + tolerance (limit $(secs "$lim") s)" le "$t1" "$lim"
  SD=$base
}

sc_leader_dies() {
  stop_upstream; start_upstream 30000000 "$UP_DELAY_MS" || return   # 30 MB/s: ~3 s for the closure
  start_nodes 1 2 3 4 || return
  check "all 4 nodes see each other" wait_converged 1 2 3 4
  egress_reset
  local i n leader=0 e r
  declare -a P=()
  for i in 1 2 3 4; do subst "$i" "$ROOT_PATH" & P[$i]=$!; done
  local end=$((SECONDS + 30)) alive
  while [ "$SECONDS" -lt "$end" ]; do
    e=$(egress)
    if [ "$e" -ge $((CLOSURE_BYTES / 4)) ]; then leader=$(top_client); break; fi
    alive=0; for i in 1 2 3 4; do kill -0 "${P[$i]}" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.05
  done
  if [ "$leader" -ge 1 ] && [ "$leader" -le 4 ]; then
    ok "leader (most upstream bytes at $(mb "$e")): h$leader; killed (SIGKILL)"
    kill_node_hard "$leader"
  else bad "no leader found (egress $(mb "${e:-0}"))"; fi
  for i in 1 2 3 4; do
    wait "${P[$i]}"; r=$?
    [ "$i" = "$leader" ] && { info "h$i (killed leader) client exit status $r"; continue; }
    if [ "$r" = 0 ]; then ok "h$i finishes after the leader died"; else bad "h$i finishes after the leader died"; subst_log "$i"; fi
    check "h$i: closure verified" has_paths "$i" $CLOSURE
  done
  egress_check "leader-dies" 2
}

# status_of I: `distributed-store status` of host I's node (its bus from up.env)
status_of() {
  local bus; bus=$(sed -n 's/^DBUS_SYSTEM_BUS_ADDRESS=//p' "$(hdir "$1")/run/up.env" 2>/dev/null)
  DBUS_SYSTEM_BUS_ADDRESS=$bus "$BIN/distributed-store" status 2>&1
}
# mdns_sockets I: UDP sockets on port 5353 inside host I (only our node runs there)
mdns_sockets() { inh "$1" ss -H -uapn 'sport = :5353'; }
# wait_for T CMD...: retry CMD every 0.2 s for up to T seconds
wait_for() { local t=$1 n; shift; for n in $(seq $((t * 5))); do "$@" && return 0; sleep 0.2; done; return 1; }
sees_by_mdns() { status_of "$1" | grep -q "^  peer  *$(node_url "$2") up (mdns,"; }
lists_peer() { status_of "$1" | grep -q "^  peer  *$(node_url "$2") "; }
sc_discovery() {
  local base=$SD t e
  # discovery off (the harness default): nothing listens on or sends to 5353/udp
  SD=$base/off; PEERS="" start_node 1 || { SD=$base; return; }
  sleep 1
  check "discovery off: no 5353/udp socket in h1 ($(mdns_sockets 1 | wc -l) found)" [ -z "$(mdns_sockets 1)" ]
  check "discovery off: h1 lists no peers" grep -q '^  peers  *(none)' <(status_of 1)
  stop_node 1
  # discovery on, no static peers at all
  SD=$base/on
  DISCOVERY=true PEERS="" start_node 1 || { SD=$base; return; }
  DISCOVERY=true PEERS="" start_node 2 || { SD=$base; return; }
  check "discovery on: h1's mapper has a 5353/udp socket" grep -q 'distributed-sto' <(mdns_sockets 1)
  check_subst "h1: nix-store -r ROOT from upstream (no static peers)" 1 "$ROOT_PATH"
  if timed t wait_for 20 sees_by_mdns 2 1; then ok "h2 lists h1 as a peer from mdns, up, after $(secs "$t") s"
  else bad "h2 lists h1 as a peer from mdns"; status_of 2 | sed 's/^/       /'; fi
  check_not "h2 does not list itself" lists_peer 2 2
  check "h1 lists h2 from mdns" wait_for 10 sees_by_mdns 1 2
  sleep 1   # one announce round after h1's substitution
  egress_reset
  check_subst "h2: nix-store -r ROOT through h1 (found by mDNS)" 2 "$ROOT_PATH"
  check "h2: whole closure valid and verified" has_paths 2 $CLOSURE
  e=$(egress)
  check "upstream egress while h2 substituted: $(mb "$e") (<= 2% of one copy, $(mb "$CLOSURE_BYTES"))" ratio_le "$e" "$CLOSURE_BYTES" 0.02
  # h1 stops (unregisters): h2 drops it
  check "h1: Ctrl-C stops the node cleanly" stop_node 1
  if timed t wait_for 30 eval '! lists_peer 2 1'; then ok "h2 drops the stopped h1 after $(secs "$t") s"
  else bad "h2 still lists the stopped h1"; status_of 2 | sed 's/^/       /'; fi
  check "h2: Ctrl-C stops the node cleanly" stop_node 2
  SD=$base
}

# ===================================== selftest =====================================
selftest() {
  SD=$W/selftest; mkdir -p "$SD"
  echo "== selftest: fixture"
  local nar_total=0 p
  for p in $CLOSURE; do nar_total=$((nar_total + $(narinfo_field "$p" NarSize))); done
  check "fixture: $NCLOSURE paths (>= 51 incl. root)" [ "$NCLOSURE" -ge 51 ]
  check "fixture: closure NARs $(mb "$nar_total") >= 100 MB (one upstream copy = $(mb "$CLOSURE_BYTES") zstd)" [ "$nar_total" -ge 100000000 ]
  check "fixture: BIG $(mb "$(narinfo_field "$BIG_PATH" NarSize)") NAR >= 50 MB" [ "$(narinfo_field "$BIG_PATH" NarSize)" -ge 50000000 ]
  check "fixture: export is signed by upstream-1, zstd" grep -q '^Sig: upstream-1:' "$CACHE_DIR/$(basename "${ROOT_PATH%%-*}").narinfo"

  echo "== selftest: upstream.py"
  start_upstream 10000000 20 || return
  local url f t r out sz
  url=$(upstream_url)
  f=nar/$(narinfo_field "$BIG_PATH" URL | sed 's|^nar/||')
  sz=$(stat -c %s "$CACHE_DIR/$f")
  egress_reset
  timed t hcurl 1 -f -r 0-20971519 -o "$SD/part" -w '%{http_code}' "$url/$f" > "$SD/code"
  check "Range bytes=0-20971519 -> 206" grep -qx 206 "$SD/code"
  check "20 MiB at 10 MB/s took $(secs "$t") s (expected ~2.1 s)" bash -c "[ $t -ge 1700 ] && [ $t -le 3000 ]"
  check "ranged bytes equal the file's" cmp "$SD/part" <(head -c 20971520 "$CACHE_DIR/$f")
  check "counters: total = 20971520" [ "$(egress)" = 20971520 ]
  check "counters: per file" [ "$(stat_get "d['files']['$f']")" = 20971520 ]
  check "counters: per client IP (10.77.0.11)" [ "$(stat_get "d['clients']['10.77.0.11']")" = 20971520 ]
  check "Range bytes=N- -> the tail" cmp <(hcurl 2 -f -r "$((sz - 1000))-" "$url/$f") <(tail -c 1000 "$CACHE_DIR/$f")
  check "Range bytes=-N (suffix)" cmp <(hcurl 2 -f -r "-777" "$url/$f") <(tail -c 777 "$CACHE_DIR/$f")
  check "unsatisfiable Range -> 416 with Content-Range */size" \
    grep -q "Content-Range: bytes \*/$sz" <(hcurl 2 -D - -o /dev/null -r "$((sz + 5))-" "$url/$f" | tr -d '\r')
  check "HEAD: Content-Length = file size" [ "$(hcurl 2 -I "$url/$f" | tr -d '\r' | sed -n 's/^Content-Length: //p')" = "$sz" ]
  check "missing file -> 404" grep -qx 404 <(hcurl 2 -o /dev/null -w '%{http_code}' "$url/nope.narinfo")
  check "traversal -> 404" grep -qx 404 <(hcurl 2 --path-as-is -o /dev/null -w '%{http_code}' "$url/../../etc/passwd")
  timed t hcurl 2 -f -o /dev/null "$url/nix-cache-info"
  check "per-request delay: nix-cache-info took $t ms >= 20 ms" [ "$t" -ge 20 ]
  egress_reset
  two_parallel() { local a b; hcurl 1 -f -r 0-9999999 -o /dev/null "$url/$f" & a=$!; hcurl 2 -f -r 0-9999999 -o /dev/null "$url/$f" & b=$!; wait "$a"; wait "$b"; }
  timed t two_parallel
  check "rate limit is global: 2 x 10 MB in parallel took $(secs "$t") s (expected ~2 s)" bash -c "[ $t -ge 1700 ] && [ $t -le 3000 ]"
  hcurl 3 --max-time 0.5 -o /dev/null "$url/$f"   # a client that goes away mid-body
  check "survives a client disconnecting mid-body" hcurl 3 -f -o /dev/null "$url/nix-cache-info"
  egress_reset
  check "POST /_reset zeroes the counters" [ "$(egress)" = 0 ]
  stop_upstream

  echo "== selftest: 4 plain Nix clients in 4 hosts, at the same moment, from upstream"
  start_upstream || return
  egress_reset
  declare -a P=()
  local i t0 e
  t0=$(now_ms)
  for i in 1 2 3 4; do nixp "$i" "plain$i" timeout 300 nix-store -r "$ROOT_PATH" > "$SD/plain$i.log" 2>&1 & P[$i]=$!; done
  for i in 1 2 3 4; do if wait "${P[$i]}"; then ok "plain h$i: nix-store -r ROOT"; else bad "plain h$i: nix-store -r ROOT"; tail -5 "$SD/plain$i.log"; fi; done
  t=$(($(now_ms) - t0)); e=$(egress)
  for i in 1 2 3 4; do
    check "plain h$i: closure valid and verified" nixp "$i" "plain$i" nix-store --verify-path $CLOSURE
  done
  info "4 plain clients: $(secs "$t") s, egress $(mb "$e") = $(awk -v a="$e" -v b="$CLOSURE_BYTES" 'BEGIN{printf "%.3f", a/b}') x one copy ($(mb "$CLOSURE_BYTES"))"
  check "egress ~ 4 x closure (3.95..4.2)" bash -c "awk -v a=$e -v b=$CLOSURE_BYTES 'BEGIN{r=a/b; exit !(r>=3.95 && r<=4.2)}'"
  rm -rf "$SD"/plain*

  echo "== selftest: hostile peers (curl from host 1 to host $SPARE)"
  local ip purl h nh other real mode code hp narurl n
  ip=$(hip "$SPARE"); purl=http://$ip:$HOSTILE_PORT
  p=$(grep -v bench-root "$FX/closure" | sed -n 5p)   # a test path
  h=$(basename "$p"); h=${h%%-*}
  nh=$(narinfo_field "$p" NarHash); nh=${nh#sha256:}
  narurl=$purl/nar/$h-$nh.nar
  zstd -dcq "$CACHE_DIR/$(narinfo_field "$p" URL)" > "$SD/real.nar"
  n=$(narinfo_field "$p" NarSize)
  local H=(-H 'X-Distributed-Store-Hop: peer')
  for mode in "${MODES[@]}"; do
    "$NB" exec "$SPARE" python3 "$FLEET/hostile-peer.py" "$mode" "$CACHE_DIR" "$ip" "$HOSTILE_PORT" "$UNKNOWN_DIR" > "$SD/hostile-$mode.log" 2>&1 &
    hp=$!
    for i in $(seq 50); do inh 1 python3 -c "import socket; socket.create_connection(('$ip', $HOSTILE_PORT), 0.2)" 2>/dev/null && break; sleep 0.1; done
    rm -f "$SD/ni" "$SD/nar"
    case $mode in
      honest)
        check "[honest] announce: full, every path of the cache" python3 -c "
import json, os, sys; d = json.loads(sys.stdin.read())
want = sorted(n[:-8] for n in os.listdir('$CACHE_DIR') if n.endswith('.narinfo'))
assert d['full'] is True and d['added'] == want and isinstance(d['version'], int) and isinstance(d['epoch'], str), d
" < <(hcurl 1 -f "$purl/_ds/v1/announce?epoch=&since=0")
        hcurl 1 -f "${H[@]}" "$purl/$h.narinfo" > "$SD/ni"
        check "[honest] narinfo: URL nar/<hash>-<narhash>.nar, Compression: none, no FileHash/FileSize, upstream Sig" bash -c "
          grep -qx 'URL: nar/$h-$nh.nar' $SD/ni && grep -qx 'Compression: none' $SD/ni && ! grep -q '^File' $SD/ni &&
          [ \"\$(grep ^Sig: $SD/ni)\" = \"\$(grep ^Sig: $CACHE_DIR/$h.narinfo)\" ]"
        hcurl 1 -f "${H[@]}" -o "$SD/nar" "$narurl"
        check "[honest] NAR = the real uncompressed NAR ($(mb "$n"))" cmp "$SD/nar" "$SD/real.nar"
        code=$(hcurl 1 -r 1000- -o "$SD/tail" -w '%{http_code}' "$narurl")
        check "[honest] Range bytes=1000- -> 206 ($code) and the tail" bash -c "[ $code = 206 ] && cmp $SD/tail <(tail -c +1001 $SD/real.nar)"
        check "[honest] 404 for an unknown narinfo" grep -qx 404 <(hcurl 1 -o /dev/null -w '%{http_code}' "$purl/00000000000000000000000000000000.narinfo")
        ;;
      wrong-bytes)
        hcurl 1 -f "${H[@]}" -o "$SD/nar" "$narurl"
        check "[wrong-bytes] NAR has the right length ($n)" [ "$(stat -c %s "$SD/nar")" = "$n" ]
        check_not "[wrong-bytes] ... and different bytes" cmp -s "$SD/nar" "$SD/real.nar" ;;
      other-nar)
        hcurl 1 -f "${H[@]}" -o "$SD/nar" "$narurl"
        check_not "[other-nar] NAR is not this path's" cmp -s "$SD/nar" "$SD/real.nar"
        check "[other-nar] ... but a real NAR (of another path)" bash -c "head -c 24 $SD/nar | grep -aq nix-archive-1" ;;
      truncated)
        hcurl 1 "${H[@]}" -o "$SD/nar" "$narurl"; r=$?
        check "[truncated] curl reports a partial body (rc $r = 18), got $(stat -c %s "$SD/nar") of $n" \
          bash -c "[ $r = 18 ] && [ \$(stat -c %s $SD/nar) -lt $n ]" ;;
      bad-sig)
        hcurl 1 -f "${H[@]}" "$purl/$h.narinfo" > "$SD/ni"
        check "[bad-sig] Sig: upstream-1: but not the upstream signature" bash -c "
          grep -q '^Sig: upstream-1:' $SD/ni && [ \"\$(grep ^Sig: $SD/ni)\" != \"\$(grep ^Sig: $CACHE_DIR/$h.narinfo)\" ]" ;;
      unknown-key)
        hcurl 1 -f "${H[@]}" "$purl/$h.narinfo" > "$SD/ni"
        check "[unknown-key] only Sig: stranger-1:" bash -c "grep -q '^Sig: stranger-1:' $SD/ni && ! grep -q '^Sig: upstream-1:' $SD/ni" ;;
      other-narinfo)
        hcurl 1 -f "${H[@]}" "$purl/$h.narinfo" > "$SD/ni"
        check "[other-narinfo] StorePath is another path's" bash -c "grep -q '^StorePath: /nix/store/' $SD/ni && ! grep -qx 'StorePath: $p' $SD/ni" ;;
      drip)
        out=$(hcurl 1 "${H[@]}" --max-time 3 -o "$SD/ni" -w '%{http_code} %{size_download}' "$purl/$h.narinfo"); r=$?
        check "[drip] narinfo: 200, <= 2 bytes in 3 s, curl times out (rc $r, '$out')" bash -c "[ $r = 28 ] && [ ${out#* } -le 2 ]"
        out=$(hcurl 1 "${H[@]}" --max-time 3 -o "$SD/nar" -w '%{http_code} %{size_download}' "$narurl"); r=$?
        check "[drip] NAR: <= 2 bytes in 3 s (rc $r, '$out')" bash -c "[ $r = 28 ] && [ ${out#* } -le 2 ]" ;;
      endless)
        out=$(hcurl 1 "${H[@]}" --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' "$purl/$h.narinfo"); r=$?
        check "[endless] narinfo: 200 and > 1 MB of body in 2 s, never ends (rc $r, '$out')" bash -c "[ $r = 28 ] && [ ${out%% *} = 200 ] && [ ${out#* } -gt 1000000 ]"
        check "[endless] body is References: lines" grep -q '^References: ' <(hcurl 1 --max-time 1 "$purl/$h.narinfo" | head -c 100000 | sed -n 2p) ;;
      blackhole)
        out=$(hcurl 1 --max-time 2 -o /dev/null -w '%{time_connect} %{size_download}' "$purl/nix-cache-info"); r=$?
        check "[blackhole] TCP connects, then nothing in 2 s (rc $r, connect/bytes '$out')" bash -c "[ $r = 28 ] && [ ${out#* } = 0 ] && awk -v c=${out%% *} 'BEGIN{exit !(c > 0)}'"
        out=$(hcurl 1 --max-time 2 -o /dev/null -w '%{size_download}' "$purl/_ds/v1/announce"); r=$?
        check "[blackhole] announce hangs too (rc $r)" [ "$r" = 28 ] ;;
    esac
    check "[$mode] the hostile peer is still alive" kill -0 "$hp"
    kill "$hp" 2>/dev/null; wait "$hp" 2>/dev/null
  done
  stop_upstream
}

# ===================================== main =====================================
echo "== fleet: fixture and hosts (TB_NS=$TB_NS, work dir $W)"
fixture_build || { finish; exit 1; }
info "closure: $ROOT_PATH, $NCLOSURE paths, one copy = $(mb "$CLOSURE_BYTES") (zstd); BIG $(mb "$BIG_BYTES")"
fleet_up 4 || { finish; exit 1; }
if [ "$SELFTEST" = 1 ]; then
  ( selftest )
  kill_host "$UHOST"; kill_host "$SPARE"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W/selftest"
fi
if [ ${#SCEN[@]} -gt 0 ]; then
  need_bins
  # a private copy: a concurrent `cargo build` cannot swap the binaries mid-run
  mkdir -p "$W/bin"; cp -p "$BIN"/distributed-store* "$W/bin/" 2>/dev/null; rm -f "$W"/bin/*.d; BIN=$W/bin
  info "binaries: $(date -r "$BIN/distributed-store" '+%F %T') $(ls "$BIN" | tr '\n' ' ')"
  for s in "${SCEN[@]}"; do
    case $s in
      staggered) run_scenario staggered 150 sc_staggered ;;
      together) run_scenario together 150 sc_together ;;
      fleet-key) run_scenario fleet-key 120 sc_fleet_key ;;
      hostile) run_scenario hostile 300 sc_hostile ;;
      upstream-down) run_scenario upstream-down 90 sc_upstream_down ;;
      peer-killed) run_scenario peer-killed 90 sc_peer_killed ;;
      blackhole) run_scenario blackhole 90 sc_blackhole ;;
      leader-dies) run_scenario leader-dies 120 sc_leader_dies ;;
      discovery) run_scenario discovery 120 sc_discovery ;;
      slow-lead) run_scenario slow-lead 120 sc_slow_lead ;;
    esac
  done
fi
finish
