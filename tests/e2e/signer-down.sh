#!/usr/bin/env bash
# What a real Nix client does with the proxy's answer when this node's own signature is
# expected but the signer is down (issue 8, item 4): the narinfo is 503 + Retry-After, never
# an unsigned 200 that Nix would keep for 30 days.
#   - `distributed-store up` with a signing key serves a store; a path is built there after
#     start-up (Nix marks it `ultimate`: the signer would sign it) and nobody has asked for it;
#   - the signer is stopped and D-Bus activation of it is switched off (its activation file
#     moved out of up's service dir, dbus-daemon told to ReloadConfig): StartServiceByName
#     fails, so nothing brings it back behind the test's back;
#   - the client (fresh chroot store, trusting only the node's key, Nix's default
#     narinfo-cache-negative-ttl of 3600 s instead of the testbed's 0, so a remembered miss
#     would show) runs `nix-store -r` and `nix copy --from` through http-recorder.py: each
#     fails with a non-zero exit, nothing valid in its store, the narinfo GETs it made (all
#     503) are counted and timed, and its narinfo disk cache
#     (XDG_CACHE_HOME/nix/binary-cache-v*.sqlite) holds no positive entry for the path (what it
#     holds is printed);
#   - the activation file is restored and the signer started again; once the proxy answers
#     the narinfo (its signer back-off), the SAME client (same state dir, same disk cache, the
#     same negative TTL) substitutes the path at once: valid, verified, this node's signature;
#   - the control (why not a 200): another client given a 200 whose Sig: it cannot verify
#     (http-recorder.py --break-sig) refuses it and keeps it in its disk cache as a positive entry;
#     with an honest server on the same URL it still fails, from the cache, without asking.
# NIXGEN=2.8|2.26 picks the client generation (lib.sh).
. "$(dirname "$0")/lib.sh"
need_root; need_bins
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 missing (apt-get install sqlite3)"; exit 1; }
command -v busctl >/dev/null || { echo "FAIL: busctl missing (apt-get install systemd)"; exit 1; }
echo "== signer down: what real Nix $NIXGEN does with a narinfo 503"
BIG_MIB=1 fixture s || { finish; exit 1; }
PORT=$(free_port)
up node "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"" || { finish; exit 1; }
URL=$UP_DISTRIBUTED_STORE_URL BUS=$UP_DBUS_SYSTEM_BUS_ADDRESS
SVC_FILE=$W/node/run/system-services/org.distributedstore.Signer1.service
dbus() { busctl --address="$BUS" call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus "$@"; }
signer_owned() { dbus NameHasOwner s org.distributedstore.Signer1 | grep -qx 'b true'; }

# A path built in the node's store after start-up, never asked for: no signature anywhere yet.
FRESH=$( (. "$TESTBED/nix-env.sh" "$W/s/store"; nix-build "$W/s/fixture.nix" --argstr salt "fresh-$NIXGEN-$$" -A leaf --no-out-link --quiet) 2>"$W/fresh.log") \
  || { cat "$W/fresh.log"; bad "building the fresh path"; finish; exit 1; }
HASH=${FRESH:11:32}
echo "     fresh path: $FRESH"
check "the signer runs (on the bus)" signer_owned

# Stop the signer; make sure the bus cannot activate it again.
mv "$SVC_FILE" "$W/signer.service.off"
check "dbus-daemon reloads its config (activation file gone)" dbus ReloadConfig
SPID=$(dbus GetConnectionUnixProcessID s org.distributedstore.Signer1 | awk '{print $2}')
check "the signer's PID is known from the bus" [ -n "$SPID" ]
# The signer is `up`'s child (up is a subreaper; the bus double-forks what it activates), so
# this PID is one this test's `up` started.
[ -n "$SPID" ] && kill "$SPID"
gone() { local i; for i in $(seq 100); do signer_owned || return 0; sleep 0.1; done; return 1; }
check "the signer left the bus" gone
check_fails "D-Bus activation cannot bring it back" "ServiceUnknown\|not provided by any .service" \
  dbus StartServiceByName su org.distributedstore.Signer1 0
# secs_since T0: seconds (one decimal) since T0 (a `date +%s.%N`)
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
code() { curl -s -o /dev/null -w '%{http_code}' --noproxy '*' "$@"; }
check "the proxy answers the fresh narinfo 503" [ "$(code "$URL/$HASH.narinfo")" = 503 ]
check "... with Retry-After: 5" grep -qi '^retry-after: 5' <(curl -s -D - -o /dev/null --noproxy '*' "$URL/$HASH.narinfo")

# The client: only this node (through the recorder), only its key, Nix's default negative TTL.
RPORT=$(free_port)
python3 "$E2E/http-recorder.py" "$URL" "$RPORT" "$W/rec.jsonl" & PIDS+=($!)
wait_port "$RPORT" || bad "recorder did not start"
R="http://127.0.0.1:$RPORT"
NEG=(--option narinfo-cache-negative-ttl 3600)
client() { nixc client "$R" "$PUBKEY" "$@"; }
# narinfo_gets FROM_LINE: "COUNT STATUSES SPACING": GETs of the fresh narinfo logged after line FROM_LINE
narinfo_gets() {
  tail -n +"$(($1 + 1))" "$W/rec.jsonl" | python3 -c '
import json, sys
h = sys.argv[1]
rows = [json.loads(l) for l in sys.stdin if l.strip()]
rows = [r for r in rows if r["path"] == "/" + h + ".narinfo"]
st = sorted({str(r["status"]) for r in rows})
gaps = ["%.2f" % (b["t0"] - a["t0"]) for a, b in zip(rows, rows[1:])]
print(len(rows), ",".join(st) or "-", "/".join(gaps) or "-")' "$HASH"
}
lines() { if [ -f "$W/rec.jsonl" ]; then wc -l < "$W/rec.jsonl"; else echo 0; fi; }
# positive_entries: rows of the client's narinfo disk cache for the fresh path that say "present"
cache_db() { ls "$W"/client/xdg/cache/nix/binary-cache-v*.sqlite 2>/dev/null | head -1; }
positive_entries() {
  local db; db=$(cache_db); [ -n "$db" ] || { echo 0; return; }
  sqlite3 "$db" "select count(*) from NARs where hashPart = '$HASH' and present = 1;"
}
# any_entries: rows for the fresh path at all (a negative one would hide it for the negative TTL)
any_entries() {
  local db; db=$(cache_db); [ -n "$db" ] || { echo 0; return; }
  sqlite3 "$db" "select count(*) from NARs where hashPart = '$HASH';"
}
show_cache() {
  local db; db=$(cache_db)
  if [ -z "$db" ]; then echo "     client disk cache: no binary-cache-v*.sqlite written"; return; fi
  echo "     client disk cache $(basename "$db"):"
  sqlite3 -header "$db" "select c.url, n.hashPart, n.present, n.timestamp - strftime('%s','now') as age_s, n.sigs from NARs n join BinaryCaches c on c.id = n.cache where n.hashPart = '$HASH';" | sed 's/^/       /'
  sqlite3 "$db" "select 'BinaryCaches: ' || url || ' wantMassQuery=' || wantMassQuery || ' priority=' || priority from BinaryCaches;" | sed 's/^/       /'
}

# while_down LABEL CMD...: the client runs CMD while the signer is down. It must fail after
# exactly download-attempts (default 5) narinfo GETs, all answered 503 (backoff ~0.3/0.7/1.3/2.5 s;
# Retry-After is not read) — fewer would mean a 503 counted as "not here" — leaving nothing in
# the store and no entry at all in its disk cache (a negative one would hide the path for 3600 s).
while_down() {
  local label=$1 n st gaps t; shift
  local l0 t0; l0=$(lines); t0=$(date +%s.%N)
  check_not "[$label] fails while the signer is down" client "$@" "${NEG[@]}"
  t=$(secs_since "$t0"); sed 's/^/       /' "$W/last.out" | grep -v '^ *$' | tail -4
  read -r n st gaps <<<"$(narinfo_gets "$l0")"
  DOWN_GETS=$((DOWN_GETS + n))
  printf '     %s: exit non-zero after %s s; %s narinfo GETs (status %s), spacing %s s\n' "$label" "$t" "$n" "$st" "$gaps"
  check "[$label] it asked for the narinfo (>= 1 GET; not answered from its disk cache)" [ "$n" -ge 1 ]
  check "[$label] every narinfo answer it got was 503" [ "$st" = 503 ]
  check "[$label] 5 GETs (download-attempts), then it gave up" [ "$n" = 5 ]
  check_not "[$label] nothing valid in the client's store" client nix-store --check-validity "$FRESH"
  check "[$label] no positive narinfo entry in the client's disk cache" [ "$(positive_entries)" = 0 ]
  check "[$label] no negative entry either (it would hide the path for 3600 s)" [ "$(any_entries)" = 0 ]
  show_cache
}
DOWN_GETS=0
while_down "nix-store -r" nix-store -r "$FRESH"
while_down "nix copy --from" nix copy --from "$R" "$FRESH"
M503=$(curl -sf --noproxy '*' "$URL/metrics" | awk '/^distributed_store_proxy_requests_total\{/ && /route="narinfo"/ && /status="503"/ {s += $2} END {print s + 0}')
echo "     proxy /metrics: $M503 narinfo answers with status 503 in all"
check "proxy /metrics counted the 503s (>= the client's GETs)" [ "$M503" -ge "$DOWN_GETS" ]

# The signer back: activation file restored, the bus reloaded, the signer started again.
mv "$W/signer.service.off" "$SVC_FILE"
check "dbus-daemon reloads its config (activation file back)" dbus ReloadConfig
check "the signer is activated again" dbus StartServiceByName su org.distributedstore.Signer1 0
TB=$(date +%s.%N)
served() { local i; for i in $(seq 150); do [ "$(code "$URL/$HASH.narinfo")" = 200 ] && return 0; sleep 0.1; done; return 1; }
check "the proxy answers the narinfo 200 again (within its 5 s signer back-off)" served
printf '     proxy answered 200 again %s s after the signer came back (its back-off after a signer failure)\n' "$(secs_since "$TB")"

L0=$(lines); T0=$(date +%s.%N)
check "[same client] nix-store -r now substitutes the path (no TTL waited)" client nix-store -r "$FRESH" "${NEG[@]}"
T1=$(secs_since "$T0")
read -r N3 ST3 _ <<<"$(narinfo_gets "$L0")"
printf '     same client: nix-store -r succeeded in %s s; %s narinfo GETs (status %s)\n' "$T1" "$N3" "$ST3"
check "[same client] it fetched the narinfo afresh (status 200)" [ "$ST3" = 200 ]
check "[same client] the path is valid" client nix-store --check-validity "$FRESH"
check "[same client] nix-store --verify-path" client nix-store --verify-path "$FRESH"
check "[same client] signed with this node's key" grep -q -- "${PUBKEY%%:*}:" <(client nix path-info --sigs "$FRESH")
check "[same client] its disk cache now has the positive entry" [ "$(positive_entries)" = 1 ]
show_cache
# The control: what a 200 the client cannot verify would have cost. A second client goes through a
# forwarder that breaks the Sig: (key name kept: what an unsigned/wrongly signed answer looks like
# to it); then the forwarder is replaced by an honest one on the SAME URL (Nix keys its disk cache
# by URL): that client still fails, from its cache, without asking, for narinfo-ttl-positive.
CPORT=$(free_port)
python3 "$E2E/http-recorder.py" "$URL" "$CPORT" "$W/control-bad.jsonl" --break-sig & CPID=$!; PIDS+=("$CPID")
wait_port "$CPORT" || bad "control forwarder did not start"
C="http://127.0.0.1:$CPORT"
check_fails "[control] a narinfo 200 with a broken Sig: is refused" 'not signed by any of the keys' \
  nixc control "$C" "$PUBKEY" nix-store -r "$FRESH" "${NEG[@]}"
kill "$CPID"; wait "$CPID" 2>/dev/null
# reaped: drop it from the clean-up list, whose PID may now be someone else's
for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" = "$CPID" ] && unset 'PIDS[i]'; done
python3 "$E2E/http-recorder.py" "$URL" "$CPORT" "$W/control-good.jsonl" & PIDS+=($!)
wait_port "$CPORT" || bad "honest forwarder did not start on the control's port"
control_cached() { sqlite3 "$(ls "$W"/control/xdg/cache/nix/binary-cache-v*.sqlite | head -1)" \
  "select count(*) from NARs where hashPart = '$HASH' and present = 1;"; }
check "[control] the refused 200 sits in that client's disk cache as a positive entry" [ "$(control_cached)" = 1 ]
check_fails "[control] with the honest server on the same URL that client still fails (cached answer)" \
  'not signed by any of the keys' nixc control "$C" "$PUBKEY" nix-store -r "$FRESH" "${NEG[@]}"
asked_control() { cat "$W/control-good.jsonl" 2>/dev/null | grep -c "\"/$HASH.narinfo\""; }
check "[control] ... without asking the server for the narinfo" [ "$(asked_control)" = 0 ]
check "up stops cleanly" down "$UP_PID"
finish
