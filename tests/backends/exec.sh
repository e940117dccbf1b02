# shellcheck shell=bash
# Scenario "exec" (sourced by run.sh): the external-program mapper and backend, both
# implemented by exec-plugin.sh (16 lines of sh) over plain `nix copy --to file://` exports.
#   1. a Nix 2.8 client (and a Nix 2.26 client, on its own fresh node, when the chroot from
#      dev/setup exists) substitutes the closure through it: verified, and the script's own log
#      lists every NAR file of the closure, whole;
#   2. the script over a copy whose NAR files have one byte flipped: substitution fails
#      cleanly, nothing in the client store;
#   3. the script over the corrupt copy first and the good one second (two exec: locators per
#      NAR, corrupt first): the corrupt one is tried, then the next; the closure verifies;
#   4. the corrupt copy plus an upstream (upstream.py on the good export): the closure verifies,
#      the upstream sent it (how many NAR files the script was asked first is shown: with the
#      fleet mappers, upstream included, asked before [[mappers]], usually none).
EXEC_PLUGIN=$BK/exec-plugin.sh

# exec_toml DIR...: the mapper over DIRs and the backend
exec_toml() {
  local a="\"$EXEC_PLUGIN\"" d
  for d in "$@"; do a="$a, \"$d\""; done
  cat <<TOML
[[mappers]]
type = "command"
command = [$a]
[backends.command]
command = ["$EXEC_PLUGIN", "--fetch"]
TOML
}
# exec_served_all DIR: DIR.served (the script's log) names every NAR file of the closure with
# its full size
exec_served_all() {
  local f
  for f in $(nar_files); do
    grep -qx "${f#nar/} $(stat -c %s "$EXPORT/$f")" "$1.served" || { echo "$f not served by the script"; cat "$1.served"; return 1; }
  done
}

sc_exec() {
  local why gens=(2.8) g
  cp -a "$EXPORT" "$W/exec-good"
  corrupt_copy "$EXPORT" "$W/exec-flip" flip
  if why=$(modern_nix_missing); then skip "no Nix 2.26 client: $why"; else gens+=(2.26); fi
  for g in "${gens[@]}"; do
    NIXGEN=$g
    rm -f "$W/exec-good.served"
    node_up "exec-$g" "$(exec_toml "$W/exec-good")" || return
    check_subst "external-program mapper + backend: nix-store -r APP" "exec-$g" "$APP"
    check "closure valid, verified, NarHash as exported" verified "exec-$g" $CLOSURE
    check "the script served every NAR file of the closure, whole" exec_served_all "$W/exec-good"
    node_down
  done
  NIXGEN=2.8

  node_up exec-bad "$(exec_toml "$W/exec-flip")" || return
  if TIMEOUT=60 subst exec-bad --option download-attempts 1 "$APP"; then bad "corrupt NAR files from the script: substitution succeeded"
  else ok "corrupt NAR files from the script: substitution fails"; fi
  check "corrupt NAR files: no closure path in the client store" holds_none exec-bad $CLOSURE
  check "corrupt NAR files: the script was asked for NAR files" test -s "$W/exec-flip.served"
  node_down

  rm -f "$W/exec-flip.served" "$W/exec-good.served"
  node_up exec-next "$(exec_toml "$W/exec-flip" "$W/exec-good")" || return
  check_subst "corrupt locator first, good one next: nix-store -r APP" exec-next "$APP"
  check "corrupt locator first: closure valid, verified" verified exec-next $CLOSURE
  check "corrupt locator first: it was tried (the corrupt copy served NAR files)" test -s "$W/exec-flip.served"
  check "corrupt locator first: the good copy served every NAR file" exec_served_all "$W/exec-good"
  node_down

  rm -f "$W/exec-flip.served"
  http_cache "$EXPORT" || return
  UPSTREAMS="[{ url = \"$HTTP_URL\", publicKeys = [\"$PUBKEY\"] }]" \
    node_up exec-up "$(exec_toml "$W/exec-flip")" || return
  check_subst "corrupt script + upstream: nix-store -r APP" exec-up "$APP"
  check "corrupt script + upstream: closure valid, verified" verified exec-up $CLOSURE
  check "corrupt script + upstream: the upstream sent every NAR file" served_all "$HTTP_URL"
  info "corrupt script + upstream: NAR files asked of the corrupt script: $(cat "$W/exec-flip.served" 2>/dev/null | wc -l)"
  node_down
}
