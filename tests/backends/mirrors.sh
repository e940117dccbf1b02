# shellcheck shell=bash
# Scenario "mirrors" (sourced by run.sh): the `[backends.mirrors]` backend against real HTTP
# servers (tests/fleet/upstream.py, which counts the body bytes it sends per file) serving copies
# of the `nix copy --to file://` export:
#   1. three mirrors: one down (a port nobody listens on), one serving corrupt NAR files (one
#      byte flipped, same size), one good: the client substitutes the closure, every path
#      verifies, and the good mirror sent every NAR file whole;
#   2. two mirrors, one flipped and one truncated: substitution fails cleanly, nothing in the
#      client store (neither valid nor as files);
#   3. the same two bad mirrors plus an upstream (upstream.py on the good export): the closure
#      verifies, the upstream sent the NAR files.
sc_mirrors() {
  local down good flip trunc
  corrupt_copy "$EXPORT" "$W/mirror-flip" flip
  corrupt_copy "$EXPORT" "$W/mirror-trunc" truncate
  http_cache "$EXPORT" || return; good=$HTTP_URL
  http_cache "$W/mirror-flip" || return; flip=$HTTP_URL
  http_cache "$W/mirror-trunc" || return; trunc=$HTTP_URL
  down=http://127.0.0.1:$(free_port)

  node_up mir1 "[backends.mirrors]
urls = [\"$down\", \"$flip\", \"$good\"]" || return
  check_subst "down + corrupt + good mirror: nix-store -r APP" mir1 "$APP"
  check "down + corrupt + good: closure valid, verified, NarHash as exported" verified mir1 $CLOSURE
  check "the good mirror sent every NAR file of the closure" served_all "$good"
  info "bytes sent: good $(http_stat "$good" "d['total']"), corrupt $(http_stat "$flip" "d['total']")"
  node_down

  node_up mir2 "[backends.mirrors]
urls = [\"$flip\", \"$trunc\"]" || return
  if TIMEOUT=60 subst mir2 --option download-attempts 1 "$APP"; then bad "all mirrors corrupt: substitution succeeded"
  else ok "all mirrors corrupt or truncated: substitution fails"; fi
  check "all mirrors corrupt: no closure path in the client store" holds_none mir2 $CLOSURE
  check "all mirrors corrupt: the corrupt mirrors were asked for NAR files" \
    [ "$(http_stat "$flip" "d['requests_by_kind'].get('nar', 0)")" -gt 0 ]
  node_down

  http_cache "$EXPORT" || return
  UPSTREAMS="[{ url = \"$HTTP_URL\", publicKeys = [\"$PUBKEY\"] }]" node_up mir3 "[backends.mirrors]
urls = [\"$flip\", \"$trunc\"]" || return
  check_subst "corrupt mirrors + upstream: nix-store -r APP" mir3 "$APP"
  check "corrupt mirrors + upstream: closure valid, verified" verified mir3 $CLOSURE
  check "corrupt mirrors + upstream: the upstream sent every NAR file" served_all "$HTTP_URL"
  info "corrupt mirrors + upstream: NAR requests the corrupt mirrors got: $(http_stat "$flip" "d['requests_by_kind'].get('nar', 0)") + $(http_stat "$trunc" "d['requests_by_kind'].get('nar', 0)") (cumulative)"
  node_down
}
