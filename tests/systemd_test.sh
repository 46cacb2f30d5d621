#!/bin/bash
# systemd/ and the install rules, checked with the tools that will read them:
#  1. flashd.service has the hardening and lifecycle settings (exact lines);
#  2. `systemd-analyze verify` passes on a copy whose ExecStart= is the built
#     flashd, with no warnings at all (unknown keys only warn, rc stays 0);
#  3. systemd-sysusers and systemd-tmpfiles apply the snippets to a
#     temporary root (as root: user, directories, owners, copied config);
#  4. every key of flashd.conf.example is accepted by `flashd serve`;
#  5. `cmake --install BUILD --prefix TMP` installs the binaries, the unit
#     (pointing at TMP/bin/flashd, verified again), sysusers, tmpfiles, the
#     example config and the Python client.
# Parts needing something absent (a built binary, `serve`, root) are
# skipped, saying why. Usage: systemd_test.sh SOURCE_DIR BUILD_DIR
set -u
src=${1:?usage: systemd_test.sh SOURCE_DIR BUILD_DIR}
build=${2:?usage: systemd_test.sh SOURCE_DIR BUILD_DIR}
sd=$src/systemd
unit=$sd/flashd.service
flashd=$build/daemon/flashd
flashctl=$build/client/flashctl
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }
# pass_if_clean N MESSAGE: passes when no check failed since fails was N.
pass_if_clean() { [ "$fails" -eq "$1" ] && pass "$2"; }
skip() { echo "SKIP: $*"; }

if ! command -v systemd-analyze > /dev/null; then
  skip "systemd-analyze is not installed (apt-get install systemd)"
  exit 0
fi
tmp=$(mktemp -d /tmp/flashd_systemd_XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# --- 1. required settings ---------------------------------------------------
before=$fails
for line in "Type=notify" "WatchdogSec=30" "NotifyAccess=main" \
  "ExecStart=/usr/local/bin/flashd serve --config /etc/flashd/flashd.conf" \
  "User=flashd" "Group=flashd" "RemoveIPC=no" "RuntimeDirectory=flashd" \
  "StateDirectory=flashd" "ReadOnlyPaths=-/var/lib/flashd/models" \
  "ProtectSystem=strict" "ProtectHome=true" "NoNewPrivileges=true" \
  "PrivateTmp=true" "PrivateDevices=true" "ProtectKernelTunables=true" \
  "ProtectKernelModules=true" "ProtectControlGroups=true" \
  "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" "LockPersonality=true" \
  "MemoryDenyWriteExecute=true" "RestrictRealtime=true" \
  "SystemCallArchitectures=native" "CapabilityBoundingSet=CAP_CHOWN" \
  "SystemCallFilter=@system-service" "LimitMEMLOCK=64M"; do
  grep -qxF "$line" "$unit" || fail "flashd.service lacks '$line'"
done
grep -q "^DynamicUser" "$unit" && fail "DynamicUser= would remove the shm cache at stop"
pass_if_clean "$before" "flashd.service settings present"
grep -q "^socket = /run/flashd/flashd.sock$" "$sd/flashd.conf.example" ||
  fail "the example config's socket is not under RuntimeDirectory=flashd"

# --- 2. systemd-analyze verify ----------------------------------------------
exe=$flashd
if [ ! -x "$exe" ]; then
  skip "no built flashd at $exe: verifying with a stand-in executable"
  exe=$tmp/flashd
  printf '#!/bin/sh\nexit 0\n' > "$exe"
  chmod +x "$exe"
fi
mkdir -p "$tmp/units"
sed "s|^ExecStart=/usr/local/bin/flashd |ExecStart=$exe |" "$unit" \
  > "$tmp/units/flashd.service"
out=$(systemd-analyze verify "$tmp/units/flashd.service" 2>&1)
rc=$?
[ $rc -eq 0 ] && [ -z "$out" ] && pass "systemd-analyze verify: clean" ||
  fail "systemd-analyze verify (rc=$rc): $out"

# --- 3. sysusers and tmpfiles in a temporary root ---------------------------
if [ "$(id -u)" != 0 ]; then
  skip "sysusers/tmpfiles: need root to create owners in a temporary root"
else
  root=$tmp/root
  before=$fails
  mkdir -p "$root/etc" "$root/usr/local/share/flashd"
  cp "$sd/flashd.conf.example" "$root/usr/local/share/flashd/"
  out=$(systemd-sysusers --root="$root" "$sd/flashd.sysusers.conf" 2>&1) ||
    fail "systemd-sysusers: $out"
  uid=$(awk -F: '$1 == "flashd" {print $3}' "$root/etc/passwd")
  gid=$(awk -F: '$1 == "flashd" {print $3}' "$root/etc/group")
  [ -n "$uid" ] && [ -n "$gid" ] && grep -q "^flashd:.*:/usr/sbin/nologin$" "$root/etc/passwd" &&
    pass "sysusers: user flashd ($uid) and group ($gid), no login" ||
    fail "sysusers: $(cat "$root/etc/passwd" 2>&1)"
  out=$(systemd-tmpfiles --root="$root" --create "$sd/flashd.tmpfiles.conf" 2>&1)
  [ $? -eq 0 ] && [ -z "$out" ] || fail "systemd-tmpfiles: $out"
  cmp -s "$root/etc/flashd/flashd.conf" "$sd/flashd.conf.example" ||
    fail "tmpfiles did not copy the example to /etc/flashd/flashd.conf"
  [ "$(stat -c '%u:%g %a' "$root/var/lib/flashd")" = "$uid:$gid 750" ] ||
    fail "/var/lib/flashd: $(stat -c '%u:%g %a' "$root/var/lib/flashd")"
  [ "$(stat -c '%u:%g %a' "$root/var/lib/flashd/models")" = "0:$gid 755" ] ||
    fail "/var/lib/flashd/models: $(stat -c '%u:%g %a' "$root/var/lib/flashd/models")"
  [ "$(stat -c '%u:%g %a' "$root/dev/shm/flashd")" = "$uid:$gid 711" ] ||
    fail "/dev/shm/flashd: $(stat -c '%u:%g %a' "$root/dev/shm/flashd")"
  # An existing configuration is never overwritten.
  echo "model = mine" > "$root/etc/flashd/flashd.conf"
  systemd-tmpfiles --root="$root" --create "$sd/flashd.tmpfiles.conf" 2> /dev/null
  grep -qx "model = mine" "$root/etc/flashd/flashd.conf" ||
    fail "tmpfiles overwrote an existing /etc/flashd/flashd.conf"
  pass_if_clean "$before" "tmpfiles: config copied once, state, model and shared-memory directories, owners"
fi

# --- 4. the example config against flashd serve -----------------------------
if [ ! -x "$flashd" ]; then
  skip "example config keys: no built flashd"
elif ! "$flashd" serve --help > /dev/null 2>&1; then
  skip "example config keys: $flashd has no 'serve' command yet"
else
  # Every commented-out key too: uncomment them all.
  sed -E 's/^#([a-z-]+ = )/\1/' "$sd/flashd.conf.example" > "$tmp/all.conf"
  out=$("$flashd" serve --config "$tmp/all.conf" --help 2>&1)
  [ $? -eq 0 ] && pass "flashd serve accepts every key of the example" ||
    fail "flashd serve --config example: $(echo "$out" | grep -i config | head -3)"
fi

# --- 5. cmake --install -----------------------------------------------------
if [ ! -x "$flashd" ] || [ ! -x "$flashctl" ]; then
  skip "cmake --install: build the flashd and flashctl targets first"
else
  inst=$tmp/inst
  before=$fails
  out=$(cmake --install "$build" --prefix "$inst" 2>&1) || fail "cmake --install: $out"
  for f in bin/flashd bin/flashctl lib/systemd/system/flashd.service \
    lib/sysusers.d/flashd.conf lib/tmpfiles.d/flashd.conf \
    share/flashd/flashd.conf.example share/flashd/python/flashd_client.py \
    share/flashd/proto/flashd/v1/flashd.proto; do
    [ -e "$inst/$f" ] || fail "cmake --install did not install $f"
  done
  grep -qxF "ExecStart=$inst/bin/flashd serve --config /etc/flashd/flashd.conf" \
    "$inst/lib/systemd/system/flashd.service" ||
    fail "installed unit: $(grep ExecStart= "$inst/lib/systemd/system/flashd.service")"
  grep -qF " $inst/share/flashd/flashd.conf.example" "$inst/lib/tmpfiles.d/flashd.conf" ||
    fail "installed tmpfiles: $(grep '^C' "$inst/lib/tmpfiles.d/flashd.conf")"
  out=$(systemd-analyze verify "$inst/lib/systemd/system/flashd.service" 2>&1)
  [ $? -eq 0 ] && [ -z "$out" ] || fail "verify installed unit: $out"
  "$inst/bin/flashctl" --help > /dev/null || fail "installed flashctl does not run"
  pass_if_clean "$before" "cmake --install: binaries, unit, sysusers, tmpfiles, config, Python client"
fi

[ $fails -eq 0 ] && echo "PASS" || echo "$fails check(s) failed"
[ $fails -eq 0 ]
