#!/usr/bin/env bash
# make-fixture.sh OUTDIR -- build a toy closure (no nixpkgs, offline) into a private
# chroot store OUTDIR/store (physical OUTDIR/store/root/nix/store, logical /nix/store).
#
#   leaf  <- lib  <- app      input-addressed, runtime references
#   app   -> big              input-addressed, BIG_MIB (default 12) MiB of random bytes
#   ca                        content-addressed (nix-store --add): valid without signatures
# Also: key.sec/key.pub (the node key), wrong.pub (same name, other key).
# Writes OUTDIR/paths.env: LEAF LIB APP BIG CA PUBKEY WRONG_PUBKEY KEY_SEC STORE_ROOT
# Env: SALT (different paths), BIG_MIB, KEY_NAME.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:?usage: make-fixture.sh OUTDIR}
SALT=${SALT:-}
BIG_MIB=${BIG_MIB:-12}
KEY_NAME=${KEY_NAME:-ds-test-1}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/store"
# shellcheck source=nix-env.sh
. "$HERE/nix-env.sh" "$OUT/store"

cat > "$OUT/fixture.nix" <<'NIX'
{ salt ? "", bigMiB ? 12 }:
let
  mk = name: script: derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";              # static busybox via sandbox-paths
    args = [ "-c" script ];
  };
  leaf = mk "ds-leaf" ''echo "leaf data ${salt}" > $out'';
  lib  = mk "ds-lib"  ''mkdir -p $out/share; echo "lib uses ${leaf}" > $out/share/lib.txt'';
  big  = mk "ds-big"  ''mkdir -p $out; head -c ${toString (bigMiB * 1048576)} /dev/urandom > $out/blob; ln -s blob $out/link'';
  app  = mk "ds-app"  ''
    mkdir -p $out/bin
    printf '#!/bin/sh\ncat ${lib}/share/lib.txt ${leaf} ${big}/blob\n' > $out/bin/ds-app
    chmod 555 $out/bin/ds-app
  '';
in { inherit leaf lib app big; }
NIX

build() { nix-build "$OUT/fixture.nix" --argstr salt "$SALT" --arg bigMiB "$BIG_MIB" -A "$1" --no-out-link --quiet; }
LEAF=$(build leaf); LIB=$(build lib); BIG=$(build big); APP=$(build app)
printf 'content-addressed %s\n' "$SALT" > "$OUT/ds-ca.txt"
CA=$(nix-store --add "$OUT/ds-ca.txt"); rm -f "$OUT/ds-ca.txt"

rm -f "$OUT/key.sec" "$OUT/key.pub" "$OUT/wrong.sec" "$OUT/wrong.pub"
nix-store --generate-binary-cache-key "$KEY_NAME" "$OUT/key.sec" "$OUT/key.pub"
nix-store --generate-binary-cache-key "$KEY_NAME" "$OUT/wrong.sec" "$OUT/wrong.pub"
rm -f "$OUT/wrong.sec"

cat > "$OUT/paths.env" <<ENV
LEAF=$LEAF
LIB=$LIB
APP=$APP
BIG=$BIG
CA=$CA
PUBKEY='$(cat "$OUT/key.pub")'
WRONG_PUBKEY='$(cat "$OUT/wrong.pub")'
KEY_SEC='$OUT/key.sec'
STORE_ROOT='$OUT/store/root'
ENV
