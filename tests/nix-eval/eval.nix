# Evaluates nixos-modules/distributed-store.nix with lib.evalModules, stub
# NixOS option declarations (stubs.nix) and a fake pkgs (fake-pkgs.nix), and
# returns plain data about the result for check.py.
#
#   nix-instantiate --eval --strict --json eval.nix --arg nixpkgsLib /path/to/nixpkgs/lib [--argstr case NAME]
#
# Without `case`: the list of case names. With it: { facts; baseline; sameAsBaseline; options }.
{
  nixpkgsLib,
  case ? null,
}:

let
  lib = import nixpkgsLib;
  pkgs = import ./fake-pkgs.nix { inherit lib; };
  cases = import ./cases.nix;

  evalWith =
    modules:
    lib.evalModules {
      modules = [
        ./stubs.nix
        { _module.args.pkgs = pkgs; }
      ] ++ modules;
    };

  # Everything the module could touch, as JSON-friendly data.
  facts =
    config:
    let
      unit = u: {
        inherit (u) wantedBy requires after unitConfig;
        restartTriggers = map toString u.restartTriggers;
      };
    in
    {
      services = lib.mapAttrs (
        _: s:
        unit s
        // {
          inherit (s) serviceConfig environment script;
        }
      ) config.systemd.services;
      sockets = lib.mapAttrs (
        _: s:
        unit s
        // {
          inherit (s) socketConfig listenStreams;
        }
      ) config.systemd.sockets;
      systemdPackages = map toString config.systemd.packages;
      tmpfiles = config.systemd.tmpfiles.rules;
      dbusPackages = map toString config.services.dbus.packages;
      systemPackages = map toString config.environment.systemPackages;
      users = config.users.users;
      groups = config.users.groups;
      etc = lib.mapAttrs (_: e: {
        source = toString e.source;
        text = e.source.text or null;
      }) config.environment.etc;
      firewallTCP = config.networking.firewall.allowedTCPPorts;
      firewallUDP = config.networking.firewall.allowedUDPPorts;
      nixSettings = config.nix.settings;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      warnings = config.warnings;
      kubo = config.services.kubo;
      # rpcSecretFile has no default: only read when aria2 is on.
      aria2 = if config.services.aria2.enable then config.services.aria2 else { enable = false; };
      opentracker = config.services.opentracker;
    };

  module = ../../nixos-modules/distributed-store.nix;
  baseline = facts (evalWith [ ]).config;

  # Option docs: name, type, whether described (for check.py and docs/nixos.md).
  optionDocs =
    let
      e = evalWith [ module ];
    in
    map (o: {
      inherit (o) name type;
      described = (o.description or null) != null && o.description != "";
    }) (lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList e.options.services.distributed-store));

  run =
    name:
    let
      # The case comes first, so that its definitions precede the module's:
      # list options then show whether the module really orders its entries.
      f = facts (evalWith [
        cases.${name}
        module
      ]).config;
    in
    {
      facts = f;
      inherit baseline;
      sameAsBaseline = f == baseline;
      options = optionDocs;
    };
in
if case == null then builtins.attrNames cases else run case
