"""scripts/_venv_functions.sh, run by bash as scripts/demo and scripts/test run it: a .venv that
is not whole is named for what it lacks, removed and made anew; a Python without ensurepip
(Debian without python3-venv) is explained before anything is made.

No network and no real package manager: apt-get, id and sudo are stand-ins put first on PATH
(the operating system is the outside world here); Python and its venv module are the real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = f'. "{ROOT}/scripts/_system.sh"; . "{ROOT}/scripts/_venv_functions.sh"'
BASH = shutil.which("bash") or "/bin/bash"
VERSION = "{}.{}".format(*sys.version_info[:2])


def bash(
    command: str, *args: str | Path, bin_first: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` after sourcing the functions; `args` as $1, $2...; `bin_first` first on PATH."""
    env = dict(os.environ)
    if bin_first is not None:
        env["PATH"] = f"{bin_first}{os.pathsep}{env['PATH']}"
    return subprocess.run(  # noqa: S603 (bash with our own functions)
        [BASH, "-c", f"set -euo pipefail; {FUNCTIONS}; {command}", "bash", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def program(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def half_made(folder: Path) -> Path:
    """What a failed making leaves: the config file and bin/, nothing that runs."""
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    return folder


@pytest.fixture
def no_ensurepip(tmp_path: Path) -> tuple[Path, Path]:
    """A Python that cannot import ensurepip, as Debian's without python3-venv: (the Python, the
    folder whose stand-in module hides it; removing the module "installs" python3-venv)."""
    hide = tmp_path / "hide"
    (hide / "ensurepip").mkdir(parents=True)
    (hide / "ensurepip" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n", encoding="utf-8"
    )
    python = program(
        tmp_path / "python", "python3", f'PYTHONPATH="{hide}" exec "{sys.executable}" "$@"'
    )
    return python, hide


def stand_ins(tmp_path: Path, *, uid: int, apt_get: str = "") -> tuple[Path, Path]:
    """`id -u` answering `uid`, a sudo that refuses, and an apt-get that notes its arguments in
    a file, then runs `apt_get`: (the folder to put first on PATH, the notes' file)."""
    folder, calls = tmp_path / "bin", tmp_path / "apt-calls"
    program(folder, "id", f"echo {uid}")
    program(folder, "sudo", "exit 1")
    program(folder, "apt-get", f'echo "$@" >> "{calls}"\n{apt_get}')
    return folder, calls


def check(folder: Path) -> subprocess.CompletedProcess[str]:
    return bash('venv_check "$1"', folder)


class TestBrokenVenvIsRecognised:
    def test_a_folder_that_is_no_venv(self, tmp_path: Path) -> None:
        result = check(tmp_path)
        assert result.returncode == 1
        assert "no pyvenv.cfg" in result.stdout

    def test_no_python(self, tmp_path: Path) -> None:
        result = check(half_made(tmp_path / ".venv"))
        assert result.returncode == 1
        assert "it has no bin/python" in result.stdout

    def test_python_removed_from_under_it(self, tmp_path: Path) -> None:
        venv = half_made(tmp_path / ".venv")
        (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
        result = check(venv)
        assert result.returncode == 1
        assert f"points to {tmp_path}/gone/python3.11, which is gone" in result.stdout

    def test_python_that_does_not_run(self, tmp_path: Path) -> None:
        venv = half_made(tmp_path / ".venv")
        program(venv / "bin", "python", "exit 127")
        result = check(venv)
        assert result.returncode == 1
        assert "bin/python does not run" in result.stdout

    def test_no_pip(self, tmp_path: Path) -> None:
        venv = tmp_path / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # noqa: S603
        result = check(venv)
        assert result.returncode == 1
        assert "no pip" in result.stdout
        assert "apt-get install python3-venv" in result.stdout

    def test_what_debian_without_python3_venv_leaves(self, tmp_path: Path) -> None:
        """The newcomer's case: Debian's `python3 -m venv` stops where ensurepip is missing,
        after bin/python and before pip and the activate scripts."""
        venv = tmp_path / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # noqa: S603
        for script in (venv / "bin").glob("activate*"):
            script.unlink()
        result = check(venv)
        assert result.returncode == 1
        assert "no pip" in result.stdout
        assert "apt-get install python3-venv" in result.stdout


class TestPythonWithoutEnsurepip:
    def test_it_is_named_with_the_package_to_install(self, no_ensurepip: tuple[Path, Path]) -> None:
        python, _ = no_ensurepip
        result = bash('python_check "$1"', python)
        assert result.returncode == 2
        assert "ensurepip module is missing" in result.stdout
        assert f"apt-get install python3-venv, or python{VERSION}-venv" in result.stdout

    @pytest.mark.parametrize(
        ("uid", "hint", "installs"),
        [
            (1000, "this user may not install packages: install it as root", []),
            (
                0,
                "installing it with apt-get did not mend that",
                ["python3-venv", f"python{VERSION}-venv"],
            ),
        ],
        ids=["may not install", "install does not mend it"],
    )
    def test_nothing_is_made_and_the_way_out_is_told(
        self,
        tmp_path: Path,
        no_ensurepip: tuple[Path, Path],
        uid: int,
        hint: str,
        installs: list[str],
    ) -> None:
        python, _ = no_ensurepip
        first, calls = stand_ins(tmp_path, uid=uid)
        venv = tmp_path / ".venv"
        result = bash('ensure_venv "$1" "$2"', venv, python, bin_first=first)
        assert result.returncode == 1
        assert "apt-get install python3-venv" in result.stderr
        assert hint in result.stderr
        assert not venv.exists()
        done = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
        assert done == [f"install -y -q {package}" for package in installs]


class TestRebuild:
    def test_the_newcomers_machine_end_to_end(
        self, tmp_path: Path, no_ensurepip: tuple[Path, Path]
    ) -> None:
        """A .venv the first run left half-made, on a machine still without python3-venv, where
        the script may install (root): explained, removed, python3-venv installed, made anew;
        the next run keeps it. (One real venv with pip: making one costs seconds of CPU.)"""
        python, hide = no_ensurepip
        venv = half_made(tmp_path / ".venv")
        (venv / "left-over").write_text("from the failed run\n", encoding="utf-8")
        # Installing python3-venv makes ensurepip importable: here, by removing what hides it.
        first, calls = stand_ins(
            tmp_path, uid=0, apt_get=f'[ "$1" = install ] && rm -rf "{hide}/ensurepip"\nexit 0'
        )
        made = bash('ensure_venv "$1" "$2"', venv, python, bin_first=first)
        assert made.returncode == 0, made.stderr
        assert "cannot be used: it has no bin/python. Removing it and making it anew" in made.stderr
        assert "installing python3-venv" in made.stderr
        assert calls.read_text(encoding="utf-8").splitlines() == ["install -y -q python3-venv"]
        assert not (venv / "left-over").exists()
        assert check(venv).returncode == 0
        (venv / "kept").write_text("", encoding="utf-8")
        again = bash('ensure_venv "$1" "$2"', venv, python, bin_first=first)
        assert again.returncode == 0
        assert again.stderr == ""
        assert (venv / "kept").exists()
        assert calls.read_text(encoding="utf-8").splitlines() == ["install -y -q python3-venv"]
