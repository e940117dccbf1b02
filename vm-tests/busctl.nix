# One machine: what an operator sees. Socket activation of the proxy, D-Bus
# activation of the signer and the fetcher, the mapper started at boot, the
# status API with busctl and the CLI, the D-Bus policy, systemd's view of the
# units, and that the key reaches only the signer.
{
  pkgs,
  servingNode,
  defaults,
  pythonHelpers,
  ...
}:

pkgs.testers.runNixOSTest {
  name = "distributed-store-busctl";

  inherit defaults;

  nodes.machine = servingNode [ "local" ];

  testScript = ''
    ${pythonHelpers}

    PROXY = "org.distributedstore.Proxy1 /org/distributedstore/Proxy1 org.distributedstore.Proxy1"
    SIGNER = "org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1"


    def state(unit):
        return machine.succeed(f"systemctl show -p ActiveState --value {unit}").strip()


    def show(unit, props):
        out = machine.succeed(f"systemctl show -p {props} {unit}")
        return dict(line.split("=", 1) for line in out.strip().splitlines())


    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("distributed-store-proxy.socket")
    pub = gen_key(machine, "machine-1")
    path = build_payload(machine, "local")

    with subtest("nothing runs before it is needed"):
        assert state("distributed-store-proxy.service") == "inactive", state("distributed-store-proxy.service")
        assert state("distributed-store-signer.service") == "inactive", state("distributed-store-signer.service")
        listen = show("distributed-store-proxy.socket", "Listen")["Listen"]
        assert "[::]:5496" in listen, listen

    with subtest("the mapper runs from boot, the fetcher starts on its first D-Bus call"):
        machine.wait_for_unit("distributed-store-mapper.service")
        assert state("distributed-store-fetcher.service") == "inactive", state("distributed-store-fetcher.service")
        props = show("distributed-store-mapper.service", "Type,User,WatchdogUSec")
        assert props["Type"] == "dbus" and props["User"] == "distributed-store", props
        # The module's default cacheSize, 10G.
        assert machine.succeed(f"busctl get-property {FETCHER} CacheMaxBytes").strip() == "t 10737418240"
        machine.wait_until_succeeds("systemctl is-active distributed-store-fetcher.service")
        assert show("distributed-store-fetcher.service", "User")["User"] == "distributed-store"
        machine.wait_until_succeeds(f"test $(busctl get-property {MAPPER} IndexedPaths | cut -d' ' -f2) -gt 0", timeout=60)

    with subtest("D-Bus policy: others may read Mapper1/Fetcher1 status, not call their methods"):
        machine.succeed(f"runuser -u nobody -- busctl get-property {MAPPER} IndexedPaths")
        machine.succeed(f"runuser -u nobody -- busctl get-property {FETCHER} CacheBytes")
        out = machine.fail(f"runuser -u nobody -- busctl call {MAPPER} Lookup sb {hash_part(path)} false 2>&1")
        assert any(w in out for w in ("Access denied", "AccessDenied", "Rejected send message")), out
        out = machine.fail(f"runuser -u nobody -- busctl call {FETCHER} Held s {hash_part(path)} 2>&1")
        assert any(w in out for w in ("Access denied", "AccessDenied", "Rejected send message")), out
        out = machine.fail(f"runuser -u nobody -- busctl call {MAPPER} ReportBad ss http://x:5496 test 2>&1")
        assert any(w in out for w in ("Access denied", "AccessDenied", "Rejected send message")), out

    with subtest("the key reaches the signer only, through LoadCredential"):
        # One LoadCredential= line per credential: the unit's default must be gone.
        cred = machine.succeed("systemctl show -p LoadCredential distributed-store-signer.service")
        assert "signing-key:/run/keys/ds.sec" in cred, cred
        assert "/etc/distributed-store/signing-key" not in cred, f"the unit's default credential was not replaced: {cred}"
        machine.fail("runuser -u distributed-store -- cat /run/keys/ds.sec")
        machine.succeed("runuser -u distributed-store -- cat /etc/distributed-store/config.toml")

    with subtest("D-Bus activation: the first Sign starts the signer"):
        out = machine.succeed(f"busctl call {SIGNER} Sign s {path}")
        assert out.startswith('s "machine-1:'), out
        machine.wait_until_succeeds("systemctl is-active distributed-store-signer.service")
        assert machine.succeed(f"busctl get-property {SIGNER} SignaturesIssued").strip() == "t 1"
        assert machine.succeed(f"busctl get-property {SIGNER} PublicKey").strip() == f's "{pub}"'

    with subtest("the signer refuses paths this machine does not have"):
        out = machine.fail(f"busctl call {SIGNER} Sign s /nix/store/00000000000000000000000000000000-nope 2>&1")
        assert "PathNotValid" in out or "not valid" in out, out
        assert machine.succeed(f"busctl get-property {SIGNER} RequestsRefused").strip() == "t 1"

    with subtest("D-Bus policy: others may read the status, not call Sign"):
        out = machine.fail(f"runuser -u nobody -- busctl call {SIGNER} Sign s {path} 2>&1")
        assert any(w in out for w in ("Access denied", "AccessDenied", "Rejected send message")), out
        machine.succeed(f"runuser -u nobody -- busctl get-property {SIGNER} PublicKey")

    with subtest("socket activation: the first connection starts the proxy"):
        info = machine.succeed("curl -sf http://127.0.0.1:5496/nix-cache-info")
        assert "StoreDir: /nix/store" in info and "Priority: 30" in info, info
        machine.wait_until_succeeds("systemctl is-active distributed-store-proxy.service")
        machine.succeed(f"curl -sf http://127.0.0.1:5496/{hash_part(path)}.narinfo | grep -q '^Sig: machine-1:'")
        machine.succeed("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5496/00000000000000000000000000000000.narinfo | grep -qx 404")

    with subtest("busctl shows the proxy's status"):
        intro = machine.succeed("busctl introspect org.distributedstore.Proxy1 /org/distributedstore/Proxy1")
        for prop in ("Listen", "Store", "PublicKey", "Requests", "NarinfoHits", "NarinfoMisses",
                     "NarBytesSent", "UptimeSeconds", "Version"):
            assert f".{prop} " in intro, f"property {prop} missing from:\n{intro}"
        requests = int(machine.succeed(f"busctl get-property {PROXY} Requests").split()[1])
        assert requests >= 3, requests
        assert machine.succeed(f"busctl get-property {PROXY} NarinfoHits").strip() == "t 1"
        assert machine.succeed(f"busctl get-property {PROXY} NarinfoMisses").strip() == "t 1"
        assert machine.succeed(f"busctl get-property {PROXY} PublicKey").strip() == f's "{pub}"'
        machine.succeed(f"runuser -u nobody -- busctl get-property {PROXY} Version")

    with subtest("distributed-store status and /metrics"):
        status = machine.succeed("distributed-store status")
        assert "5496" in status, status
        metrics = machine.succeed("curl -sf http://127.0.0.1:5496/metrics")
        assert metrics.strip(), "empty /metrics"

    with subtest("systemd's view: running, watchdog armed, no restarts"):
        props = show("distributed-store-proxy.service", "ActiveState,SubState,NRestarts,WatchdogUSec")
        machine.log(repr(props))
        assert props["ActiveState"] == "active" and props["SubState"] == "running", props
        assert props["NRestarts"] == "0", props
        assert props["WatchdogUSec"] not in ("0", "infinity"), props
        machine.succeed("journalctl -u distributed-store-proxy.service --no-pager | grep -q .")
        for unit in ("distributed-store-mapper.service", "distributed-store-fetcher.service"):
            props = show(unit, "ActiveState,NRestarts,WatchdogUSec")
            machine.log(f"{unit}: {props!r}")
            assert props["ActiveState"] == "active" and props["NRestarts"] == "0", props
            assert props["WatchdogUSec"] not in ("0", "infinity"), props
  '';
}
