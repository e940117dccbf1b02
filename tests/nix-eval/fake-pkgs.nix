# A stand-in for the few parts of nixpkgs that the module (and the flake) use,
# for evaluation tests on a machine without nixpkgs. Nothing here builds:
# "derivations" are attrsets with a fake outPath, and formats.toml renders
# the TOML text in Nix so that the test can read it back.
{ lib }:

let
  inherit (lib) types;

  fakeStorePath = name: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";

  fakeDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = fakeStorePath name;
      drvPath = fakeStorePath "${name}.drv";
    }
    // extra;

  # A small TOML writer: top-level keys as `key = value` lines, nested tables
  # inline. Enough for what the module renders; the real formats.toml uses
  # remarshal, which writes the same data in a different layout.
  toml =
    let
      escape =
        s:
        builtins.replaceStrings
          [ "\\" "\"" "\n" "\t" "\r" ]
          [ "\\\\" "\\\"" "\\n" "\\t" "\\r" ]
          s;
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else "\"${escape k}\"";
      value =
        v:
        if builtins.isBool v then
          (if v then "true" else "false")
        else if builtins.isInt v || builtins.isFloat v then
          toString v
        else if builtins.isString v || builtins.isPath v || (builtins.isAttrs v && v ? outPath) then
          "\"${escape (toString v)}\""
        else if builtins.isList v then
          "[${lib.concatStringsSep ", " (map value v)}]"
        else if builtins.isAttrs v then
          "{ ${lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${value x}") v)} }"
        else
          throw "fake formats.toml: cannot write a ${builtins.typeOf v} as TOML";
    in
    attrs: lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${value v}\n") attrs);

  pkgs = {
    inherit lib;

    formats.toml =
      { }:
      {
        # Same type as nixpkgs' pkgs.formats.toml.
        type =
          let
            valueType =
              types.oneOf [
                types.bool
                types.int
                types.float
                types.str
                types.path
                (types.attrsOf valueType)
                (types.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate = name: value: fakeDrv name { text = toml value; };
      };

    distributed-store = fakeDrv "distributed-store-0.1.0" { };

    inherit fakeDrv;
  };
in
pkgs
