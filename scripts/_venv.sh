# Sourced by the scripts: a virtual environment in .venv with the project installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
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
