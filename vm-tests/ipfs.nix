# One machine with `ipfs.enable`: the module's kubo wiring as the fetcher
# needs it. kubo runs offline (no bootstrap peers, no public network), its RPC
# API and gateway answer on loopback only, the rendered config points
# `[backends.ipfs]` at them, a block added through the API comes back through
# the trustless gateway (the two endpoints the IPFS backend uses), and the
# fetcher starts with that config (D-Bus activation, busctl).
{
  pkgs,
  defaults,
  ...
}:

pkgs.testers.runNixOSTest {
  name = "distributed-store-ipfs";

  inherit defaults;

  nodes.machine = {
    services.distributed-store = {
      enable = true;
      ipfs.enable = true;
      settings.discovery = false;
    };
  };

  testScript = ''
    import json

    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("ipfs.service")
    machine.wait_for_open_port(5001, "127.0.0.1")
    machine.wait_for_open_port(8080, "127.0.0.1")

    with subtest("API and gateway listen on loopback only"):
        listening = machine.succeed("ss -Htln")
        for port in (5001, 8080):
            addrs = [l.split()[3] for l in listening.splitlines() if l.split()[3].endswith(f":{port}")]
            assert addrs and all(a.startswith("127.0.0.1:") for a in addrs), (port, addrs)

    with subtest("offline: no bootstrap peers, no swarm peers"):
        boot = json.loads(machine.succeed("curl -sf -X POST http://127.0.0.1:5001/api/v0/bootstrap/list"))
        assert not boot.get("Peers"), boot

    with subtest("the config points [backends.ipfs] at kubo"):
        conf = machine.succeed("cat /etc/distributed-store/config.toml")
        assert "127.0.0.1:5001" in conf and "127.0.0.1:8080" in conf, conf

    with subtest("a block added through the API comes back through the gateway"):
        added = json.loads(machine.succeed(
            "echo distributed-store-ipfs-check > /tmp/b && "
            "curl -sf -X POST -F file=@/tmp/b 'http://127.0.0.1:5001/api/v0/add?cid-version=1&raw-leaves=true'"))
        cid = added["Hash"]
        raw = machine.succeed(f"curl -sf 'http://127.0.0.1:8080/ipfs/{cid}?format=raw'")
        assert raw == "distributed-store-ipfs-check\n", raw

    with subtest("the fetcher starts with the IPFS backend configured"):
        machine.succeed("busctl introspect org.distributedstore.Fetcher1 /org/distributedstore/Fetcher1")
        machine.wait_for_unit("distributed-store-fetcher.service")
  '';
}
