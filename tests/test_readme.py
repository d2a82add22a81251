"""The README states the settings' pass lists; they must be the ones in the code."""

from __future__ import annotations

from pathlib import Path

from deltann.compile.settings import SETTINGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_each_setting_exactly() -> None:
    for name, passes in SETTINGS.items():
        assert f"| `{name}` | {', '.join(passes)} |" in README, name


def test_readme_starts_with_the_two_commands() -> None:
    head = README[: README.index("## Commands")]
    assert "make run" in head and "make test" in head
