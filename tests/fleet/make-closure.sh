#!/usr/bin/env bash
# make-closure.sh OUTDIR -- the fleet test fixture, built once per run (offline, no nixpkgs):
#   - bench/gen-closure.py FLEET_PATHS (60) paths, FLEET_MIB (110) MiB, plus `root` referencing all,
#     built with nix-build into the chroot store OUTDIR/state (physical OUTDIR/state/root/nix/store);
#   - BIG: one separate input-addressed path of BIG_MIB (56) MiB of random bytes (scenario 6);
#   - keys: upstream-1 (signs the upstream export), fleet-1 (host2's node key), stranger-1 (nobody
#     trusts it: the hostile peer's unknown-key mode);
#   - OUTDIR/cache: `nix copy --to file://...?compression=zstd&secret-key=upstream` of ROOT's closure
#     and BIG: what upstream.py serves (stands in for cache.nixos.org);
#   - OUTDIR/unknown: narinfos only of the same paths signed by stranger-1 (NARs deleted);
#   - OUTDIR/fixture.env: ROOT_PATH BIG_PATH NCLOSURE CACHE_DIR UNKNOWN_DIR UPSTREAM_PUB FLEET_PUB
#     FLEET_SEC STRANGER_PUB FIXTURE_STORE; OUTDIR/closure: the closure of ROOT_PATH, one per line.
# Env: FLEET_PATHS FLEET_MIB BIG_MIB FLEET_SEED. Writes OUTDIR/ok last.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:?usage: make-closure.sh OUTDIR}
NP=${FLEET_PATHS:-60} MIB=${FLEET_MIB:-110} BIG_MIB=${BIG_MIB:-56} SEED=${FLEET_SEED:-fleet-v1}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/state" "$OUT/cache" "$OUT/unknown" "$OUT/ok"
# shellcheck source=../testbed/nix-env.sh
. "$REPO/tests/testbed/nix-env.sh" "$OUT/state"

python3 "$REPO/bench/gen-closure.py" "$NP" "$MIB" "$SEED" > "$OUT/closure.nix"
cat > "$OUT/big.nix" <<NIX
derivation {
  name = "fleet-big-${BIG_MIB}M";
  salt = "$SEED";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "mkdir -p \$out; head -c $((BIG_MIB * 1048576)) /dev/urandom > \$out/blob" ];
}
NIX
ROOT_PATH=$(timeout 900 nix-build "$OUT/closure.nix" -A root --no-out-link --quiet --max-jobs 2)
BIG_PATH=$(timeout 300 nix-build "$OUT/big.nix" --no-out-link --quiet)
nix-store -qR "$ROOT_PATH" > "$OUT/closure"

for k in upstream fleet stranger; do
  rm -f "$OUT/$k.sec" "$OUT/$k.pub"
  nix-store --generate-binary-cache-key "$k-1" "$OUT/$k.sec" "$OUT/$k.pub"
done
timeout 900 nix copy --to "file://$OUT/cache?compression=zstd&secret-key=$OUT/upstream.sec" "$ROOT_PATH" "$BIG_PATH"
timeout 900 nix copy --to "file://$OUT/unknown?compression=none&secret-key=$OUT/stranger.sec" "$ROOT_PATH" "$BIG_PATH"
rm -rf "$OUT/unknown/nar"

cat > "$OUT/fixture.env" <<ENV
ROOT_PATH=$ROOT_PATH
BIG_PATH=$BIG_PATH
NCLOSURE=$(wc -l < "$OUT/closure")
CACHE_DIR=$OUT/cache
UNKNOWN_DIR=$OUT/unknown
FIXTURE_STORE=$OUT/state/root
UPSTREAM_PUB='$(cat "$OUT/upstream.pub")'
FLEET_PUB='$(cat "$OUT/fleet.pub")'
FLEET_SEC=$OUT/fleet.sec
STRANGER_PUB='$(cat "$OUT/stranger.pub")'
ENV
touch "$OUT/ok"
