#!/bin/bash
# stratus: the guard of cluster @CLUSTER@. stratus puts this part first in every node's
# user-data, before the profile's own; cloud-init runs it as root at first boot. It records the
# cluster's deadline on the node and installs stratus-guard, which powers the node off (and so
# terminates it: stratus launches instances with shutdown behaviour `terminate`) once the
# deadline and the grace have passed, even if stratus's own machine is down. A local node runs
# this part too; its node process runs the guard.
set -euo pipefail
umask 022

deadline=@DEADLINE@
facts='cluster=@CLUSTER@
owner=@OWNER@
grace=@GRACE@
started=@STARTED@
rate=@RATE@'
login_user=@USER@

state=${STRATUS_STATE_DIR:-/var/lib/stratus}
clock="$state/clock"
mkdir -p "$clock" "$state/guard"
printf '%s\n' "$facts" > "$clock/facts"
if [ "$deadline" != none ]; then
    printf '%s\n' "$deadline" > "$clock/deadline"
    printf '%s\n' "$deadline" > "$state/guard/boot-deadline"
fi

if [ -n "${STRATUS_STATE_DIR:-}" ]; then
    # A local node: the guard is the node's to run, from here.
    guard="$clock/stratus-guard"
else
    guard=/usr/local/sbin/stratus-guard
fi
cat > "$guard.new" <<'STRATUS_GUARD'
@GUARD@
STRATUS_GUARD
chmod 755 "$guard.new"
mv -f "$guard.new" "$guard"
# The login message from the first login on; the guard keeps it current.
"$guard" show > "$state/guard/motd" || true

if [ -n "${STRATUS_STATE_DIR:-}" ]; then
    exit 0
fi

# An instance: stratus writes the deadline as the login user, over SSH.
chown -R "$login_user" "$clock" 2>/dev/null || true
cat > /etc/systemd/system/stratus-guard.service <<'UNIT'
[Unit]
Description=stratus: the cluster's deadline (warnings, then power off)

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/stratus-guard tick
UNIT
cat > /etc/systemd/system/stratus-guard.timer <<'UNIT'
[Unit]
Description=stratus: check the cluster's deadline every 30 seconds

[Timer]
OnBootSec=10s
OnUnitActiveSec=30s
AccuracySec=1s

[Install]
WantedBy=timers.target
UNIT
# The login message: Ubuntu's update-motd, else a profile script.
if [ -d /etc/update-motd.d ]; then
    printf '#!/bin/sh\nexec /usr/local/sbin/stratus-guard show\n' > /etc/update-motd.d/99-stratus
    chmod 755 /etc/update-motd.d/99-stratus
else
    printf '/usr/local/sbin/stratus-guard show\n' > /etc/profile.d/stratus-clock.sh
fi
systemctl daemon-reload
systemctl enable --now stratus-guard.timer
