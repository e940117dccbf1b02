# Declarations of the NixOS options that nixos-modules/distributed-store.nix
# defines values for, with the types NixOS gives them (simplified where the
# difference does not matter here), plus NixOS's own defaults for the nix
# settings the module extends. Options the module does not declare or touch
# are left out on purpose: a typo in the module is then an evaluation error.
{ lib, ... }:

let
  inherit (lib) types mkOption;

  # NixOS's systemd unit option type (nixos/lib/systemd-types.nix): lists from
  # several definitions are concatenated, other values must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  unitCommon = {
    wantedBy = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    requires = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    after = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    restartTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  listOfAnything = mkOption {
    type = types.listOf types.unspecified;
    default = [ ];
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    environment.systemPackages = listOfAnything;
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            source = mkOption { type = types.unspecified; };
            mode = mkOption {
              type = types.str;
              default = "symlink";
            };
          };
        }
      );
    };

    systemd.packages = listOfAnything;
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = unitCommon // {
            serviceConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
            environment = mkOption {
              type = types.attrsOf types.str;
              default = { };
            };
            script = mkOption {
              type = types.lines;
              default = "";
            };
          };
        }
      );
    };
    systemd.sockets = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = unitCommon // {
            listenStreams = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            socketConfig = mkOption {
              type = types.attrsOf unitOption;
              default = { };
            };
          };
        }
      );
    };

    services.dbus.packages = listOfAnything;

    users.users = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options = {
            isSystemUser = mkOption {
              type = types.bool;
              default = false;
            };
            isNormalUser = mkOption {
              type = types.bool;
              default = false;
            };
            group = mkOption {
              type = types.str;
              default = "";
            };
            description = mkOption {
              type = types.str;
              default = "";
            };
            extraGroups = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
          };
        }
      );
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
          options.members = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        }
      );
    };

    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    networking.firewall.allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    # The parts of nixpkgs' services.kubo, services.aria2 and
    # services.opentracker that the module sets (same names and types).
    services.kubo = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      localDiscovery = mkOption {
        type = types.bool;
        default = false;
      };
      extraFlags = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      settings = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf types.unspecified;
          options.Addresses.API = mkOption {
            type = types.oneOf [
              types.str
              (types.listOf types.str)
            ];
            default = [ ];
          };
          options.Addresses.Gateway = mkOption {
            type = types.oneOf [
              types.str
              (types.listOf types.str)
            ];
            default = [ ];
          };
        };
      };
    };
    # nixpkgs' nixos/modules/services/networking/aria2.nix (current form:
    # rpcSecretFile required, serviceUMask, downloadDirPermission, a
    # freeform `settings` of bool/int/float/single-line strings).
    services.aria2 = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      openPorts = mkOption {
        type = types.bool;
        default = false;
      };
      rpcSecretFile = mkOption { type = types.path; };
      serviceUMask = mkOption {
        type = types.str;
        default = "0022";
      };
      downloadDirPermission = mkOption {
        type = types.str;
        default = "0770";
      };
      settings = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf (
            types.oneOf [
              types.bool
              types.int
              types.float
              types.singleLineStr
            ]
          );
          options = {
            dir = mkOption {
              type = types.singleLineStr;
              default = "/var/lib/aria2/Downloads";
            };
            enable-rpc = mkOption {
              type = types.bool;
              default = true;
            };
            rpc-listen-port = mkOption {
              type = types.port;
              default = 6800;
            };
            listen-port = mkOption {
              type = types.listOf (types.attrsOf types.port);
              default = [
                {
                  from = 6881;
                  to = 6999;
                }
              ];
            };
          };
        };
      };
    };
    services.opentracker = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      extraOptions = mkOption {
        type = types.separatedString " ";
        default = "";
      };
    };

    nix.settings = mkOption {
      default = { };
      type = types.submodule {
        freeformType = types.attrsOf types.unspecified;
        options = {
          substituters = mkOption { type = types.listOf types.str; };
          trusted-public-keys = mkOption { type = types.listOf types.str; };
        };
      };
    };
  };

  # What NixOS itself sets (nixos/modules/config/nix.nix).
  config.nix.settings = {
    substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
    trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  };
}
