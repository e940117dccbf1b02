# shellcheck shell=bash
# Scenario "s3" (sourced by run.sh): the `[backends.s3]` backend against a real S3 server
# (s3s-fs, the s3s crate's file-system server, with an access key, on 127.0.0.1; its debug log
# names every GetObject it answered). Bucket "cache" holds the export in the binary-cache
# layout; under the key prefix "corrupt/" the same NAR files with one byte flipped.
#   1. the bucket as the only source (its narinfos through the backend's lookup): the client
#      substitutes the closure, verified; the server answered GetObject for every NAR file;
#   2. lookup off, a command mapper (exec-table-mapper.sh) listing s3:corrupt/nar/… first and
#      s3:nar/… next: the corrupt key is tried (server log), then the good one; verified;
#   3. only the corrupt keys: clean failure, nothing stored.
# Missing s3s-fs: a SKIP line naming it (a FAIL with BACKENDS_REQUIRE_SERVERS=1).
S3S_FS=${S3S_FS_BIN:-/var/cache/distributed-store-test/bin/s3s-fs}

# s3_got KEY: the server's log shows a GetObject of KEY in bucket "cache"
s3_got() { grep -q "op: GetObject, s3_path: Object { bucket: \"cache\", key: \"$1\" }" "$W/s3s.log"; }
s3_got_all() { local f; for f in $(nar_files); do s3_got "$f" || { echo "no GetObject for $f"; return 1; }; done; }

sc_s3() {
  if [ ! -x "$S3S_FS" ]; then
    if [ "${BACKENDS_REQUIRE_SERVERS:-0}" = 1 ]; then bad "server missing: $S3S_FS"
    else skip "server missing: $S3S_FS (cargo install s3s-fs --features binary; S3S_FS_BIN=PATH)"; fi
    return
  fi
  local root=$W/s3root port f t
  mkdir -p "$root/cache/corrupt"
  cp -a "$EXPORT"/*.narinfo "$EXPORT/nix-cache-info" "$EXPORT/nar" "$root/cache/"
  corrupt_copy "$EXPORT" "$W/s3-flip" flip
  cp -a "$W/s3-flip/nar" "$root/cache/corrupt/"
  printf 'AWS_ACCESS_KEY_ID=dstest\nAWS_SECRET_ACCESS_KEY=dstest-secret-0123456789\n' > "$W/s3.cred"
  port=$(free_port)
  RUST_LOG=s3s=debug "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key dstest \
    --secret-key dstest-secret-0123456789 "$root" > "$W/s3s.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$port" || { bad "s3s-fs did not come up"; tail -5 "$W/s3s.log"; return; }
  local s3="[backends.s3]
bucket = \"cache\"
endpoint = \"http://127.0.0.1:$port\"
region = \"us-east-1\"
credentialsFile = \"$W/s3.cred\""
  : > "$W/s3-next.table"; : > "$W/s3-bad.table"
  for f in $(nar_files); do
    printf '%s s3:corrupt/%s\n%s s3:%s\n' "$f" "$f" "$f" "$f" >> "$W/s3-next.table"
    echo "$f s3:corrupt/$f" >> "$W/s3-bad.table"
  done

  node_up s3a "$s3" || return
  check_subst "the bucket alone (narinfos by the backend's lookup): nix-store -r APP" s3a "$APP"
  check "closure valid, verified, NarHash as exported" verified s3a $CLOSURE
  check "the server answered GetObject for every NAR file" s3_got_all
  node_down

  for t in next bad; do
    cat > "$W/s3-$t.toml" <<TOML
[[mappers]]
type = "command"
command = ["$BK/exec-table-mapper.sh", "$EXPORT", "$W/s3-$t.table"]
$s3
lookup = false
TOML
  done
  node_up s3b "$(cat "$W/s3-next.toml")" || return
  check_subst "corrupt key first, good key next: nix-store -r APP" s3b "$APP"
  check "corrupt key first: closure valid, verified" verified s3b $CLOSURE
  check "corrupt key first: it was tried (GetObject corrupt/…)" s3_got "corrupt/$(narinfo_field "$BIG" URL)"
  node_down

  node_up s3c "$(cat "$W/s3-bad.toml")" || return
  if TIMEOUT=60 subst s3c --option download-attempts 1 "$APP"; then bad "corrupt keys only: substitution succeeded"
  else ok "corrupt keys only: substitution fails"; fi
  check "corrupt keys only: no closure path in the client store" holds_none s3c $CLOSURE
  node_down
}
