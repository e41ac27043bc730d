"""The packages' layout: which package may import which (docs/design.md, "Layout").

Read from the source with `ast`, so an import inside a function or under `TYPE_CHECKING`
counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every name `path` imports (module, and module.name for `from` imports), made absolute."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module:
                found.add(module)
            found.update(".".join(filter(None, (module, alias.name))) for alias in node.names)
    return found


def imports_of(
    package: str, forbidden: tuple[str, ...], *, root: Path = ROOT
) -> dict[str, list[str]]:
    """For each module of `package`, the names it imports from a `forbidden` package."""
    found: dict[str, list[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        names = sorted(
            name
            for name in imported_modules(root, path)
            if any(name == f or name.startswith(f"{f}.") for f in forbidden)
        )
        if names:
            found[path.relative_to(root).as_posix()] = names
    return found


class TestLayout:
    def test_scheduling_knows_nothing_of_sockets_or_media(self) -> None:
        assert imports_of("scheduling", ("signaling", "media")) == {}

    def test_the_check_sees_every_kind_of_import(self, tmp_path: Path) -> None:
        # The walk itself, on a package of its own: each of these forms is found.
        (tmp_path / "scheduling").mkdir()
        (tmp_path / "scheduling" / "clean.py").write_text("from scheduling import calls\n")
        (tmp_path / "scheduling" / "sample.py").write_text(
            "import signaling.hub\n"
            "from signaling import hub\n"
            "def f() -> None:\n"
            "    from media.relay import Relay\n"
            "from .. import media\n"
        )
        assert imports_of("scheduling", ("signaling", "media"), root=tmp_path) == {
            "scheduling/sample.py": [
                "media",
                "media.relay",
                "media.relay.Relay",
                "signaling",
                "signaling.hub",
            ]
        }

    def test_media_reaches_signaling_only_through_its_interface(self) -> None:
        """signaling.media is the interface signaling defines for the relay; nothing else of
        signaling is media's to import (its names come `from signaling.media import ...`)."""
        strays = {
            module: [n for n in names if not _within("signaling.media", n)]
            for module, names in imports_of("media", ("signaling",)).items()
        }
        assert {module: names for module, names in strays.items() if names} == {}

    def test_media_stats_is_handed_numbers_not_the_relay(self) -> None:
        found = imports_of("media", ("media.relay", "media.room"))
        assert "media/stats.py" not in found

    def test_the_media_check_sees_what_it_must_refuse(self, tmp_path: Path) -> None:
        (tmp_path / "media").mkdir()
        (tmp_path / "media" / "fine.py").write_text("from signaling.media import Consent, error\n")
        (tmp_path / "media" / "stats.py").write_text(
            "from typing import TYPE_CHECKING\n"
            "from signaling import messages\n"
            "if TYPE_CHECKING:\n"
            "    from media.relay import Room\n"
        )
        assert imports_of("media", ("signaling",), root=tmp_path) == {
            "media/fine.py": [
                "signaling.media",
                "signaling.media.Consent",
                "signaling.media.error",
            ],
            "media/stats.py": ["signaling", "signaling.messages"],
        }
        assert imports_of("media", ("media.relay",), root=tmp_path) == {
            "media/stats.py": ["media.relay", "media.relay.Room"]
        }


def _within(module: str, name: str) -> bool:
    """`name` is `module`, or a name in it."""
    return name == module or name.startswith(f"{module}.")
