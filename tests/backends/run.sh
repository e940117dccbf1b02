#!/usr/bin/env bash
# tests/backends/run.sh [SCENARIO...]   (root; KEEP=1 keeps the work dir)
#
# A real Nix client substituting a closure through ONE backend at a time: the client's node
# (`distributed-store up`) has no upstreams, no peers and discovery off, so the NARs can only
# come through the backend under test, from a real server started here on 127.0.0.1.
# Scenarios (default: every one whose file tests/backends/SCENARIO.sh exists, in this order):
#   isolated   a node without any mapper or backend cannot substitute the closure (the
#              control for every other scenario); a bad backend config is refused naming the key
#   exec       a 20-line shell script (exec-plugin.sh) is both the external-program mapper
#              (JSON lines) and the exec: backend over a plain `nix copy --to file://` export;
#              Nix 2.8 and 2.26 clients substitute through it; a script serving corrupt bytes
#              never yields a bad path
#   mirrors    three HTTP mirrors (tests/fleet/upstream.py): one down, one serving corrupt bytes,
#              one good: substitution succeeds, the good one served the bytes; all corrupt or
#              truncated: clean failure, nothing stored
#   folder     node A indexes and exports an nss-mapper folder, it is committed to git, node B
#              clones it and imports it, B's client substitutes through the published locators
#   ipfs, s3, bittorrent   through each alone (servers from servers.sh / s3s-fs), plus a corrupt
#              case that falls to the next locator or an upstream, never a bad path
# Env: DS_BIN (binaries dir), BACKENDS_FIXTURE_DIR (reuse a built fixture), NIXGEN (the main
# client generation, 2.8 default; the exec scenario also runs a 2.26 client when the chroot
# from dev/setup exists), BACKENDS_LIMIT_S (per-scenario bound, default 120; bittorrent 180).
# Last line: "N passed, N failed"; exit status 0 iff no check failed.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
ORDER=(isolated exec mirrors folder ipfs s3 bittorrent)
ALL=(); for s in "${ORDER[@]}"; do [ -f "$BK/$s.sh" ] && ALL+=("$s"); done
SCEN=()
for a in "$@"; do case $a in -h|--help) sed -n '2,/^# Last line/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; *) SCEN+=("$a") ;; esac; done
[ ${#SCEN[@]} = 0 ] && SCEN=("${ALL[@]}")
for s in "${SCEN[@]}"; do case " ${ALL[*]} " in *" $s "*) ;; *) echo "unknown scenario: $s (one of: ${ALL[*]})"; exit 2 ;; esac; done
trap 'exit 130' INT TERM

# run_scenario NAME: tests/backends/NAME.sh's sc_NAME in a subshell with its own processes
# (stopped by PID when it ends or runs out of time) and its own dirs under W/NAME-*.
run_scenario() {
  local name=$1 limit=${BACKENDS_LIMIT_S:-120} pid n t0
  # a swarm fetches NAR by NAR in dependency order, each through tracker and engine
  [ "$name" = bittorrent ] && limit=${BACKENDS_LIMIT_S:-180}
  echo "== $name"
  t0=$(now_ms)
  (
    SCENARIO=$name; PIDS=()
    # only this scenario's processes; W itself is the parent's
    trap 'for p in "${PIDS[@]}"; do kill_tree "$p"; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done' EXIT
    trap 'exit 143' TERM
    # shellcheck disable=SC1090
    . "$BK/$name.sh"
    "sc_${name//-/_}"
  ) &
  pid=$!
  for n in $(seq $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    SCENARIO=$name bad "did not finish within $limit s"
    kill -TERM "$pid" 2>/dev/null; sleep 2; kill_tree "$pid"
  fi
  wait "$pid" 2>/dev/null
  info "$name took $(secs $(($(now_ms) - t0))) s"
}

need_root
need_bins
echo "== backends: fixture (work dir $W)"
fixture_build || { finish; exit 1; }
info "closure: $APP, 4 paths, $(mb "$(closure_file_bytes)") of zstd NAR files (BIG $(mb "$(narinfo_field "$BIG" FileSize)"))"
# a private copy: a concurrent `cargo build` cannot swap the binaries mid-run
mkdir -p "$W/bin"; cp -p "$BIN"/distributed-store* "$W/bin/" 2>/dev/null; rm -f "$W"/bin/*.d; BIN=$W/bin
for s in "${SCEN[@]}"; do run_scenario "$s"; done
finish
