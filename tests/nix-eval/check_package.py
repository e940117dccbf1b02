#!/usr/bin/env python3
"""Checks what flake.nix's postInstall laid out from dist/ (run.sh runs the
postInstall script against the real dist/ files into OUT), and the facts
about those files that nixos-modules/distributed-store.nix relies on.

usage: check_package.py OUT
Prints PASS/FAIL lines.
"""

import sys
from pathlib import Path

OUT = Path(sys.argv[1])
BIN = f"{OUT}/bin"


def check(name, ok, why=""):
    print(f"PASS package: {name}" if ok else f"FAIL package: {name}: {why}")


def unit(path):
    """systemd-style file -> {section: {key: [values]}}"""
    sections, cur = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        k, _, v = line.partition("=")
        cur.setdefault(k.strip(), []).append(v.strip())
    return sections


files = {
    "proxy.socket": OUT / "lib/systemd/system/distributed-store-proxy.socket",
    "proxy.service": OUT / "lib/systemd/system/distributed-store-proxy.service",
    "signer.service": OUT / "lib/systemd/system/distributed-store-signer.service",
    "policy": OUT / "share/dbus-1/system.d/org.distributedstore.conf",
    "activation": OUT / "share/dbus-1/system-services/org.distributedstore.Signer1.service",
    "sysusers": OUT / "lib/sysusers.d/distributed-store.conf",
}
for name, p in files.items():
    check(f"installs {p.relative_to(OUT)}", p.is_file(), "missing")
if not all(p.is_file() for p in files.values()):
    sys.exit(0)

left = [str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file() and "@bindir@" in p.read_text(errors="replace")]
check("no @bindir@ left", not left, left)

sock = unit(files["proxy.socket"])
proxy = unit(files["proxy.service"])
signer = unit(files["signer.service"])
act = unit(files["activation"])

check("socket has a ListenStream= (the module resets and replaces it)", bool(sock.get("Socket", {}).get("ListenStream")), sock)
ps = proxy.get("Service", {})
check("proxy ExecStart in $out/bin", ps.get("ExecStart", [""])[0].startswith(f"{BIN}/distributed-store-proxy"), ps.get("ExecStart"))
check("proxy Type=notify with a watchdog", ps.get("Type") == ["notify"] and bool(ps.get("WatchdogSec")), ps)
check("proxy User=distributed-store (declared by the module)", ps.get("User") == ["distributed-store"], ps.get("User"))
check("proxy reads /etc/distributed-store/config.toml",
      "DISTRIBUTED_STORE_CONFIG=/etc/distributed-store/config.toml" in " ".join(ps.get("Environment", [])), ps.get("Environment"))
ss = signer.get("Service", {})
check("signer ExecStart in $out/bin", ss.get("ExecStart", [""])[0].startswith(f"{BIN}/distributed-store-signer"), ss.get("ExecStart"))
check("signer Type=dbus BusName=org.distributedstore.Signer1",
      ss.get("Type") == ["dbus"] and ss.get("BusName") == ["org.distributedstore.Signer1"], ss)
check("signer User=distributed-store-signer (declared by the module)", ss.get("User") == ["distributed-store-signer"], ss.get("User"))
check("signer credential id is signing-key (the module replaces its source)",
      any(v.startswith("signing-key:") for v in ss.get("LoadCredential", [])), ss.get("LoadCredential"))
check("signer reads /etc/distributed-store/config.toml",
      "DISTRIBUTED_STORE_CONFIG=/etc/distributed-store/config.toml" in " ".join(ss.get("Environment", [])), ss.get("Environment"))
for name, sec in (("proxy", ps), ("signer", ss)):
    groups = sec.get("Group", [])
    check(f"{name} Group= is one the module declares", all(g in ("distributed-store", "distributed-store-signer") for g in groups), groups)
    fams = " ".join(sec.get("RestrictAddressFamilies", [])).split()
    allowed = {"AF_UNIX", "AF_INET", "AF_INET6"} if name == "proxy" else {"AF_UNIX"}
    check(f"{name} address families within the module's ({sorted(allowed)})", set(fams) <= allowed and fams, fams)
check("proxy StateDirectory/CacheDirectory = distributed-store (the module repeats them)",
      ps.get("StateDirectory") == ["distributed-store"] and ps.get("CacheDirectory") == ["distributed-store"],
      (ps.get("StateDirectory"), ps.get("CacheDirectory")))
ds = act.get("D-BUS Service", {})
check("activation file names the signer unit",
      ds.get("Name") == ["org.distributedstore.Signer1"] and ds.get("SystemdService") == ["distributed-store-signer.service"], ds)
check("activation Exec in $out/bin", ds.get("Exec", [""])[0].startswith(f"{BIN}/distributed-store-signer"), ds.get("Exec"))
users = files["sysusers"].read_text()
check("sysusers names the module's users", "distributed-store " in users and "distributed-store-signer " in users, users)
