#!/usr/bin/env python3
"""hostile-peer.py MODE CACHE_DIR ADDR PORT [UNKNOWN_KEY_DIR]

A deliberately broken distributed-store PEER (not our proxy). It claims, via
`GET /_ds/v1/announce` (full=true), to hold every path of CACHE_DIR (a
`nix copy --to file://...?compression=zstd` export: the upstream cache), and
serves peer-protocol narinfos derived from the upstream ones (URL rewritten to
`nar/<hash32>-<narhash32>.nar`, `Compression: none`, FileHash/FileSize
dropped) and the real, uncompressed NARs (decompressed with the zstd CLI).
Each MODE is one lie:

  honest         serves everything correctly (control)
  wrong-bytes    NAR of the right length with some bytes flipped
  other-nar      the NAR of a different path
  truncated      Content-Length of the full NAR, half of it sent, connection closed
  bad-sig        narinfo Sig: altered (same key name, signature bits flipped)
  unknown-key    narinfo Sig: replaced by the one from UNKNOWN_KEY_DIR (an export
                 of the same paths signed by a key nobody trusts)
  other-narinfo  the narinfo of a different path
  drip           narinfo and NAR: headers at once, then 1 body byte every 2 s
  endless        narinfo: 200 and an endless body of "References: ..." lines
  blackhole      accepts TCP connections and never answers (nor closes)

The request header X-Distributed-Store-Hop is accepted and ignored.
"""
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("honest", "wrong-bytes", "other-nar", "truncated", "bad-sig", "unknown-key",
         "other-narinfo", "drip", "endless", "blackhole")


def parse_narinfo(text):
    fields, sigs = [], []
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if not sep:
            continue
        if k == "Sig":
            sigs.append(v)
        else:
            fields.append((k, v))
    return fields, sigs


class Cache:
    def __init__(self, cache_dir, unknown_dir):
        self.dir = cache_dir
        self.infos = {}  # hash32 -> (fields, sigs)
        for n in sorted(os.listdir(cache_dir)):
            if n.endswith(".narinfo"):
                with open(os.path.join(cache_dir, n)) as f:
                    self.infos[n[:-8]] = parse_narinfo(f.read())
        self.hashes = sorted(self.infos)
        self.unknown = {}
        if unknown_dir:
            for h in self.hashes:
                p = os.path.join(unknown_dir, h + ".narinfo")
                if os.path.exists(p):
                    with open(p) as f:
                        self.unknown[h] = parse_narinfo(f.read())[1]
        self.lock = threading.Lock()
        self.nars = {}  # hash32 -> bytes (small LRU)
        self.order = []

    def field(self, h, key):
        for k, v in self.infos[h][0]:
            if k == key:
                return v
        return None

    def other(self, h):
        """A different path, deterministic: the next hash (wrapping)."""
        i = self.hashes.index(h)
        return self.hashes[(i + 1) % len(self.hashes)]

    def narhash32(self, h):
        return self.field(h, "NarHash").split(":", 1)[1]

    def narinfo(self, h, sigs=None):
        fields, orig_sigs = self.infos[h]
        out = []
        for k, v in fields:
            if k in ("FileHash", "FileSize"):
                continue
            if k == "URL":
                v = "nar/%s-%s.nar" % (h, self.narhash32(h))
            elif k == "Compression":
                v = "none"
            out.append("%s: %s" % (k, v))
        for s in (orig_sigs if sigs is None else sigs):
            out.append("Sig: %s" % s)
        return ("\n".join(out) + "\n").encode()

    def nar(self, h):
        with self.lock:
            if h in self.nars:
                return self.nars[h]
        url = self.field(h, "URL")
        comp = self.field(h, "Compression") or "bzip2"
        path = os.path.join(self.dir, url)
        if comp == "none":
            with open(path, "rb") as f:
                data = f.read()
        elif comp == "zstd":
            data = subprocess.run(["zstd", "-dcq", path], check=True, stdout=subprocess.PIPE).stdout
        elif comp == "xz":
            import lzma
            data = lzma.decompress(open(path, "rb").read())
        elif comp == "bzip2":
            import bz2
            data = bz2.decompress(open(path, "rb").read())
        else:
            raise RuntimeError("unsupported compression " + comp)
        with self.lock:
            self.nars[h] = data
            self.order.append(h)
            while sum(len(self.nars[x]) for x in self.order) > (384 << 20) and len(self.order) > 1:
                del self.nars[self.order.pop(0)]
        return data


def bad_sig(sig):
    name, _, b64 = sig.partition(":")
    raw = bytearray(base64.b64decode(b64))
    for i in range(0, len(raw), 7):
        raw[i] ^= 0x5A
    return "%s:%s" % (name, base64.b64encode(bytes(raw)).decode())


def flip(data):
    b = bytearray(data)
    n = len(b)
    if n:
        for i in range(n // 3, n, max(1, n // 9)):
            b[i] ^= 0xFF
        b[n - 1] ^= 0x01
    return bytes(b)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hostile-peer/1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="text/plain", length=None, close=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not False:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        return self.command != "HEAD"

    def do_HEAD(self):
        self.do_GET()

    def drip(self, body, ctype):
        if self.reply(200, body, ctype):
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(2)

    def do_GET(self):
        mode, cache = self.server.mode, self.server.cache
        u = urlsplit(self.path)
        path = u.path
        if path == "/nix-cache-info":
            body = b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
            if self.reply(200, body, "text/x-nix-cache-info"):
                self.wfile.write(body)
            return
        if path == "/_ds/v1/announce":
            body = json.dumps({"epoch": "hostile-%s-%d" % (mode, os.getpid()), "version": 1, "full": True,
                               "added": cache.hashes, "removed": [], "inflight": []}).encode()
            if self.reply(200, body, "application/json"):
                self.wfile.write(body)
            return
        name = path.lstrip("/")
        if name.endswith(".narinfo") and name[:-8] in cache.infos:
            return self.narinfo(name[:-8])
        if name.startswith("nar/") and name.endswith(".nar"):
            h = name[4:].split("-", 1)[0]
            if h in cache.infos:
                return self.nar(h)
        body = b"not found\n"
        if self.reply(404, body):
            self.wfile.write(body)

    def narinfo(self, h):
        mode, cache = self.server.mode, self.server.cache
        ct = "text/x-nix-narinfo"
        if mode == "bad-sig":
            body = cache.narinfo(h, [bad_sig(s) for s in cache.infos[h][1]])
        elif mode == "unknown-key":
            body = cache.narinfo(h, cache.unknown.get(h, []))
        elif mode == "other-narinfo":
            body = cache.narinfo(cache.other(h))
        else:
            body = cache.narinfo(h)
        if mode == "drip":
            return self.drip(body, ct)
        if mode == "endless":
            if self.reply(200, b"", ct, length=False, close=True):
                self.wfile.write(b"StorePath: /nix/store/" + h.encode() + b"-endless\n")
                line = b"References: " + b" ".join([h.encode() + b"-endless"] * 40) + b"\n"
                while True:
                    self.wfile.write(line * 64)
            return
        if self.reply(200, body, ct):
            self.wfile.write(body)

    def nar(self, h):
        mode, cache = self.server.mode, self.server.cache
        ct = "application/x-nix-nar"
        if mode == "other-nar":
            data = cache.nar(cache.other(h))
        elif mode == "wrong-bytes":
            data = flip(cache.nar(h))
        else:
            data = cache.nar(h)
        if mode == "drip":
            return self.drip(data, ct)
        if mode == "truncated":
            if self.reply(200, data, ct, close=True):
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        start = 0
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and rng[6:].endswith("-") and rng[6:-1].isdigit():
            start = int(rng[6:-1])
        if start:
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Type", ct)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data[start:])
            return
        if self.reply(200, data, ct):
            self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, (OSError, socket.timeout)):
            return
        super().handle_error(request, client_address)


def blackhole(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    held = []
    print("hostile-peer: blackhole on %s:%d" % (addr, port), flush=True)
    while True:
        c, _ = s.accept()
        held.append(c)  # never read, never answer, never close


def main():
    if len(sys.argv) not in (5, 6) or sys.argv[1] not in MODES:
        sys.exit(__doc__)
    mode, cache_dir, addr, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "blackhole":
        return blackhole(addr, port)
    unknown = sys.argv[5] if len(sys.argv) == 6 else None
    if mode == "unknown-key" and not unknown:
        sys.exit("unknown-key needs UNKNOWN_KEY_DIR")
    srv = Server((addr, port), Handler)
    srv.mode = mode
    srv.cache = Cache(cache_dir, unknown)
    print("hostile-peer: %s on http://%s:%d (%d paths)" % (mode, addr, port, len(srv.cache.hashes)), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
