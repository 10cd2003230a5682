#!/usr/bin/env bash
# Installs what `make interop` runs: Postfix and Dovecot (Debian packages, the binaries only),
# Exim 4.96 unpacked from its .debs (the package conflicts with Postfix), and OpenSMTPD 7.6 from
# Debian trixie unpacked with its own libraries into a root the tests chroot into.
#
# Idempotent (a second run does nothing but checks). Never starts, stops or configures the
# system's Postfix, Dovecot or /etc/postfix: the packages are installed with "No configuration"
# and policy-rc.d keeps their services from starting. Trixie's packages are fetched with an apt
# state of their own (APT_CONFIG below), so the system's apt lists and sources are not changed.
set -euo pipefail

CACHE=${MAILGATE_INTEROP_CACHE:-/var/cache/mailgate-interop}
EXIM_ROOT=$CACHE/exim
SMTPD_ROOT=$CACHE/opensmtpd
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
    echo "interop/setup.sh: must run as root (apt-get, chroot, users); try: sudo $0" >&2
    exit 1
fi

updated=""
# apt-get install / download, with one `apt-get update` first if the lists are missing or stale.
apt_retry() {
    "$@" >/dev/null 2>&1 && return 0
    if [ -z "$updated" ]; then apt-get update -qq && updated=1; fi
    "$@" >/dev/null
}

# --- Postfix and Dovecot: the binaries; no system instance is configured or started -----------
need=()
command -v postfix >/dev/null 2>&1 || need+=(postfix)
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-core)
[ -x /usr/lib/dovecot/submission ] || need+=(dovecot-submissiond)
if [ ${#need[@]} -gt 0 ]; then
    echo "interop: installing ${need[*]} (no configuration, services not started)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt_retry apt-get install -y -qq --no-install-recommends "${need[@]}"
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# --- Exim 4.96: unpacked, its libraries from apt, the Debian-exim user --------------------------
if [ ! -x "$EXIM_ROOT/usr/sbin/exim4" ]; then
    echo "interop: unpacking Exim into $EXIM_ROOT"
    rm -rf "$CACHE/debs/exim" "$EXIM_ROOT.new"
    mkdir -p "$CACHE/debs/exim" "$EXIM_ROOT.new"
    (cd "$CACHE/debs/exim" && apt_retry apt-get -qq -o APT::Sandbox::User=root download \
        exim4-daemon-light exim4-base exim4-config)
    for deb in "$CACHE"/debs/exim/*.deb; do dpkg -x "$deb" "$EXIM_ROOT.new"; done
    rm -rf "$EXIM_ROOT" && mv "$EXIM_ROOT.new" "$EXIM_ROOT"
fi
if ldd "$EXIM_ROOT/usr/sbin/exim4" | grep -q 'not found'; then
    echo "interop: installing Exim's libraries"
    apt_retry apt-get install -y -qq --no-install-recommends libgnutls-dane0 libidn12 libnsl2
fi
if missing=$(ldd "$EXIM_ROOT/usr/sbin/exim4" | grep 'not found'); then
    echo "interop/setup.sh: exim4 still lacks libraries: $missing" >&2
    exit 1
fi
if ! id Debian-exim >/dev/null 2>&1; then
    adduser --system --group --quiet --allow-bad-names --no-create-home \
        --home /var/spool/exim4 Debian-exim
fi

# --- OpenSMTPD 7.6 from trixie: a separate apt state, unpacked with its libraries ---------------
if [ ! -x "$SMTPD_ROOT/usr/sbin/smtpd" ]; then
    echo "interop: fetching OpenSMTPD from Debian trixie (apt state in $CACHE/apt)"
    apt_dir=$CACHE/apt
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" \
        "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" "$apt_dir/etc/apt.conf.d"
    touch "$apt_dir/state/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$apt_dir/etc/sources.list"
    cat > "$apt_dir/apt.conf" <<CONF
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/cache";
Dir::Etc::sourcelist "$apt_dir/etc/sources.list";
Dir::Etc::sourceparts "$apt_dir/etc/sources.list.d";
Dir::Etc::preferencesparts "$apt_dir/etc/preferences.d";
Dir::Etc::parts "$apt_dir/etc/apt.conf.d";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG=$apt_dir/apt.conf
    apt-get update -qq
    rm -rf "$CACHE/debs/opensmtpd" && mkdir -p "$CACHE/debs/opensmtpd"
    # smtpd, its libraries (ldd in the chroot below says if one is missing) and a /bin/sh for its MDA.
    (cd "$CACHE/debs/opensmtpd" && apt-get -qq download opensmtpd libc6 libcrypt1 libdb5.3t64 \
        libevent-2.1-7t64 libpam0g libaudit1 libcap-ng0 libssl3t64 zlib1g libzstd1 libgcc-s1 dash)
    unset APT_CONFIG
    rm -rf "$SMTPD_ROOT.new" && mkdir -p "$SMTPD_ROOT.new"
    for deb in "$CACHE"/debs/opensmtpd/*.deb; do dpkg -x "$deb" "$SMTPD_ROOT.new"; done
    for link in bin sbin lib lib64; do
        [ -e "$SMTPD_ROOT.new/$link" ] || ln -s "usr/$link" "$SMTPD_ROOT.new/$link"
    done
    [ -e "$SMTPD_ROOT.new/usr/bin/sh" ] || ln -s dash "$SMTPD_ROOT.new/usr/bin/sh"
    rm -rf "$SMTPD_ROOT" && mv "$SMTPD_ROOT.new" "$SMTPD_ROOT"
fi
smtpd_says=$(chroot "$SMTPD_ROOT" /usr/sbin/smtpd -h 2>&1 || true)
case $smtpd_says in
    *OpenSMTPD*) ;;
    *) echo "interop/setup.sh: $SMTPD_ROOT/usr/sbin/smtpd does not run in its chroot: $smtpd_says" >&2
       exit 1 ;;
esac

echo "interop: ready: $(postconf -d -h mail_version 2>/dev/null | sed 's/^/Postfix /'), Dovecot $(dovecot --version | cut -d' ' -f1), $("$EXIM_ROOT/usr/sbin/exim4" -C /dev/null -bV 2>/dev/null | sed -n 's/^Exim version \([^ ]*\).*/Exim \1/p'), $(echo "$smtpd_says" | sed -n 's/^version: //p')"
