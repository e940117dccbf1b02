#!/usr/bin/env bash
# Malformed and hostile requests: bad hashes, traversal (plain and
# percent-encoded), wrong methods, oversized headers and URLs, garbage bytes,
# 1,000 concurrent connections, idle (slowloris) connections. Each gets a 4xx or
# is shed; afterwards the proxy is alive and still answers correctly.
. "$(dirname "$0")/lib.sh"
need_root; need_bins
echo "== hostile requests"
BIG_MIB=1 fixture h || { finish; exit 1; }
PORT=$(free_port)
up node "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
maxConnections = 256" || { finish; exit 1; }
URL=$UP_DISTRIBUTED_STORE_URL
H=${APP:11:32}
code() { curl -s --noproxy '*' --path-as-is -o /dev/null -w '%{http_code}' "$@"; }
expect_code() { # expect_code WANT LABEL CURL_ARGS...
  local want=$1 label=$2; shift 2; local got; got=$(code "$@")
  if [ "$got" = "$want" ]; then ok "$label -> $got"; else bad "$label -> $got (want $want)"; fi
}
expect_code 200 "valid narinfo" "$URL/$H.narinfo"
expect_code 404 "unknown hash" "$URL/00000000000000000000000000000000.narinfo"
expect_code 400 "31-char hash" "$URL/${H:1}.narinfo"
expect_code 400 "bad alphabet (e, o, u, t)" "$URL/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo"
expect_code 400 "upper case hash" "$URL/${H^^}.narinfo"
expect_code 400 "traversal ../" "$URL/nar/../../../../etc/passwd"
expect_code 400 "encoded traversal %2e%2e%2f" "$URL/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd"
expect_code 400 "encoded slash in a narinfo name" "$URL/$H%2F.narinfo"
expect_code 400 "double slash" "$URL//$H.narinfo"
expect_code 400 "NAR name without nar hash" "$URL/nar/$H.nar"
expect_code 404 "NAR with a wrong nar hash" "$URL/nar/$H-0000000000000000000000000000000000000000000000000000.nar"
expect_code 404 "build logs are not served" "$URL/log/$H-foo.drv"
expect_code 405 "PUT (read-only cache)" -X PUT --data x "$URL/$H.narinfo"
expect_code 405 "DELETE" -X DELETE "$URL/$H.narinfo"
expect_code 400 "2 KB URL" "$URL/$(head -c 2000 /dev/zero | tr '\0' a).narinfo"
got=$(code -H "X-Big: $(head -c 20000 /dev/zero | tr '\0' a)" "$URL/nix-cache-info")
case $got in 431|400|000) ok "20 KB header rejected ($got)";; *) bad "20 KB header -> $got";; esac
got=$(code -r 0-99 "$URL/nix-cache-info"); [ "$got" = 200 ] && ok "Range on a small document ignored" || bad "range on cache-info -> $got"

# Raw-socket abuse, 1,000 concurrent connections and slowloris, bounded in time.
python3 - "$PORT" "$H" > "$W/abuse.log" 2>&1 <<'PY'
import asyncio, sys, time
port, h = int(sys.argv[1]), sys.argv[2]
async def req(raw, timeout=30):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        w.write(raw); await w.drain()
        data = await asyncio.wait_for(r.read(200), timeout)
        w.close()
        return data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else ("closed" if not data else "garbage")
    except (asyncio.TimeoutError, ConnectionError, OSError) as e:
        return type(e).__name__
async def main():
    fails = 0
    def expect(label, got, allowed):
        nonlocal fails
        ok = got in allowed
        fails += not ok
        print(("ok   " if ok else "FAIL ") + f"{label}: {got}")
    expect("binary garbage", await req(b"\x00\xff\x13\x37" * 64 + b"\r\n\r\n"), {"400", "closed"})
    expect("HTTP/0.9-style request", await req(b"GET /\r\n\r\n"), {"400", "closed", "404"})
    expect("header without colon", await req(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n"), {"400", "closed"})
    expect("absurd Content-Length", await req(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"), {"400", "closed"})
    # slowloris: 200 connections that never finish their headers, held open while others are served
    idle = []
    for _ in range(200):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n"); idle.append(w)
    t = time.monotonic()
    expect("served while 200 slowloris connections are open", await req(f"GET /{h}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 10), {"200"})
    # 1,000 concurrent connections (maxConnections = 256: the rest wait in the backlog, then are served)
    kinds = [f"GET /{h}.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
             b"GET /00000000000000000000000000000000.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
             b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
             b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100]
    t = time.monotonic()
    results = await asyncio.gather(*(req(kinds[i % 4], 60) for i in range(1000)))
    dt = time.monotonic() - t
    want = [{"200"}, {"404"}, {"400"}, {"400", "closed"}]
    good = sum(r in want[i % 4] for i, r in enumerate(results))
    expect(f"1000 concurrent connections answered correctly in {dt:.1f}s", f"{good}/1000", {"1000/1000"})
    expect("1000 connections within 60 s", "yes" if dt < 60 else f"{dt:.0f}s", {"yes"})
    for w in idle: w.close()
    print(f"abuse: {fails} failed")
asyncio.run(main())
PY
while read -r line; do case $line in ok*) ok "${line#ok   }";; FAIL*) bad "${line#FAIL }";; esac; done < "$W/abuse.log"
grep -q 'abuse: 0 failed' "$W/abuse.log" || sed 's/^/       /' "$W/abuse.log" | tail -5
check "proxy still alive" kill -0 "$UP_PID"
expect_code 200 "still serves a valid narinfo afterwards" "$URL/$H.narinfo"
check "a real Nix client still substitutes afterwards" nixc client "$URL" "$PUBKEY" nix-store -r "$CA"
check "/metrics counts 400s" grep -q 'route="bad",status="400"' <(curl -sf --noproxy '*' "$URL/metrics")
check_not "no panic in logs" grep -qi panic "$W/node/up.log"
check "stops cleanly" down "$UP_PID"
finish
