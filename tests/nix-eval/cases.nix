# Module configurations the evaluation test runs. Each case is a NixOS module;
# check.py holds what is expected of each (by name).
let
  fleetKey = "fleet-1:rDtdWTDXj4F9xlfPuLSX2Q1dPOFS3SBJPqJuEpWMJVg=";
  upstreamKey = "cache.example.org-1:0f6N5Q3MWXDlWlFdiQ6NKcOyawuexmeJyv9R0xLtSWk=";
in
{
  # Module imported, nothing set.
  disabled = { };

  # Everything set but enable: still nothing may change.
  disabled-with-settings = {
    services.distributed-store = {
      addToSubstituters = true;
      openFirewall = true;
      settings = {
        privateKeyFile = "/nix/store/00000000000000000000000000000000-key";
        listen = "not an address";
        trustedPublicKeys = [ fleetKey ];
      };
    };
  };

  enabled-minimal = {
    services.distributed-store.enable = true;
  };

  enabled-with-key = {
    services.distributed-store = {
      enable = true;
      settings = {
        privateKeyFile = "/run/keys/ds.sec";
        trustedPublicKeys = [ fleetKey ];
        peers = [ "http://build1:5496" ];
        upstreams = [
          "https://mirror.example.org"
          {
            url = "https://cache.example.org";
            publicKeys = [ upstreamKey ];
          }
        ];
        compression = "xz";
        idleExitSec = 600;
      };
    };
  };

  add-substituters = {
    # The user's own cache: the local proxy must still come first.
    nix.settings.substituters = [ "https://cache.example.org/" ];
    services.distributed-store = {
      enable = true;
      addToSubstituters = true;
      settings = {
        trustedPublicKeys = [ fleetKey ];
        upstreams = [
          {
            url = "https://cache.example.org";
            publicKeys = [ upstreamKey ];
          }
        ];
      };
    };
  };

  add-substituters-false = {
    services.distributed-store = {
      enable = true;
      addToSubstituters = false;
      settings.trustedPublicKeys = [ fleetKey ];
    };
  };

  add-substituters-no-keys = {
    services.distributed-store = {
      enable = true;
      addToSubstituters = true;
    };
  };

  key-in-store = {
    services.distributed-store = {
      enable = true;
      settings.privateKeyFile = "/nix/store/00000000000000000000000000000000-ds.sec";
    };
  };

  listen-port = {
    services.distributed-store = {
      enable = true;
      addToSubstituters = true;
      openFirewall = true;
      settings.listen = "[::]:6001";
      settings.trustedPublicKeys = [ fleetKey ];
    };
  };

  discovery-off = {
    services.distributed-store = {
      enable = true;
      openFirewall = true;
      settings.discovery = false;
    };
  };

  discovery-no-firewall = {
    services.distributed-store = {
      enable = true;
      settings.discovery = true;
    };
  };

  listen-loopback-firewall = {
    services.distributed-store = {
      enable = true;
      openFirewall = true;
      settings.listen = "127.0.0.1:5496";
    };
  };

  listen-ipv6-loopback = {
    services.distributed-store = {
      enable = true;
      addToSubstituters = true;
      settings.listen = "[::1]:7000";
      settings.trustedPublicKeys = [ fleetKey ];
    };
  };

  bad-listen-host = {
    services.distributed-store = {
      enable = true;
      openFirewall = true;
      settings.listen = "localhost:5496";
    };
  };

  bad-listen-port = {
    services.distributed-store = {
      enable = true;
      settings.listen = "[::]:70000";
    };
  };

  freeform = {
    services.distributed-store = {
      enable = true;
      settings = {
        store = "local?root=/srv/nix";
        wantMassQuery = false;
        maxConnections = 64;
      };
    };
  };

  hardening-override = {
    services.distributed-store.enable = true;
    systemd.services.distributed-store-proxy.serviceConfig.MemoryDenyWriteExecute = false;
  };

  # A fleet node with the mapper's and fetcher's keys set, directories
  # outside the units' defaults and the port open for its peers.
  fleet-settings = {
    services.distributed-store = {
      enable = true;
      openFirewall = true;
      settings = {
        peers = [
          "http://build1:5496"
          "http://build2:5496"
        ];
        trustedPublicKeys = [ fleetKey ];
        stateDirectory = "/srv/ds/state";
        cacheDirectory = "/srv/ds/cache";
        cacheSize = 53687091200;
        peerTimeoutMs = 150;
        upstreamTimeoutMs = 2000;
      };
    };
  };

  # cacheSize as text with a fraction; directories at their defaults.
  cache-size-text = {
    services.distributed-store = {
      enable = true;
      settings.cacheSize = "1.5T";
    };
  };

  # The user may still start the mapper on demand only.
  mapper-on-demand =
    { lib, ... }:
    {
      services.distributed-store.enable = true;
      systemd.services.distributed-store-mapper.wantedBy = lib.mkForce [ ];
    };

  # Expected to fail evaluation (run.sh checks the error message).
  bad-compression = {
    services.distributed-store = {
      enable = true;
      settings.compression = "gzip";
    };
  };

  bad-public-key = {
    services.distributed-store = {
      enable = true;
      # A secret key (64 bytes) pasted where the public key belongs.
      settings.trustedPublicKeys = [
        "fleet-1:3lDb9ASnWZ1G8Ei2r4XU4A7kEcAtPaqQu6brVBTHPUmt3oMW0fRIJ3TiPLRfhtZIh8UTsnBYIa4JhaEkw1n1PA=="
      ];
    };
  };

  bad-peer = {
    services.distributed-store = {
      enable = true;
      settings.peers = [ "build1:5496" ];
    };
  };

  bad-cache-size = {
    services.distributed-store = {
      enable = true;
      settings.cacheSize = "10 gigabytes";
    };
  };

  bad-peer-timeout = {
    services.distributed-store = {
      enable = true;
      settings.peerTimeoutMs = 0;
    };
  };

  bad-upstream-timeout = {
    services.distributed-store = {
      enable = true;
      settings.upstreamTimeoutMs = 600001;
    };
  };

  bad-state-directory = {
    services.distributed-store = {
      enable = true;
      settings.stateDirectory = "var/lib/ds";
    };
  };

  # issue 9: mappers and backends, rendered as the services read them.
  plugins = {
    services.distributed-store = {
      enable = true;
      settings = {
        mappers = [
          {
            type = "folder";
            path = "/srv/ds-index";
          }
          {
            type = "http";
            url = "http://build1:5496";
            deadlineMs = 300;
          }
          {
            type = "command";
            command = [
              "/run/current-system/sw/bin/my-mapper"
              "--json"
            ];
          }
        ];
        backends = {
          mirrors.urls = [
            "http://mirror1:8080"
            "https://mirror2.example.org/cache"
          ];
          ipfs = {
            api = "http://127.0.0.1:5001";
            publish = true;
          };
          bittorrent = {
            engine = "aria2";
            rpc = "http://127.0.0.1:6800/jsonrpc";
            rpcSecretFile = "/run/keys/aria2";
            trackers = [ "udp://tracker.lan:6969" ];
          };
          s3 = {
            bucket = "nars";
            endpoint = "http://127.0.0.1:9000";
            credentialsFile = "/run/keys/s3";
          };
          command.command = [ "/usr/local/bin/fetch-nar" ];
        };
      };
    };
  };

  ipfs-enable = {
    services.distributed-store = {
      enable = true;
      ipfs.enable = true;
    };
  };

  ipfs-online = {
    services.distributed-store = {
      enable = true;
      ipfs = {
        enable = true;
        offline = false;
        apiPort = 5101;
      };
    };
  };

  bittorrent-enable = {
    services.distributed-store = {
      enable = true;
      bittorrent = {
        enable = true;
        tracker.enable = true;
      };
    };
  };

  # A token of one's own, DHT on, another RPC port.
  bittorrent-secret = {
    services.distributed-store = {
      enable = true;
      bittorrent = {
        enable = true;
        rpcPort = 6900;
        rpcSecretFile = "/run/keys/aria2-rpc-secret";
        dht = true;
      };
    };
  };

  # A short idleExitSec and many connections: the limits follow.
  limits = {
    services.distributed-store = {
      enable = true;
      settings = {
        idleExitSec = 2;
        maxConnections = 4096;
        compression = "xz";
      };
    };
  };

  # Assertions (evaluate, but the assertion fails with a message).
  mapper-wrong-field = {
    services.distributed-store = {
      enable = true;
      settings.mappers = [
        {
          type = "folder";
          url = "http://x:1";
        }
      ];
    };
  };

  ipfs-no-endpoint = {
    services.distributed-store = {
      enable = true;
      settings.backends.ipfs.publish = true;
    };
  };

  s3-credentials-in-store = {
    services.distributed-store = {
      enable = true;
      settings.backends.s3 = {
        bucket = "b";
        credentialsFile = "/nix/store/00000000000000000000000000000000-s3";
      };
    };
  };

  bittorrent-secret-in-store = {
    services.distributed-store = {
      enable = true;
      bittorrent = {
        enable = true;
        rpcSecretFile = "/nix/store/00000000000000000000000000000000-aria2-secret";
      };
    };
  };

  # Evaluation errors (types).
  # The fetcher refuses transmission: the module refuses it first.
  bad-bittorrent-engine = {
    services.distributed-store = {
      enable = true;
      settings.backends.bittorrent = {
        engine = "transmission";
        rpc = "http://127.0.0.1:9091/transmission/rpc";
      };
    };
  };

  bad-mapper-type = {
    services.distributed-store = {
      enable = true;
      settings.mappers = [
        {
          type = "gopher";
          url = "http://x:1";
        }
      ];
    };
  };

  bad-backend-command = {
    services.distributed-store = {
      enable = true;
      settings.backends.command.command = [ "fetch-nar" ];
    };
  };

  bad-backend-key = {
    services.distributed-store = {
      enable = true;
      settings.backends.carrierpigeon = { };
    };
  };

  bad-mirror-url = {
    services.distributed-store = {
      enable = true;
      settings.backends.mirrors.urls = [ "ftp://m" ];
    };
  };
}
