# shellcheck shell=bash
# Scenario "folder" (sourced by run.sh): the folder-index round trip through git.
#   node A: its store holds the closure (copied from the export, signatures kept); while its node
#     runs, `distributed-store index export DIR --closure APP --publish ipfs` adds A's NAR files to
#     kubo node A and writes one YAML entry per NAR file with its ipfs: locator; DIR is committed
#     to a git repository; a second export changes nothing (git status clean); then A's node is
#     stopped (its proxy refuses connections);
#   node B: clones the repository, `distributed-store index import CLONE` into its mapper's
#     folder; B's node has no upstreams, no peers, discovery off, and [backends.ipfs] on kubo B:
#     B's client substitutes the closure, verified; kubo A sent it over bitswap.
# Without kubo (servers.sh exit 3) the same round trip runs with --publish s3 on s3s-fs (a SKIP
# line says so); FOLDER_NET=s3 forces that.

sc_folder() {
  local net=${FOLDER_NET:-ipfs} sd=$W/folder-servers a_toml b_toml pub_a fetch_b sent0 sent
  if [ "$net" = ipfs ]; then
    bash "$BK/servers.sh" ipfs "$sd" > "$sd.log" 2>&1; local rc=$?
    [ -f "$sd/pids" ] && mapfile -t -O "${#PIDS[@]}" PIDS < "$sd/pids"
    if [ "$rc" = 3 ]; then skip "kubo missing ($(tail -1 "$sd.log")): the round trip runs with s3 instead"; net=s3
    elif [ "$rc" != 0 ]; then bad "servers.sh ipfs failed"; tail -5 "$sd.log"; return
    else . "$sd/env"; fi
  fi
  if [ "$net" = ipfs ]; then
    pub_a="[backends.ipfs]
api = \"$IPFS_A_API\"
publish = true"
    fetch_b="[backends.ipfs]
api = \"$IPFS_B_API\""
    . "$BK/ipfs.sh"  # ipfs_moved: A's bitswap DataSent, or with kubo-rpc.py B's fetched bytes
    sent0=$(ipfs_moved "$IPFS_A_API" "$IPFS_B_API")
  else
    local s3fs=${S3S_FS_BIN:-/var/cache/distributed-store-test/bin/s3s-fs} port
    [ -x "$s3fs" ] || { skip "neither kubo nor s3s-fs available: no folder round trip"; return; }
    mkdir -p "$W/folder-s3/cache"; port=$(free_port)
    printf 'AWS_ACCESS_KEY_ID=dstest\nAWS_SECRET_ACCESS_KEY=dstest-secret-0123456789\n' > "$W/folder-s3.cred"
    RUST_LOG=s3s=debug "$s3fs" --host 127.0.0.1 --port "$port" --access-key dstest \
      --secret-key dstest-secret-0123456789 "$W/folder-s3" > "$W/folder-s3.log" 2>&1 &
    PIDS+=("$!"); wait_port "$port" || { bad "s3s-fs did not come up"; return; }
    pub_a="[backends.s3]
bucket = \"cache\"
endpoint = \"http://127.0.0.1:$port\"
credentialsFile = \"$W/folder-s3.cred\"
lookup = false
publish = true"
    fetch_b="[backends.s3]
bucket = \"cache\"
endpoint = \"http://127.0.0.1:$port\"
credentialsFile = \"$W/folder-s3.cred\"
lookup = false"
  fi

  # node A: the closure in its store, its node up, export with publishing
  ( . "$TESTBED/nix-env.sh" "$W/fa/client" "" "$PUBKEY"; nix copy --from "file://$EXPORT" "$APP" ) \
    > "$W/fa-copy.log" 2>&1 || { bad "fill A's store"; tail -5 "$W/fa-copy.log"; return; }
  node_up fa "$pub_a" || return
  local a_url=$NODE_URL a_pid=$NODE_PID
  check "A: index export --closure APP --publish $net" \
    "$BIN/distributed-store" index export "$W/index" --config "$W/fa/config.toml" --closure "$APP" --publish "$net"
  check "A: the folder holds one entry per NAR of the closure" \
    [ "$(find "$W/index" -name '*.yaml' | wc -l)" -ge 4 ]
  check "A: every entry has a $net locator" \
    [ "$(grep -rl "$([ "$net" = ipfs ] && echo 'ipfs:' || echo 's3:')" "$W/index" | wc -l)" -ge 4 ]
  check "A: the folder committed to a git repository" \
    sh -c "cd '$W/index' && git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm index"
  check "A: exporting again changes nothing (git status clean)" sh -c \
    "'$BIN/distributed-store' index export '$W/index' --config '$W/fa/config.toml' --closure '$APP' --publish '$net' >/dev/null 2>&1 &&
     cd '$W/index' && [ -z \"\$(git status --porcelain)\" ]"
  down "$a_pid"; NODE_PID=
  check_not "A's proxy is off" curl -sf --noproxy '*' -m 2 -o /dev/null "$a_url/nix-cache-info"

  # node B: clone, import, substitute through the imported locators only
  check "B: git clone of the index" git clone -q "$W/index" "$W/index-clone"
  node_config fb "$fetch_b" || return
  check "B: index import of the clone" "$BIN/distributed-store" index import "$W/index-clone" --config "$W/fb/config.toml"
  node_start fb || return
  check_subst "B: nix-store -r APP through the imported $net locators (A's proxy off)" fb "$APP"
  check "B: closure valid, verified, NarHash as exported" verified fb $CLOSURE
  if [ "$net" = ipfs ]; then
    sent=$(ipfs_moved "$IPFS_A_API" "$IPFS_B_API")
    check "$(ipfs_moved_what "$IPFS_B_API"): the closure ($(mb $((sent - sent0))))" [ $((sent - sent0)) -ge "$(closure_file_bytes)" ]
  else
    check "s3s-fs answered GetObject for NAR files" grep -q 'op: GetObject, s3_path: Object { bucket: "cache", key: "nar/' "$W/folder-s3.log"
  fi
  node_down
  [ -f "$sd/pids" ] && bash "$BK/servers.sh" stop "$sd" > /dev/null 2>&1
  return 0
}
