#!/usr/bin/env python3
"""report.py RESULTS_FILE

Prints dev/bench's side-by-side markdown table from its results file (lines
"key value..."; see dev/bench): nginx static, harmonia, distributed-store
`none` and `zstd`, each with its ratio to nginx. The aims are issue 8's, for
distributed-store `none` against nginx: narinfo requests/s at 16 connections
>= 0.8x, misses (404) at 16 connections >= 0.8x, narinfo p99 <= 2x (at 1
connection, and at the same offered load for every server at 16 and 64:
the paced cells; the saturated p99 at 16 is shown without an aim), NAR MB/s
>= 0.9x at 1 connection and >= 0.95x at 16, `nix copy` wall time <= 1.1x
(both Nix generations). A server that did not run (harmonia without
--harmonia-src/--harmonia-bin; Nix 2.26 without its chroot) gets n/a and why.
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
    if aim is None:
        return ""
    if r is None:
        v = "n/a"
    else:
        op, bound = aim
        v = "met" if (r >= bound if op == ">=" else r <= bound) else "**missed**"
    VERDICTS.append(v)
    return v


rows = []
VERDICTS = []  # one per row with an aim: met / **missed** / n/a
BG_LIMIT = 10
SERVERS = ("nginx", "harmonia", "none", "zstd")
HARMONIA_MISSING = "harmonia.missing" in R


def flags(s, key):
    """' (errors: N)' and/or ' †' (measured while others used > 10% of the machine)."""
    f = "" if R.get(f"{s}.{key}.errors", "0") == "0" else f" (errors: {R[f'{s}.{key}.errors']})"
    cell = key.split(".")[0]
    pattern = rf"{s}\.{cell}\d*\.bg" if cell in ("copy", "mcopy") else rf"{s}\.{cell}\.bg"
    if any((num(k) or 0) > BG_LIMIT for k in R if re.fullmatch(pattern, k)):
        f += " †"
    return f


def row(label, key, digits, aim=None, wire=None):
    v = {s: num(f"{s}.{key}") for s in SERVERS}
    cells = {}
    for s in SERVERS:
        c = fmt(v[s], digits) + ("" if v[s] is None else flags(s, key))
        if wire and v[s] is not None and num(f"{s}.{wire}") is not None and R.get(f"{s}.compression") == "zstd":
            c += f" (wire {fmt(num(f'{s}.{wire}'), digits)})"
        cells[s] = c
    r = {s: ratio(v[s], v["nginx"]) for s in SERVERS}
    aim_text = "" if aim is None else f"{aim[0]} {aim[1]}x"
    rows.append(f"| {label} | {cells['nginx']} | {cells['harmonia']} | {xfmt(r['harmonia'])} "
                f"| {cells['none']} | {xfmt(r['none'])} | {aim_text} | {verdict(r['none'], aim)} "
                f"| {cells['zstd']} | {xfmt(r['zstd'])} |")


def na_row(label, why, aim=None):
    aim_text = "" if aim is None else f"{aim[0]} {aim[1]}x"
    rows.append(f"| {label} | n/a ({why}) | n/a | | n/a | | {aim_text} | {verdict(None, aim)} | n/a | |")


P99 = ("<=", 2.0)
row("narinfo requests/s, 1 conn", "ni1.rps", 0)
row("narinfo requests/s, 16 conn", "ni16.rps", 0, (">=", 0.8))
row("misses (404) requests/s, 16 conn", "miss16.rps", 0, (">=", 0.8))
for c in ("1", "16"):
    row(f"narinfo latency p50 (ms), {c} conn", f"ni{c}.p50", 3)
    # At saturation (16 conn) the tail is the kernel time-slicing wrk and the
    # server on shared CPUs, which the paced rows below take out.
    row(f"narinfo latency p99 (ms), {c} conn" + (", saturated" if c == "16" else ""), f"ni{c}.p99", 3,
        P99 if c == "1" else None)
for c in ("16", "64"):
    if num(f"nginx.ni{c}p.rps") is None:
        continue  # a results file from before the paced cells
    row(f"narinfo requests/s, {c} conn paced (1 ms pause after each answer)", f"ni{c}p.rps", 0)
    row(f"narinfo latency p50 (ms), {c} conn paced", f"ni{c}p.p50", 3)
    row(f"narinfo latency p99 (ms), {c} conn paced", f"ni{c}p.p99", 3, P99)
row("NAR MB/s, 1 conn", "nar1.mbps", 0, (">=", 0.9), wire="nar1.wire_mbps")
row("NAR MB/s, 16 conn", "nar16.mbps", 0, (">=", 0.95), wire="nar16.wire_mbps")
if num("nginx.nar1.srv_cpu_per_gb") is not None:
    row("server CPU s per GB of NAR, 1 conn (lower is better)", "nar1.srv_cpu_per_gb", 3)
    row("server CPU s per GB of NAR, 16 conn", "nar16.srv_cpu_per_gb", 3)
if num("nginx.mixed.p99") is not None:
    row("narinfo requests/s under NAR load (4 conn paced 1 ms, 16 conn downloading NARs)", "mixed.rps", 0)
    row("narinfo latency p50 (ms) under NAR load", "mixed.p50", 3)
    row("narinfo latency p99 (ms) under NAR load", "mixed.p99", 3)
# nix copy, once per client generation: "copy" = Nix 2.8 (host), "mcopy" = Nix 2.26 (trixie chroot)
for key, gen in (("copy", "2.8"), ("mcopy", "2.26")):
    if key == "mcopy" and "mcopy.missing" in R:
        why = R["mcopy.missing"].replace("|", "/")
        na_row(f"`nix copy` wall time (s), Nix {gen}", why, ("<=", 1.1))
        na_row(f"`nix copy` NAR MB/s, Nix {gen}", why)
        continue
    row(f"`nix copy` wall time (s), Nix {gen}, median of {R.get('reps', '?')}", f"{key}.secs", 2, ("<=", 1.1))
    row(f"`nix copy` NAR MB/s, Nix {gen} (closure NAR bytes / wall time)", f"{key}.mbps", 0)

print("| metric | nginx static | harmonia | harmonia / nginx | distributed-store `none` | none / nginx "
      "| aim (none / nginx) | met? | distributed-store `zstd` | zstd / nginx |")
print("|---|---:|---:|---:|---:|---:|---|---|---:|---:|")
print("\n".join(rows))
print()
met, missed, unknown = (VERDICTS.count(v) for v in ("met", "**missed**", "n/a"))
print(f"- aims (distributed-store `none` / nginx, issue 8): {met} met, {missed} missed" +
      (f", {unknown} not measured" if unknown else ""))
if HARMONIA_MISSING:
    print(f"- harmonia: n/a: {R['harmonia.missing']}")
else:
    print(f"- harmonia: {R.get('harmonia.version', '?')}, serving the chroot store directly (its Nix DB read by "
          "harmonia itself), enable_compression = false, signing with the bench key, its default 4 workers")
    vs = []
    for label, key in (("narinfo/s 1 conn", "ni1.rps"), ("narinfo/s 16 conn", "ni16.rps"),
                       ("misses/s 16 conn", "miss16.rps"), ("NAR MB/s 1 conn", "nar1.mbps"),
                       ("NAR MB/s 16 conn", "nar16.mbps"), ("nix copy time, Nix 2.8", "copy.secs"),
                       ("nix copy time, Nix 2.26", "mcopy.secs")):
        r = ratio(num(f"none.{key}"), num(f"harmonia.{key}"))
        if r is not None:
            vs.append(f"{label} {r:.2f}x")
    print(f"- distributed-store `none` / harmonia (above 1 is better for us, except times): {', '.join(vs)}")
print(f"- closure: {R.get('closure.paths')} paths, {fmt((num('closure.nar_bytes') or 0) / 1e6, 0)} MB of NAR "
      f"({R.get('closure.desc', '')}); zstd wire size {fmt((num('zstd.wire_bytes') or 0) / 1e6, 0)} MB")
print(f"- narinfo: wrk rotating over the {R.get('closure.paths')} narinfo URLs, {R.get('duration')} s per cell, "
      f"1 conn = 1 thread, 16 and 64 conn = 2 threads; latencies from wrk's histogram; paced: every connection "
      f"waits 1 ms after each answer (wrk's delay()), so every server gets about the same requests/s")
print(f"- misses: wrk rotating over {R.get('nginx.misses', '?')} narinfo URLs of made-up hashes, every answer 404 "
      f"(checked once by prepare.py; in the wrk cell any answer below 400 counts as an error), {R.get('duration')} s")
print(f"- NAR: wrk rotating over the {R.get('nar.sel_count')} largest NARs ({fmt((num('nar.sel_nar_bytes') or 0) / 1e6, 0)} MB, "
      f"each >= {fmt((num('nar.sel_min_nar') or 0) / 1e6, 1)} MB), {R.get('duration')} s per cell; MB/s = bytes received "
      f"by wrk / duration (1 MB = 10^6 bytes); zstd: NAR-equivalent MB/s (wire MB/s x NAR/zstd size ratio of those NARs), wire in parentheses")
ran = [s for s in SERVERS if s != "harmonia" or not HARMONIA_MISSING]
modern = (f"Nix 2.26: not run ({R['mcopy.missing']})" if "mcopy.missing" in R else
          f"Nix {R.get('mcopy.nix_version', '2.26')} (Debian trixie chroot) " +
          "; ".join(f"{s} {R.get(f'{s}.mcopy.all', '?')}" for s in ran))
print(f"- nix copy: `nix copy --from URL ROOT` into a fresh chroot store on {R.get('client.fs', '?')}, "
      f"{R.get('reps')} runs per server and Nix generation, interleaved; wall time of the nix process; all runs: "
      f"Nix {R.get('nix.version', '?')} (host) " +
      "; ".join(f"{s} {R.get(f'{s}.copy.all', '?')}" for s in ran) + "; " + modern)
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
