#!/usr/bin/env bash
# tests/nix-eval/run.sh: evaluation tests of the Nix side, without nixpkgs.
#
# 1. `nix-instantiate --parse` on every .nix file in the repository.
# 2. The NixOS module, evaluated with lib.evalModules from a nixpkgs `lib/`
#    snapshot, stub NixOS options and a fake pkgs (eval.nix, cases.nix),
#    checked by check.py.
# 3. flake.nix's outputs, evaluated against a stub nixpkgs (flake-eval.nix).
#
# Needs nix-instantiate (any Nix >= 2.8) and python3 >= 3.11. The nixpkgs lib
# snapshot is $NIXPKGS_LIB (a nixpkgs checkout, a nixpkgs.lib flake, or its
# lib/ folder), by default ../shared/nixpkgs-lib next to the repository.
# Nix runs daemonless with a private chroot store and private config/cache
# dirs under a temp dir: the host's /nix/store and nix.conf are never used.
#
# Ends with "nix-eval: N passed, N failed"; exit status 1 if anything failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

pass=0 fail=0 skip=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
ko() { fail=$((fail + 1)); echo "FAIL $*"; }
finish() {
  if [ "$skip" -gt 0 ]; then
    echo "nix-eval: $pass passed, $fail failed, $skip skipped"
  else
    echo "nix-eval: $pass passed, $fail failed"
  fi
  [ "$fail" -eq 0 ]
  exit
}

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "SKIP: nix-instantiate not found (Debian: apt-get install nix-bin)"
  skip=1
  finish
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds-nix-eval.XXXXXX")
cleanup() { chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Daemonless Nix confined to $WORK.
mkdir -p "$WORK/root" "$WORK/etc" "$WORK/xdg/cache" "$WORK/xdg/config" "$WORK/xdg/data" "$WORK/xdg/state" "$WORK/results"
export NIX_REMOTE="local?root=$WORK/root"
export NIX_CONF_DIR="$WORK/etc"
export XDG_CACHE_HOME="$WORK/xdg/cache" XDG_CONFIG_HOME="$WORK/xdg/config"
export XDG_DATA_HOME="$WORK/xdg/data" XDG_STATE_HOME="$WORK/xdg/state"
export NIX_CONFIG="build-users-group =
experimental-features = nix-command flakes
allow-import-from-derivation = false"
unset NIX_PATH NIX_USER_CONF_FILES

echo "== parse: every .nix file"
while IFS= read -r -d '' f; do
  rel=${f#"$ROOT"/}
  if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    ok "parse $rel"
  else
    ko "parse $rel: $err"
  fi
done < <(find "$ROOT" \( -path "$ROOT/.git" -o -path "$ROOT/target" -o -name node_modules -o -path "$ROOT/fuzz/target" \) -prune \
  -o -name '*.nix' -type f -print0 | sort -z)

# Locate the nixpkgs lib snapshot.
LIBSRC=${NIXPKGS_LIB:-$ROOT/../shared/nixpkgs-lib}
LIBDIR=
for c in "$LIBSRC/lib" "$LIBSRC"; do
  if [ -f "$c/default.nix" ] && [ -f "$c/modules.nix" ]; then LIBDIR=$(cd "$c" && pwd); break; fi
done
if [ -z "$LIBDIR" ]; then
  echo "SKIP: nixpkgs lib snapshot not found at $LIBSRC; set NIXPKGS_LIB (a nixpkgs checkout or its lib/ folder)"
  skip=1
  finish
fi
echo "== nixpkgs lib: $LIBDIR ($(head -c 60 "$LIBDIR/../REVISION" 2>/dev/null || echo 'no REVISION file'))"

evaluate() { # evaluate FILE [nix-instantiate args...]
  local file=$1; shift
  nix-instantiate --eval --strict --json "$file" --arg nixpkgsLib "$LIBDIR" "$@"
}

echo "== module: nixos-modules/distributed-store.nix"
if ! evaluate "$HERE/eval.nix" >"$WORK/results/cases.json" 2>"$WORK/results/cases.err"; then
  ko "eval.nix lists its cases: $(tail -n 5 "$WORK/results/cases.err")"
  finish
fi
for c in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))))' "$WORK/results/cases.json"); do
  if evaluate "$HERE/eval.nix" --argstr case "$c" >"$WORK/results/$c.json" 2>"$WORK/results/$c.err"; then
    :
  else
    rm -f "$WORK/results/$c.json"
  fi
done
while IFS= read -r line; do
  case $line in
    "PASS "*) ok "${line#PASS }" ;;
    "FAIL "*) ko "${line#FAIL }" ;;
    *) echo "$line" ;;
  esac
done < <(python3 "$HERE/check.py" "$WORK/results" "$ROOT" 2>&1 || echo "FAIL check.py crashed")

echo "== flake: flake.nix against a stub nixpkgs"
report() { # feed PASS/FAIL lines into the counters
  while IFS= read -r line; do
    case $line in
      "PASS "*) ok "${line#PASS }" ;;
      "FAIL "*) ko "${line#FAIL }" ;;
      *) echo "$line" ;;
    esac
  done
}
if [ ! -f "$ROOT/flake.nix" ]; then
  ko "flake.nix exists"
  finish
fi
# --read-write-mode: the package's src is really copied (into the private
# store) so that its contents can be checked.
if ! evaluate "$HERE/flake-eval.nix" --read-write-mode --arg repo "$ROOT" >"$WORK/flake.json" 2>"$WORK/flake.err"; then
  ko "flake-eval.nix evaluates: $(grep -v '^warning:' "$WORK/flake.err" | tail -n 8)"
  finish
fi
report < <(python3 - "$WORK/flake.json" "$WORK/scripts" <<'PY' 2>&1 || echo "FAIL flake result check crashed"
import ast, json, os, sys
d = json.load(open(sys.argv[1]))
for name, res in sorted(d["results"].items()):
    print(("PASS " if res is True else "FAIL ") + "flake: " + name + ("" if res is True else ": " + json.dumps(res)))
os.makedirs(sys.argv[2], exist_ok=True)
for name, script in sorted(d["testScripts"].items()):
    path = os.path.join(sys.argv[2], name + ".py")
    open(path, "w").write(script)
    try:
        compile(script, path, "exec", flags=ast.PyCF_ONLY_AST)
        print(f"PASS flake: {name}: testScript is valid Python")
    except SyntaxError as e:
        print(f"FAIL flake: {name}: testScript: {e}")
    left = [l for l in script.splitlines() if "${" in l]
    print(("PASS " if not left else "FAIL ") + f"flake: {name}: no uninterpolated Nix in testScript" + ("" if not left else f": {left[:3]}"))
open(os.path.join(sys.argv[2], "postInstall.sh"), "w").write(d["postInstall"])
PY
)

# Run the package's postInstall against the real dist/ into a fake $out, with
# a stand-in for stdenv's `substitute` (only --subst-var-by is used).
OUT="$WORK/pkg-out"
mkdir -p "$OUT/bin"
for b in distributed-store distributed-store-proxy distributed-store-signer distributed-store-mapper distributed-store-fetcher; do
  printf '#!/bin/sh\n' >"$OUT/bin/$b"
  chmod +x "$OUT/bin/$b"
done
if [ -d "$ROOT/dist" ] && (
  cd "$ROOT" && out="$OUT" bash -euo pipefail -c '
    substitute() {
      local src=$1 dst=$2 content
      shift 2
      content=$(cat "$src"; printf x)
      content=${content%x}
      while [ $# -gt 0 ]; do
        case $1 in
          --subst-var-by) content=${content//"@$2@"/$3}; shift 3 ;;
          *) echo "substitute stand-in: unsupported $1" >&2; return 1 ;;
        esac
      done
      printf "%s" "$content" >"$dst"
    }
    . "$1"' _ "$WORK/scripts/postInstall.sh"
) >"$WORK/postinstall.log" 2>&1; then
  ok "package: postInstall runs on dist/"
  report < <(python3 "$HERE/check_package.py" "$OUT" 2>&1 || echo "FAIL check_package.py crashed")
else
  ko "package: postInstall runs on dist/: $(tail -n 5 "$WORK/postinstall.log")"
fi

finish
