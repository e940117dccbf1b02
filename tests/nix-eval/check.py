#!/usr/bin/env python3
"""Checks the results of tests/nix-eval/eval.nix, one case at a time.

usage: check.py RESULTS_DIR REPO_ROOT

RESULTS_DIR holds, per case, CASE.json (stdout of a successful evaluation) or
CASE.err (stderr of a failed one). Prints one `PASS name` / `FAIL name: why`
line per check; run.sh counts them.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

RESULTS = Path(sys.argv[1])
ROOT = Path(sys.argv[2])

FLEET_KEY = "fleet-1:rDtdWTDXj4F9xlfPuLSX2Q1dPOFS3SBJPqJuEpWMJVg="
UPSTREAM_KEY = "cache.example.org-1:0f6N5Q3MWXDlWlFdiQ6NKcOyawuexmeJyv9R0xLtSWk="
NIXOS_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
CONFIG = "distributed-store/config.toml"
PROXY = "distributed-store-proxy"
SIGNER = "distributed-store-signer"
MAPPER = "distributed-store-mapper"
FETCHER = "distributed-store-fetcher"
SERVICES = (PROXY, SIGNER, MAPPER, FETCHER)
INET = ["AF_UNIX", "AF_INET", "AF_INET6"]

passed = failed = 0


def check(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {why}")


def config_keys():
    """The keys the services accept: RawConfig's fields in
    services/runtime/src/config.rs, camelCased (serde rename_all)."""
    src = ROOT / "services/runtime/src/config.rs"
    fallback = {
        "listen", "store", "privateKeyFile", "trustedPublicKeys", "upstreams", "peers",
        "priority", "wantMassQuery", "compression", "idleExitSec", "maxConnections",
    }
    try:
        body = re.search(r"struct RawConfig\s*\{(.*?)\n\}", src.read_text(), re.S).group(1)
    except (OSError, AttributeError):
        return fallback, "fallback list (config.rs not readable)"
    fields = re.findall(r"^\s*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:", body, re.M)
    camel = {re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), f) for f in fields}
    return camel, "services/runtime/src/config.rs"


ACCEPTED, ACCEPTED_FROM = config_keys()


def rust_defaults():
    """The services' own defaults for the mapper/fetcher keys
    (services/runtime/src/config.rs), which the module's defaults repeat."""
    try:
        src = (ROOT / "services/runtime/src/config.rs").read_text()
    except OSError:
        return None
    consts = dict(re.findall(r"pub const (DEFAULT_[A-Z_]+): [^=]+= ([^;]+);", src))
    try:
        return {
            "stateDirectory": json.loads(consts["DEFAULT_STATE_DIRECTORY"]),
            "cacheDirectory": json.loads(consts["DEFAULT_CACHE_DIRECTORY"]),
            "cacheSize": consts["DEFAULT_CACHE_SIZE"].strip(),
            "peerTimeoutMs": int(consts["DEFAULT_PEER_TIMEOUT_MS"]),
            "upstreamTimeoutMs": int(consts["DEFAULT_UPSTREAM_TIMEOUT_MS"]),
        }
    except (KeyError, ValueError):
        return None


RUST_DEFAULTS = rust_defaults()


def load(case):
    p = RESULTS / f"{case}.json"
    if not p.exists():
        err = (RESULTS / f"{case}.err").read_text() if (RESULTS / f"{case}.err").exists() else "no output"
        check(f"{case}: evaluates", False, err.strip().splitlines()[-1] if err.strip() else "empty stderr")
        return None
    r = json.loads(p.read_text())
    check(f"{case}: evaluates", True)
    return r


def toml_of(r, case):
    text = r["facts"]["etc"][CONFIG]["text"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(f"{case}: config.toml is valid TOML", False, f"{e}\n{text}")
        return {}
    check(f"{case}: config.toml is valid TOML", True)
    unknown = set(data) - ACCEPTED
    check(f"{case}: config.toml has only keys the services accept ({ACCEPTED_FROM})",
          not unknown, f"unknown keys {sorted(unknown)}")
    return data


def enabled_basics(case, r, assertions_fail=False):
    f = r["facts"]
    pkg = f["systemdPackages"]
    check(f"{case}: package in systemd.packages", len(pkg) == 1 and "distributed-store" in pkg[0], pkg)
    check(f"{case}: package in services.dbus.packages", f["dbusPackages"] == pkg, f["dbusPackages"])
    check(f"{case}: package in environment.systemPackages", f["systemPackages"] == pkg, f["systemPackages"])
    sock = f["sockets"].get(PROXY, {})
    check(f"{case}: socket wanted by sockets.target", sock.get("wantedBy") == ["sockets.target"], sock)
    ls = sock.get("socketConfig", {}).get("ListenStream")
    check(f"{case}: socket ListenStream reset then set", isinstance(ls, list) and len(ls) == 2 and ls[0] == "", ls)
    users = f["users"]
    for u, g in [("distributed-store", "distributed-store"), ("distributed-store-signer", "distributed-store-signer")]:
        ok = users.get(u, {}).get("isSystemUser") is True and users[u].get("group") == g and g in f["groups"]
        check(f"{case}: system user {u} in group {g}", ok, users.get(u))
    etc = f["etc"].get(CONFIG)
    check(f"{case}: /etc/{CONFIG} from the rendered settings", etc is not None and etc["source"].endswith(".toml"), etc)
    for s in SERVICES:
        svc = f["services"].get(s, {})
        check(f"{case}: {s} restarts when the config changes",
              etc is not None and svc.get("restartTriggers") == [etc["source"]], svc.get("restartTriggers"))
        sc = svc.get("serviceConfig", {})
        check(f"{case}: {s} hardening (ProtectSystem=strict, NoNewPrivileges, PrivateTmp, ProtectHome)",
              sc.get("ProtectSystem") == "strict" and sc.get("NoNewPrivileges") is True
              and sc.get("PrivateTmp") is True and sc.get("ProtectHome") is True, sc)
        check(f"{case}: {s} SystemCallFilter repeats allow-then-deny (drop-ins add to the unit's list)",
              sc.get("SystemCallFilter") == ["@system-service", "~@privileged", "~@resources"], sc.get("SystemCallFilter"))
    psc = f["services"][PROXY]["serviceConfig"]
    ssc = f["services"][SIGNER]["serviceConfig"]
    check(f"{case}: proxy address families", psc.get("RestrictAddressFamilies") == ["AF_UNIX", "AF_INET", "AF_INET6"], psc.get("RestrictAddressFamilies"))
    check(f"{case}: proxy State/CacheDirectory", psc.get("StateDirectory") == "distributed-store" and psc.get("CacheDirectory") == "distributed-store", psc)
    check(f"{case}: signer stays AF_UNIX-only and off the network",
          ssc.get("RestrictAddressFamilies") == ["AF_UNIX"] and ssc.get("PrivateNetwork") is True, ssc)
    check(f"{case}: signer has no State/CacheDirectory of the proxy's user",
          "StateDirectory" not in ssc and "CacheDirectory" not in ssc, ssc)
    msc = f["services"][MAPPER]["serviceConfig"]
    fsc = f["services"][FETCHER]["serviceConfig"]
    # discovery (default on) needs netlink in the mapper: getifaddrs for mDNS
    disc = tomllib.loads(f["etc"][CONFIG]["text"] or "").get("discovery", True) if CONFIG in f["etc"] else True
    for name, sc, want in (("mapper", msc, INET + ["AF_NETLINK"] if disc else INET), ("fetcher", fsc, INET)):
        check(f"{case}: {name} address families (HTTP to peers and upstreams, D-Bus{', netlink for mDNS' if want != INET else ''})",
              sc.get("RestrictAddressFamilies") == want, sc.get("RestrictAddressFamilies"))
        check(f"{case}: {name} stays on the network (no PrivateNetwork)", "PrivateNetwork" not in sc, sc)
    check(f"{case}: mapper StateDirectory only", msc.get("StateDirectory") == "distributed-store"
          and "CacheDirectory" not in msc, msc)
    check(f"{case}: fetcher CacheDirectory only", fsc.get("CacheDirectory") == "distributed-store"
          and "StateDirectory" not in fsc, fsc)
    if case != "mapper-on-demand":
        check(f"{case}: mapper started at boot (wantedBy multi-user.target)",
              f["services"][MAPPER].get("wantedBy") == ["multi-user.target"], f["services"][MAPPER].get("wantedBy"))
    check(f"{case}: fetcher D-Bus activated only (not wanted by anything)",
          f["services"][FETCHER].get("wantedBy") == [], f["services"][FETCHER].get("wantedBy"))
    check(f"{case}: proxy socket-activated only (service not wanted by anything)",
          f["services"][PROXY].get("wantedBy") == [], f["services"][PROXY].get("wantedBy"))
    if not assertions_fail:
        check(f"{case}: no failed assertions", f["failedAssertions"] == [], f["failedAssertions"])
    # The units come from the package, so the module must not replace them.
    for s in SERVICES:
        sc = f["services"][s]["serviceConfig"]
        forbidden = {"ExecStart", "Type", "User", "BusName", "DynamicUser"} & set(sc)
        check(f"{case}: {s} drop-in leaves ExecStart/Type/User/BusName to the unit", not forbidden, forbidden)


def main():
    cases = json.loads((RESULTS / "cases.json").read_text())
    expected_failures = {
        "bad-compression": [r'"zstd"', r'"xz"', r'"none"', r"compression"],
        "bad-public-key": [r"trustedPublicKeys"],
        "bad-peer": [r"peers"],
        "bad-cache-size": [r"cacheSize"],
        "bad-peer-timeout": [r"peerTimeoutMs"],
        "bad-upstream-timeout": [r"upstreamTimeoutMs"],
        "bad-state-directory": [r"stateDirectory"],
    }

    for case in cases:
        if case in expected_failures:
            err_p = RESULTS / f"{case}.err"
            ok = not (RESULTS / f"{case}.json").exists()
            check(f"{case}: evaluation fails", ok, "evaluated without error")
            err = err_p.read_text() if err_p.exists() else ""
            for pat in expected_failures[case]:
                check(f"{case}: error names {pat}", re.search(pat, err) is not None, err.strip()[-400:])
            continue

        r = load(case)
        if r is None:
            continue
        f = r["facts"]
        base = r["baseline"]

        if case in ("disabled", "disabled-with-settings"):
            check(f"{case}: enable = false sets nothing at all", r["sameAsBaseline"],
                  {k: v for k, v in f.items() if v != base[k]})
            continue

        enabled_basics(case, r, assertions_fail=case in ("key-in-store", "bad-listen-host", "bad-listen-port"))
        data = toml_of(r, case)
        subs = f["nixSettings"]["substituters"]
        keys = f["nixSettings"]["trusted-public-keys"]
        ls = f["sockets"][PROXY]["socketConfig"]["ListenStream"]
        lc = f["services"][SIGNER]["serviceConfig"].get("LoadCredential")

        if case == "enabled-minimal":
            check(f"{case}: defaults rendered", data == {
                "listen": "[::]:5496", "priority": 30, "compression": "zstd", "idleExitSec": 0,
                "peers": [], "upstreams": [], "trustedPublicKeys": [],
                "stateDirectory": "/var/lib/distributed-store", "cacheDirectory": "/var/cache/distributed-store",
                "cacheSize": "10G", "peerTimeoutMs": 300, "upstreamTimeoutMs": 800, "discovery": True}, data)
            rd = RUST_DEFAULTS
            check(f"{case}: module defaults = the services' defaults (services/runtime/src/config.rs)",
                  rd is not None and rd["cacheSize"] == "10 << 30" and all(
                      data.get(k) == v for k, v in rd.items() if k != "cacheSize"), (rd, data))
            check(f"{case}: default directories need no tmpfiles rule or ReadWritePaths",
                  f["tmpfiles"] == [] and all("ReadWritePaths" not in f["services"][s]["serviceConfig"]
                                              for s in SERVICES), f["tmpfiles"])
            check(f"{case}: privateKeyFile (null) not written", "privateKeyFile" not in data, data)
            check(f"{case}: ListenStream from listen", ls == ["", "[::]:5496"], ls)
            check(f"{case}: no LoadCredential override without a key", lc is None, lc)
            check(f"{case}: substituters untouched", subs == base["nixSettings"]["substituters"], subs)
            check(f"{case}: trusted keys untouched", keys == base["nixSettings"]["trusted-public-keys"], keys)
            check(f"{case}: firewall untouched", f["firewallTCP"] == [] and f["firewallUDP"] == [],
                  (f["firewallTCP"], f["firewallUDP"]))
            check(f"{case}: no warnings", f["warnings"] == [], f["warnings"])

        elif case == "enabled-with-key":
            check(f"{case}: LoadCredential replaced by the key file", lc == ["", "signing-key:/run/keys/ds.sec"], lc)
            check(f"{case}: privateKeyFile written as a string", data.get("privateKeyFile") == "/run/keys/ds.sec", data)
            check(f"{case}: upstreams: URL and table", data.get("upstreams") == [
                "https://mirror.example.org",
                {"url": "https://cache.example.org", "publicKeys": [UPSTREAM_KEY]}], data.get("upstreams"))
            check(f"{case}: peers, keys, compression, idleExitSec", data.get("peers") == ["http://build1:5496"]
                  and data.get("trustedPublicKeys") == [FLEET_KEY] and data.get("compression") == "xz"
                  and data.get("idleExitSec") == 600, data)
            check(f"{case}: substituters untouched (addToSubstituters off)", subs == base["nixSettings"]["substituters"], subs)
            check(f"{case}: proxy has no credential", "LoadCredential" not in f["services"][PROXY]["serviceConfig"], "")

        elif case == "add-substituters":
            check(f"{case}: local proxy first in substituters", subs == ["http://127.0.0.1:5496", "https://cache.example.org/", "https://cache.nixos.org/"], subs)
            check(f"{case}: fleet and upstream keys trusted by Nix", sorted(keys) == sorted([NIXOS_KEY, FLEET_KEY, UPSTREAM_KEY]), keys)
            check(f"{case}: no warnings", f["warnings"] == [], f["warnings"])

        elif case == "add-substituters-false":
            check(f"{case}: substituters untouched", subs == base["nixSettings"]["substituters"], subs)
            check(f"{case}: trusted keys untouched", keys == base["nixSettings"]["trusted-public-keys"], keys)

        elif case == "add-substituters-no-keys":
            check(f"{case}: local proxy first in substituters", subs[0] == "http://127.0.0.1:5496", subs)
            w = f["warnings"]
            check(f"{case}: warns that Nix would refuse unsigned paths",
                  len(w) == 1 and "trustedPublicKeys" in w[0] and "signature" in w[0], w)

        elif case == "key-in-store":
            fa = f["failedAssertions"]
            check(f"{case}: assertion fails and says why", len(fa) == 1 and "world-readable" in fa[0]
                  and "/nix/store/00000000000000000000000000000000-ds.sec" in fa[0], fa)

        elif case == "listen-port":
            check(f"{case}: ListenStream follows listen", ls == ["", "[::]:6001"], ls)
            check(f"{case}: firewall opens the port", f["firewallTCP"] == [6001], f["firewallTCP"])
            check(f"{case}: substituter uses the port", subs[0] == "http://127.0.0.1:6001", subs)
            check(f"{case}: listen written", data.get("listen") == "[::]:6001", data)
            check(f"{case}: no warnings", f["warnings"] == [], f["warnings"])

        elif case == "listen-loopback-firewall":
            check(f"{case}: ListenStream loopback", ls == ["", "127.0.0.1:5496"], ls)
            w = f["warnings"]
            check(f"{case}: warns that the open port is useless", len(w) == 1 and "loopback" in w[0], w)

        elif case == "listen-ipv6-loopback":
            check(f"{case}: substituter on [::1]", subs[0] == "http://[::1]:7000", subs)
            check(f"{case}: ListenStream [::1]", ls == ["", "[::1]:7000"], ls)

        elif case in ("bad-listen-host", "bad-listen-port"):
            fa = f["failedAssertions"]
            check(f"{case}: assertion fails and gives examples", len(fa) == 1 and "settings.listen" in fa[0]
                  and "[::]:5496" in fa[0], fa)
            if case == "bad-listen-host":
                check(f"{case}: firewall still evaluates (default port)", f["firewallTCP"] == [5496], f["firewallTCP"])

        elif case == "freeform":
            check(f"{case}: freeform keys written", data.get("store") == "local?root=/srv/nix"
                  and data.get("wantMassQuery") is False and data.get("maxConnections") == 64, data)

        elif case == "fleet-settings":
            check(f"{case}: mapper/fetcher keys written", {k: data.get(k) for k in (
                "stateDirectory", "cacheDirectory", "cacheSize", "peerTimeoutMs", "upstreamTimeoutMs")} == {
                "stateDirectory": "/srv/ds/state", "cacheDirectory": "/srv/ds/cache",
                "cacheSize": 53687091200, "peerTimeoutMs": 150, "upstreamTimeoutMs": 2000}, data)
            check(f"{case}: peers written in order", data.get("peers") == ["http://build1:5496", "http://build2:5496"], data)
            check(f"{case}: firewall opens the proxy port for the peers", f["firewallTCP"] == [5496], f["firewallTCP"])
            check(f"{case}: discovery on (default): firewall opens 5353/udp (mDNS)", f["firewallUDP"] == [5353]
                  and data.get("discovery") is True, (f["firewallUDP"], data.get("discovery")))
            check(f"{case}: custom directories created for distributed-store", sorted(f["tmpfiles"]) == [
                "d /srv/ds/cache 0700 distributed-store distributed-store - -",
                "d /srv/ds/state 0700 distributed-store distributed-store - -"], f["tmpfiles"])
            msc = f["services"][MAPPER]["serviceConfig"]
            fsc = f["services"][FETCHER]["serviceConfig"]
            check(f"{case}: mapper may write its stateDirectory (ProtectSystem=strict)",
                  msc.get("ReadWritePaths") == ["/srv/ds/state"], msc.get("ReadWritePaths"))
            check(f"{case}: fetcher may write its cacheDirectory (ProtectSystem=strict)",
                  fsc.get("ReadWritePaths") == ["/srv/ds/cache"], fsc.get("ReadWritePaths"))
            check(f"{case}: proxy and signer get no extra writable paths",
                  all("ReadWritePaths" not in f["services"][s]["serviceConfig"] for s in (PROXY, SIGNER)), "")
            check(f"{case}: no warnings", f["warnings"] == [], f["warnings"])

        elif case == "discovery-off":
            check(f"{case}: discovery = false written", data.get("discovery") is False, data)
            check(f"{case}: firewall opens the proxy port but not 5353/udp",
                  f["firewallTCP"] == [5496] and f["firewallUDP"] == [], (f["firewallTCP"], f["firewallUDP"]))
            check(f"{case}: no warnings", f["warnings"] == [], f["warnings"])

        elif case == "discovery-no-firewall":
            check(f"{case}: discovery on without openFirewall: no port opened",
                  data.get("discovery") is True and f["firewallTCP"] == [] and f["firewallUDP"] == [],
                  (data.get("discovery"), f["firewallTCP"], f["firewallUDP"]))

        elif case == "cache-size-text":
            check(f"{case}: cacheSize written as text", data.get("cacheSize") == "1.5T", data)
            check(f"{case}: no tmpfiles rule at the default directories", f["tmpfiles"] == [], f["tmpfiles"])

        elif case == "mapper-on-demand":
            check(f"{case}: the user can leave the mapper to D-Bus activation",
                  f["services"][MAPPER].get("wantedBy") == [], f["services"][MAPPER].get("wantedBy"))

        elif case == "hardening-override":
            v = f["services"][PROXY]["serviceConfig"].get("MemoryDenyWriteExecute")
            check(f"{case}: the user can override the module's hardening defaults", v is False, v)

        else:
            check(f"{case}: has expectations in check.py", False, "add them")

    # Option documentation: every option described, and named in docs/nixos.md.
    r = json.loads(next(RESULTS.glob("enabled-minimal.json")).read_text())
    docs = (ROOT / "docs/nixos.md").read_text() if (ROOT / "docs/nixos.md").exists() else ""
    for o in r["options"]:
        name = o["name"]
        check(f"option {name}: has a description", o["described"], "")
        short = name.removeprefix("services.distributed-store.")
        check(f"option {name}: documented in docs/nixos.md", f"`{short}`" in docs or f"`{name}`" in docs, "")


main()
print(f"check.py: {passed} passed, {failed} failed")
