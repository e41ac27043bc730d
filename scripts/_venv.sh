# shellcheck shell=bash
# Sourced by the scripts: a virtual environment in .venv with the project installed. A .venv
# that is not whole (a run on a Debian without python3-venv leaves one with no pip) is
# explained, removed and made anew (scripts/_venv_functions.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
# shellcheck source=scripts/_system.sh
. scripts/_system.sh
# shellcheck source=scripts/_venv_functions.sh
. scripts/_venv_functions.sh
ensure_venv .venv "$PYTHON"
# shellcheck disable=SC1091
. .venv/bin/activate
install_project() {
    local extras=$1 stamp=".venv/.installed-$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet -e ".[$extras]"
        touch "$stamp"
    fi
}
