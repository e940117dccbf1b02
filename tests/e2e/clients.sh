#!/usr/bin/env bash
# What the proxy sees from each Nix generation (2.8 and 2.26), through http-recorder.py in
# front of `distributed-store up` (each TCP connection of the client = one recorder port):
#   - plain substitution of the 4-path closure (nix-store -r) and `nix copy --from`:
#     requests by method and kind, connections, User-Agent, Accept-Encoding, Range;
#   - every NAR (then every narinfo) answered 500 once: does the client retry, does it succeed;
#   - the first GET of each NAR cut off at half its Content-Length: does it retry, with Range?
#     (zstd NARs: no Accept-Ranges, observed only; compression = "none": Accept-Ranges: bytes)
# Checks: each generation substitutes the closure through the recorder, and ends with the
# whole closure valid after one 500 and, for uncompressed NARs, after a cut-off download,
# resuming it with Range. The observations are printed
# (docs/testing.md records them). With NIXGEN set (dev/test), that generation only; else both
# (2.26 skipped, with the reason, if the chroot is missing). `KEEP=1` keeps the JSON logs.
ONLY_GEN=${NIXGEN:-}
. "$(dirname "$0")/lib.sh"
need_root; need_bins
echo "== what the proxy sees from Nix ${ONLY_GEN:-2.8 and 2.26}"
BIG_MIB=4 fixture o || { finish; exit 1; }
PORT=$(free_port)
up node "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"
compression = \"zstd\"" || { finish; exit 1; }
URL=$UP_DISTRIBUTED_STORE_URL ZSTD_PID=$UP_PID
PORT2=$(free_port)
up plain "listen = \"127.0.0.1:$PORT2\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"
compression = \"none\"" || { finish; exit 1; }
URL_NONE=$UP_DISTRIBUTED_STORE_URL NONE_PID=$UP_PID
EXPECTED=$(printf '%s\n' "$LEAF" "$LIB" "$BIG" "$APP" | sort | tr '\n' ' ')

# recorder NAME OPTS...: start a recorder in front of the zstd node (UPSTREAM overrides);
# sets R (its URL), log W/NAME.jsonl
recorder() {
  local name=$1 p; shift; p=$(free_port)
  python3 "$E2E/http-recorder.py" "${UPSTREAM:-$URL}" "$p" "$W/$name.jsonl" "$@" & PIDS+=($!)
  wait_port "$p" || bad "recorder $name did not start"
  R="http://127.0.0.1:$p"
}
# summary NAME: one line per fact, from the recorder's log
summary() {
  python3 - "$W/$1.jsonl" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
kind = lambda r: "nar" if r["path"].startswith("/nar/") else ("narinfo" if r["path"].endswith(".narinfo") else r["path"])
c = collections.Counter(f'{r["method"]} {kind(r)} {r["status"]}' for r in rows)
print("     requests:", ", ".join(f"{k} x{v}" for k, v in sorted(c.items())))
print("     connections:", len({r["conn"] for r in rows}))
ev = sorted([(r["t0"], 1) for r in rows] + [(r["t1"], -1) for r in rows])
cur = peak = 0
for _, d in ev:
    cur += d; peak = max(peak, cur)
print("     max requests in flight:", peak)
h = lambda k: sorted({r["headers"].get(k, "-") for r in rows})
print("     User-Agent:", h("User-Agent"))
print("     Accept-Encoding:", h("Accept-Encoding"))
print("     Accept:", h("Accept"))
rng = [f'{kind(r)} {r["headers"]["Range"]}' for r in rows if "Range" in r["headers"]]
print("     Range:", rng or "none")
print("     other headers:", sorted({k for r in rows for k in r["headers"]} - {"User-Agent", "Accept-Encoding", "Accept", "Range", "Host"}))
PY
}
closure_ok() { [ "$(nixc "$1" "" "" nix-store -qR "$APP" 2>/dev/null | sort | tr '\n' ' ')" = "$EXPECTED" ]; }

# The proxy ignores Accept-Encoding (2.26 offers zstd, br, gzip, ...): a Content-Encoding on a
# .nar.zst would make curl inflate it before Nix decompresses it again.
AE='Accept-Encoding: zstd, br, gzip, deflate, bzip2, xz'
no_ce() { ! curl -sf --noproxy '*' -D - -o /dev/null -H "$AE" "$1" | grep -qi '^content-encoding'; }
NAR_URL=$URL/$(curl -sf --noproxy '*' "$URL/${APP:11:32}.narinfo" | sed -n 's/^URL: //p')
check "no Content-Encoding on a narinfo for 2.26's Accept-Encoding" no_ce "$URL/${APP:11:32}.narinfo"
check "no Content-Encoding on a .nar.zst for 2.26's Accept-Encoding" no_ce "$NAR_URL"
if [ -n "$ONLY_GEN" ]; then gens=("$ONLY_GEN")
else
  gens=(2.8 2.26)
  if why=$(modern_nix_missing); then echo "SKIP [nix 2.26]: $why"; gens=(2.8); fi
fi
for NIXGEN in "${gens[@]}"; do
  recorder "plain-$NIXGEN"
  check "nix-store -r through the recorder" nixc "plain-$NIXGEN" "$R" "$PUBKEY" nix-store -r "$APP"
  check "whole closure valid" closure_ok "plain-$NIXGEN"
  echo "   nix-store -r of the 4-path closure (fresh narinfo cache):"; summary "plain-$NIXGEN"

  recorder "copy-$NIXGEN"
  check "nix copy --from through the recorder" nixc "copy-$NIXGEN" "$R" "$PUBKEY" nix copy --from "$R" "$APP"
  echo "   nix copy --from of the same closure:"; summary "copy-$NIXGEN"

  recorder "fail-$NIXGEN" --fail-nar 1
  nixc "fail-$NIXGEN" "$R" "$PUBKEY" nix-store -r "$APP" > "$W/fail-$NIXGEN.out" 2>&1
  check "every NAR answered 500 once: closure valid in the end" closure_ok "fail-$NIXGEN"
  echo "   every NAR answered 500 once (client said: $(grep -m1 -o 'HTTP error 500\|500[^;]*' "$W/fail-$NIXGEN.out" | head -c 120)):"
  summary "fail-$NIXGEN"

  recorder "failinfo-$NIXGEN" --fail-narinfo 1
  nixc "failinfo-$NIXGEN" "$R" "$PUBKEY" nix-store -r "$APP" > "$W/failinfo-$NIXGEN.out" 2>&1
  closure_ok "failinfo-$NIXGEN" && r=complete || r=incomplete
  echo "   every narinfo answered 500 once: closure $r:"; summary "failinfo-$NIXGEN"
  sed 's/^/     client: /' "$W/failinfo-$NIXGEN.out" | grep -i 'retry\|error\|warning' | head -3

  recorder "cut-$NIXGEN" --truncate-nar
  nixc "cut-$NIXGEN" "$R" "$PUBKEY" nix-store -r "$APP" > "$W/cut-$NIXGEN.out" 2>&1
  closure_ok "cut-$NIXGEN" && r=complete || r="incomplete (no Accept-Ranges on a compressed NAR: no resumption)"
  echo "   zstd: closure $r; first GET of each NAR cut off at half its length:"; summary "cut-$NIXGEN"
  sed 's/^/     client: /' "$W/cut-$NIXGEN.out" | grep -i 'retry\|error\|warning' | head -5

  UPSTREAM=$URL_NONE recorder "cutnone-$NIXGEN" --truncate-nar
  nixc "cutnone-$NIXGEN" "$R" "$PUBKEY" nix-store -r "$APP" > "$W/cutnone-$NIXGEN.out" 2>&1
  check "compression none, first GET of each NAR cut at half: closure valid in the end" closure_ok "cutnone-$NIXGEN"
  check "... resumed with Range" grep -q '"Range"' "$W/cutnone-$NIXGEN.jsonl"
  echo "   none: first GET of each NAR cut off at half its length:"; summary "cutnone-$NIXGEN"
  sed 's/^/     client: /' "$W/cutnone-$NIXGEN.out" | grep -i 'retry\|error\|warning' | head -5
done
check "stops cleanly (zstd node)" down "$ZSTD_PID"
check "stops cleanly (none node)" down "$NONE_PID"
finish
