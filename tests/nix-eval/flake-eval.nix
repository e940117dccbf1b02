# Evaluates the repository's flake.nix outputs against a stub nixpkgs (the
# real nixpkgs lib plus fake packages), without network or nixpkgs:
#
#   nix-instantiate --eval --strict --json flake-eval.nix --arg nixpkgsLib LIB --arg repo /path/to/repo
#
# Returns { results = { check name = true | what was wrong; }; testScripts;
# postInstall; }: run.sh reports the results, byte-compiles the VM test
# scripts with python3 and runs postInstall against the real dist/ files.
{
  nixpkgsLib,
  repo,
}:

let
  realLib = import nixpkgsLib;

  # lib.fileset needs builtins.readFileType (Nix >= 2.14). On an older Nix,
  # a stand-in with the same meaning for what flake.nix uses (unions of
  # existing paths, toSource) lets the rest be checked.
  filesetShim = {
    unions = paths: paths;
    toSource =
      { root, fileset }:
      let
        wanted = map toString fileset;
        keep =
          p: lib.any (w: p == w || lib.hasPrefix (w + "/") p || lib.hasPrefix (p + "/") w) wanted;
      in
      assert lib.all (p: builtins.pathExists p || throw "fileset: ${toString p} does not exist") fileset;
      builtins.path {
        path = root;
        name = "source";
        filter = path: _type: keep (toString path);
      };
  };
  lib = if builtins ? readFileType then realLib else realLib // { fileset = filesetShim; };

  basePkgs = import ./fake-pkgs.nix { inherit lib; };
  inherit (basePkgs) fakeDrv;
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  fakePkgsFor =
    system:
    let
      pkgs =
        builtins.removeAttrs basePkgs [ "distributed-store" ]
        // lib.genAttrs [
          "cargo"
          "rustc"
          "clippy"
          "rustfmt"
          "rust-analyzer"
          "nix"
          "dbus"
          "jq"
          "python3"
          "nixfmt-tree"
          "busybox"
          "curl"
          "iptables"
        ] (n: fakeDrv n { })
        // {
          stdenv.hostPlatform.system = system;
          callPackage = f: args: f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
          rustPlatform.buildRustPackage = args: fakeDrv "${args.pname}-${args.version}" { inherit args; };
          mkShell = args: fakeDrv "nix-shell" { inherit args; };
          writeText = name: text: fakeDrv name { inherit text; };
          testers.runNixOSTest = test: fakeDrv "vm-test-${test.name}" { inherit test; };
        };
    in
    pkgs;

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems fakePkgsFor;
  };

  flake = import (repo + "/flake.nix");
  outputs = flake.outputs {
    self = outputs // {
      outPath = repo;
    };
    inherit nixpkgs;
  };

  # Evaluate a VM test node like NixOS would, with the option stubs.
  evalNode =
    system: test: node:
    lib.evalModules {
      modules = [
        ./stubs.nix
        {
          options.system.extraDependencies = lib.mkOption {
            type = lib.types.listOf lib.types.unspecified;
            default = [ ];
          };
        }
        { _module.args.pkgs = fakePkgsFor system; }
        test.defaults
        test.nodes.${node}
      ];
    };

  check = cond: detail: if cond then true else detail;

  perSystem =
    system:
    let
      pkg = outputs.packages.${system}.default;
      a = pkg.args;
      srcEntries = builtins.attrNames (builtins.readDir a.src);
      checks = outputs.checks.${system};
      vmTests = lib.filterAttrs (n: _: lib.hasPrefix "vm-" n) checks;
      shellPkgs = map (p: p.name) outputs.devShells.${system}.default.args.packages;
      overlaid = outputs.overlays.default (fakePkgsFor system) (fakePkgsFor system);
      nodeResults = lib.concatMapAttrs (
        tname: t:
        lib.mapAttrs' (
          node: _:
          let
            cfg = (evalNode system t.test node).config;
            failed = map (x: x.message) (lib.filter (x: !x.assertion) cfg.assertions);
          in
          lib.nameValuePair "${system}: ${tname}: node ${node} evaluates with the module, no failed assertions" (
            check (failed == [ ] && cfg.systemd.packages != [ ]) failed
          )
        ) t.test.nodes
      ) vmTests;
      expectedNodes = {
        vm-three-node = [
          "builder"
          "client"
          "stranger"
        ];
        vm-upstream-down = [
          "client"
          "peer"
        ];
        vm-busctl = [ "machine" ];
        vm-ipfs = [ "machine" ];
      };
    in
    {
      "${system}: packages.default is the Rust workspace" = check (
        a.pname == "distributed-store"
        && a.version == (lib.importTOML (repo + "/Cargo.toml")).workspace.package.version
        && toString a.cargoLock.lockFile == toString (repo + "/Cargo.lock")
        && a.doCheck == false
        && a.meta.mainProgram == "distributed-store"
      ) (builtins.removeAttrs a [ "src" ]);
      "${system}: package src holds only the workspace and dist/" = check (
        srcEntries == [
          "Cargo.lock"
          "Cargo.toml"
          "dist"
          "services"
        ]
      ) srcEntries;
      "${system}: checks = package + the four VM tests" = check (
        builtins.attrNames checks == [
          "package"
          "vm-busctl"
          "vm-ipfs"
          "vm-three-node"
          "vm-upstream-down"
        ]
        && checks.package == pkg
      ) (builtins.attrNames checks);
      "${system}: VM tests have the expected nodes" = check (lib.mapAttrs (
        _: t: builtins.attrNames t.test.nodes
      ) vmTests == expectedNodes) (lib.mapAttrs (_: t: builtins.attrNames t.test.nodes) vmTests);
      "${system}: devShell has the tools" = check (lib.all (p: builtins.elem p shellPkgs) [
        "cargo"
        "rustc"
        "clippy"
        "rustfmt"
        "nix"
        "dbus"
      ]) shellPkgs;
      "${system}: formatter" = check (outputs.formatter.${system}.name == "nixfmt-tree") outputs.formatter.${system}.name;
      "${system}: overlay adds pkgs.distributed-store" = check (
        overlaid.distributed-store.args.pname == "distributed-store"
      ) "no package";
    }
    // nodeResults;
in
{
  results =
    lib.foldl' (acc: s: acc // perSystem s) { } systems
    // {
      "nixosModules.default and nixosModules.distributed-store are modules" = check (
        builtins.isFunction outputs.nixosModules.default
        && builtins.isFunction outputs.nixosModules.distributed-store
      ) "not functions";
    };
  testScripts = lib.mapAttrs (_: t: t.test.testScript) (
    lib.filterAttrs (n: _: lib.hasPrefix "vm-" n) outputs.checks.x86_64-linux
  );
  postInstall = outputs.packages.x86_64-linux.default.args.postInstall;
}
