#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root; safe to run again).
#
# Tests start their own Postfix and Dovecot on loopback with configs in a temporary folder
# (tests/mailstack.py), so the packaged daemons must never run: they would listen on every
# interface with the distribution's configuration. Install with services blocked, then make
# sure nothing packaged is left running.
set -euo pipefail

# One package a line; add to this list, the rest of the script follows.
PACKAGES=(
    postfix         # also ships /usr/sbin/smtp-source and smtp-sink for benchmarks
    dovecot-core
    dovecot-imapd
    dovecot-lmtpd
    openssl
    chromium        # the web triage page's browser tests (Playwright drives it; no download)
)

POLICY=/usr/sbin/policy-rc.d

if [[ $EUID -ne 0 ]]; then
    echo "test-deps.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    # Put any existing policy back exactly as it was; remove ours only if we created it.
    backup=""
    if [[ -e $POLICY ]]; then
        backup=$(mktemp /usr/sbin/policy-rc.d.dunbot.XXXXXX)
        cp -p "$POLICY" "$backup"
    fi
    restore_policy() {
        if [[ -n $backup ]]; then mv -f "$backup" "$POLICY"; else rm -f "$POLICY"; fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# Written by dunbot scripts/test-deps.sh: start no service during install.\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"

    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"

    restore_policy
    trap - EXIT
else
    echo "test-deps.sh: all packages already installed"
fi

# Stop the packaged instances only, found through their own pid files: a test stack started
# from tests/mailstack.py runs the same binaries and must survive this script.
stop_pidfile() {
    local pidfile=$1 pid
    [[ -r $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    echo "test-deps.sh: stopping packaged daemon $pid ($pidfile)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        # Gone, or a zombie awaiting its parent: either way it no longer serves.
        if ! kill -0 "$pid" 2>/dev/null || [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "test-deps.sh: packaged daemon $pid did not stop" >&2
    return 1
}
stop_pidfile /var/spool/postfix/pid/master.pid
stop_pidfile /run/dovecot/master.pid

echo "test-deps.sh: ready"
