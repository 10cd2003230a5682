#!/bin/sh
# Find or install Postfix's smtp-source (and postfix, for run (b)) from Debian's package.
# The package is installed with "No configuration", so it starts no system Postfix; if one
# was started by this install anyway, it is stopped again: the bench never uses port 25.
set -eu

if command -v smtp-source >/dev/null 2>&1 && command -v postfix >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "bench: smtp-source/postfix not found; install the Debian package 'postfix' as root" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: smtp-source/postfix not found and apt-get is not available; install Postfix" >&2
    exit 1
fi
echo "bench: installing Debian package postfix (for smtp-source and a throwaway relay)" >&2
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q postfix >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q postfix >/dev/null
fi
if postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postfix 2>/dev/null; then
    systemctl stop postfix || true
fi
command -v smtp-source >/dev/null 2>&1 || { echo "bench: smtp-source still not found after installing postfix" >&2; exit 1; }
