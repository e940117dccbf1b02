#!/usr/bin/env python3
"""upstream.py DIR ADDR PORT [--rate BYTES_PER_S] [--delay-ms MS]

A signed static Nix binary cache (a directory made by
`nix copy --to 'file://DIR?secret-key=K&compression=zstd'`) standing in for
cache.nixos.org behind a WAN link:

  - GET/HEAD of files under DIR, HTTP/1.1 keep-alive, single `Range:
    bytes=a-b | a- | -n` (206, 416 when unsatisfiable);
  - one GLOBAL token bucket shared by all connections (--rate bytes/s,
    0 = unlimited; bodies are written in pieces of at most 64 KiB);
  - --delay-ms before answering each request (WAN latency);
  - counters of body bytes actually sent: total, per file name, per client
    IP, plus request counts; `GET /_stats` (JSON) and `POST /_reset`
    (neither is delayed nor rate limited nor counted).

Client disconnects are ignored. "Upstream down" = kill this process.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


class Bucket:
    """Global token bucket: reserve(n) blocks until n bytes may be sent."""

    def __init__(self, rate, burst=CHUNK):
        self.rate = float(rate)
        self.burst = burst
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def reserve(self, n):
        if self.rate <= 0:
            return
        with self.lock:
            now = time.monotonic()
            # allow at most `burst` bytes of credit to accumulate while idle
            start = max(self.next, now - self.burst / self.rate)
            self.next = start + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.total = 0
            self.files = {}
            self.clients = {}
            self.requests = 0
            self.requests_by_kind = {}
            self.statuses = {}
            self.since = time.time()

    def request(self, kind, status):
        with self.lock:
            self.requests += 1
            self.requests_by_kind[kind] = self.requests_by_kind.get(kind, 0) + 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def sent(self, name, client, n):
        with self.lock:
            self.total += n
            self.files[name] = self.files.get(name, 0) + n
            self.clients[client] = self.clients.get(client, 0) + n

    def json(self):
        with self.lock:
            return json.dumps({
                "total": self.total,
                "files": self.files,
                "clients": self.clients,
                "requests": self.requests,
                "requests_by_kind": self.requests_by_kind,
                "statuses": self.statuses,
                "seconds": round(time.time() - self.since, 3),
            }, sort_keys=True)


def kind_of(name):
    if name.endswith(".narinfo"):
        return "narinfo"
    if name.startswith("nar/"):
        return "nar"
    return "other"


def ctype(name):
    if name.endswith(".narinfo"):
        return "text/x-nix-narinfo"
    if name == "nix-cache-info":
        return "text/x-nix-cache-info"
    if name.startswith("nar/"):
        return "application/x-nix-nar"
    return "application/octet-stream"


def parse_range(h, size):
    """-> (start, end_inclusive) | None (ignore header) | 'bad' (416)."""
    if not h or not h.startswith("bytes="):
        return None
    spec = h[6:].strip()
    if "," in spec:
        return None  # multiple ranges: serve the whole file
    a, _, b = spec.partition("-")
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return "bad"
            return (max(0, size - n), size - 1) if size else "bad"
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "bad"
    return (start, min(end, size - 1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleet-upstream/1"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))

    def _simple(self, status, body=b"", ctype_="text/plain", head=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype_)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if urlsplit(self.path).path == "/_reset":
            self.server.stats.reset()
            return self._simple(200, b"reset\n")
        self._simple(405, b"method not allowed\n")

    def do_PUT(self):
        self.do_POST()

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head):
        path = unquote(urlsplit(self.path).path)
        if path == "/_stats":
            return self._simple(200, self.server.stats.json().encode() + b"\n", "application/json", head)
        name = path.lstrip("/")
        kind = kind_of(name)
        if self.server.delay > 0:
            time.sleep(self.server.delay)
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            self.server.stats.request(kind, 404)
            return self._simple(404, b"not found\n", head=head)
        full = os.path.join(self.server.root, *parts)
        try:
            f = open(full, "rb")
            size = os.fstat(f.fileno()).st_size
        except OSError:
            self.server.stats.request(kind, 404)
            return self._simple(404, b"not found\n", head=head)
        with f:
            rng = parse_range(self.headers.get("Range"), size)
            if rng == "bad":
                self.server.stats.request(kind, 416)
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if rng is None:
                start, end, status = 0, size - 1, 200
            else:
                (start, end), status = rng, 206
            length = end - start + 1 if size else 0
            self.server.stats.request(kind, status)
            self.send_response(status)
            self.send_header("Content-Type", ctype(name))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.end_headers()
            if head:
                return
            f.seek(start)
            left = length
            client = self.client_address[0]
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    break  # file shrank: close the connection, the client sees a short body
                self.server.bucket.reserve(len(data))
                self.wfile.write(data)  # raises on disconnect: handled by the server
                self.server.stats.sent(name, client, len(data))
                left -= len(data)
            if left > 0:
                self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=0, help="global bytes/s (0: unlimited)")
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    srv = Server((a.addr, a.port), Handler)
    srv.root = os.path.abspath(a.dir)
    srv.bucket = Bucket(a.rate)
    srv.stats = Stats()
    srv.delay = a.delay_ms / 1000.0
    srv.verbose = a.verbose
    print("upstream: serving %s on http://%s:%d rate=%s B/s delay=%s ms" % (srv.root, a.addr, a.port, a.rate, a.delay_ms), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
