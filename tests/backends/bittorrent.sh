# shellcheck shell=bash
# Scenario "bittorrent" (sourced by run.sh): the `[backends.bittorrent]` backend against a real
# swarm on 127.0.0.1 (tests/backends/servers.sh bt: Debian's opentracker and three aria2 engines,
# a seeder and two leechers; no DHT, LPD or PEX). Each NAR file of the export gets a torrent
# (transmission-create, the tracker in it, its info-hash whitelisted at the tracker) seeded by
# the seeder engine; locators btih:<info-hash> come from exec-table-mapper.sh.
#   1. two client nodes, one per leecher engine, substitute the closure at the same time: both
#      verified; the seeder uploaded at least one copy of the closure's bytes;
#   2. a torrent of a corrupt copy listed first, the good one next: substitution succeeds,
#      the seeder sent the corrupt torrent (it was tried);
#   3. only corrupt torrents: clean failure, nothing stored.
# Missing aria2c/opentracker: a SKIP line naming it (a FAIL with BACKENDS_REQUIRE_SERVERS=1).

# bt_seed FILE: make FILE's torrent, whitelist its info-hash at the tracker, then seed it from
# the seeder engine (whitelisted first: an announce the tracker refuses is not retried soon);
# prints the info-hash
bt_seed() {
  local f=$1 t h
  t=$W/bt-torrents/$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f").torrent
  mkdir -p "$W/bt-torrents"
  transmission-create -o "$t" -t "$BT_TRACKER" "$f" > /dev/null 2>&1 || { echo "transmission-create $f failed" >&2; return 1; }
  h=$(python3 - "$t" <<'PY'
import hashlib, sys
raw = open(sys.argv[1], "rb").read()
def skip(i):  # end index of the bencoded value starting at i
    c = raw[i:i+1]
    if c == b"i": return raw.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while raw[i:i+1] != b"e": i = skip(i)
        return i + 1
    n = raw.index(b":", i); return n + 1 + int(raw[i:n])
k = raw.index(b"4:info") + 6
print(hashlib.sha1(raw[k:skip(k)]).hexdigest())
PY
) || return 1
  bash "$BK/servers.sh" allow "$BT_DIR" "$h" || return 1
  aria2 "$BT_SEEDER_RPC" aria2.addTorrent "[\"$(base64 -w0 < "$t")\", [], {\"dir\": \"$(dirname "$f")\", \"check-integrity\": \"true\", \"seed-ratio\": \"0.0\", \"bt-seed-unverified\": \"false\"}]" \
    > /dev/null || { echo "seeding $f failed" >&2; return 1; }
  echo "$h"
}
# aria2 RPC METHOD PARAMS_JSON: call an engine, print the result JSON
aria2() {
  curl -sf --noproxy '*' -H 'Content-Type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":\"t\",\"method\":\"$2\",\"params\":$3}" "$1" |
    python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["result"]))'
}
# seeder_uploaded: bytes the seeder engine uploaded, over all its torrents
seeder_uploaded() {
  aria2 "$BT_SEEDER_RPC" aria2.tellActive '[["uploadLength"]]' |
    python3 -c 'import json,sys; print(sum(int(t["uploadLength"]) for t in json.load(sys.stdin)))'
}
# seeder_sent HASH: the seeder uploaded bytes of torrent HASH (someone fetched it)
seeder_sent() {
  aria2 "$BT_SEEDER_RPC" aria2.tellActive '[["infoHash", "uploadLength"]]' |
    python3 -c 'import json,sys; sys.exit(0 if any(t["infoHash"] == sys.argv[1] and int(t["uploadLength"]) > 0 for t in json.load(sys.stdin)) else 1)' "$1"
}

sc_bittorrent() {
  local sd=$W/bt-servers f h bh n t
  servers_up bt "$sd" || return
  BT_DIR=$sd
  command -v transmission-create > /dev/null || { skip "transmission-create missing (apt-get install transmission-cli)"; return; }
  corrupt_copy "$EXPORT" "$W/bt-flip" flip
  # aria2 keeps only max-concurrent-downloads (default 5) torrents active, the rest wait: the
  # seeder holds 8 here, and a leecher may be handed several at once
  for n in SEEDER LEECHER1 LEECHER2; do
    aria2 "$(eval echo "\$BT_${n}_RPC")" aria2.changeGlobalOption '[{"max-concurrent-downloads": "64"}]' > /dev/null ||
      { bad "aria2 $n: changeGlobalOption"; return; }
  done
  : > "$W/bt-good.table"; : > "$W/bt-next.table"; : > "$W/bt-bad.table"
  for f in $(nar_files); do
    h=$(bt_seed "$EXPORT/$f") || { bad "seed $f"; return; }
    bh=$(bt_seed "$W/bt-flip/$f") || { bad "seed corrupt $f"; return; }
    echo "$f btih:$h" >> "$W/bt-good.table"
    printf '%s btih:%s\n%s btih:%s\n' "$f" "$bh" "$f" "$h" >> "$W/bt-next.table"
    echo "$f btih:$bh" >> "$W/bt-bad.table"
  done
  ok "every NAR file (and a corrupt copy) has a torrent seeded by the seeder engine"
  # bt_toml TABLE LEECHER: the mapper over TABLE, the backend driving that leecher engine
  bt_toml() {
    local rpc dir; rpc=$(eval echo "\$BT_${2}_RPC"); dir=$(eval echo "\$BT_${2}_DIR")
    printf '[[mappers]]\ntype = "command"\ncommand = ["%s", "%s", "%s"]\n[backends.bittorrent]\nengine = "aria2"\nrpc = "%s"\ntrackers = ["%s"]\ndownloadDirectory = "%s"\n' \
      "$BK/exec-table-mapper.sh" "$EXPORT" "$1" "$rpc" "$BT_TRACKER" "$dir"
  }

  node_up bt1 "$(bt_toml "$W/bt-good.table" LEECHER1)" || return
  local url1=$NODE_URL pid1=$NODE_PID
  node_up bt2 "$(bt_toml "$W/bt-good.table" LEECHER2)" || return
  local url2=$NODE_URL pid2=$NODE_PID p1 p2 r1 r2
  NODE_URL=$url1 subst bt1 "$APP" & p1=$!
  NODE_URL=$url2 subst bt2 "$APP" & p2=$!
  wait "$p1"; r1=$?; wait "$p2"; r2=$?
  for n in 1 2; do
    t=$([ "$n" = 1 ] && echo "$r1" || echo "$r2")
    if [ "$t" = 0 ]; then ok "leecher $n's node: nix-store -r APP (both at once)"
    else bad "leecher $n's node: nix-store -r APP (both at once)"; grep -v '^copying' "$W/bt$n/subst.log" | tail -5 | sed 's/^/       /'; fi
  done
  NODE_URL=$url1 check "leecher 1: closure valid, verified" verified bt1 $CLOSURE
  NODE_URL=$url2 check "leecher 2: closure valid, verified" verified bt2 $CLOSURE
  n=$(seeder_uploaded)
  check "the seeder uploaded at least one copy ($(mb "$n") >= $(mb "$(closure_file_bytes)"))" \
    [ "$n" -ge "$(closure_file_bytes)" ]
  down "$pid1"; down "$pid2"; NODE_PID=

  node_up bt3 "$(bt_toml "$W/bt-next.table" LEECHER1)" || return
  check_subst "corrupt torrent first, good one next: nix-store -r APP" bt3 "$APP"
  check "corrupt torrent first: closure valid, verified" verified bt3 $CLOSURE
  bh=$(awk -v f="$(narinfo_field "$BIG" URL)" '$1 == f { sub("btih:", "", $2); print $2 }' "$W/bt-bad.table")
  check "corrupt torrent first: the seeder sent it (it was tried)" seeder_sent "$bh"
  node_down

  node_up bt4 "$(bt_toml "$W/bt-bad.table" LEECHER2)" || return
  # one attempt per NAR (Nix's download-attempts, default 5): each costs a swarm round trip
  if TIMEOUT=90 subst bt4 --option download-attempts 1 "$APP"; then bad "corrupt torrents only: substitution succeeded"
  else ok "corrupt torrents only: substitution fails"; fi
  check "corrupt torrents only: no closure path in the client store" holds_none bt4 $CLOSURE
  node_down
  bash "$BK/servers.sh" stop "$sd" > /dev/null 2>&1
}
