#!/usr/bin/env bash
# NAR integrity and HTTP Range: our NAR bytes equal `nix-store --dump`; Range on
# an uncompressed NAR returns exactly the requested bytes; a store whose files
# no longer match its database (damaged or tampered) never serves a complete bad
# NAR: the transfer fails, and a real Nix client ends with nothing invalid.
. "$(dirname "$0")/lib.sh"
need_root; need_bins
echo "== NAR integrity and Range"
BIG_MIB=2 fixture i || { finish; exit 1; }
PORT=$(free_port)
up node "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"
compression = \"none\"" || { finish; exit 1; }
URL=$UP_DISTRIBUTED_STORE_URL
nar_url() { curl -sf --noproxy '*' "$URL/${1:11:32}.narinfo" | sed -n 's/^URL: //p'; }
( . "$TESTBED/nix-env.sh" "$W/i/store"; nix store dump-path "$BIG" ) > "$W/big.nar"
U=$(nar_url "$BIG")
curl -sf --noproxy '*' "$URL/$U" -o "$W/served.nar"
check "NAR bytes identical to nix store dump-path" cmp "$W/big.nar" "$W/served.nar"
check "Content-Length is NarSize" grep -qi "^content-length: $(stat -c %s "$W/big.nar")" <(curl -sfI --noproxy '*' "$URL/$U" | tr -d '\r')
range_ok() { # range_ok SPEC SKIP COUNT
  curl -sf --noproxy '*' -r "$1" "$URL/$U" -o "$W/range.bin" -w '%{http_code}' | grep -qx 206 &&
    cmp "$W/range.bin" <(tail -c +$(($2 + 1)) "$W/big.nar" | head -c "$3")
}
SIZE=$(stat -c %s "$W/big.nar")
check "Range bytes=0-99" range_ok 0-99 0 100
check "Range bytes=1000000-1065535" range_ok 1000000-1065535 1000000 65536
check "Range bytes=-100 (suffix)" range_ok -100 $((SIZE - 100)) 100
check "unsatisfiable Range -> 416" grep -qx 416 <(curl -s --noproxy '*' -r "$SIZE-" -o /dev/null -w '%{http_code}' "$URL/$U")

# Damage one byte of the served store's copy (same size): the proxy must not complete the transfer.
# The byte is flipped, not overwritten with a constant: the blob is random, so a constant equals
# the byte already there once in 256 runs, and then nothing is damaged at all.
F=$STORE_ROOT$BIG/blob
chmod u+w "$F" "$STORE_ROOT$BIG"
OLD_BYTE=$(od -An -tu1 -j12345 -N1 "$F" | tr -d ' ')
printf "\\$(printf %03o $((OLD_BYTE ^ 255)))" | dd of="$F" bs=1 seek=12345 conv=notrunc status=none
check "damaged store: the byte really changed" [ "$(od -An -tu1 -j12345 -N1 "$F" | tr -d ' ')" = $((OLD_BYTE ^ 255)) ]
check_not "damaged store: full NAR download does not complete" curl -sf --noproxy '*' "$URL/$U" -o "$W/bad.nar"
check "damaged store: at most NarSize - 1 bytes were sent" [ "$(stat -c %s "$W/bad.nar" 2>/dev/null || echo 0)" -lt "$SIZE" ]
check "damaged store: the proxy logged the mismatch" grep -q 'do not match the Nix database' "$W/node/up.log"
check_not "damaged store: nix-store -r fails" nixc c1 "$URL" "$PUBKEY" nix-store -r "$BIG"
check_not "damaged store: nothing invalid became valid" nixc c1 "" "" nix-store --check-validity "$BIG"
# Truncate it: the NAR is shorter than NarSize.
truncate -s 1000 "$F"
check_not "truncated file: download does not complete" curl -sf --noproxy '*' "$URL/$U" -o "$W/short.nar"
check_not "truncated file: nix-store -r fails" nixc c2 "$URL" "$PUBKEY" nix-store -r "$BIG"
check "the rest of the closure is still served" nixc c3 "$URL" "$PUBKEY" nix-store -r "$LIB"
check_not "no panic in logs" grep -qi panic "$W/node/up.log"
check "stops cleanly" down "$UP_PID"
finish
