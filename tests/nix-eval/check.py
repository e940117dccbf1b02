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
HARDENING = {
    "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ProcSubset", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter", "CapabilityBoundingSet", "UMask",
    "StateDirectory", "CacheDirectory", "PrivateNetwork",
}

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
        # The hardening is the units' own (dist/systemd, checked by
        # check_package.py); the module must not keep a second copy that
        # could drift from it. (hardening-override: the user's own choice.)
        # (bittorrent.enable: the fetcher's UMask 0007 is a deliberate
        # change, checked in the bittorrent cases, not a copy.)
        allowed = {"MemoryDenyWriteExecute"} if case == "hardening-override" else set()
        if case.startswith("bittorrent") and s == FETCHER:
            allowed = {"UMask"}
        repeated = HARDENING & set(sc) - allowed
        check(f"{case}: {s} drop-in repeats none of the units' hardening", not repeated, sorted(repeated))
    data = tomllib.loads(f["etc"][CONFIG]["text"] or "") if CONFIG in f["etc"] else {}
    maxc = data.get("maxConnections", 1024)
    idle = data.get("idleExitSec", 0)
    per = {"none": 1, "zstd": 2, "xz": 12}[data.get("compression", "zstd")]
    burst = 20 if idle == 0 else max(20, 60 // idle + 5)
    psc = f["services"][PROXY]["serviceConfig"]
    fsc = f["services"][FETCHER]["serviceConfig"]
    msc = f["services"][MAPPER]["serviceConfig"]
    ssc = f["services"][SIGNER]["serviceConfig"]
    for s in SERVICES:
        uc = f["services"][s].get("unitConfig", {})
        check(f"{case}: {s} StartLimitBurst={burst} allows re-activation every idleExitSec={idle}",
              uc.get("StartLimitBurst") == burst, uc)
    check(f"{case}: proxy LimitNOFILE = 4 x maxConnections + 1024 = {4 * maxc + 1024}",
          psc.get("LimitNOFILE") == 4 * maxc + 1024, psc.get("LimitNOFILE"))
    check(f"{case}: fetcher LimitNOFILE = 4 x maxConnections + 1024", fsc.get("LimitNOFILE") == 4 * maxc + 1024,
          fsc.get("LimitNOFILE"))
    check(f"{case}: proxy MemoryMax = 256M + {per}M x maxConnections",
          psc.get("MemoryMax") == f"{256 + per * maxc}M", psc.get("MemoryMax"))
    check(f"{case}: signer drop-in does not touch its network isolation",
          "RestrictAddressFamilies" not in ssc and "PrivateNetwork" not in ssc, ssc)
    disc = data.get("discovery", True)
    want = None if disc else ["", "AF_UNIX", "AF_INET", "AF_INET6"]
    check(f"{case}: mapper address families: the unit's{'' if disc else ', reset without netlink (discovery off)'}",
          msc.get("RestrictAddressFamilies") == want, msc.get("RestrictAddressFamilies"))
    check(f"{case}: proxy/fetcher address families: the units'",
          "RestrictAddressFamilies" not in psc and "RestrictAddressFamilies" not in fsc, "")
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


def fsc_of(f):
    return f["services"][FETCHER]["serviceConfig"]


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
        "bad-mapper-type": [r"mappers", r"gopher|type"],
        "bad-backend-command": [r"backends\.command\.command", r"absolute path"],
        "bad-backend-key": [r"carrierpigeon"],
        "bad-mirror-url": [r"backends\.mirrors\.urls"],
        "bad-bittorrent-engine": [r"backends\.bittorrent\.engine", r"aria2"],
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

        enabled_basics(case, r, assertions_fail=case in ("key-in-store", "bad-listen-host", "bad-listen-port",
                                                        "mapper-wrong-field", "ipfs-no-endpoint", "s3-credentials-in-store",
                                                        "bittorrent-secret-in-store"))
        data = toml_of(r, case)
        subs = f["nixSettings"]["substituters"]
        keys = f["nixSettings"]["trusted-public-keys"]
        ls = f["sockets"][PROXY]["socketConfig"]["ListenStream"]
        lc = f["services"][SIGNER]["serviceConfig"].get("LoadCredential")

        if case == "enabled-minimal":
            check(f"{case}: defaults rendered", data == {
                "listen": "[::]:5496", "priority": 30, "compression": "zstd", "idleExitSec": 0,
                "peers": [], "upstreams": [], "trustedPublicKeys": [], "mappers": [],
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

        elif case == "plugins":
            check(f"{case}: mappers rendered in order, nulls dropped", data.get("mappers") == [
                {"type": "folder", "path": "/srv/ds-index"},
                {"type": "http", "url": "http://build1:5496", "deadlineMs": 300},
                {"type": "command", "command": ["/run/current-system/sw/bin/my-mapper", "--json"]}], data.get("mappers"))
            b = data.get("backends", {})
            check(f"{case}: backends rendered with the services' keys", b == {
                "mirrors": {"urls": ["http://mirror1:8080", "https://mirror2.example.org/cache"]},
                "ipfs": {"api": "http://127.0.0.1:5001", "publish": True},
                "bittorrent": {"engine": "aria2", "rpc": "http://127.0.0.1:6800/jsonrpc", "rpcSecretFile": "/run/keys/aria2",
                               "trackers": ["udp://tracker.lan:6969"], "publish": False},
                "s3": {"bucket": "nars", "endpoint": "http://127.0.0.1:9000", "prefix": "", "publish": False,
                       "credentialsFile": "/run/credentials/distributed-store-fetcher.service/s3-credentials"},
                "command": {"command": ["/usr/local/bin/fetch-nar"]}}, b)
            check(f"{case}: the fetcher alone gets the S3 credentials (LoadCredential)",
                  fsc_of(f).get("LoadCredential") == ["s3-credentials:/run/keys/s3"]
                  and all("s3-credentials" not in str(f["services"][x]["serviceConfig"].get("LoadCredential")) for x in (PROXY, SIGNER, MAPPER)),
                  fsc_of(f).get("LoadCredential"))
            check(f"{case}: no kubo/aria2 unless asked", not f["kubo"]["enable"] and not f["aria2"]["enable"], "")
            check(f"{case}: no warnings, no failed assertions", f["warnings"] == [] and f["failedAssertions"] == [], f["failedAssertions"])

        elif case in ("ipfs-enable", "ipfs-online"):
            k = f["kubo"]
            port = 5001 if case == "ipfs-enable" else 5101
            check(f"{case}: kubo enabled, API and gateway on loopback", k["enable"] is True
                  and k["settings"]["Addresses"]["API"] == f"/ip4/127.0.0.1/tcp/{port}"
                  and k["settings"]["Addresses"]["Gateway"] == "/ip4/127.0.0.1/tcp/8080"
                  and k["localDiscovery"] is False, k)
            if case == "ipfs-enable":
                check(f"{case}: offline by default: --offline, no bootstrap peers",
                      k["extraFlags"] == ["--offline"] and k["settings"].get("Bootstrap") == [], k)
            else:
                check(f"{case}: online: no --offline, bootstrap left to kubo",
                      k["extraFlags"] == [] and "Bootstrap" not in k["settings"], k)
            check(f"{case}: backends.ipfs points at it", data.get("backends", {}).get("ipfs") == {
                "api": f"http://127.0.0.1:{port}", "gateway": "http://127.0.0.1:8080", "publish": False}, data.get("backends"))

        elif case in ("bittorrent-enable", "bittorrent-secret"):
            a = f["aria2"]
            st = a["settings"] if a["enable"] else {}
            gen = case == "bittorrent-enable"
            port, dht = (6800, False) if gen else (6900, True)
            secret = "/var/lib/distributed-store-aria2/rpc-secret" if gen else "/run/keys/aria2-rpc-secret"
            check(f"{case}: aria2 with RPC on loopback only, port {port}", a["enable"] is True
                  and st.get("enable-rpc") is True and st.get("rpc-listen-all") is False
                  and st.get("rpc-listen-port") == port, a)
            check(f"{case}: DHT/DHT6/PEX/LPD {'on' if dht else 'off'} (bittorrent.dht)",
                  all(st.get(k) is dht for k in ("enable-dht", "enable-dht6", "enable-peer-exchange", "bt-enable-lpd")), st)
            check(f"{case}: aria2 keeps file names and has room for seeds (as tests/backends/servers.sh)",
                  st.get("auto-file-renaming") is False and st.get("max-concurrent-downloads") == 1000, st)
            check(f"{case}: aria2 reads the token from {secret}", a.get("rpcSecretFile") == secret, a.get("rpcSecretFile"))
            check(f"{case}: aria2's files group-readable in a setgid directory",
                  a.get("serviceUMask") == "0007" and a.get("downloadDirPermission") == "2770", a)
            check(f"{case}: the fetcher's user is in group aria2",
                  "aria2" in f["users"]["distributed-store"]["extraGroups"], f["users"]["distributed-store"])
            fsc = fsc_of(f)
            check(f"{case}: the fetcher may create/remove <dir>/<info-hash> (ReadWritePaths, UMask 0007)",
                  fsc.get("ReadWritePaths") == ["/var/lib/aria2/Downloads"] and fsc.get("UMask") == "0007", fsc)
            check(f"{case}: backends.bittorrent points at aria2", data.get("backends", {}).get("bittorrent") == {
                "engine": "aria2", "rpc": f"http://127.0.0.1:{port}/jsonrpc", "rpcSecretFile": secret,
                "downloadDirectory": "/var/lib/aria2/Downloads",
                "trackers": ["http://127.0.0.1:6969/announce"] if gen else [], "publish": False}, data.get("backends"))
            sec = f["services"].get("distributed-store-aria2-secret")
            fet = f["services"]["distributed-store-fetcher"]
            if gen:
                check(f"{case}: a token is generated once, root:distributed-store 0440, before aria2 and the fetcher",
                      sec is not None and sec["serviceConfig"].get("Type") == "oneshot"
                      and "/dev/urandom" in sec["script"] and 'if [ ! -s "$f" ]' in sec["script"]
                      and "chmod 0440" in sec["script"] and "chgrp distributed-store" in sec["script"]
                      and all("distributed-store-aria2-secret.service" in u["requires"] and "distributed-store-aria2-secret.service" in u["after"]
                              for u in (f["services"]["aria2"], fet)), sec)
                check(f"{case}: opentracker on loopback", f["opentracker"]["enable"] is True
                      and "-i 127.0.0.1" in f["opentracker"]["extraOptions"], f["opentracker"])
            else:
                check(f"{case}: no generated token when one is given", sec is None
                      and "distributed-store-aria2-secret.service" not in fet["requires"], sec)
                check(f"{case}: no tracker unless asked", f["opentracker"]["enable"] is False, f["opentracker"])
            check(f"{case}: fetcher ordered after aria2", "aria2.service" in fet["after"], fet["after"])
            check(f"{case}: no warnings, no failed assertions", f["warnings"] == [] and f["failedAssertions"] == [], f["failedAssertions"])

        elif case == "limits":
            psc = f["services"][PROXY]["serviceConfig"]
            check(f"{case}: burst 35 for idleExitSec 2, nofile 17408, MemoryMax 49408M (xz)",
                  f["services"][PROXY]["unitConfig"].get("StartLimitBurst") == 35 and psc.get("LimitNOFILE") == 17408
                  and psc.get("MemoryMax") == "49408M", (f["services"][PROXY]["unitConfig"], psc))

        elif case in ("mapper-wrong-field", "ipfs-no-endpoint", "s3-credentials-in-store", "bittorrent-secret-in-store"):
            pat = {"mapper-wrong-field": r"settings\.mappers\.0 \(type = \"folder\"\) needs `path`",
                   "bittorrent-secret-in-store": r"bittorrent\.rpcSecretFile is in the Nix store",
                   "ipfs-no-endpoint": r"backends\.ipfs needs `api`",
                   "s3-credentials-in-store": r"credentialsFile is in the Nix\s+store"}[case]
            fa = f["failedAssertions"]
            check(f"{case}: assertion fails with a message naming the key", any(re.search(pat, m) for m in fa), fa)

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
