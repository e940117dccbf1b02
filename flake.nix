{
  description = "distributed-store: a peer-to-peer Nix binary cache (socket- and D-Bus-activated services, NixOS module)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      workspace = lib.importTOML ./Cargo.toml;

      # The package, as a function for callPackage: the overlay and the NixOS
      # module build it with the nixpkgs of whoever uses them.
      package =
        { lib, rustPlatform }:
        rustPlatform.buildRustPackage {
          pname = "distributed-store";
          inherit (workspace.workspace.package) version;

          # The Rust workspace and the system-integration files; nothing else,
          # so that docs, tests and Nix edits do not rebuild the package.
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./services
              ./dist
            ];
          };
          cargoLock.lockFile = ./Cargo.lock;

          # The integration tests need root, network namespaces and a private
          # D-Bus daemon, none of which the build sandbox has. They run in
          # .ci/run and in the VM tests (checks.<system>.vm-*).
          doCheck = false;

          # dist/ holds the units, socket, D-Bus policy and activation files and
          # the sysusers entry, with @bindir@ where the binaries' directory goes.
          # Same layout as dev/install-files.
          postInstall = ''
            install_dist() { # SRC_DIR DEST_DIR
              mkdir -p "$2"
              for f in "$1"/*; do
                substitute "$f" "$2/$(basename "$f")" --subst-var-by bindir "$out/bin"
                chmod 0644 "$2/$(basename "$f")"
              done
            }
            install_dist dist/systemd "$out/lib/systemd/system"
            install_dist dist/dbus-1/system.d "$out/share/dbus-1/system.d"
            install_dist dist/dbus-1/system-services "$out/share/dbus-1/system-services"
            install_dist dist/sysusers.d "$out/lib/sysusers.d"
            if grep -rl '@bindir@' "$out/lib" "$out/share"; then
              echo "error: @bindir@ left unsubstituted in the files above" >&2
              exit 1
            fi
            for b in distributed-store distributed-store-proxy distributed-store-signer \
                     distributed-store-mapper distributed-store-fetcher; do
              test -x "$out/bin/$b" || { echo "error: $out/bin/$b was not built" >&2; exit 1; }
            done
          '';

          meta = {
            description = "Peer-to-peer Nix binary cache: machines serve their stores to each other";
            homepage = "https://github.com/distributed-store/distributed-store";
            license = with lib.licenses; [
              mit
              asl20
            ];
            mainProgram = "distributed-store";
            platforms = lib.platforms.linux;
          };
        };
    in
    {
      overlays.default = final: _prev: {
        distributed-store = final.callPackage package { };
      };

      # The module, with its package defaulting to the one built from this
      # flake with the system's own nixpkgs (or pkgs.distributed-store when the
      # overlay is applied). Nothing here touches nixpkgs.overlays, so it also
      # works where pkgs is read-only (e.g. NixOS tests).
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-modules/distributed-store.nix ];
          services.distributed-store.package = lib.mkDefault (
            pkgs.distributed-store or (pkgs.callPackage package { })
          );
        };
      nixosModules.distributed-store = self.nixosModules.default;

      packages = forAllSystems (
        _system: pkgs: rec {
          distributed-store = pkgs.callPackage package { };
          default = distributed-store;
        }
      );

      # `nix flake check`: the package builds and every NixOS VM test passes
      # (the VM tests need KVM: /dev/kvm on the builder).
      checks = forAllSystems (
        system: pkgs:
        {
          package = self.packages.${system}.default;
        }
        // import ./vm-tests {
          inherit pkgs;
          module = self.nixosModules.default;
        }
      );

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              rust-analyzer
              nix
              dbus
              jq
              python3
            ];
          };
        }
      );

      # `nix fmt`: nixfmt (RFC 166 style) over the whole tree.
      formatter = forAllSystems (_system: pkgs: pkgs.nixfmt-tree);
    };
}
