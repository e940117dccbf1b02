# Shared parts of the VM tests: node defaults, the test payload and Python
# helpers for the test scripts.
{
  pkgs,
  module,
  peersImplemented,
}:

let
  inherit (pkgs) lib;

  # A trivial input-addressed derivation that builds offline, inside the
  # node's sandbox, with busybox's sh as builder. `builtins.storePath` gives
  # the builder string its context, so the sandbox gets busybox's closure.
  # Different salts give different store paths.
  payload =
    salt:
    pkgs.writeText "ds-payload-${salt}.nix" ''
      derivation {
        name = "ds-payload-${salt}";
        system = "${pkgs.stdenv.hostPlatform.system}";
        builder = "''${builtins.storePath "${pkgs.busybox}"}/bin/sh";
        args = [ "-c" "echo hello-from-${salt} > $out" ];
      }
    '';
in
{
  inherit pkgs lib peersImplemented;

  # Another key with the builder's key *name*: a realistic negative control
  # (the secret half was thrown away).
  strangerKey = "builder-1:Uc8pCDSrCaQG1oChmHh8eEAJ//xB0vmok/iiSDwXXsU=";

  defaults = {
    imports = [ module ];
    environment.systemPackages = [ pkgs.curl ];
    # No internet in the VMs: fail fast on cache.nixos.org, which NixOS
    # keeps in the substituters.
    nix.settings.connect-timeout = 2;
  };

  # A node that builds the payloads and serves them, signed by its own key.
  servingNode = salts: {
    services.distributed-store = {
      enable = true;
      openFirewall = true;
      # Generated at test time by genKey (see below); never in the store.
      settings.privateKeyFile = "/run/keys/ds.sec";
    };
    system.extraDependencies = [ pkgs.busybox ];
    environment.etc = lib.listToAttrs (
      map (s: lib.nameValuePair "ds-test/payload-${s}.nix" { source = payload s; }) salts
    );
  };

  pythonHelpers = ''
    import shlex
    import time

    PEERS_IMPLEMENTED = ${if peersImplemented then "True" else "False"}


    def gen_key(machine, name):
        """A fresh signing key in /run/keys (tmpfs, root only), as an admin
        would deploy one; returns the public key."""
        machine.succeed(
            "mkdir -p /run/keys && (umask 077 && nix-store --generate-binary-cache-key "
            f"{name} /run/keys/ds.sec /run/keys/ds.pub)"
        )
        return machine.succeed("cat /run/keys/ds.pub").strip()


    def build_payload(machine, salt):
        out = machine.succeed(f"nix-build --no-out-link /etc/ds-test/payload-{salt}.nix").strip()
        machine.succeed(f"grep -qx hello-from-{salt} {out}")
        return out


    def hash_part(path):
        return path.removeprefix("/nix/store/").split("-", 1)[0]


    MAPPER = "org.distributedstore.Mapper1 /org/distributedstore/Mapper1 org.distributedstore.Mapper1"
    FETCHER = "org.distributedstore.Fetcher1 /org/distributedstore/Fetcher1 org.distributedstore.Fetcher1"


    def write_config(machine, toml):
        """Replace the module's config.toml at test time. Only because the
        trusted key is generated at test time: a real fleet puts the public
        key into settings.trustedPublicKeys. Every service reads the file at
        start, so the running ones restart (the mapper runs from boot)."""
        machine.succeed(
            "rm -f /etc/distributed-store/config.toml && "
            f"printf '%s' {shlex.quote(toml)} > /etc/distributed-store/config.toml && "
            "systemctl try-restart distributed-store-proxy.service distributed-store-mapper.service "
            "distributed-store-fetcher.service"
        )


    def prop_u64(machine, bus, prop):
        """A `t` (u64) property read with busctl, e.g. Mapper1.IndexedPaths."""
        out = machine.succeed(f"busctl get-property {bus} {prop}").split()
        assert out[0] == "t", out
        return int(out[1])


    def needs_peers(machine, what, cmd, timeout=None):
        """Run cmd where it depends on the proxy resolving through peers; with
        a timeout, retry it until then (a restarted mapper polls its peers
        first)."""
        if PEERS_IMPLEMENTED:
            if timeout is not None:
                return machine.wait_until_succeeds(cmd, timeout=timeout)
            return machine.succeed(cmd)
        status, out = machine.execute(cmd)
        if status == 0:
            raise Exception(
                f"{what}: passed, but peersImplemented = false in vm-tests/default.nix; set it to true"
            )
        machine.log(f"XFAIL {what}: needs peer resolution in the proxy (fleet issue); exit {status}: {out}")
        return None


    def timed(machine, cmd):
        start = time.monotonic()
        status, out = machine.execute(cmd)
        return status, out, time.monotonic() - start
  '';
}
