# NixOS module for distributed-store, a peer-to-peer Nix binary cache.
#
# The units, the socket, the D-Bus policy and the D-Bus activation files
# come from the package (dist/ in the repository, installed by the flake's
# package): `systemd.packages` and `services.dbus.packages` pick them up, so
# NixOS runs the same files as every other distribution. This module only
# writes /etc/distributed-store/config.toml, declares the two system users and
# adds drop-ins for what depends on the settings: the socket's address, the
# credentials (signing key, S3 credentials), the mapper's start at boot, write
# access to non-default state/cache directories, restart triggers, start
# limits and resource limits computed from idleExitSec/maxConnections. The
# hardening is the units' own and is not repeated here: the package's unit
# files are the one list (dist/systemd/*.service), the module and the package
# come from the same flake, and a drop-in could only add to it anyway.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) types mkOption;

  cfg = config.services.distributed-store;
  format = pkgs.formats.toml { };

  defaultPort = 5496;

  # The proxy parses `listen` as a socket address: a literal IPv4 address or
  # a bracketed IPv6 address, then a port. No host names.
  listenMatch = builtins.match "(\\[[0-9A-Fa-f:.]+]|[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+):([0-9]{1,5})" cfg.settings.listen;
  listenHost = if listenMatch == null then null else builtins.elemAt listenMatch 0;
  listenPortRaw = if listenMatch == null then null else lib.toInt (builtins.elemAt listenMatch 1);
  listenValid = listenPortRaw != null && listenPortRaw >= 1 && listenPortRaw <= 65535;
  # Fall back to the default port while invalid so that other modules forcing
  # e.g. the firewall ports still evaluate and our assertion is what the user sees.
  port = if listenValid then listenPortRaw else defaultPort;
  isWildcard = listenHost == "[::]" || listenHost == "0.0.0.0";
  isLoopback = listenHost == "[::1]" || lib.hasPrefix "127." (toString listenHost);
  # How the local Nix reaches the proxy.
  localHost = if !listenValid || isWildcard then "127.0.0.1" else listenHost;
  localUrl = "http://${localHost}:${toString port}";

  keyFile = cfg.settings.privateKeyFile;
  keyInStore =
    keyFile != null
    && (lib.hasPrefix "${builtins.storeDir}/" keyFile || lib.hasPrefix "/nix/store/" keyFile);

  # The units' StateDirectory=/CacheDirectory= create and open only the
  # defaults; elsewhere (under ProtectSystem=strict) the module must.
  defaultStateDirectory = "/var/lib/distributed-store";
  defaultCacheDirectory = "/var/cache/distributed-store";
  stateDir = cfg.settings.stateDirectory;
  cacheDir = cfg.settings.cacheDirectory;
  customDirs = lib.filter (d: d.dir != d.default) [
    {
      dir = stateDir;
      default = defaultStateDirectory;
    }
    {
      dir = cacheDir;
      default = defaultCacheDirectory;
    }
  ];

  # `10G`, `512M`, `1.5T`, `1048576`: what the services' size parser takes
  # (suffixes are powers of 1024).
  sizeType = types.either types.ints.unsigned (
    types.strMatching "[[:space:]]*[0-9]+(\\.[0-9]+)?[[:space:]]*[KMGTkmgt]?[[:space:]]*"
  );
  # The services refuse 0 and more than 10 minutes.
  timeoutType = types.ints.between 1 600000;
  absolutePath = types.strMatching "/.*";

  upstreamKeys = lib.concatMap (u: if builtins.isAttrs u then u.publicKeys else [ ]) cfg.settings.upstreams;
  nixKeys = lib.unique (cfg.settings.trustedPublicKeys ++ upstreamKeys);

  # TOML has no null: an option left at null is simply not written, and the
  # service uses its own default.
  configFile = format.generate "distributed-store.toml" renderedSettings;

  # `name:base64(32 bytes)`, the form `nix-store --generate-binary-cache-key`
  # writes to the public key file. A secret key (64 bytes) does not match,
  # which catches pasting the wrong file.
  publicKeyType = types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/]{43}=";

  upstreamType = types.either types.str (
    types.submodule {
      options = {
        url = mkOption {
          type = types.str;
          example = "https://cache.nixos.org";
          description = "Base URL of the upstream binary cache.";
        };
        publicKeys = mkOption {
          type = types.listOf publicKeyType;
          default = [ ];
          example = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
          description = ''
            Keys this upstream signs with. The proxy trusts them for paths
            from this upstream, and with
            {option}`services.distributed-store.addToSubstituters` they are
            added to {option}`nix.settings.trusted-public-keys`.
          '';
        };
      };
    }
  );

  # Limits that depend on the settings (the units carry the values for the
  # defaults; docs/operating.md explains each).
  maxConnections = cfg.settings.maxConnections or 1024;
  idleExitSec = cfg.settings.idleExitSec;
  # Every start counts against StartLimitBurst, activation included. A
  # service re-activated at most once per idleExitSec starts at most
  # 60/idleExitSec + 1 times a minute; +4 more for failures. Never below the
  # units' 20, which a crash loop (RestartSec=2s) still trips within a minute.
  startLimitBurst = if idleExitSec == 0 then 20 else lib.max 20 (60 / idleExitSec + 5);
  # Each connection: its socket plus a store file or a pipe (two ends while
  # handed over) = 4, plus 1024 for the database, D-Bus, peers, upstreams.
  limitNofile = 4 * maxConnections + 1024;
  # Per connection: read chunk + hyper buffers + the NAR encoder (zstd level
  # 1 ~1.3 MiB, xz preset 1 ~10 MiB), rounded up; plus 256 MiB of caches.
  perConnectionMiB =
    {
      none = 1;
      zstd = 2;
      xz = 12;
    }
    .${cfg.settings.compression};
  proxyMemoryMax = "${toString (256 + perConnectionMiB * maxConnections)}M";

  # TOML has no null: drop nulls at every depth (attribute sets inside lists
  # too, which lib.filterAttrsRecursive does not enter), and `backends` when
  # no backend is set.
  clean =
    v:
    if builtins.isAttrs v && !(v ? outPath) then
      lib.mapAttrs (_: clean) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v then
      map clean v
    else
      v;

  s3 = cfg.settings.backends.s3;
  s3Credential = s3 != null && s3.credentialsFile != null;
  # The fetcher gets the S3 credentials as a systemd credential; the config
  # names the file where systemd puts it.
  s3CredentialPath = "/run/credentials/distributed-store-fetcher.service/s3-credentials";
  renderedSettings =
    let
      c = clean cfg.settings;
      b = c.backends or { };
      b' =
        if s3Credential then
          b // { s3 = b.s3 // { credentialsFile = s3CredentialPath; }; }
        else
          b;
    in
    (builtins.removeAttrs c [ "backends" ]) // lib.optionalAttrs (b' != { }) { backends = b'; };

  urlType = types.strMatching "https?://[^[:space:]]+";
  nullOr = t: mkOption {
    type = types.nullOr t;
    default = null;
  };
  deadlineOption = mkOption {
    type = types.nullOr types.ints.positive;
    default = null;
    description = "Milliseconds this one gets to answer (the service's default when null).";
  };
  # The services check these again (and name the key); here they fail at
  # evaluation, before a switch.
  commandType = types.addCheck (types.nonEmptyListOf types.str) (l: lib.hasPrefix "/" (builtins.head l)) // {
    description = "non-empty list of strings whose first element is an absolute path";
  };

  mapperType = types.submodule {
    options = {
      type = mkOption {
        type = types.enum [
          "folder"
          "http"
          "command"
        ];
        description = ''
          `folder`: an nss-mapper folder (`path`); `http`: another node's or
          service's mapper over HTTP (`url`); `command`: a program that
          answers lookups as JSON lines (`command`). docs/backends.md.
        '';
      };
      path = nullOr absolutePath // {
        description = "`folder`: the folder (`DIR/<first char>/<sha>.yaml`).";
      };
      url = nullOr urlType // {
        description = "`http`: base URL of the mapper.";
      };
      command = nullOr commandType // {
        description = "`command`: program and arguments (absolute program path).";
      };
      deadlineMs = deadlineOption;
    };
  };

  backendsType = types.submodule {
    options = {
      mirrors = nullOr (
        types.submodule {
          options = {
            urls = mkOption {
              type = types.nonEmptyListOf urlType;
              description = "HTTP(S) binary caches or NAR mirrors, tried round-robin with failover.";
            };
            lookup = nullOr types.bool // {
              description = "Also ask the mirrors for narinfos (the service's default when null).";
            };
          };
        }
      ) // {
        description = "HTTP mirrors backend (`[backends.mirrors]`).";
      };
      ipfs = nullOr (
        types.submodule {
          options = {
            api = nullOr urlType // {
              description = "kubo RPC API, e.g. `http://127.0.0.1:5001`.";
            };
            gateway = nullOr urlType // {
              description = "Trustless gateway, e.g. `http://127.0.0.1:8080`.";
            };
            publish = mkOption {
              type = types.bool;
              default = false;
              description = "Add this node's NARs to the IPFS node and record their CIDs.";
            };
          };
        }
      ) // {
        description = "IPFS backend (`[backends.ipfs]`): needs `api` or `gateway`. See also {option}`services.distributed-store.ipfs.enable`.";
      };
      bittorrent = nullOr (
        types.submodule {
          options = {
            engine = mkOption {
              # The fetcher drives aria2's JSON-RPC only (Transmission 3.00
              # never dials peers on 127.0.0.0/8, and its RPC differs).
              type = types.enum [ "aria2" ];
              description = "External BitTorrent engine driven over its RPC: `\"aria2\"` (the only one the fetcher supports).";
            };
            rpc = mkOption {
              type = urlType;
              description = "aria2's JSON-RPC URL, e.g. `http://127.0.0.1:6800/jsonrpc`.";
            };
            rpcSecretFile = nullOr absolutePath // {
              description = "File holding aria2's RPC token (`--rpc-secret`), readable by the `distributed-store` user.";
            };
            trackers = mkOption {
              type = types.listOf (types.strMatching "(https?|udp)://[^[:space:]]+");
              default = [ ];
              description = "Announce URLs put in the torrents this node makes.";
            };
            downloadDirectory = nullOr absolutePath // {
              description = "Where the engine writes downloads (must be readable by the fetcher).";
            };
            publish = mkOption {
              type = types.bool;
              default = false;
              description = "Make a torrent for each of this node's NARs and seed it.";
            };
          };
        }
      ) // {
        description = "BitTorrent backend (`[backends.bittorrent]`). See also {option}`services.distributed-store.bittorrent.enable`.";
      };
      s3 = nullOr (
        types.submodule {
          options = {
            bucket = mkOption {
              type = types.strMatching ".+";
              description = "Bucket name.";
            };
            endpoint = nullOr urlType // {
              description = "Endpoint of an S3-compatible store (AWS when null).";
            };
            region = nullOr types.str // {
              description = "Region.";
            };
            prefix = mkOption {
              type = types.str;
              default = "";
              description = "Key prefix of the binary-cache layout in the bucket.";
            };
            credentialsFile = nullOr absolutePath // {
              description = ''
                Credentials file, outside the Nix store. The module hands it to
                the fetcher alone as the systemd credential `s3-credentials`
                (`LoadCredential=`) and writes that credential's path into the
                config.
              '';
            };
            lookup = nullOr types.bool // {
              description = "Also look narinfos up in the bucket (the service's default when null).";
            };
            publish = mkOption {
              type = types.bool;
              default = false;
              description = "Upload this node's NARs and narinfos.";
            };
          };
        }
      ) // {
        description = "S3 backend (`[backends.s3]`).";
      };
      command = nullOr (
        types.submodule {
          options = {
            command = mkOption {
              type = commandType;
              description = "Program (absolute path) and arguments that write a NAR to stdout for a locator.";
            };
            deadlineMs = deadlineOption;
          };
        }
      ) // {
        description = "External-program backend (`[backends.command]`).";
      };
    };
  };

  mapperProblems = lib.concatLists (
    lib.imap0 (
      i: m:
      let
        want = {
          folder = "path";
          http = "url";
          command = "command";
        };
        set = lib.filter (k: m.${k} != null) [
          "path"
          "url"
          "command"
        ];
      in
      lib.optional (set != [ want.${m.type} ])
        "settings.mappers.${toString i} (type = \"${m.type}\") needs `${want.${m.type}}` and none of the others (has: ${toString set})"
    ) cfg.settings.mappers
  );
  ipfsBad = cfg.settings.backends.ipfs != null && cfg.settings.backends.ipfs.api == null && cfg.settings.backends.ipfs.gateway == null;
  s3InStore = s3Credential && lib.hasPrefix "/nix/store/" s3.credentialsFile;

  # bittorrent.enable: aria2's token, given or generated (readable by the
  # fetcher's user; aria2 gets it as a systemd credential, read by root).
  generatedSecretFile = "/var/lib/distributed-store-aria2/rpc-secret";
  btSecretFile =
    if cfg.bittorrent.rpcSecretFile != null then cfg.bittorrent.rpcSecretFile else generatedSecretFile;
  btSecretInStore =
    cfg.bittorrent.rpcSecretFile != null
    && (
      lib.hasPrefix "${builtins.storeDir}/" cfg.bittorrent.rpcSecretFile
      || lib.hasPrefix "/nix/store/" cfg.bittorrent.rpcSecretFile
    );

in
{
  options.services.distributed-store = {
    enable = lib.mkEnableOption ''
      distributed-store, a peer-to-peer Nix binary cache: a socket-activated
      proxy that serves this machine's store to its peers and to the local Nix,
      a mapper (started at boot) that indexes the store and what the peers
      hold, a D-Bus-activated fetcher that downloads and verifies NARs, and a
      D-Bus-activated signer that holds the signing key'';

    package = lib.mkPackageOption pkgs "distributed-store" {
      extraDescription = ''
        It must ship the unit files, the D-Bus policy and the D-Bus
        activation files (the flake's package does; the flake's
        nixosModules.default sets this option to it).
      '';
    };

    ipfs = {
      enable = lib.mkEnableOption ''
        a local IPFS node (kubo, {option}`services.kubo`) for the IPFS
        backend: its RPC API and gateway on loopback only, and
        {option}`settings.backends.ipfs` pointed at it unless set'';
      offline = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run kubo with `--offline` and no bootstrap peers: it serves and
          stores blocks for this machine (and for peers that connect to it
          directly) but joins no public network. Turn off to let it join
          the public IPFS network.
        '';
      };
      apiPort = mkOption {
        type = types.port;
        default = 5001;
        description = "TCP port of kubo's RPC API on 127.0.0.1.";
      };
      gatewayPort = mkOption {
        type = types.port;
        default = 8080;
        description = "TCP port of kubo's gateway on 127.0.0.1.";
      };
    };

    bittorrent = {
      enable = lib.mkEnableOption ''
        a local BitTorrent engine (aria2, {option}`services.aria2`) for the
        BitTorrent backend: JSON-RPC on 127.0.0.1 only with a secret token,
        and {option}`settings.backends.bittorrent` pointed at it unless set'';
      rpcPort = mkOption {
        type = types.port;
        default = 6800;
        description = "TCP port of aria2's JSON-RPC on 127.0.0.1 (`rpc-listen-port`).";
      };
      rpcSecretFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/run/keys/aria2-rpc-secret";
        description = ''
          File holding aria2's RPC token (one line). Read by aria2 (as a
          systemd credential) and by the fetcher (as the `distributed-store`
          user, which must be able to read it). Keep it out of the Nix store.
          `null`: a random token is generated once into
          `${generatedSecretFile}` (root:distributed-store, 0440) by
          `distributed-store-aria2-secret.service`, before aria2 and the
          fetcher start.
        '';
      };
      dht = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Let aria2 use the mainline DHT, peer exchange and local peer
          discovery (public network / LAN multicast). Off: peers come from
          the trackers only.
        '';
      };
      tracker.enable = lib.mkEnableOption ''
        a BitTorrent tracker on this machine (opentracker,
        {option}`services.opentracker`) on 127.0.0.1:6969, added to the
        backend's trackers; open it to the fleet yourself if others should
        announce to it'';
    };

    addToSubstituters = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Make the local Nix use the proxy: puts `http://127.0.0.1:PORT` (the
        address from {option}`settings.listen`; a wildcard address becomes
        127.0.0.1) first in {option}`nix.settings.substituters`, and adds
        {option}`settings.trustedPublicKeys` and the upstreams' `publicKeys`
        to {option}`nix.settings.trusted-public-keys`. Nix still checks every
        signature itself.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the proxy's TCP port (from {option}`settings.listen`) in the
        firewall, so that peers can fetch from this machine. Peers reach
        everything through that one port: narinfos, NARs and the
        announcements their mappers poll (`/_ds/v1/announce`). With
        {option}`settings.discovery` on, UDP port 5353 (mDNS) is opened too.
        Otherwise the mapper and the fetcher only make outgoing connections.
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        Contents of /etc/distributed-store/config.toml, shared by all
        services. Keys not listed here can be set too (freeform, e.g.
        `store`, `wantMassQuery`, `maxConnections`), but the services reject
        keys they do not know: see docs/nixos.md for the full list.
        Options left at `null` are not written and take the service's default.
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          listen = mkOption {
            type = types.str;
            default = "[::]:${toString defaultPort}";
            example = "127.0.0.1:${toString defaultPort}";
            description = ''
              Address and port of the proxy: a literal IPv4 address or a
              bracketed IPv6 address, and a port. The socket unit listens
              here (`[::]` listens on IPv4 too). Use a loopback address for a
              proxy that only the local Nix uses.
            '';
          };

          peers = mkOption {
            type = types.listOf (types.strMatching "https?://.+");
            default = [ ];
            example = [ "http://build1:${toString defaultPort}" ];
            description = ''
              Base URLs of other machines' proxies to ask for paths this
              machine lacks. The mapper polls what each peer holds, the
              fetcher downloads from them, and a peer answers from what it
              holds (its store and its fetcher's cache) or is fetching, never
              by asking its own peers. The peers need
              {option}`services.distributed-store.openFirewall` (or the port
              open otherwise).
            '';
          };

          upstreams = mkOption {
            type = types.listOf upstreamType;
            default = [ ];
            example = lib.literalExpression ''
              [
                {
                  url = "https://cache.nixos.org";
                  publicKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
                }
              ]
            '';
            description = ''
              Binary caches to fall back to when no peer has a path: URLs, or
              `{ url, publicKeys }` tables. Empty: peers and the local store only
              (the local Nix still has its other substituters).
            '';
          };

          trustedPublicKeys = mkOption {
            type = types.listOf publicKeyType;
            default = [ ];
            example = [ "fleet-1:rDtdWTDXj4F9xlfPuLSX2Q1dPOFS3SBJPqJuEpWMJVg=" ];
            description = ''
              Keys (`name:base64`, the contents of a public key file) whose
              signatures the proxy accepts on peers' answers. It relays only
              narinfos signed by one of these or by an upstream's key.
            '';
          };

          privateKeyFile = mkOption {
            type = types.nullOr types.path;
            default = null;
            apply = p: if p == null then null else toString p;
            example = "/run/keys/distributed-store.sec";
            description = ''
              Secret key (from `nix-store --generate-binary-cache-key` or
              `distributed-store keygen`) with which the signer signs the paths
              this machine built. Only the signer can read it: systemd passes
              it as the credential `signing-key` (`LoadCredential=`). Give a
              path outside the Nix store as a string (a Nix path literal such
              as `./key` would copy the key into the world-readable store).
              `null`: the unit's own default, /etc/distributed-store/signing-key,
              is used when it exists.
            '';
          };

          priority = mkOption {
            type = types.ints.unsigned;
            default = 30;
            description = ''
              `Priority` in /nix-cache-info. Nix tries substituters in
              priority order (lower first); cache.nixos.org has 40.
            '';
          };

          compression = mkOption {
            type = types.enum [
              "zstd"
              "xz"
              "none"
            ];
            default = "zstd";
            description = ''
              Compression of the NARs the proxy serves. `zstd` is fast to
              produce and decode, `xz` small and slow, `none` allows resumed
              (ranged) downloads.
            '';
          };

          stateDirectory = mkOption {
            type = absolutePath;
            default = defaultStateDirectory;
            description = ''
              Where the mapper keeps its index (an absolute path). The
              default is the units' `StateDirectory=`; another directory is
              created (owned by the `distributed-store` user) and made
              writable for the mapper by this module.
            '';
          };

          cacheDirectory = mkOption {
            type = absolutePath;
            default = defaultCacheDirectory;
            description = ''
              Where the fetcher keeps the NARs it downloaded (an absolute
              path). The default is the units' `CacheDirectory=`; another
              directory is created (owned by the `distributed-store` user)
              and made writable for the fetcher by this module.
            '';
          };

          cacheSize = mkOption {
            type = sizeType;
            default = "10G";
            example = "50G";
            description = ''
              Bound on the fetcher's cache: bytes, or a number with a `K`,
              `M`, `G` or `T` suffix (powers of 1024, e.g. `"512M"`,
              `"1.5T"`). The least recently used NARs go first.
            '';
          };

          peerTimeoutMs = mkOption {
            type = timeoutType;
            default = 300;
            description = ''
              Milliseconds a peer gets to connect and answer (a narinfo, an
              announcement, the first bytes of a NAR, and each stall while a
              NAR streams) before it counts as down for that request. From 1
              to 600000.
            '';
          };

          upstreamTimeoutMs = mkOption {
            type = timeoutType;
            default = 800;
            description = ''
              The same deadline for the upstream caches in
              {option}`settings.upstreams`, which are usually further away.
              From 1 to 600000.
            '';
          };

          discovery = mkOption {
            type = types.bool;
            default = true;
            description = ''
              Find peers on the LAN with mDNS/DNS-SD and announce this
              machine there: the mapper registers service type
              `_distributed-store._tcp` (instance name: its node id, port:
              the proxy's from {option}`settings.listen`, TXT `v=1` and
              `id=`) and polls every other instance it sees, as if it were
              listed in {option}`settings.peers` (source `mdns`). It uses
              multicast on 224.0.0.251 / ff02::fb, port 5353/udp;
              {option}`services.distributed-store.openFirewall` opens that
              port too. Turn it off on untrusted or routed networks, when the
              fleet is exactly {option}`settings.peers`, or when nothing may
              be sent to the LAN unasked. Discovered peers still need
              {option}`settings.trustedPublicKeys` to be of any use.
            '';
          };

          idleExitSec = mkOption {
            type = types.ints.unsigned;
            default = 0;
            example = 600;
            description = ''
              Seconds without requests after which a service exits; socket
              and D-Bus activation start it again on demand. `0`: never.
              The units' `StartLimitBurst=` is raised to match (every
              activation counts as a start).
            '';
          };

          mappers = mkOption {
            type = types.listOf mapperType;
            default = [ ];
            example = lib.literalExpression ''
              [
                { type = "folder"; path = "/srv/ds-index"; }
                { type = "http"; url = "http://build1:5496"; deadlineMs = 300; }
              ]
            '';
            description = ''
              Extra mappers (`[[mappers]]`), asked in order after the local
              index and the fleet; the first answer wins.
            '';
          };

          backends = mkOption {
            type = backendsType;
            default = { };
            description = ''
              Optional backends (`[backends.*]`) the fetcher may get NARs
              from; every one is verified while streaming and falls back to
              the next, then to the upstreams. docs/backends.md.
            '';
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !keyInStore;
            message = ''
              services.distributed-store.settings.privateKeyFile = "${toString keyFile}" is in
              the Nix store. Everything there is world-readable (and copied along with the
              system closure), so the key would no longer be secret. Keep the key outside
              the store (e.g. /run/keys/distributed-store.sec, or a path managed by
              agenix/sops-nix) and give its path as a string, not a Nix path literal.
            '';
          }
          {
            assertion = mapperProblems == [ ];
            message = lib.concatStringsSep "\n" mapperProblems;
          }
          {
            assertion = !ipfsBad;
            message = "services.distributed-store.settings.backends.ipfs needs `api` (kubo RPC) or `gateway` (or set services.distributed-store.ipfs.enable).";
          }
          {
            assertion = !s3InStore;
            message = ''
              services.distributed-store.settings.backends.s3.credentialsFile is in the Nix
              store, which is world-readable. Keep it outside (e.g. /run/keys/s3) and give
              its path as a string.
            '';
          }
          {
            assertion = listenValid;
            message = ''
              services.distributed-store.settings.listen = "${cfg.settings.listen}" is not
              ADDRESS:PORT with a literal IP address (IPv6 in brackets) and a port from 1 to
              65535. Examples: "[::]:${toString defaultPort}" (all addresses),
              "127.0.0.1:${toString defaultPort}" (local Nix only).
            '';
          }
        ];

        warnings =
          lib.optional (cfg.addToSubstituters && nixKeys == [ ] && keyFile == null) ''
            services.distributed-store.addToSubstituters is on, but neither
            settings.trustedPublicKeys, an upstream's publicKeys nor settings.privateKeyFile
            is set. Nix requires a trusted signature on every input-addressed path, so it
            will refuse everything the proxy offers except paths signed by keys that are
            already in nix.settings.trusted-public-keys (such as cache.nixos.org's).
            Add your fleet's public key to settings.trustedPublicKeys.''
          ++ lib.optional (cfg.openFirewall && listenValid && isLoopback) ''
            services.distributed-store.openFirewall is on, but settings.listen
            ("${cfg.settings.listen}") is a loopback address: peers cannot connect anyway.'';

        environment.systemPackages = [ cfg.package ];
        environment.etc."distributed-store/config.toml".source = configFile;

        systemd.packages = [ cfg.package ];
        services.dbus.packages = [ cfg.package ];

        # Static users, as in dist/sysusers.d/distributed-store.conf: two users
        # so that the proxy can never read the signing key.
        users.users.distributed-store = {
          isSystemUser = true;
          group = "distributed-store";
          description = "distributed-store proxy";
        };
        users.users.distributed-store-signer = {
          isSystemUser = true;
          group = "distributed-store-signer";
          description = "distributed-store signer";
        };
        users.groups.distributed-store = { };
        users.groups.distributed-store-signer = { };

        # NixOS ignores [Install] sections of packaged units.
        systemd.sockets.distributed-store-proxy = {
          wantedBy = [ "sockets.target" ];
          # The empty assignment drops the unit's own ListenStream= first.
          socketConfig.ListenStream = [
            ""
            cfg.settings.listen
          ];
        };

        systemd.services.distributed-store-proxy = {
          restartTriggers = [ configFile ];
          unitConfig.StartLimitBurst = startLimitBurst;
          serviceConfig = {
            LimitNOFILE = limitNofile;
            MemoryMax = proxyMemoryMax;
          };
        };

        # D-Bus activation would start the mapper on the proxy's first
        # Lookup; starting it at boot lets it index the store and poll the
        # peers before anyone asks (the unit's WantedBy=multi-user.target,
        # which NixOS does not read).
        systemd.services.distributed-store-mapper = {
          wantedBy = [ "multi-user.target" ];
          restartTriggers = [ configFile ];
          unitConfig.StartLimitBurst = startLimitBurst;
          serviceConfig = lib.mkMerge [
            # The unit allows netlink for mDNS; without discovery, reset the
            # list (an empty assignment) and leave it out.
            (lib.mkIf (!cfg.settings.discovery) {
              RestrictAddressFamilies = [
                ""
                "AF_UNIX"
                "AF_INET"
                "AF_INET6"
              ];
            })
            (lib.mkIf (stateDir != defaultStateDirectory) { ReadWritePaths = [ stateDir ]; })
          ];
        };

        # D-Bus activated by the proxy's first Fetch.
        systemd.services.distributed-store-fetcher = {
          restartTriggers = [ configFile ];
          unitConfig.StartLimitBurst = startLimitBurst;
          serviceConfig = lib.mkMerge [
            { LimitNOFILE = limitNofile; }
            (lib.mkIf (cacheDir != defaultCacheDirectory) { ReadWritePaths = [ cacheDir ]; })
            (lib.mkIf s3Credential { LoadCredential = [ "s3-credentials:${s3.credentialsFile}" ]; })
          ];
        };

        # Non-default state/cache directories: created for the services'
        # user, which is the only one that needs to read them.
        systemd.tmpfiles.rules = map (d: "d ${d.dir} 0700 distributed-store distributed-store - -") customDirs;

        systemd.services.distributed-store-signer = {
          restartTriggers = [ configFile ];
          unitConfig.StartLimitBurst = startLimitBurst;
          serviceConfig = lib.mkMerge [
            (lib.mkIf (keyFile != null) {
              # Replace the unit's default source of the credential.
              LoadCredential = [
                ""
                "signing-key:${keyFile}"
              ];
            })
          ];
        };
      }

      (lib.mkIf cfg.ipfs.enable {
        services.kubo = {
          enable = true;
          localDiscovery = false;
          settings.Addresses.API = "/ip4/127.0.0.1/tcp/${toString cfg.ipfs.apiPort}";
          settings.Addresses.Gateway = "/ip4/127.0.0.1/tcp/${toString cfg.ipfs.gatewayPort}";
          settings.Bootstrap = lib.mkIf cfg.ipfs.offline [ ];
          extraFlags = lib.optional cfg.ipfs.offline "--offline";
        };
        services.distributed-store.settings.backends.ipfs = lib.mkDefault {
          api = "http://127.0.0.1:${toString cfg.ipfs.apiPort}";
          gateway = "http://127.0.0.1:${toString cfg.ipfs.gatewayPort}";
        };
      })

      (lib.mkIf cfg.bittorrent.enable (
        let
          # aria2's download directory (its module's default unless the
          # user sets services.aria2.settings.dir).
          btDir = config.services.aria2.settings.dir;
        in
        {
          assertions = [
            {
              assertion = !btSecretInStore;
              message = ''
                services.distributed-store.bittorrent.rpcSecretFile is in the Nix store, which is
                world-readable. Keep it outside (e.g. /run/keys/aria2-rpc-secret) and give its
                path as a string, or leave it null to have a token generated.
              '';
            }
          ];

          # The options the fetcher relies on (tests/backends/servers.sh runs
          # aria2c with the same ones): RPC on loopback, no public discovery
          # unless bittorrent.dht, the file under <dir>/<info-hash>/ with its
          # own name, and room for many seeds (they count against
          # max-concurrent-downloads).
          services.aria2 = {
            enable = true;
            rpcSecretFile = btSecretFile;
            # 0007 + a setgid download directory: what aria2 writes is
            # group aria2, readable (and removable) by the fetcher.
            serviceUMask = "0007";
            downloadDirPermission = "2770";
            settings = {
              rpc-listen-port = cfg.bittorrent.rpcPort;
              rpc-listen-all = false;
              enable-dht = cfg.bittorrent.dht;
              enable-dht6 = cfg.bittorrent.dht;
              enable-peer-exchange = cfg.bittorrent.dht;
              bt-enable-lpd = cfg.bittorrent.dht;
              max-concurrent-downloads = lib.mkDefault 1000;
              auto-file-renaming = lib.mkDefault false;
              allow-overwrite = lib.mkDefault true;
              file-allocation = lib.mkDefault "none";
            };
          };
          systemd.services.aria2 = {
            requires = lib.optional (cfg.bittorrent.rpcSecretFile == null) "distributed-store-aria2-secret.service";
            after = lib.optional (cfg.bittorrent.rpcSecretFile == null) "distributed-store-aria2-secret.service";
          };

          # The fetcher creates <dir>/<info-hash>/ for aria2 to write into
          # and removes it afterwards: it needs the aria2 group, write
          # access under ProtectSystem=strict, and a umask that leaves the
          # directory group-writable (files in its own cache stay private to
          # the distributed-store user and group).
          users.users.distributed-store.extraGroups = [ "aria2" ];
          systemd.services.distributed-store-fetcher = {
            requires = lib.optional (cfg.bittorrent.rpcSecretFile == null) "distributed-store-aria2-secret.service";
            after = [ "aria2.service" ] ++ lib.optional (cfg.bittorrent.rpcSecretFile == null) "distributed-store-aria2-secret.service";
            serviceConfig = {
              UMask = "0007";
              ReadWritePaths = [ btDir ];
            };
          };

          services.distributed-store.settings.backends.bittorrent = lib.mkDefault {
            engine = "aria2";
            rpc = "http://127.0.0.1:${toString cfg.bittorrent.rpcPort}/jsonrpc";
            rpcSecretFile = btSecretFile;
            downloadDirectory = btDir;
            trackers = lib.optional cfg.bittorrent.tracker.enable "http://127.0.0.1:6969/announce";
          };
        }
      ))

      # No token given: make one once (kept across reboots), before aria2
      # and the fetcher read it.
      (lib.mkIf (cfg.bittorrent.enable && cfg.bittorrent.rpcSecretFile == null) {
        systemd.services.distributed-store-aria2-secret = {
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            UMask = "0227";
          };
          script = ''
            set -eu
            f=${generatedSecretFile}
            if [ ! -s "$f" ]; then
              install -d -m 0750 -o root -g distributed-store ${dirOf generatedSecretFile}
              head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f.tmp"
              chgrp distributed-store "$f.tmp"
              chmod 0440 "$f.tmp"
              mv "$f.tmp" "$f"
            fi
          '';
        };
      })

      (lib.mkIf (cfg.bittorrent.enable && cfg.bittorrent.tracker.enable) {
        services.opentracker = {
          enable = true;
          extraOptions = "-i 127.0.0.1 -p 6969 -P 6969";
        };
      })

      (lib.mkIf cfg.openFirewall {
        networking.firewall.allowedTCPPorts = [ port ];
        # mDNS queries and answers for discovery (multicast, 5353/udp)
        networking.firewall.allowedUDPPorts = lib.optional cfg.settings.discovery 5353;
      })

      (lib.mkIf cfg.addToSubstituters {
        nix.settings.substituters = lib.mkBefore [ localUrl ];
        nix.settings.trusted-public-keys = nixKeys;
      })
    ]
  );
}
