#!/usr/bin/env python3
"""Checks what flake.nix's postInstall laid out from dist/ (run.sh runs the
postInstall script against the real dist/ files into OUT), and the facts
about those files that nixos-modules/distributed-store.nix relies on.

usage: check_package.py OUT
Prints PASS/FAIL lines.
"""

import sys
import xml.etree.ElementTree as ET
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
    "mapper.service": OUT / "lib/systemd/system/distributed-store-mapper.service",
    "fetcher.service": OUT / "lib/systemd/system/distributed-store-fetcher.service",
    "mapper activation": OUT / "share/dbus-1/system-services/org.distributedstore.Mapper1.service",
    "fetcher activation": OUT / "share/dbus-1/system-services/org.distributedstore.Fetcher1.service",
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
check("proxy start limit 20/60s (re-activation every idleExitSec >= 4)",
      proxy.get("Unit", {}).get("StartLimitBurst") == ["20"], proxy.get("Unit"))
check("proxy LimitNOFILE=5120 (4 x maxConnections 1024 + 1024) and MemoryMax",
      ps.get("LimitNOFILE") == ["5120"] and bool(ps.get("MemoryMax")), (ps.get("LimitNOFILE"), ps.get("MemoryMax")))
# The module no longer repeats the hardening: the units must carry it all.
for name, sec in (("proxy", ps), ("signer", ss)):
    check(f"{name} hardening in the unit (ProtectSystem=strict, NoNewPrivileges, SystemCallFilter allow-then-deny, no capabilities)",
          sec.get("ProtectSystem") == ["strict"] and sec.get("NoNewPrivileges") == ["yes"]
          and sec.get("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
          and sec.get("CapabilityBoundingSet") == [""], sec)
check("signer off the network (PrivateNetwork=yes)", ss.get("PrivateNetwork") == ["yes"], ss.get("PrivateNetwork"))
ds = act.get("D-BUS Service", {})
check("activation file names the signer unit",
      ds.get("Name") == ["org.distributedstore.Signer1"] and ds.get("SystemdService") == ["distributed-store-signer.service"], ds)
check("activation Exec in $out/bin", ds.get("Exec", [""])[0].startswith(f"{BIN}/distributed-store-signer"), ds.get("Exec"))
users = files["sysusers"].read_text()
check("sysusers names the module's users", "distributed-store " in users and "distributed-store-signer " in users, users)

# The mapper and the fetcher: D-Bus activated like the signer, as the proxy's user.
for name, iface, stype in (("mapper", "Mapper1", "StateDirectory"), ("fetcher", "Fetcher1", "CacheDirectory")):
    u = unit(files[f"{name}.service"])
    sv = u.get("Service", {})
    bus = f"org.distributedstore.{iface}"
    exe = f"{BIN}/distributed-store-{name}"
    check(f"{name} Type=dbus BusName={bus}, NotifyAccess=main",
          sv.get("Type") == ["dbus"] and sv.get("BusName") == [bus] and sv.get("NotifyAccess") == ["main"], sv)
    check(f"{name} ExecStart in $out/bin", sv.get("ExecStart") == [exe], sv.get("ExecStart"))
    if name == "mapper":
        check(f"{name} ExecStartPre=+ --prepare-store (as root: it reads the Nix database)",
              sv.get("ExecStartPre") == [f"+{exe} --prepare-store"], sv.get("ExecStartPre"))
    else:
        check(f"{name} runs nothing as root (no ExecStartPre=+: it never opens the Nix database)",
              not any(v.startswith(("+", "!")) for v in sv.get("ExecStartPre", [])), sv.get("ExecStartPre"))
    check(f"{name} reads /etc/distributed-store/config.toml",
          sv.get("Environment") == ["DISTRIBUTED_STORE_CONFIG=/etc/distributed-store/config.toml"], sv.get("Environment"))
    check(f"{name} watchdog and Restart=on-failure", bool(sv.get("WatchdogSec")) and sv.get("Restart") == ["on-failure"], sv)
    check(f"{name} start limit like the others (20/60s: re-activation every idleExitSec >= 4)",
          u.get("Unit", {}).get("StartLimitBurst") == ["20"] and u.get("Unit", {}).get("StartLimitIntervalSec") == ["60"],
          u.get("Unit"))
    check(f"{name} runs as the proxy's user",
          sv.get("User") == ["distributed-store"] and sv.get("Group") == ["distributed-store"], (sv.get("User"), sv.get("Group")))
    check(f"{name} {stype}=distributed-store (and not the other)", sv.get(stype) == ["distributed-store"]
          and not ({"StateDirectory", "CacheDirectory", "RuntimeDirectory"} - {stype}) & set(sv), sv)
    fams = " ".join(sv.get("RestrictAddressFamilies", [])).split()
    want = ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"] if name == "mapper" else ["AF_INET", "AF_INET6", "AF_UNIX"]
    check(f"{name} address families: unix + inet{' + netlink (mDNS lists interfaces)' if name == 'mapper' else ''}",
          sorted(fams) == want, fams)
    check(f"{name} no credential (the key is the signer's)", "LoadCredential" not in sv, sv.get("LoadCredential"))
    check(f"{name} hardening (ProtectSystem=strict, NoNewPrivileges, empty CapabilityBoundingSet)",
          sv.get("ProtectSystem") == ["strict"] and sv.get("NoNewPrivileges") == ["yes"]
          and sv.get("CapabilityBoundingSet") == [""], sv)
    inst = u.get("Install", {})
    check(f"{name} [Install] Alias=dbus-{bus}.service", inst.get("Alias") == [f"dbus-{bus}.service"], inst)
    want = ["multi-user.target"] if name == "mapper" else None
    check(f"{name} [Install] WantedBy={want}", inst.get("WantedBy") == want, inst)
    a = unit(files[f"{name} activation"]).get("D-BUS Service", {})
    check(f"{name} activation file: Name, Exec, User, SystemdService",
          a.get("Name") == [bus] and a.get("Exec") == [exe] and a.get("User") == ["distributed-store"]
          and a.get("SystemdService") == [f"distributed-store-{name}.service"], a)

# The D-Bus policy: who owns and calls what.
NAMES = [f"org.distributedstore.{n}" for n in ("Signer1", "Proxy1", "Mapper1", "Fetcher1")]
try:
    root = ET.parse(files["policy"]).getroot()
except ET.ParseError as e:
    check("policy is well-formed XML", False, e)
    sys.exit(0)
check("policy is well-formed XML", True)
pol = {}
for p in root.findall("policy"):
    key = p.get("user") and "user:" + p.get("user") or "context:" + str(p.get("context"))
    pol.setdefault(key, []).extend(dict(a.attrib) | {"_tag": a.tag} for a in p)


def allows(who):
    return [r for r in pol.get(who, []) if r["_tag"] == "allow"]


def owns(who):
    return {r["own"] for r in allows(who) if "own" in r}


def calls(who):
    return {(r.get("send_destination"), r.get("send_interface"), r.get("send_member"))
            for r in allows(who) if "send_destination" in r}


want_calls = {
    ("org.distributedstore.Mapper1", "org.distributedstore.Mapper1", None),
    ("org.distributedstore.Fetcher1", "org.distributedstore.Fetcher1", None),
    ("org.distributedstore.Signer1", "org.distributedstore.Signer1", "Sign"),
}
for who in ("user:distributed-store", "user:root"):
    check(f"policy: {who} owns Proxy1, Mapper1, Fetcher1",
          {"org.distributedstore.Proxy1", "org.distributedstore.Mapper1", "org.distributedstore.Fetcher1"} <= owns(who),
          owns(who))
    check(f"policy: {who} calls all of Mapper1 and Fetcher1, and Signer1.Sign only", calls(who) == want_calls, calls(who))
check("policy: the proxy's user does not own Signer1", "org.distributedstore.Signer1" not in owns("user:distributed-store"), "")
check("policy: only the signer's user (and root) own Signer1", owns("user:distributed-store-signer") == {"org.distributedstore.Signer1"},
      owns("user:distributed-store-signer"))
dflt = calls("context:default")
status = {(n, i, m) for n in NAMES for (i, m) in (
    ("org.freedesktop.DBus.Introspectable", None), ("org.freedesktop.DBus.Peer", None),
    ("org.freedesktop.DBus.Properties", "Get"), ("org.freedesktop.DBus.Properties", "GetAll"))}
check("policy: everybody may introspect, Peer and Get/GetAll the four names, nothing else",
      dflt == status and not owns("context:default"), sorted(map(str, dflt ^ status)))
check("policy: no deny rule and no mandatory context (the bus defaults deny)",
      all(r["_tag"] == "allow" for rs in pol.values() for r in rs) and "context:mandatory" not in pol, pol.keys())
