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
    # The proxy resolves paths through its peers (mapper + fetcher), so the
    # checks that need it are required. Set to false to run them as expected
    # failures (logged as XFAIL; one that unexpectedly passes fails the test)
    # on a build without peer resolution.
    peersImplemented = true;
  };
in
{
  vm-three-node = import ./three-node.nix common;
  vm-upstream-down = import ./upstream-down.nix common;
  vm-busctl = import ./busctl.nix common;
  vm-ipfs = import ./ipfs.nix common;
}
