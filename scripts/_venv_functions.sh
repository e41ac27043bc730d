# shellcheck shell=bash
# Sourced by scripts/_venv.sh (and tests/test_scripts.py): checking, explaining and making the
# virtual environment. Needs scripts/_system.sh sourced first.
#
# A run on a Debian without python3-venv used to leave a .venv with no pip in it, which every
# later run then tripped on. Now a .venv that is not whole is named for what it lacks, removed
# and made anew; and a Python that cannot make one is explained before anything is made.

# Status 0 when the virtual environment in $1 is whole; otherwise prints what is wrong.
venv_check() {
    local dir=$1
    if [ ! -d "$dir" ]; then
        echo "it is not a folder"
    elif [ ! -f "$dir/pyvenv.cfg" ]; then
        echo "it has no pyvenv.cfg (not a virtual environment, or its making stopped early)"
    elif [ -L "$dir/bin/python" ] && [ ! -e "$dir/bin/python" ]; then
        echo "its bin/python points to $(readlink "$dir/bin/python"), which is gone" \
            "(the Python it was made from was removed or upgraded)"
    elif [ ! -x "$dir/bin/python" ]; then
        echo "it has no bin/python"
    elif ! "$dir/bin/python" -c "import sys" >/dev/null 2>&1; then
        echo "its bin/python does not run (the Python it was made from was removed or upgraded)"
    elif ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "it has no pip: it was made without ensurepip" \
            "(on Debian and Ubuntu: apt-get install python3-venv)"
    elif [ ! -f "$dir/bin/activate" ]; then
        echo "it has no bin/activate (its making stopped early)"
    else
        return 0
    fi
    return 1
}

# Status 0 when the Python $1 can make a virtual environment with pip in it. Otherwise prints
# why: status 1 when this Python will not do at all, 2 when it lacks only ensurepip (which
# Debian and Ubuntu ship apart, in python3-venv).
python_check() {
    local python=$1 version
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "$python is not installed (Televisit needs Python 3.11 or later; set PYTHON=... to use another)"
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        echo "$python is $("$python" -V 2>/dev/null || echo "a Python that does not run")," \
            "and Televisit needs Python 3.11 or later" \
            "(set PYTHON=... to use another)"
        return 1
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        echo "$python ($version) cannot make a virtual environment with pip: its ensurepip module" \
            "is missing (on Debian and Ubuntu: apt-get install python3-venv, or python$version-venv)"
        return 2
    fi
}

# Installs Debian's python3-venv (or python3.X-venv) for the Python $1; status 0 once that Python
# can make a virtual environment.
install_venv_support() {
    local python=$1 version
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "scripts: installing python3-venv (apt-get) so that $python can make .venv" >&2
    { apt_install python3-venv && python_check "$python" >/dev/null; } \
        || { apt_install "python$version-venv" && python_check "$python" >/dev/null; }
}

# Makes sure $1 holds a whole virtual environment, made by the Python $2 if it must be made:
# one that is not whole is removed and made anew; nothing half-made is left behind.
ensure_venv() {
    local dir=$1 python=$2 problem status=0 hint=""
    if [ -e "$dir" ] || [ -L "$dir" ]; then
        if problem=$(venv_check "$dir"); then
            return 0
        fi
        echo "scripts: $dir cannot be used: $problem. Removing it and making it anew." >&2
        rm -rf "$dir"
    fi
    problem=$(python_check "$python") || status=$?
    if [ "$status" = 2 ]; then
        if ! may_install || ! command -v apt-get >/dev/null; then
            hint="this user may not install packages: install it as root, then run this again"
        elif install_venv_support "$python"; then
            status=0
        else
            hint="installing it with apt-get did not mend that (try it by hand to see why)"
        fi
    fi
    if [ "$status" != 0 ]; then
        echo "scripts: cannot make $dir: $problem." >&2
        if [ -n "$hint" ]; then
            echo "scripts: $hint." >&2
        fi
        return 1
    fi
    if ! "$python" -m venv "$dir" || ! problem=$(venv_check "$dir"); then
        rm -rf "$dir"
        echo "scripts: making $dir with $python failed${problem:+: $problem}; it was removed," \
            "run this again once that is mended." >&2
        return 1
    fi
}
