# NixOS VM tests, wired into the flake's checks (`nix flake check`).
# Each takes the nixpkgs to build with and the module to import (the flake's
# nixosModules.default, which brings the package along).
{
  pkgs,
  module,
}:

let
  common = import ./lib.nix {
    inherit pkgs module;
    # Set to true once the proxy resolves paths through its peers (the fleet
    # issue). Until then the checks that need it run as expected failures:
    # they are logged as XFAIL, and one that unexpectedly passes fails the test
    # so that this flag gets flipped.
    peersImplemented = false;
  };
in
{
  vm-three-node = import ./three-node.nix common;
  vm-upstream-down = import ./upstream-down.nix common;
  vm-busctl = import ./busctl.nix common;
}
