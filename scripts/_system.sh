# shellcheck shell=bash
# Sourced by the scripts: installing Debian packages, where this user may.

# Runs a command as root: directly as root, through sudo where it needs no password.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# Whether as_root can work: root, or sudo without a password.
may_install() {
    [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }
}

# apt-get install, with one `apt-get update` first if the package lists are stale or missing.
apt_install() {
    command -v apt-get >/dev/null || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { as_root apt-get update -q >/dev/null 2>&1 && \
             as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; }
}
