# Three machines. "builder" builds two paths offline and serves them, signed by
# its key. "client" trusts that key and substitutes from builder directly, and
# (once the proxy resolves through peers) through its own local proxy.
# "stranger" trusts another key under the same name and must refuse.
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

    with subtest("client substitutes through its own proxy, which asks its peer (fleet issue)"):
        write_config(client, f"""listen = "[::]:5496"
    peers = ["http://builder:5496"]
    trustedPublicKeys = ["{pub}"]
    """)
        # As a user runs it: nix.conf already lists the local proxy first.
        needs_peers(
            client,
            "substitute via the local proxy",
            f"nix-store -r {via_peer} --option trusted-public-keys '{pub}' && grep -qx hello-from-via-peer {via_peer}",
        )

    with subtest("stranger's proxy does not relay the untrusted narinfo"):
        status, out = stranger.execute(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:5496/{hash_part(via_peer)}.narinfo")
        assert out.strip() == "404", f"stranger's proxy answered {out!r} for a path signed by an untrusted key"
  '';
}
