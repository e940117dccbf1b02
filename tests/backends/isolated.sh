# shellcheck shell=bash
# Scenario "isolated" (sourced by run.sh): the control for every backend scenario.
# A client node configured like theirs (no upstreams, no peers, discovery off) but without
# any mapper or backend cannot substitute the closure and stores nothing: whatever the other
# scenarios' clients get came through the backend under test. Plus: config mistakes in the
# `[backends.*]` / `[[mappers]]` sections are refused before anything starts, naming the key.
sc_isolated() {
  node_up iso "" || return
  check_isolated iso
  node_down
  local c=$W/iso-bad.toml
  printf 'discovery = false\n[backends.nosuch]\nurl = "http://127.0.0.1:1"\n' > "$c"
  check_fails "an unknown backend is refused, naming it" '`nosuch`' "$BIN/distributed-store" check-config "$c"
  printf 'discovery = false\n[backends.mirrors]\nurls = ["http://127.0.0.1:1"]\nurl = "x"\n' > "$c"
  check_fails "a misspelt backend key is refused, naming it" '`url`' "$BIN/distributed-store" check-config "$c"
  printf 'discovery = false\n[[mappers]]\ntype = "command"\ncommand = ["relative/prog"]\n' > "$c"
  check_fails "a mapper command that is not an absolute path is refused, naming the key" mappers.command \
    "$BIN/distributed-store" check-config "$c"
}
