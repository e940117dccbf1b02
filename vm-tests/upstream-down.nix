# Upstreams down, peer up. The client's proxy has two dead upstreams: one
# unreachable (errors at once) and one that silently drops packets (only a
# deadline ends the wait). A peer must still serve, and a path nobody has must
# get a fast 404, never a hang: Nix waits for its substituters.
{
  pkgs,
  defaults,
  servingNode,
  pythonHelpers,
  ...
}:

let
  unreachable = "192.0.2.1"; # TEST-NET-1, routed to "unreachable" below
  blackhole = "198.51.100.1"; # TEST-NET-2, packets dropped below
  missing = "/nix/store/00000000000000000000000000000000-not-anywhere";
in
pkgs.testers.runNixOSTest {
  name = "distributed-store-upstream-down";

  inherit defaults;

  nodes = {
    peer = servingNode [ "on-peer" ];

    client = {
      environment.systemPackages = [ pkgs.iptables ];
      services.distributed-store = {
        enable = true;
        addToSubstituters = true;
        settings.peers = [ "http://peer:5496" ];
        settings.upstreams = [
          "http://${unreachable}:5496"
          "http://${blackhole}:5496"
        ];
      };
    };
  };

  testScript = ''
    ${pythonHelpers}

    start_all()
    peer.wait_for_unit("multi-user.target")
    pub = gen_key(peer, "peer-1")
    on_peer = build_payload(peer, "on-peer")
    peer.wait_for_open_port(5496)

    client.wait_for_unit("multi-user.target")
    client.succeed("ip route add unreachable ${unreachable}/32")
    client.succeed("iptables -I OUTPUT -d ${blackhole} -j DROP")
    client.fail("curl -s --max-time 3 http://${unreachable}:5496/nix-cache-info")
    client.fail("curl -s --max-time 3 http://${blackhole}:5496/nix-cache-info")

    with subtest("the peer is up"):
        client.succeed(f"curl -sf http://peer:5496/{hash_part(on_peer)}.narinfo")

    with subtest("a miss is a fast 404 with every upstream down"):
        for attempt in ("first", "second"):
            status, out, secs = timed(
                client,
                "curl -s -o /dev/null -w '%{http_code}' --max-time 60 "
                "http://127.0.0.1:5496/${builtins.substring 11 32 missing}.narinfo",
            )
            client.log(f"{attempt} miss: HTTP {out} in {secs:.2f}s")
            assert out.strip() == "404", f"{attempt} miss answered {out!r}, want 404"
            assert secs < 5, f"{attempt} miss took {secs:.1f}s; a miss must not wait on dead upstreams"

    with subtest("Nix gives up on a missing path quickly through the proxy"):
        status, out, secs = timed(
            client,
            "nix-store -r ${missing} --option substituters http://127.0.0.1:5496 2>&1",
        )
        assert status != 0, out
        assert secs < 15, f"nix-store -r of a missing path took {secs:.1f}s"

    with subtest("the peer still serves while the upstreams are down"):
        write_config(client, f"""listen = "[::]:5496"
    peers = ["http://peer:5496"]
    upstreams = ["http://${unreachable}:5496", "http://${blackhole}:5496"]
    trustedPublicKeys = ["{pub}"]
    """)
        # curl first: Nix would remember a 404 for an hour, curl does not.
        needs_peers(
            client,
            "the client's proxy relays the peer's narinfo with upstreams down",
            f"curl -sf --max-time 10 http://127.0.0.1:5496/{hash_part(on_peer)}.narinfo | grep -q '^Sig: peer-1:'",
            timeout=90,
        )
        needs_peers(
            client,
            "substitute from the peer with upstreams down",
            f"timeout 60 nix-store -r {on_peer} --option substituters http://127.0.0.1:5496 "
            f"--option trusted-public-keys '{pub}' && grep -qx hello-from-on-peer {on_peer}",
        )
  '';
}
