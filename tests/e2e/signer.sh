#!/usr/bin/env bash
# The signer on a real private dbus-daemon configured with the repo's own policy
# (dist/dbus-1/system.d) and activation file (dist/dbus-1/system-services), as
# `distributed-store up` runs it:
#   - the proxy's user (distributed-store) gets a signature equal to the one real
#     Nix makes with the same key (`nix store sign`; ed25519 is deterministic);
#   - another uid (nobody) is denied by policy, and the proxy's user cannot take
#     the signer's name; everyone may read the status properties;
#   - a path that is not valid in the store gets the typed PathNotValid error,
#     a non-store path InvalidPath;
#   - the key comes from $CREDENTIALS_DIRECTORY/signing-key when present, and
#     never appears in logs, on the bus or in status output;
#   - signPaths: in a store holding a path built there and one substituted
#     (`nix-store -r` from a file:// cache), the default signs only the built
#     one and refuses the other with the typed error NotBuiltHere (counted);
#     `signPaths = "all"` signs the substituted one too.
# Creates the system users from dist/sysusers.d with systemd-sysusers (idempotent).
. "$(dirname "$0")/lib.sh"
need_root; need_bins
echo "== signer over D-Bus with the repo's policy"
systemd-sysusers "$ROOT/dist/sysusers.d/distributed-store.conf" || { bad "systemd-sysusers"; finish; exit 1; }
BIG_MIB=1 fixture g || { finish; exit 1; }
PORT=$(free_port)
up node "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"
privateKeyFile = \"$KEY_SEC\"" || { finish; exit 1; }
BUS=$UP_DBUS_SYSTEM_BUS_ADDRESS
as_user() { local u=$1; shift; setpriv --reuid="$(id -u "$u")" --regid="$(id -g "$u")" --clear-groups "$@"; }
sign_as() { as_user "$1" busctl --address="$BUS" call org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1 Sign s "$2"; }
prop_as() { as_user "$1" busctl --address="$BUS" get-property org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1 "$2"; }

# What real Nix signs with this key, on a copy of the store (ed25519 signatures are deterministic).
cp -a "$W/g/store" "$W/nixcopy"
( . "$TESTBED/nix-env.sh" "$W/nixcopy"; nix store sign --key-file "$KEY_SEC" "$APP" ) > "$W/nixsign.log" 2>&1 || { cat "$W/nixsign.log"; bad "nix store sign"; }
NIX_SIG=$(nixc nixcopy "" "" nix path-info --sigs "$APP" | tr ' ' '\n' | grep "^${PUBKEY%%:*}:")

OUT=$(sign_as distributed-store "$APP" 2>&1)
check "proxy user (distributed-store) may call Sign" grep -q '^s "' <<<"$OUT"
OUR_SIG=$(sed -n 's/^s "\(.*\)"$/\1/p' <<<"$OUT")
same_nonempty() { [ -n "$1" ] && [ "$1" = "$2" ]; }
check "our signature equals real Nix's (nix store sign, same key)" same_nonempty "$NIX_SIG" "$OUR_SIG"
check_fails "nobody (uid 65534) is denied Sign by policy" "Access denied" sign_as nobody "$APP"
check_fails "the signer's user may not call Sign either" "Access denied" sign_as distributed-store-signer "$APP"
check_fails "the proxy's user cannot own the signer's name" "Access denied" \
  as_user distributed-store busctl --address="$BUS" call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus RequestName su org.distributedstore.Signer1 4
check "nobody may read the status properties" grep -q '^t 1$' <(prop_as nobody SignaturesIssued)
check "nobody may introspect the signer" grep -q 'PublicKey' <(as_user nobody busctl --address="$BUS" introspect org.distributedstore.Signer1 /org/distributedstore/Signer1)
check "PublicKey property is the configured key's" grep -qxF "s \"$PUBKEY\"" <(prop_as nobody PublicKey)
dsend() { dbus-send --bus="$BUS" --print-reply --dest=org.distributedstore.Signer1 /org/distributedstore/Signer1 org.distributedstore.Signer1.Sign "string:$1"; }
check_fails "a path not in the store: typed error PathNotValid" "org.distributedstore.Signer1.Error.PathNotValid" \
  dsend /nix/store/00000000000000000000000000000000-not-here
check_fails "a path with a valid hash but another name: PathNotValid" "org.distributedstore.Signer1.Error.PathNotValid" \
  dsend "/nix/store/${APP:11:32}-other-name"
check_fails "not a store path: typed error InvalidPath" "org.distributedstore.Signer1.Error.InvalidPath" dsend /etc/passwd
check_fails "traversal in the path: InvalidPath" "org.distributedstore.Signer1.Error.InvalidPath" dsend "$APP/../../etc/passwd"
check "refused requests are counted" grep -q '^t 4$' <(prop_as nobody RequestsRefused)
SECRET=$(cut -d: -f2 "$KEY_SEC")
check_not "the secret key never appears in logs" grep -qF "$SECRET" "$W/node/up.log"
check_not "the secret key never appears in status output" grep -qF "$SECRET" <(DBUS_SYSTEM_BUS_ADDRESS=$BUS "$BIN/distributed-store" status; busctl --address="$BUS" introspect org.distributedstore.Signer1 /org/distributedstore/Signer1)
check "stops cleanly" down "$UP_PID"

# Key from systemd's credential directory (LoadCredential=signing-key:...), config without privateKeyFile.
mkdir -p "$W/creds"; cp "$KEY_SEC" "$W/creds/signing-key"
CREDENTIALS_DIRECTORY=$W/creds up creds "listen = \"127.0.0.1:$PORT\"
store = \"local?root=$STORE_ROOT\"" && {
  BUS=$UP_DBUS_SYSTEM_BUS_ADDRESS
  check "key read from \$CREDENTIALS_DIRECTORY/signing-key" grep -qxF "s \"$PUBKEY\"" <(prop_as nobody PublicKey)
  check "signs with it" grep -qF "\"$NIX_SIG\"" <(sign_as distributed-store "$APP")
  check "stops cleanly" down "$UP_PID"
}

# signPaths. Store "mixed": APP's closure substituted from a file:// cache (signed by
# the node key: Nix's ValidPaths.ultimate stays NULL), plus a path built there.
nixc g/store "" "" nix copy --to "file://$W/gcache?secret-key=$KEY_SEC" "$APP" > "$W/gcache.log" 2>&1 || { cat "$W/gcache.log"; bad "nix copy --to file://"; }
nixc mixed "file://$W/gcache" "$PUBKEY" nix-store -r "$APP" > "$W/mixed.log" 2>&1 || { cat "$W/mixed.log"; bad "nix-store -r from file://"; }
OWN=$(nixc mixed "" "" nix-build "$W/g/fixture.nix" --argstr salt built-in-mixed -A leaf --no-out-link --quiet 2>>"$W/mixed.log") || { cat "$W/mixed.log"; bad "nix-build in mixed"; }
MIXED="listen = \"127.0.0.1:$PORT\"
store = \"local?root=$W/mixed/root\"
privateKeyFile = \"$KEY_SEC\""
up mixed-default "$MIXED" && {
  BUS=$UP_DBUS_SYSTEM_BUS_ADDRESS
  check "[signPaths default] a path built here is signed" grep -q '^s "ds-test-1:' <(sign_as distributed-store "$OWN")
  check_fails "[signPaths default] a substituted path: typed error NotBuiltHere" "org.distributedstore.Signer1.Error.NotBuiltHere" dsend "$APP"
  check_fails "[signPaths default] ... for each path of the substituted closure" "NotBuiltHere" dsend "$LEAF"
  check "[signPaths default] refusals are counted" grep -q '^t 2$' <(prop_as nobody RequestsRefused)
  check "[signPaths default] only the built path was signed" grep -q '^t 1$' <(prop_as nobody SignaturesIssued)
  check "stops cleanly" down "$UP_PID"
}
up mixed-all "$MIXED
signPaths = \"all\"" && {
  BUS=$UP_DBUS_SYSTEM_BUS_ADDRESS
  check "[signPaths = all] the substituted path is signed (same signature as nix store sign)" grep -qxF "s \"$NIX_SIG\"" <(sign_as distributed-store "$APP")
  check "[signPaths = all] nothing refused" grep -q '^t 0$' <(prop_as nobody RequestsRefused)
  check "stops cleanly" down "$UP_PID"
}

# Keys from `distributed-store keygen` are real Nix keys: Nix signs with ours and verifies with our public key.
check "keygen writes a key pair" "$BIN/distributed-store" keygen ds-keygen-1 "$W/kg.sec" "$W/kg.pub"
check "keygen: secret key file is mode 600" [ "$(stat -c %a "$W/kg.sec")" = 600 ]
check_fails "keygen never overwrites a key" "refusing to overwrite" "$BIN/distributed-store" keygen ds-keygen-1 "$W/kg.sec" "$W/kg2.pub"
nix_sign_verify() {
  ( . "$TESTBED/nix-env.sh" "$W/nixcopy"
    nix store sign --key-file "$W/kg.sec" "$APP" &&
    nix store verify --sigs-needed 1 --trusted-public-keys "$(cat "$W/kg.pub")" "$APP" )
}
check "keygen: nix store sign + nix store verify accept our key pair" nix_sign_verify
finish
