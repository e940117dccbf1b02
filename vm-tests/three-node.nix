# Three machines. "builder" builds two paths offline and serves them, signed by
# its key; its mapper runs from boot and indexes them. "client" trusts that key
# and substitutes from builder directly, then through its own local proxy with
# builder in settings.peers (mapper: Lookup; fetcher: the NAR). "stranger" has
# builder as a peer too but trusts another key under the same name: its proxy
# must not relay the narinfo and its Nix must not get the path.
{
  pkgs,
  lib,
  defaults,
  servingNode,
  strangerKey,
  pythonHelpers,
  ...
}:

pkgs.testers.runNixOSTest {
  name = "distributed-store-three-node";

  inherit defaults;

  nodes = {
    builder = servingNode [
      "direct"
      "via-peer"
    ];

    client = {
      services.distributed-store = {
        enable = true;
        addToSubstituters = true;
        settings.peers = [ "http://builder:5496" ];
        # The builder's key only exists at test time; see write_config.
      };
    };

    stranger = {
      services.distributed-store = {
        enable = true;
        addToSubstituters = true;
        settings.peers = [ "http://builder:5496" ];
        settings.trustedPublicKeys = [ strangerKey ];
      };
    };
  };

  testScript = ''
    ${pythonHelpers}

    start_all()
    builder.wait_for_unit("multi-user.target")
    pub = gen_key(builder, "builder-1")

    with subtest("builder builds offline and serves signed narinfos"):
        direct = build_payload(builder, "direct")
        via_peer = build_payload(builder, "via-peer")
        builder.wait_for_unit("distributed-store-proxy.socket")
        builder.wait_for_open_port(5496)
        info = builder.succeed("curl -sf http://127.0.0.1:5496/nix-cache-info")
        assert "StoreDir: /nix/store" in info, info
        narinfo = builder.succeed(f"curl -sf http://127.0.0.1:5496/{hash_part(direct)}.narinfo")
        assert f"StorePath: {direct}" in narinfo, narinfo
        assert "Sig: builder-1:" in narinfo, narinfo

    with subtest("builder: the mapper runs from boot, indexes the store, and busctl shows it"):
        builder.wait_for_unit("distributed-store-mapper.service")
        intro = builder.succeed("busctl introspect org.distributedstore.Mapper1 /org/distributedstore/Mapper1")
        for member in ("Lookup", "Announce", "ReportBad", "SetFetching", "IndexedPaths", "PeerPaths",
                       "Peers", "LastSync", "IndexBytes", "Lookups"):
            assert f".{member} " in intro, f"{member} missing from:\n{intro}"
        # The payloads were built after boot: the index catches up.
        builder.wait_until_succeeds(
            f"test $(busctl get-property {MAPPER} IndexedPaths | cut -d' ' -f2) -ge 2", timeout=60
        )
        builder.log(f"builder IndexedPaths: {prop_u64(builder, MAPPER, 'IndexedPaths')}")
        builder.succeed(f"runuser -u nobody -- busctl get-property {MAPPER} IndexedPaths")

    client.wait_for_unit("multi-user.target")
    stranger.wait_for_unit("multi-user.target")

    with subtest("client: the module put the local proxy first"):
        client.succeed("grep -E '^substituters = http://127.0.0.1:5496( |$)' /etc/nix/nix.conf")

    with subtest("client substitutes from builder, trusting builder's key"):
        client.fail(f"nix-store --check-validity {direct}")
        client.succeed(
            f"nix-store -r {direct} --option substituters http://builder:5496 "
            f"--option trusted-public-keys '{pub}'"
        )
        client.succeed(f"grep -qx hello-from-direct {direct}")
        client.succeed(f"nix-store --verify-path {direct}")
        sigs = client.succeed(f"nix --extra-experimental-features nix-command path-info --sigs {direct}")
        assert "builder-1:" in sigs, sigs

    with subtest("stranger refuses builder's paths: signed by a key it does not trust"):
        out = stranger.fail(
            f"nix-store -r {direct} --option substituters http://builder:5496 2>&1"
        )
        assert "is not signed by any of the keys" in out, out
        stranger.fail(f"nix-store --check-validity {direct}")

    with subtest("client substitutes through its own proxy, which asks its peer"):
        write_config(client, f"""listen = "[::]:5496"
    peers = ["http://builder:5496"]
    trustedPublicKeys = ["{pub}"]
    """)
        client.fail(f"nix-store --check-validity {via_peer}")
        client.wait_for_unit("distributed-store-mapper.service")
        needs_peers(
            client,
            "the client's mapper learns what builder holds",
            f"test $(busctl get-property {MAPPER} PeerPaths | cut -d' ' -f2) -gt 0",
            timeout=90,
        )
        # curl first: Nix would remember a 404 for an hour, curl does not.
        needs_peers(
            client,
            "the client's proxy relays builder's signed narinfo",
            f"curl -sf http://127.0.0.1:5496/{hash_part(via_peer)}.narinfo | grep -q '^Sig: builder-1:'",
            timeout=60,
        )
        # As a user runs it: nix.conf already lists the local proxy first.
        needs_peers(
            client,
            "substitute via the local proxy",
            f"nix-store -r {via_peer} --option trusted-public-keys '{pub}' && grep -qx hello-from-via-peer {via_peer}",
        )
        needs_peers(
            client,
            "the NAR came through the client's fetcher, from the peer",
            f"systemctl is-active distributed-store-fetcher.service && busctl get-property {FETCHER} BytesFetched | grep -q '\"peer\"'",
        )
        if PEERS_IMPLEMENTED:
            client.succeed(f"nix-store --verify-path {via_peer}")
            client.log(client.succeed(f"busctl get-property {MAPPER} Peers Lookups"))

    with subtest("stranger, with builder as its peer, neither relays nor substitutes the untrusted path"):
        stranger.wait_for_unit("distributed-store-mapper.service")
        # The announcement (hash parts, unsigned) arrives; the narinfo it
        # would need carries a signature the stranger does not trust.
        needs_peers(
            stranger,
            "the stranger's mapper learns what builder holds",
            f"test $(busctl get-property {MAPPER} PeerPaths | cut -d' ' -f2) -gt 0",
            timeout=120,
        )
        status, out = stranger.execute(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:5496/{hash_part(via_peer)}.narinfo")
        assert out.strip() == "404", f"stranger's proxy answered {out!r} for a path signed by an untrusted key"
        # Through its own proxy (first in nix.conf): refused.
        stranger.fail(f"nix-store -r {via_peer} --option narinfo-cache-negative-ttl 0")
        stranger.fail(f"nix-store --check-validity {via_peer}")
  '';
}
