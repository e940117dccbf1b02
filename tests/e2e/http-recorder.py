#!/usr/bin/env python3
"""A recording, fault-injecting HTTP forwarder between a Nix client and our proxy (tests only,
127.0.0.1). Every request is appended to LOG as one JSON line: client port (one per TCP
connection), method, path, request headers, status sent, start and end times (t0, t1). Faults, chosen by options:
  --break-sig        rewrite every narinfo `Sig:` so it no longer verifies (same key name,
                     well-formed base64, one character changed)
  --fail-nar N       answer the first N NAR requests of each NAR with 500
  --fail-narinfo N   answer the first N requests of each narinfo with 500
  --truncate-nar     send the first GET of each NAR with its full Content-Length but only half
                     the body, then close the connection (a dropped download)
Usage: http-recorder.py UPSTREAM_URL PORT LOG [options]"""
import http.server, json, sys, threading, time, urllib.error, urllib.request

upstream, port, log_path = sys.argv[1].rstrip("/"), int(sys.argv[2]), sys.argv[3]
opts = sys.argv[4:]
BREAK_SIG = "--break-sig" in opts
FAIL_NAR = int(opts[opts.index("--fail-nar") + 1]) if "--fail-nar" in opts else 0
FAIL_NARINFO = int(opts[opts.index("--fail-narinfo") + 1]) if "--fail-narinfo" in opts else 0
TRUNCATE = "--truncate-nar" in opts
lock = threading.Lock()
seen = {}  # NAR path -> requests so far
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def record(h, status):
    with lock, open(log_path, "a") as f:
        f.write(json.dumps({"conn": h.client_address[1], "method": h.command, "path": h.path,
                            "headers": dict(h.headers.items()), "status": status,
                            "t0": h.t0, "t1": time.monotonic()}) + "\n")


def break_sig(body):
    out = []
    for line in body.decode().split("\n"):
        if line.startswith("Sig: "):
            name, sig = line[5:].split(":", 1)
            line = f"Sig: {name}:{'B' if sig[0] != 'B' else 'C'}{sig[1:]}"
        out.append(line)
    return "\n".join(out).encode()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, head_only):
        self.t0 = time.monotonic()
        is_nar = self.path.startswith("/nar/")
        with lock:
            n = seen[self.path] = seen.get(self.path, 0) + 1
        if (is_nar and n <= FAIL_NAR) or (self.path.endswith(".narinfo") and n <= FAIL_NARINFO):
            record(self, 500)
            self.send_response(500); self.send_header("Content-Length", "0"); self.end_headers()
            return
        req = urllib.request.Request(upstream + self.path, method=self.command)
        for k in ("Range", "Accept-Encoding", "User-Agent", "Accept"):
            if self.headers.get(k):
                req.add_header(k, self.headers[k])
        try:
            r = opener.open(req, timeout=30)
        except urllib.error.HTTPError as e:
            r = e
        body = r.read() if not head_only else b""
        status = r.status if hasattr(r, "status") else r.code
        if BREAK_SIG and self.path.endswith(".narinfo") and status == 200:
            body = break_sig(body)
        self.send_response(status)
        for k, v in r.headers.items():
            if k.lower() in ("content-type", "content-range", "accept-ranges", "content-encoding"):
                self.send_header(k, v)
        length = len(body) if not head_only else int(r.headers.get("Content-Length", 0))
        self.send_header("Content-Length", str(length))
        if TRUNCATE and is_nar and n == 1 and not head_only and len(body) > 2:
            self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(body[: len(body) // 2]); self.wfile.flush()
            self.close_connection = True
            record(self, f"{status} truncated")
            return
        self.end_headers()
        if not head_only:
            self.wfile.write(body)
        record(self, status)

    def do_GET(self):
        self.answer(False)

    def do_HEAD(self):
        self.answer(True)


class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


S(("127.0.0.1", port), H).serve_forever()
