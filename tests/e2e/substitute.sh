#!/usr/bin/env bash
# A real Nix client (Debian nix-bin, fresh chroot store) substitutes a closure of
# several paths (references, a 12 MiB path) from our proxy serving another chroot
# store, verifying this node's signature (from the signer over D-Bus); a wrong
# trusted key is refused. For each compression: zstd, none, xz. Then the
# trustless relay: a second node without any key re-serves what it substituted,
# with the first node's signature, to a third client that trusts only that key.
# And a relay node WITH its own key adds no signature to what it substituted
# (signPaths = "built", the default), but does with signPaths = "all".
# A narinfo whose Sig: is broken in transit (same key name, one character changed) is
# refused. NIXGEN=2.8|2.26 picks the client generation (lib.sh).
. "$(dirname "$0")/lib.sh"
need_root; need_bins
echo "== substitute: real Nix $NIXGEN clients against distributed-store up"
fixture a || { finish; exit 1; }
PORT=$(free_port)
has_sig() { nixc "$1" "" "" nix path-info --sigs "$2" | grep -q -- "$3"; }
narinfo() { curl -sf --noproxy '*' "$1/${2:11:32}.narinfo"; }
# what each generation says when no trusted signature verifies:
#   2.8 nix-store -r: "... is not signed by any of the keys in 'trusted-public-keys'"
#   2.8 nix copy: "... lacks a valid signature"; 2.26 nix copy: "... lacks a signature by a trusted key"
NOT_SIGNED='not signed by any of the keys'
COPY_NOT_SIGNED='lacks a valid signature\|lacks a signature by a trusted key'
EXPECTED=$(printf '%s\n' "$LEAF" "$LIB" "$BIG" "$APP" | sort | tr '\n' ' ')

# A bad config is refused before anything starts, naming the key.
printf 'listen = "127.0.0.1:%s"\ncompresion = "zstd"\n' "$PORT" > "$W/bad.toml"
check_fails "up refuses an unknown key, naming it" "compresion" "$BIN/distributed-store" up --config "$W/bad.toml" --runtime-dir "$W/bad-run"
check_not "nothing was started for the bad config" test -e "$W/bad-run/bus.sock"
printf 'privateKeyFile = "%s"\n' "$W/missing.sec" > "$W/bad2.toml"
check_fails "up refuses a missing privateKeyFile" "privateKeyFile" "$BIN/distributed-store" up --config "$W/bad2.toml"

for comp in zstd none xz; do
  up "node-$comp" "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"
compression = \"$comp\"" || continue
  URL=$UP_DISTRIBUTED_STORE_URL
  check "[$comp] up reports this node's public key" [ "$UP_DISTRIBUTED_STORE_PUBLIC_KEY" = "$PUBKEY" ]
  check "[$comp] narinfo advertises Compression: $comp" grep -qx "Compression: $comp" <(narinfo "$URL" "$APP")
  s=client-$comp
  check "[$comp] nix-store -r APP with the right key" nixc "$s" "$URL" "$PUBKEY" nix-store -r "$APP"
  got=$(nixc "$s" "" "" nix-store -qR "$APP" 2>/dev/null | sort | tr '\n' ' ')
  check "[$comp] whole closure (4 paths) substituted" [ "$got" = "$EXPECTED" ]
  check "[$comp] nix-store --verify-path (NAR hashes)" nixc "$s" "" "" nix-store --verify-path "$LEAF" "$LIB" "$BIG" "$APP"
  check "[$comp] 12 MiB path byte-identical" cmp "$STORE_ROOT$BIG/blob" "$W/$s/root$BIG/blob"
  check "[$comp] symlink kept as a symlink" [ "$(readlink "$W/$s/root$BIG/link")" = blob ]
  check "[$comp] signature is this node's" has_sig "$s" "$APP" "${PUBKEY%%:*}:"
  check_fails "[$comp] nix-store -r with a wrong key is refused" "$NOT_SIGNED" \
    nixc "$s-wrong" "$URL" "$WRONG_PUBKEY" nix-store -r "$APP"
  check_not "[$comp] nothing valid after the refused attempt" nixc "$s-wrong" "" "" nix-store --check-validity "$APP"
  check_fails "[$comp] nix copy --from with a wrong key is refused" "$COPY_NOT_SIGNED" \
    nixc "$s-copy-wrong" "$URL" "$WRONG_PUBKEY" nix copy --from "$URL" "$APP"
  check "[$comp] content-addressed path needs no signature" nixc "$s-ca" "$URL" "$WRONG_PUBKEY" nix-store -r "$CA"
  if [ "$comp" = zstd ]; then
    # A forwarder that breaks every narinfo signature (key name kept, one character changed).
    TPORT=$(free_port)
    python3 "$E2E/http-recorder.py" "$URL" "$TPORT" "$W/badsig.log" --break-sig & PIDS+=($!)
    wait_port "$TPORT" || bad "tampering forwarder did not start"
    T="http://127.0.0.1:$TPORT"
    sig_broken() { local a b; a=$(narinfo "$URL" "$APP" | grep '^Sig: ') && b=$(narinfo "$T" "$APP" | grep '^Sig: ') &&
      [ "${a%%:*}" = "${b%%:*}" ] && [ "$a" != "$b" ]; }
    check "[zstd] broken signature: the forwarder changed the Sig: and kept the key name" sig_broken
    check_fails "[zstd] broken signature: nix-store -r refuses it" "$NOT_SIGNED" nixc "$s-badsig" "$T" "$PUBKEY" nix-store -r "$APP"
    check_not "[zstd] broken signature: nothing valid afterwards" nixc "$s-badsig" "" "" nix-store --check-validity "$APP"
    check_fails "[zstd] broken signature: nix copy --from refuses it" "$COPY_NOT_SIGNED" \
      nixc "$s-badsig-copy" "$T" "$PUBKEY" nix copy --from "$T" "$APP"
    check "[zstd] distributed-store status shows the proxy and the signer" \
      grep -q 'signatures     [1-9]' <(DBUS_SYSTEM_BUS_ADDRESS=$UP_DBUS_SYSTEM_BUS_ADDRESS "$BIN/distributed-store" status)
  fi
  check "[$comp] up stops cleanly on Ctrl-C" down "$UP_PID"
done

# Trustless relay: node B has no key; it serves what client-zstd substituted, whose
# Nix database kept node A's signatures. Client C trusts only node A's key.
up node-b "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$W/client-zstd/root\"" && {
  check "[relay] node B (no key) re-serves A's signed closure to client C" \
    nixc client-c "$UP_DISTRIBUTED_STORE_URL" "$PUBKEY" nix-store -r "$APP"
  check "[relay] narinfo from B carries A's signature and no other" \
    [ "$(narinfo "$UP_DISTRIBUTED_STORE_URL" "$APP" | grep -c '^Sig: ds-test-1:')" = 1 ]
  check "[relay] up stops cleanly" down "$UP_PID"
}
nixc relay-key "" "" nix-store --generate-binary-cache-key ds-relay-2 "$W/relay.sec" "$W/relay.pub" || bad "relay key"
RELAY="listen = \"127.0.0.1:$PORT\"
store = \"local?root=$W/client-zstd/root\"
privateKeyFile = \"$W/relay.sec\""
up node-b-keyed "$RELAY" && {
  URL=$UP_DISTRIBUTED_STORE_URL
  for i in 1 2 3; do narinfo "$URL" "$APP" > "$W/relay-narinfo.$i"; done
  only_a_sig() { [ "$(grep -c '^Sig: ' "$1")" = 1 ] && grep -q '^Sig: ds-test-1:' "$1"; }
  check "[relay+key] narinfo carries A's signature only, not B's (not built on B)" only_a_sig "$W/relay-narinfo.1"
  check "[relay+key] the same on every request" cmp "$W/relay-narinfo.1" "$W/relay-narinfo.3"
  check "[relay+key] a client trusting only A substitutes through B" \
    nixc client-d "$URL" "$PUBKEY" nix-store -r "$APP"
  # 0 since the proxy asks the signer only about paths it would sign (signPaths = built:
  # paths built here); at most once per path otherwise (cached refusals).
  check "[relay+key] the signer is not asked per request (0 refusals, or one per path)" \
    grep -q '^t [0-4]$' <(busctl --address="$UP_DBUS_SYSTEM_BUS_ADDRESS" get-property org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1 RequestsRefused)
  check_not "[relay+key] no 'serving without this node's signature' warning" grep -q "without this node's signature" "$W/node-b-keyed/up.log"
  check "[relay+key] up stops cleanly" down "$UP_PID"
}
up node-b-all "$RELAY
signPaths = \"all\"" && {
  check "[relay+key, signPaths = all] B adds its own signature" \
    grep -q '^Sig: ds-relay-2:' <(narinfo "$UP_DISTRIBUTED_STORE_URL" "$APP")
  check "[relay+key, signPaths = all] up stops cleanly" down "$UP_PID"
}
finish
