#!/usr/bin/env python3
"""report.py RESULTS_FILE

Prints dev/bench's side-by-side markdown table from its results file (lines
"key value..."; see dev/bench). Ratios are distributed-store / nginx; the
issue's aims: NAR throughput >= 0.8x nginx static, narinfo latency <= 2x.
"""
import re
import sys

R = {}
for line in open(sys.argv[1]):
    k, _, v = line.rstrip("\n").partition(" ")
    if k:
        R[k] = v


def num(key):
    v = R.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(x, digits):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def xfmt(r):
    return "n/a" if r is None else f"{r:.2f}x"


def ratio(a, b):
    return None if a is None or not b else a / b


def verdict(r, aim):
    if r is None or aim is None:
        return ""
    op, bound = aim
    good = r >= bound if op == ">=" else r <= bound
    return " ok" if good else " **MISS**"


rows = []
BG_LIMIT = 10
SERVERS = ("nginx", "none", "zstd")


def row(label, key, digits, aim=None, zstd_extra=None):
    v = {s: num(f"{s}.{key}") for s in SERVERS}
    rn, rz = ratio(v["none"], v["nginx"]), ratio(v["zstd"], v["nginx"])
    flags = {s: ("" if R.get(f"{s}.{key}.errors", "0") == "0" else f" (errors: {R[f'{s}.{key}.errors']})") for s in SERVERS}
    for s in SERVERS:  # measured while other processes used > 10% of the machine
        cell = key.split(".")[0]
        bg_keys = [k for k in R if re.fullmatch(rf"{s}\.{cell}\d*\.bg" if cell in ("copy", "mcopy") else rf"{s}\.{cell}\.bg", k)]
        if any((num(k) or 0) > BG_LIMIT for k in bg_keys):
            flags[s] += " †"
    zcell = fmt(v["zstd"], digits) + flags["zstd"]
    if zstd_extra and num(f"zstd.{zstd_extra}") is not None:
        zcell += f" (wire {fmt(num(f'zstd.{zstd_extra}'), digits)})"
    aim_text = "" if aim is None else f"{aim[0]} {aim[1]}x"
    rows.append(f"| {label} | {fmt(v['nginx'], digits)}{flags['nginx']} | {fmt(v['none'], digits)}{flags['none']} "
                f"| {xfmt(rn)}{verdict(rn, aim)} | {aim_text} | {zcell} | {xfmt(rz)} |")


LAT = ("<=", 2.0)
THR = (">=", 0.8)
for c in ("1", "16"):
    row(f"narinfo requests/s, {c} conn", f"ni{c}.rps", 0)
    row(f"narinfo latency p50 (ms), {c} conn", f"ni{c}.p50", 3, LAT)
    row(f"narinfo latency p99 (ms), {c} conn", f"ni{c}.p99", 3, LAT)
for c in ("1", "16"):
    row(f"NAR MB/s, {c} conn", f"nar{c}.mbps", 0, THR, zstd_extra=f"nar{c}.wire_mbps")
# nix copy, once per client generation: "copy" = Nix 2.8 (host), "mcopy" = Nix 2.26 (trixie chroot)
for key, gen in (("copy", "2.8"), ("mcopy", "2.26")):
    if key == "mcopy" and "mcopy.missing" in R:
        why = R["mcopy.missing"].replace("|", "/")
        for label in ("wall time (s)", "NAR MB/s"):
            rows.append(f"| `nix copy` {label}, Nix {gen} | n/a ({why}) | n/a | | | n/a | |")
        continue
    row(f"`nix copy` wall time (s), Nix {gen}, median of {R.get('reps', '?')}", f"{key}.secs", 2)
    row(f"`nix copy` NAR MB/s, Nix {gen} (closure NAR bytes / wall time)", f"{key}.mbps", 0, THR)

print("| metric | nginx static | distributed-store `none` | ds / nginx | aim | distributed-store `zstd` | zstd / nginx |")
print("|---|---:|---:|---:|---|---:|---:|")
print("\n".join(rows))
print()
print(f"- closure: {R.get('closure.paths')} paths, {fmt((num('closure.nar_bytes') or 0) / 1e6, 0)} MB of NAR "
      f"({R.get('closure.desc', '')}); zstd wire size {fmt((num('zstd.wire_bytes') or 0) / 1e6, 0)} MB")
print(f"- narinfo: wrk rotating over the {R.get('closure.paths')} narinfo URLs, {R.get('duration')} s per cell, "
      f"1 conn = 1 thread, 16 conn = 2 threads; latencies from wrk's histogram")
print(f"- NAR: wrk rotating over the {R.get('nar.sel_count')} largest NARs ({fmt((num('nar.sel_nar_bytes') or 0) / 1e6, 0)} MB, "
      f"each >= {fmt((num('nar.sel_min_nar') or 0) / 1e6, 1)} MB), {R.get('duration')} s per cell; MB/s = bytes received "
      f"by wrk / duration (1 MB = 10^6 bytes); zstd: NAR-equivalent MB/s (wire MB/s x NAR/zstd size ratio of those NARs), wire in parentheses")
modern = (f"Nix 2.26: not run ({R['mcopy.missing']})" if "mcopy.missing" in R else
          f"Nix {R.get('mcopy.nix_version', '2.26')} (Debian trixie chroot) " +
          "; ".join(f"{s} {R.get(f'{s}.mcopy.all', '?')}" for s in SERVERS))
print(f"- nix copy: `nix copy --from URL ROOT` into a fresh chroot store on {R.get('client.fs', '?')}, "
      f"{R.get('reps')} runs per server and Nix generation, interleaved; wall time of the nix process; all runs: "
      f"Nix {R.get('nix.version', '?')} (host) " +
      "; ".join(f"{s} {R.get(f'{s}.copy.all', '?')}" for s in SERVERS) + "; " + modern)
bg = sorted(((num(k) or 0), k[:-3]) for k in R if k.endswith(".bg"))
if bg:
    over = [f"{k} {v:.0f}%" for v, k in bg if v > BG_LIMIT]
    print(f"- background load (CPU used by processes other than dev/bench's, % of the machine) per measurement: "
          f"max {bg[-1][0]:.0f}% ({bg[-1][1]}), mean {sum(v for v, _ in bg) / len(bg):.0f}%" +
          (f"; † marks cells measured above {BG_LIMIT}%: {', '.join(over)}" if over else ""))
steal = sorted(((num(k) or 0), k[:-6]) for k in R if k.endswith(".steal"))
if steal:
    print(f"- hypervisor steal (CPU time given to other guests) per measurement: max {steal[-1][0]:.0f}% ({steal[-1][1]}), "
          f"mean {sum(v for v, _ in steal) / len(steal):.0f}%")
