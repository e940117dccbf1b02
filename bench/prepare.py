#!/usr/bin/env python3
"""prepare.py BASE_URL HASHES_FILE KEY_NAME TOP OUT_PREFIX [MISS_FILE]

Warm-up and validation pass of dev/bench against one binary cache (nginx,
harmonia or distributed-store), over one keep-alive connection:
  - GET /nix-cache-info;
  - GET every <hash>.narinfo of HASHES_FILE: must be 200 and carry a
    signature by KEY_NAME (this is also what fills the proxy's signature
    cache before narinfo latency is measured);
  - GET every NAR the narinfos point to, counting the bytes received: for
    Compression: none the count must equal NarSize (and FileSize);
  - GET every URL path of MISS_FILE (narinfos of made-up hashes): must be 404.
Writes OUT_PREFIX.narinfo (narinfo URL paths) and OUT_PREFIX.nar (URL paths of
the TOP largest NARs, ties by hash: the same paths for every server), and
prints one line: key=value facts (counts and byte totals) for dev/bench.
"""
import http.client
import sys
import urllib.parse


def main():
    base, hashes_file, key_name, top, out = sys.argv[1:6]
    miss_file = sys.argv[6] if len(sys.argv) > 6 else None
    top = int(top)
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)

    def get(path, sink=False, want=200):
        conn.request("GET", path)
        r = conn.getresponse()
        if r.status != want:
            body = r.read()
            sys.exit(f"prepare: GET {base}{path}: HTTP {r.status}: {body[:200]!r}")
        if not sink:
            return r.read()
        n = 0
        while True:
            b = r.read(1 << 20)
            if not b:
                return n
            n += len(b)

    get("/nix-cache-info")
    hashes = [h.strip() for h in open(hashes_file) if h.strip()]
    infos = []
    for h in hashes:
        text = get(f"/{h}.narinfo").decode()
        f = {}
        sigs = []
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k == "Sig":
                sigs.append(v)
            else:
                f[k] = v
        if not any(s.startswith(key_name + ":") for s in sigs):
            sys.exit(f"prepare: {base}/{h}.narinfo has no signature by {key_name}: {sigs}")
        infos.append((h, f["URL"], int(f["NarSize"]), f.get("Compression", "bzip2"), f.get("FileSize")))
    nar_total = wire_total = 0
    wire = {}
    for h, url, nar_size, comp, file_size in infos:
        n = get("/" + url, sink=True)
        if comp == "none" and n != nar_size:
            sys.exit(f"prepare: {base}/{url}: got {n} bytes, NarSize is {nar_size}")
        if file_size is not None and n != int(file_size):
            sys.exit(f"prepare: {base}/{url}: got {n} bytes, FileSize is {file_size}")
        wire[h] = n
        nar_total += nar_size
        wire_total += n
    misses = 0
    if miss_file:
        for path in (p.strip() for p in open(miss_file)):
            if path:
                get(path, want=404)
                misses += 1
    with open(out + ".narinfo", "w") as fh:
        fh.writelines(f"/{h}.narinfo\n" for h, *_ in infos)
    sel = sorted(infos, key=lambda i: (-i[2], i[0]))[:top]
    with open(out + ".nar", "w") as fh:
        fh.writelines(f"/{url}\n" for _, url, *_ in sel)
    print(f"paths={len(infos)} nar_bytes={nar_total} wire_bytes={wire_total} "
          f"sel_count={len(sel)} sel_nar_bytes={sum(i[2] for i in sel)} "
          f"sel_wire_bytes={sum(wire[i[0]] for i in sel)} sel_min_nar={sel[-1][2] if sel else 0} "
          f"compression={infos[0][3] if infos else '?'} misses={misses}")


if __name__ == "__main__":
    main()
