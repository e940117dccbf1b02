#!/usr/bin/env bash
# QEMU-VM systemd tests of distributed-store (Debian bookworm guests, TCG, private L2 switch).
#
#   tests/vm/run.sh [--nodes 2|3] [--bins DIR] [--quick] [--selftest] [--peers] [--keep] [--cache DIR]
#
#   --bins DIR   directory holding distributed-store and distributed-store-{proxy,signer,mapper,fetcher}
#                (e.g. target/release). Without it the driver runs `cargo build --release` in the
#                repo and uses the workspace's target dir.
#   --nodes N    2 or 3 (default 3; 2 for --selftest). node1 builds and signs; node2 substitutes from
#                node1 over the network, then through its own proxy with node1 in `peers`; node3
#                substitutes through its own proxy (peers) too.
#   --quick      CI mode: 2 nodes, the same checks.
#   --selftest   check the harness itself with demo units (tests/vm/selftest/): socket and
#                D-Bus activation, signed Nix substitution. Needs no project binary.
#   --peers      accepted for compatibility: the peer-substitution checks are always required now.
#   --keep       leave the VMs running at the end (prints how to reach and stop them).
#   --cache DIR  image cache (default $DSVM_CACHE or ${XDG_CACHE_HOME:-$HOME/.cache}/distributed-store-vm).
#
# Prints one "ok"/"FAIL"/"SKIP" line per check and a final "N passed, N failed, N skipped"
# line; exits 1 if any check failed. Needs root (debootstrap, qemu) and the packages of
# install-deps.sh, which it runs when a tool is missing.
#
# Safety: the VMs are on a vde_switch (unix sockets, pure L2) private to this run; guests have
# no default route, DNS or NAT; no IP address is configured on the host. Only the VMs and the
# switch this run started are stopped (by PID, from this run's own state dir).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VM="$HERE/vm.sh"

NODES= BINS= MODE=full KEEP=0 PEERS=0
export DSVM_CACHE="${DSVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distributed-store-vm}"
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs 2 or 3}"; shift 2 ;;
    --bins) BINS="${2:?--bins needs a directory}"; shift 2 ;;
    --quick) NODES=2; shift ;;
    --selftest) MODE=selftest; shift ;;
    --peers) PEERS=1; shift ;;
    --keep) KEEP=1; shift ;;
    --cache) DSVM_CACHE="${2:?--cache needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$NODES" ] || { [ "$MODE" = selftest ] && NODES=2 || NODES=3; }
case "$NODES" in 2|3) ;; *) echo "run.sh: --nodes must be 2 or 3" >&2; exit 2 ;; esac

# ---- reporting ---------------------------------------------------------------
PASSED=0 FAILED=0 SKIPPED=0
now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.1f\", $(now) - $1}"; }
T_ALL=$(now)
say() { printf '%s\n' "$*"; }
pass() { say "ok   $1"; PASSED=$((PASSED + 1)); }
fail() { say "FAIL $1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | tail -25 | sed 's/^/     | /'; FAILED=$((FAILED + 1)); }
skip() { say "SKIP $1 ($2)"; SKIPPED=$((SKIPPED + 1)); }
summary() {
  say "== timings"
  say "  image build:   ${T_IMAGE:-?} s (${IMAGE_STATE:-?})"
  say "  boot:          ${T_BOOT:-?} s ($NODES VMs in parallel, to agent + is-system-running)"
  [ -z "${T_INSTALL:-}" ] || say "  install:       ${T_INSTALL} s"
  [ -z "${T_CHECKS:-}" ] || say "  checks:        ${T_CHECKS} s"
  say "  total:         $(since "$T_ALL") s"
  say "$PASSED passed, $FAILED failed, $SKIPPED skipped"
}
abort() { fail "$1" "${2:-}"; summary; exit 1; }

# ---- VM helpers ----------------------------------------------------------------
x() { "$VM" exec "$@"; }                       # x NODE 'shell script'  (runs as root in the guest)
# check DESC CMD...: a host command; pass if it exits 0, else show its output.
check() {
  local desc="$1" out; shift
  if out=$("$@" 2>&1); then pass "$desc"; else fail "$desc" "$out"; fi
}
# g DESC NODE 'script': the guest script's exit code decides.
g() { local desc="$1" node="$2"; shift 2; check "$desc" x "$node" "$*"; }
# step DESC NODE 'script': a setup step; silent when it works, a FAIL with its output otherwise.
step() {
  local desc="$1" node="$2" out; shift 2
  out=$(x "$node" "$*" 2>&1) || fail "$desc" "$out"
}
# on_all DESC 'script': run the script on every node at once; one ok/FAIL line per node.
on_all() {
  local desc="$1" script="$2" i n; local -a ps=()
  for n in "${NODE_LIST[@]}"; do x "$n" "$script" >"$DSVM_RUN/step-$n.log" 2>&1 & ps+=($!); done
  for i in "${!ps[@]}"; do
    n=${NODE_LIST[$i]}
    if wait "${ps[$i]}"; then pass "$n: $desc"; else fail "$n: $desc" "$(cat "$DSVM_RUN/step-$n.log")"; fi
  done
}
# val NODE 'script': the script's stdout (its stderr goes to the run's log).
val() { x "$1" "$2" 2>>"$DSVM_RUN/stderr.log"; }

# ---- state, cleanup ------------------------------------------------------------
need_deps() {
  local c; for c in qemu-system-x86_64 qemu-img debootstrap vde_switch mkfs.ext4 python3 flock; do
    command -v "$c" >/dev/null || return 0; done; return 1
}
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (debootstrap, chroot, qemu)" >&2; exit 2; }
if need_deps; then "$HERE/install-deps.sh" || abort "install-deps.sh"; fi

mkdir -p "$DSVM_CACHE"; DSVM_CACHE="$(cd "$DSVM_CACHE" && pwd)"
# Per-run state (overlays, sockets, console logs, share) in a fresh temp dir: runs can
# go in parallel, and cleanup removes exactly this dir. Kept short for unix socket paths.
export DSVM_RUN="${DSVM_RUN:-$(mktemp -d "${TMPDIR:-/tmp}/dsvm.XXXXXX")}"
DSVM_RUN="$(mkdir -p "$DSVM_RUN" && cd "$DSVM_RUN" && pwd)"
export DSVM_SHARE="$DSVM_RUN/share"
export DSVM_EXEC_TIMEOUT="${DSVM_EXEC_TIMEOUT:-300}"
cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ]; then
    say "== --keep: VMs left running. Reach them with:"
    say "   DSVM_CACHE=$DSVM_CACHE DSVM_RUN=$DSVM_RUN $VM exec node1 'systemctl status distributed-store-proxy'"
    say "   stop: DSVM_CACHE=$DSVM_CACHE DSVM_RUN=$DSVM_RUN $VM stop-all && rm -rf $DSVM_RUN"
  else
    if [ -n "${BOOTING:-}" ]; then
      # Interrupted during boot: stop our own `vm.sh start` jobs (by PID), give a qemu
      # that one of them was launching a moment to write its pid file, then stop them all.
      kill $BOOTING 2>/dev/null; sleep 2
    fi
    "$VM" stop-all >/dev/null 2>&1
    rm -rf "$DSVM_RUN"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NODE_LIST=(); for i in $(seq 1 "$NODES"); do NODE_LIST+=("node$i"); done

# ---- image -------------------------------------------------------------------------
say "== image ($DSVM_CACHE)"
t=$(now)
img_log=$("$HERE/build-image.sh" "$DSVM_CACHE" 2>&1) || abort "build-image.sh" "$img_log"
T_IMAGE=$(since "$t")
if grep -q 'cached:' <<<"$img_log"; then IMAGE_STATE=cached; else IMAGE_STATE=built; fi
printf '%s\n' "$img_log" | sed 's/^/  /'

# ---- share ---------------------------------------------------------------------------
rm -rf "$DSVM_SHARE"; mkdir -p "$DSVM_SHARE/test"
cp "$HERE/fixtures/hello.nix" "$DSVM_SHARE/test/"
if [ "$MODE" = selftest ]; then
  cp -r "$HERE/selftest" "$DSVM_SHARE/demo"
else
  if [ -z "$BINS" ]; then
    say "== cargo build --release (no --bins given)"
    (cd "$ROOT" && cargo build --release) || abort "cargo build --release"
    BINS="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
            echo "$ROOT/target")/release"
  fi
  BINS="$(cd "$BINS" 2>/dev/null && pwd)" || abort "--bins directory does not exist"
  say "== share: dev/install-files SHARE /opt/distributed-store/bin --bins $BINS"
  out=$("$ROOT/dev/install-files" "$DSVM_SHARE" /opt/distributed-store/bin --bins "$BINS" 2>&1) \
    || abort "dev/install-files" "$out"
  (cd "$DSVM_SHARE" && find bin lib share -type f | sort | sed 's/^/  /')
fi

# ---- boot ------------------------------------------------------------------------------
say "== boot ${NODE_LIST[*]} (parallel)"
t=$(now)
pids=()
for n in "${NODE_LIST[@]}"; do "$VM" start "$n" "${n#node}" >"$DSVM_RUN/boot-$n.log" 2>&1 & pids+=($!); done
BOOTING="${pids[*]}"
boot_failed=
for i in "${!pids[@]}"; do wait "${pids[$i]}" || boot_failed="$boot_failed ${NODE_LIST[$i]}"; done
BOOTING=
T_BOOT=$(since "$t")
for n in "${NODE_LIST[@]}"; do sed 's/^/  /' "$DSVM_RUN/boot-$n.log"; done
if [ -n "$boot_failed" ]; then
  for n in $boot_failed; do say "  -- $n console:"; tail -30 "$DSVM_RUN/$n/console.log" 2>/dev/null | sed 's/^/  /'; done
  abort "boot:$boot_failed"
fi

# ---- checks common to both modes -----------------------------------------------------------
say "== harness"
t=$(now); for _ in 1 2 3 4 5; do x node1 true; done
T_EXEC=$(awk "BEGIN{printf \"%.2f\", ($(now) - $t)/5}")
say "  exec round trip: $T_EXEC s"
check "exec returns the guest's exit code and stdout" bash -c \
  "out=\$('$VM' exec node1 'echo out; echo err >&2; exit 7' 2>/dev/null); test \$? = 7 && test \"\$out\" = out"
for n in "${NODE_LIST[@]}"; do
  g "$n: hostname, share mounted read-only, no default route" "$n" \
    "test \"\$(hostname)\" = $n && grep -q ' /mnt/host 9p ro' /proc/mounts && ! ip route | grep -q default"
done
g "node2 reaches node1 on the private L2 network (ping 10.78.0.11)" node2 "busybox ping -c1 -W5 10.78.0.11"

# =========================================================================================
selftest() {
  local TOKEN="token-$RANDOM$RANDOM" PUB SP
  say "== selftest: socket activation (node1, demo units copied to /etc/systemd/system)"
  step "install demo-http units" node1 "set -e; mkdir -p /srv/demo; echo $TOKEN >/srv/demo/hello.txt
    cp /mnt/host/demo/demo-http.service /mnt/host/demo/demo-http.socket /etc/systemd/system/
    systemctl daemon-reload; systemctl enable --now demo-http.socket"
  g "socket listening, service NOT started yet" node1 \
    'systemctl is-active demo-http.socket && test "$(systemctl is-active demo-http.service)" = inactive'
  check "node2 curl http://10.78.0.11:8080/hello.txt answers (first connection starts the service)" bash -c \
    "'$VM' exec node2 curl -sSf --max-time 60 http://10.78.0.11:8080/hello.txt | grep -qx '$TOKEN'"
  g "service started by the first connection, got fd 3 from systemd" node1 \
    'systemctl is-active demo-http.service && journalctl -u demo-http.service | grep -q "inherited fd 3"'

  say "== selftest: D-Bus activation (node1)"
  step "install demo D-Bus files" node1 'set -e
    cp /mnt/host/demo/org.p2pcache.Demo1.conf /usr/share/dbus-1/system.d/
    cp /mnt/host/demo/org.p2pcache.Demo1.service /usr/share/dbus-1/system-services/
    cp /mnt/host/demo/demo-dbus.service /etc/systemd/system/
    systemctl daemon-reload; systemctl enable demo-dbus.service; systemctl reload dbus'
  g "name activatable, service not running" node1 \
    'busctl --activatable list | grep -q org.p2pcache.Demo1 && test "$(systemctl is-active demo-dbus.service)" = inactive'
  g "busctl introspect activates it" node1 'busctl introspect org.p2pcache.Demo1 /org/p2pcache/Demo1 | grep -q "\.Ping"'
  g "busctl call Ping answers" node1 \
    'busctl call org.p2pcache.Demo1 /org/p2pcache/Demo1 org.p2pcache.Demo1 Ping s hi | grep -q "pong from node1: hi"'
  g "busctl status shows the systemd unit; unit active" node1 \
    'busctl status org.p2pcache.Demo1 | grep -q "Unit=demo-dbus.service" && systemctl is-active demo-dbus.service'
  g "a non-root user may read a property (policy default context)" node1 \
    'runuser -u nobody -- busctl get-property org.p2pcache.Demo1 /org/p2pcache/Demo1 org.p2pcache.Demo1 Node | grep -q node1'

  say "== selftest: Nix signed binary cache on node1, substitution on node2"
  PUB=$(val node1 "set -e; mkdir -p /srv/demo/cache; cd /root
    nix-store --generate-binary-cache-key selftest-1 sk pk
    nix-build /mnt/host/test/hello.nix --argstr token '$TOKEN' -o a >&2
    nix copy --to 'file:///srv/demo/cache?secret-key=/root/sk' ./a >&2; cat pk") || fail "node1 nix build + sign" "$(tail -20 "$DSVM_RUN/stderr.log")"
  SP=$(val node1 'readlink /root/a')
  say "  store path $SP, key $PUB"
  local SUBST="--option substituters http://10.78.0.11:8080/cache"
  g "node2: wrong key rejected (not signed by any of the keys)" node2 \
    "out=\$(nix-store -r $SP $SUBST --option trusted-public-keys 'selftest-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && echo \"\$out\" | grep -q 'not signed by any of the keys' && ! test -e $SP"
  g "node2: nix-store -r substitutes with the right key" node2 \
    "nix-store -r $SP $SUBST --option trusted-public-keys '$PUB' && grep -qx '$TOKEN' $SP"
  g "node2: path valid, carries node1's signature" node2 \
    "nix-store --check-validity $SP && nix path-info --sigs $SP | grep -q selftest-1:"
}

# =========================================================================================
full() {
  local n KEYNAME=node1-vmtest-1 TOKEN="ds-$RANDOM$RANDOM" SP PUB HASH out
  local P=/opt/distributed-store/bin SVC=distributed-store-proxy.service SIG=distributed-store-signer.service
  local MAP=distributed-store-mapper.service FET=distributed-store-fetcher.service SP2 HASH2 TOKEN2="ds2-$RANDOM$RANDOM"
  local SIGNER="org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1"
  local MAPPER="org.distributedstore.Mapper1 /org/distributedstore/Mapper1 org.distributedstore.Mapper1"
  local FETCHER="org.distributedstore.Fetcher1 /org/distributedstore/Fetcher1 org.distributedstore.Fetcher1"
  # As the user nobody (65534), for the D-Bus policy checks.
  local NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"

  say "== install dist files on every node (in parallel)"
  t=$(now)
  local INSTALL='set -e
    install -d -m 755 /opt/distributed-store/bin /etc/distributed-store
    install -m 755 /mnt/host/bin/* /opt/distributed-store/bin/
    install -m 644 /mnt/host/lib/systemd/system/* /etc/systemd/system/
    install -m 644 /mnt/host/share/dbus-1/system.d/* /usr/share/dbus-1/system.d/
    install -m 644 /mnt/host/share/dbus-1/system-services/* /usr/share/dbus-1/system-services/
    install -d -m 755 /usr/lib/sysusers.d
    install -m 644 /mnt/host/lib/sysusers.d/* /usr/lib/sysusers.d/
    systemd-sysusers
    getent passwd distributed-store >/dev/null && getent passwd distributed-store-signer >/dev/null
    for b in distributed-store distributed-store-proxy distributed-store-signer distributed-store-mapper distributed-store-fetcher; do
      test -x /opt/distributed-store/bin/$b
    done
    for f in /etc/systemd/system/distributed-store-mapper.service /etc/systemd/system/distributed-store-fetcher.service \
             /usr/share/dbus-1/system-services/org.distributedstore.Mapper1.service \
             /usr/share/dbus-1/system-services/org.distributedstore.Fetcher1.service; do
      test -s $f
    done
    # Every Nix machine has its database; the Debian nix-bin package creates it lazily on first use.
    nix-store --init'
  on_all "dist files installed (5 binaries, units, D-Bus policy + activation files, sysusers), users created" "$INSTALL"

  # node1: signing key made in the VM; config points the signer at it.
  PUB=$(val node1 "set -e; umask 077
    nix-store --generate-binary-cache-key $KEYNAME /etc/distributed-store/signing-key /etc/distributed-store/signing-key.pub
    chown root:root /etc/distributed-store/signing-key; chmod 0600 /etc/distributed-store/signing-key
    chmod 0644 /etc/distributed-store/signing-key.pub; cat /etc/distributed-store/signing-key.pub") \
    || fail "node1: generate signing key" "$(tail -20 "$DSVM_RUN/stderr.log")"
  say "  node1 public key: $PUB"
  on_all "config written; daemon-reload, reload dbus, enable --now distributed-store-proxy.socket" "set -e
    case \$(hostname) in
      node1) printf '%s\n' '# node1: serves and signs its own store' \
               'privateKeyFile = \"/etc/distributed-store/signing-key\"' 'trustedPublicKeys = [ \"$PUB\" ]' ;;
      node2) printf '%s\n' '# node2: trusts node1 and asks it as a peer; no key of its own' 'trustedPublicKeys = [ \"$PUB\" ]' \
               'peers = [ \"http://10.78.0.11:5496\" ]' ;;
      node3) printf '%s\n' '# node3: trusts node1 and asks it as a peer' 'trustedPublicKeys = [ \"$PUB\" ]' \
               'peers = [ \"http://10.78.0.11:5496\" ]' ;;
    esac >/etc/distributed-store/config.toml
    chmod 0644 /etc/distributed-store/config.toml
    systemctl daemon-reload; systemctl reload dbus
    systemctl enable --now distributed-store-proxy.socket; systemctl is-active distributed-store-proxy.socket"
  T_INSTALL=$(since "$t")
  t=$(now)

  say "== before any activation"
  g "node1: key file is root 0600; config privateKeyFile points at it" node1 \
    'test "$(stat -c "%U %a" /etc/distributed-store/signing-key)" = "root 600" &&
     grep -qx "privateKeyFile = \"/etc/distributed-store/signing-key\"" /etc/distributed-store/config.toml'
  for n in "${NODE_LIST[@]}"; do
    g "$n: proxy service inactive before the first connection, socket listening on 5496" "$n" \
      "test \"\$(systemctl is-active $SVC)\" = inactive && systemctl is-active distributed-store-proxy.socket &&
       ss -ltn 2>/dev/null | grep -q ':5496 ' || { systemctl status --no-pager $SVC; false; }"
  done
  g "node1: signer inactive before the first D-Bus call" node1 "test \"\$(systemctl is-active $SIG)\" = inactive"
  g "node1: mapper and fetcher inactive before the first D-Bus call" node1 \
    "test \"\$(systemctl is-active $MAP)\" = inactive && test \"\$(systemctl is-active $FET)\" = inactive"
  say "== signer (D-Bus activation, LoadCredential)"
  out=$(x node1 "busctl get-property $SIGNER PublicKey" 2>&1)
  check "node1: busctl get-property Signer1 PublicKey starts the signer and returns the .pub key" \
    bash -c 'test "$1" = "s \"$2\"" || { echo "got: $1"; echo "want: s \"$2\""; false; }' _ "$out" "$PUB"
  g "node1: signer active (Type=dbus)" node1 \
    "systemctl is-active $SIG && test \"\$(systemctl show -p Type --value $SIG)\" = dbus || { journalctl -u $SIG --no-pager | tail -20; false; }"
  # systemd 252's `systemctl show -p LoadCredential` prints "[unprintable]": read the unit's D-Bus property.
  g "node1: LoadCredential=signing-key:/etc/distributed-store/signing-key (systemd's parsed unit)" node1 \
    "u=\$(busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager GetUnit s $SIG | cut -d'\"' -f2)
     busctl get-property org.freedesktop.systemd1 \$u org.freedesktop.systemd1.Service LoadCredential | tee /dev/stderr |
       grep -qx 'a(ss) 1 \"signing-key\" \"/etc/distributed-store/signing-key\"'"
  g "node1: signer has \$CREDENTIALS_DIRECTORY/signing-key and runs as distributed-store-signer" node1 \
    "pid=\$(systemctl show -p MainPID --value $SIG); d=\$(tr '\\0' '\\n' </proc/\$pid/environ | sed -n 's/^CREDENTIALS_DIRECTORY=//p')
     echo \"CREDENTIALS_DIRECTORY=\$d\"; test -n \"\$d\" && test -s \"\$d/signing-key\" && test \"\$(stat -c %U /proc/\$pid)\" = distributed-store-signer"
  g "node1: the signer's user cannot read /etc/distributed-store/signing-key directly" node1 \
    '! runuser -u distributed-store-signer -- cat /etc/distributed-store/signing-key >/dev/null'
  g "node1: the proxy's user cannot read it either" node1 \
    '! runuser -u distributed-store -- cat /etc/distributed-store/signing-key >/dev/null'

  say "== mapper and fetcher (D-Bus activation, policy)"
  g "node1: busctl get-property Mapper1 IndexedPaths (as root) starts the mapper" node1 \
    "timeout 90 busctl get-property $MAPPER IndexedPaths | tee /dev/stderr | grep -qE '^t [0-9]+\$'"
  g "node1: mapper active (Type=dbus), runs as distributed-store" node1 \
    "systemctl is-active $MAP && test \"\$(systemctl show -p Type --value $MAP)\" = dbus &&
     pid=\$(systemctl show -p MainPID --value $MAP) && test \"\$(stat -c %U /proc/\$pid)\" = distributed-store ||
     { journalctl -u $MAP --no-pager | tail -20; false; }"
  g "node1: mapper's state directory /var/lib/distributed-store belongs to distributed-store" node1 \
    "test \"\$(stat -c %U /var/lib/distributed-store)\" = distributed-store"
  g "node1: busctl introspect Mapper1 lists its methods and properties" node1 \
    "o=\$(busctl introspect org.distributedstore.Mapper1 /org/distributedstore/Mapper1); echo \"\$o\"
     for p in Lookup Announce ReportBad SetFetching IndexedPaths PeerPaths Peers LastSync IndexBytes Lookups; do
       echo \"\$o\" | grep -E \"^\\.\$p +(method|property)\" >/dev/null || { echo \"missing \$p\"; exit 1; }; done"
  g "node1: busctl get-property Fetcher1 CacheMaxBytes (as root) starts the fetcher; default cacheSize 10G" node1 \
    "timeout 90 busctl get-property $FETCHER CacheMaxBytes | tee /dev/stderr | grep -qx 't 10737418240'"
  g "node1: fetcher active (Type=dbus), runs as distributed-store" node1 \
    "systemctl is-active $FET && test \"\$(systemctl show -p Type --value $FET)\" = dbus &&
     pid=\$(systemctl show -p MainPID --value $FET) && test \"\$(stat -c %U /proc/\$pid)\" = distributed-store ||
     { journalctl -u $FET --no-pager | tail -20; false; }"
  g "node1: the user nobody may read Mapper1 and Fetcher1 properties" node1 \
    "$NOBODY busctl get-property $MAPPER IndexedPaths && $NOBODY busctl get-property $FETCHER CacheBytes"
  g "node1: the user nobody calling Mapper1.Lookup is denied by the D-Bus policy" node1 \
    "out=\$($NOBODY busctl call $MAPPER Lookup sb 00000000000000000000000000000000 false 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && echo \"\$out\" | grep -qiE 'access denied|AccessDenied|rejected send message'"
  g "node1: the user nobody calling Fetcher1.Held is denied too" node1 \
    "out=\$($NOBODY busctl call $FETCHER Held s 00000000000000000000000000000000 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && echo \"\$out\" | grep -qiE 'access denied|AccessDenied|rejected send message'"
  g "node1: root's Mapper1.Lookup of an unknown hash is a typed NotFound, not a hang" node1 \
    "out=\$(timeout 30 busctl call $MAPPER Lookup sb 00000000000000000000000000000000 false 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && test \$rc -ne 124 && ! echo \"\$out\" | grep -qiE 'access denied|AccessDenied|rejected send message'"

  say "== socket activation (proxy)"
  g "node1: curl http://127.0.0.1:5496/nix-cache-info answers" node1 \
    "curl -sS --fail-with-body --max-time 60 http://127.0.0.1:5496/nix-cache-info | tee /dev/stderr | grep -q '^StoreDir: /nix/store'"
  g "node1: proxy service active after the first connection (socket activation)" node1 \
    "systemctl is-active $SVC || { journalctl -u $SVC --no-pager | tail -20; false; }"
  out=$(x node1 "systemctl show -p Type,ActiveState,SubState,NRestarts,WatchdogUSec,StatusText,User $SVC" 2>&1)
  printf '%s\n' "$out" | sed 's/^/  /'
  check "node1: proxy is Type=notify, active/running, WatchdogUSec non-zero, User=distributed-store" bash -c '
    grep -qx "Type=notify" <<<"$1" && grep -qx "ActiveState=active" <<<"$1" && grep -qx "SubState=running" <<<"$1" &&
    grep -q "^WatchdogUSec=." <<<"$1" && ! grep -qE "^WatchdogUSec=(0|infinity)?$" <<<"$1" &&
    grep -qx "User=distributed-store" <<<"$1"' _ "$out"
  g "node1: the proxy process runs as distributed-store" node1 \
    "pid=\$(systemctl show -p MainPID --value $SVC); test \"\$(stat -c %U /proc/\$pid)\" = distributed-store"
  g "node2: curl http://10.78.0.11:5496/nix-cache-info over the VM network" node2 \
    "curl -sS --fail-with-body --max-time 60 http://10.78.0.11:5496/nix-cache-info | grep -q '^StoreDir: /nix/store'"
  for n in "${NODE_LIST[@]}"; do
    [ "$n" = node1 ] && continue
    g "$n: its own proxy socket-activates on 127.0.0.1:5496 too" "$n" \
      "curl -sS --fail-with-body --max-time 60 http://127.0.0.1:5496/nix-cache-info | grep -q '^StoreDir: /nix/store' && systemctl is-active $SVC"
  done

  say "== mapper started with systemctl enable (node2+), as docs/operating.md says"
  for n in "${NODE_LIST[@]}"; do
    [ "$n" = node1 ] && continue
    g "$n: systemctl enable --now distributed-store-mapper: wanted by multi-user.target, D-Bus alias, active" "$n" \
      "systemctl enable --now $MAP 2>&1 && test \"\$(systemctl is-enabled $MAP)\" = enabled &&
       test -L /etc/systemd/system/multi-user.target.wants/$MAP &&
       test -L /etc/systemd/system/dbus-org.distributedstore.Mapper1.service && systemctl is-active $MAP ||
       { journalctl -u $MAP --no-pager | tail -20; false; }"
  done

  say "== D-Bus status and policy"
  g "node1: busctl introspect Proxy1 lists its properties" node1 \
    "o=\$(busctl introspect org.distributedstore.Proxy1 /org/distributedstore/Proxy1); echo \"\$o\"
     for p in Listen Store PublicKey Requests Version; do echo \"\$o\" | grep -E \"^\\.\$p +property\" >/dev/null || { echo \"missing \$p\"; exit 1; }; done"
  g "node1: a non-root user (nobody) may read Proxy1 properties" node1 \
    'runuser -u nobody -- busctl get-property org.distributedstore.Proxy1 /org/distributedstore/Proxy1 org.distributedstore.Proxy1 Version'
  g "node1: Proxy1.PublicKey is node1's key" node1 \
    "busctl get-property org.distributedstore.Proxy1 /org/distributedstore/Proxy1 org.distributedstore.Proxy1 PublicKey | grep -qF '$PUB'"

  say "== Nix: build on node1, substitute on node2 from node1's proxy"
  SP=$(val node1 "nix-build /mnt/host/test/hello.nix --argstr token '$TOKEN' -o /root/result") \
    || fail "node1: nix-build a trivial derivation offline" "$(tail -20 "$DSVM_RUN/stderr.log")"
  [ -n "$SP" ] && pass "node1: nix-build a trivial input-addressed derivation offline ($SP)"
  HASH=$(basename "$SP" | cut -c1-32)
  g "node1: a non-root user calling Signer1.Sign is denied by the D-Bus policy" node1 \
    "out=\$(runuser -u nobody -- busctl call $SIGNER Sign s $SP 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && echo \"\$out\" | grep -qiE 'access denied|AccessDenied|rejected send message'"
  g "node1: a non-root user may read Signer1 properties" node1 \
    "runuser -u nobody -- busctl get-property $SIGNER PublicKey | grep -qF '$PUB'"
  g "node1: root may call Sign on a valid path, gets a $KEYNAME signature" node1 \
    "busctl call $SIGNER Sign s $SP | tee /dev/stderr | grep -q '^s \"$KEYNAME:'"
  g "node1: Sign refuses a path that is not valid in the store" node1 \
    "out=\$(busctl call $SIGNER Sign s /nix/store/00000000000000000000000000000000-nope 2>&1); rc=\$?; echo \"\$out\"; test \$rc -ne 0"
  g "node1: proxy serves a signed narinfo for the path" node1 \
    "o=\$(curl -sS --fail-with-body --max-time 60 http://127.0.0.1:5496/$HASH.narinfo); echo \"\$o\"
     echo \"\$o\" | grep -qx 'StorePath: $SP' && echo \"\$o\" | grep -q '^Sig: $KEYNAME:'"
  g "node1: unknown hash answers 404 quickly" node1 \
    "c=\$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:5496/00000000000000000000000000000000.narinfo); echo \$c; test \$c = 404"
  local SUBST="--option substituters http://10.78.0.11:5496"
  g "node2: path absent before" node2 "! test -e $SP"
  g "node2: wrong trusted key -> 'not signed by any of the keys', path not added" node2 \
    "out=\$(nix-store -r $SP $SUBST --option trusted-public-keys '$KEYNAME:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=' 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && echo \"\$out\" | grep -q 'not signed by any of the keys' && ! nix-store --check-validity $SP 2>/dev/null"
  g "node2: nix-store -r from http://10.78.0.11:5496 with node1's key succeeds" node2 \
    "nix-store -r $SP $SUBST --option trusted-public-keys '$PUB' && grep -qx '$TOKEN' $SP"
  g "node2: path valid, nix path-info --sigs shows $KEYNAME" node2 \
    "nix-store --check-validity $SP && nix path-info --sigs $SP | tee /dev/stderr | grep -q '$KEYNAME:'"

  say "== peers: substitution through the node's own proxy, node1 in \`peers\`"
  SP2=$(val node1 "nix-build /mnt/host/test/hello.nix --argstr token '$TOKEN2' -o /root/result2") \
    || fail "node1: nix-build a second path (for the peer checks)" "$(tail -20 "$DSVM_RUN/stderr.log")"
  HASH2=$(basename "$SP2" | cut -c1-32)
  [ -n "$SP2" ] && pass "node1: nix-build a second path for the peer checks ($SP2)"
  g "node1: the mapper has indexed the store (IndexedPaths > 0)" node1 \
    "for i in \$(seq 60); do n=\$(busctl get-property $MAPPER IndexedPaths | cut -d' ' -f2); test \"\$n\" -gt 0 && break; sleep 1; done
     echo IndexedPaths=\$n; test \"\$n\" -gt 0 && busctl get-property $MAPPER Lookups"
  # Each peer node: its mapper learns node1's announcement, its proxy relays node1's signed
  # narinfo (curl first: Nix would remember a 404 for an hour), then Nix substitutes through
  # 127.0.0.1:5496 and the NAR comes through the fetcher from the peer.
  for n in "${NODE_LIST[@]}"; do
    [ "$n" = node1 ] && continue
    local P_SP=$SP2 P_TOKEN=$TOKEN2 P_HASH=$HASH2
    # node2 already holds the first path (substituted from node1 directly above); node3 gets it here.
    [ "$n" = node3 ] && { P_SP=$SP P_TOKEN=$TOKEN P_HASH=$HASH; }
    g "$n: path absent before" "$n" "! nix-store --check-validity $P_SP 2>/dev/null"
    g "$n: its mapper learns what node1 holds (PeerPaths > 0 within 90 s)" "$n" \
      "for i in \$(seq 90); do n=\$(busctl get-property $MAPPER PeerPaths | cut -d' ' -f2); test \"\$n\" -gt 0 && break; sleep 1; done
       echo PeerPaths=\$n; busctl get-property $MAPPER Peers; test \"\$n\" -gt 0"
    g "$n: its own proxy (127.0.0.1:5496) relays node1's signed narinfo" "$n" \
      "for i in \$(seq 30); do o=\$(curl -sf --max-time 10 http://127.0.0.1:5496/$P_HASH.narinfo) && break; sleep 1; done; echo \"\$o\"
       echo \"\$o\" | grep -qx 'StorePath: $P_SP' && echo \"\$o\" | grep -q '^Sig: $KEYNAME:'"
    g "$n: nix-store -r through its own proxy (127.0.0.1:5496) from peer node1" "$n" \
      "nix-store -r $P_SP --option substituters http://127.0.0.1:5496 --option trusted-public-keys '$PUB' \
         --option narinfo-cache-negative-ttl 0 && grep -qx '$P_TOKEN' $P_SP && nix path-info --sigs $P_SP | grep -q '$KEYNAME:'"
    g "$n: the NAR came through its fetcher (D-Bus activated by the proxy), from the peer" "$n" \
      "systemctl is-active $FET && busctl get-property $FETCHER BytesFetched | tee /dev/stderr | grep -q '\"peer\"'"
  done
  g "node1: SignaturesIssued > 0" node1 \
    "busctl get-property $SIGNER SignaturesIssued | tee /dev/stderr | grep -qE '^t [1-9]'"
  g "node1: proxy Requests counter > 0" node1 \
    "busctl get-property org.distributedstore.Proxy1 /org/distributedstore/Proxy1 org.distributedstore.Proxy1 Requests | tee /dev/stderr | grep -qE '^t [1-9]'"

  # node1 exports signed NAR files as a plain binary cache and serves it over HTTP; node2
  # drops its peer (and discovery) for `[backends.mirrors]`, so that mirror is its only source:
  # the mirrors mapper answers the narinfo (signed by node1's key), the mirrors backend fetches
  # the NAR file. A second exported path, asked for after the mirror stopped, must not arrive.
  say "== backend across VMs: HTTP mirror on node1, node2 substitutes through [backends.mirrors] alone"
  local t_mir TOKEN3="ds3-$RANDOM$RANDOM" TOKEN4="ds4-$RANDOM$RANDOM" SP3 SP4 HASH3 paths
  local MIRROR_URL=http://10.78.0.11:8081 CONF=/etc/distributed-store/config.toml
  # Nix's own binary-cache writer, signing with node1's key (the signer's credential source).
  local EXPORT="nix copy --to 'file:///srv/ds-mirror?compression=xz&secret-key=/etc/distributed-store/signing-key'"
  # A new config takes effect on restart. Stopped as in the stop section below: the proxy
  # socket first, so that no request D-Bus-activates the mapper or fetcher meanwhile.
  local RESTART="systemctl stop distributed-store-proxy.socket $SVC
    timeout 30 systemctl stop $MAP $FET
    systemctl start distributed-store-proxy.socket $MAP && systemctl is-active distributed-store-proxy.socket $MAP"
  t_mir=$(now)
  paths=$(val node1 "nix-build -E 'map (t: import /mnt/host/test/hello.nix { token = t; }) [ \"$TOKEN3\" \"$TOKEN4\" ]' \
                       -o /root/result-mirror >&2 && readlink /root/result-mirror /root/result-mirror-2") \
    || fail "node1: nix-build two paths for the mirror checks" "$(tail -20 "$DSVM_RUN/stderr.log")"
  SP3=$(sed -n 1p <<<"$paths"); SP4=$(sed -n 2p <<<"$paths"); HASH3=$(basename "$SP3" | cut -c1-32)
  [ -n "$SP3" ] && [ -n "$SP4" ] && pass "node1: nix-build two paths for the mirror checks ($SP3, $SP4)"
  g "node1: nix copy --to file:///srv/ds-mirror?compression=xz&secret-key=… (signed narinfo), served by python3 -m http.server 8081 (unit ds-mirror)" node1 \
    "set -e; $EXPORT $SP3
     grep -qx 'Compression: xz' /srv/ds-mirror/$HASH3.narinfo && grep -q '^Sig: $KEYNAME:' /srv/ds-mirror/$HASH3.narinfo
     systemd-run --unit ds-mirror --quiet /usr/bin/python3 -u -m http.server 8081 --bind 10.78.0.11 --directory /srv/ds-mirror
     for i in \$(seq 40); do curl -sf --max-time 5 $MIRROR_URL/nix-cache-info >/dev/null && break; sleep 0.5; done
     curl -sS --fail-with-body --max-time 10 $MIRROR_URL/$HASH3.narinfo | grep -qx 'StorePath: $SP3'"
  g "node2: config: no peers/upstreams, discovery = false, [backends.mirrors] urls = [\"$MIRROR_URL\"]; proxy, mapper, fetcher restarted" node2 \
    "set -e; cp $CONF /root/config.toml.peers
     { echo '# node2, mirror checks: node1 trusted, its HTTP mirror the only source'
       grep -vE '^(#|peers *=|upstreams *=|discovery *=)' /root/config.toml.peers
       printf '%s\n' 'discovery = false' '' '[backends.mirrors]' 'urls = [ \"$MIRROR_URL\" ]'; } >$CONF
     cat $CONF; ! grep -qE '^(peers|upstreams)' $CONF
     $RESTART"
  g "node2: path absent before" node2 "! nix-store --check-validity $SP3 2>/dev/null"
  g "node2: its own proxy (127.0.0.1:5496) answers the narinfo from the mirror, with node1's Sig" node2 \
    "for i in \$(seq 30); do o=\$(curl -sf --max-time 10 http://127.0.0.1:5496/$HASH3.narinfo) && break; sleep 1; done; echo \"\$o\"
     echo \"\$o\" | grep -qx 'StorePath: $SP3' && echo \"\$o\" | grep -q '^Sig: $KEYNAME:'"
  g "node2: nix-store -r through its own proxy, the NAR from node1's mirror; contents match" node2 \
    "nix-store -r $SP3 --option substituters http://127.0.0.1:5496 --option trusted-public-keys '$PUB' \
       --option narinfo-cache-negative-ttl 0 && grep -qx '$TOKEN3' $SP3 && nix path-info --sigs $SP3 | grep -q '$KEYNAME:'"
  g "node2: the fetcher counted the bytes under the mirror scheme (BytesFetched)" node2 \
    "busctl get-property $FETCHER BytesFetched | tee /dev/stderr | grep -q '\"mirror\"'"
  g "node1: ds-mirror's log shows node2 (10.78.0.12) GET the narinfo and the .nar.xz" node1 \
    "o=\$(journalctl -u ds-mirror --no-pager); echo \"\$o\" | tail -5
     echo \"\$o\" | grep -qE '10\\.78\\.0\\.12 .*\"GET /$HASH3\\.narinfo' && echo \"\$o\" | grep -qE '10\\.78\\.0\\.12 .*\"GET /nar/[^ ]+\\.nar\\.xz HTTP[^\"]*\" 200'"
  g "node1: export the second path too, then systemctl stop ds-mirror (port 8081 closed)" node1 \
    "set -e; $EXPORT $SP4; test -s /srv/ds-mirror/$(basename "$SP4" | cut -c1-32).narinfo
     systemctl stop ds-mirror; ! systemctl is-active ds-mirror && ! ss -ltn | grep -q ':8081 '"
  g "node2: mirror down: the second (exported) path is not substituted, nothing enters the store" node2 \
    "out=\$(timeout 120 nix-store -r $SP4 --option substituters http://127.0.0.1:5496 --option trusted-public-keys '$PUB' \
       --option narinfo-cache-negative-ttl 0 2>&1); rc=\$?; echo \"\$out\"
     test \$rc -ne 0 && test \$rc -ne 124 && ! nix-store --check-validity $SP4 2>/dev/null && ! test -e $SP4"
  g "node2: original config (node1 in peers) restored; proxy, mapper, fetcher restarted" node2 \
    "set -e; cp /root/config.toml.peers $CONF; grep -q '^peers = ' $CONF; $RESTART
     curl -sS --fail-with-body --max-time 60 http://127.0.0.1:5496/nix-cache-info >/dev/null"
  say "  mirror section: $(since "$t_mir") s"

  say "== watchdog, stop, restart"
  for n in "${NODE_LIST[@]}"; do
    g "$n: proxy, signer, mapper, fetcher never restarted (watchdog kept happy, NRestarts=0)" "$n" \
      "o=\$(systemctl show -p Id,ActiveState,NRestarts $SVC $SIG $MAP $FET); echo \"\$o\"; ! echo \"\$o\" | grep '^NRestarts=' | grep -vqx NRestarts=0"
  done
  # A clean stop ends with Result=success (a stop that timed out or needed SIGKILL gives
  # Result=timeout/signal). The proxy may already be active again: the other nodes' mappers
  # poll this node's /_ds/v1/announce every second, and its socket starts it at once.
  for n in "${NODE_LIST[@]}"; do
    g "$n: systemctl stop (SIGTERM) -> clean stop" "$n" \
      "timeout 30 systemctl stop $SVC; s=\$(systemctl show -p ActiveState,Result,ExecMainCode,ExecMainStatus $SVC); echo \"\$s\"
       echo \"\$s\" | grep -qx Result=success"
  done
  g "node1: the socket re-activates the proxy after the stop" node1 \
    "curl -sS --fail-with-body --max-time 60 http://127.0.0.1:5496/nix-cache-info >/dev/null && systemctl is-active $SVC"
  g "node1: systemctl stop signer -> clean stop" node1 \
    "timeout 30 systemctl stop $SIG; s=\$(systemctl show -p ActiveState,Result $SIG); echo \"\$s\"; echo \"\$s\" | grep -qx Result=success"
  for n in "${NODE_LIST[@]}"; do
    g "$n: systemctl stop mapper and fetcher -> clean stop" "$n" \
      "systemctl stop distributed-store-proxy.socket $SVC  # no announce poll may D-Bus-activate the mapper meanwhile
       timeout 30 systemctl stop $MAP $FET; s=\$(systemctl show -p Id,ActiveState,Result $MAP $FET); echo \"\$s\"
       systemctl start distributed-store-proxy.socket
       ! echo \"\$s\" | grep '^ActiveState=' | grep -vqx ActiveState=inactive && ! echo \"\$s\" | grep '^Result=' | grep -vqx Result=success"
  done
  for n in "${NODE_LIST[@]}"; do
    g "$n: journalctl -u distributed-store-{proxy,signer,mapper,fetcher}: no panic" "$n" \
      "! journalctl -u $SVC -u $SIG -u $MAP -u $FET --no-pager | grep -iE 'panic|panicked'"
  done
  T_CHECKS=$(since "$t")
}

if [ "$MODE" = selftest ]; then selftest; else full; fi

if [ "$FAILED" -gt 0 ] && [ "$MODE" = full ]; then
  say "== journals (tail) for diagnosis"
  for n in "${NODE_LIST[@]}"; do
    say "  -- $n"
    x "$n" 'journalctl -u distributed-store-proxy.service -u distributed-store-proxy.socket -u distributed-store-signer.service \
             -u distributed-store-mapper.service -u distributed-store-fetcher.service --no-pager -o short-monotonic | tail -40' 2>&1 | sed 's/^/  /'
  done
fi
summary
[ "$FAILED" = 0 ]
