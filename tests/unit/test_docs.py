"""The manual in docs/: its generated reference pages match the code, and it builds strictly."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dockyard.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def gen_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["reference/settings.md", "reference/errors.md", "reference/metrics.md"])
def test_the_generated_reference_pages_are_up_to_date(page: str) -> None:
    render = gen_reference().PAGES[page]
    assert (ROOT / "docs" / page).read_text() == render(), (
        f"docs/{page} is stale: run .venv/bin/python scripts/gen_reference.py"
    )


def test_the_settings_reference_lists_every_setting_with_its_variable() -> None:
    text = (ROOT / "docs" / "reference" / "settings.md").read_text()

    def variables(model: type, prefix: str) -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            nested = field.annotation
            if isinstance(nested, type) and hasattr(nested, "model_fields"):
                found += variables(nested, f"{prefix}{name.upper()}__")
            else:
                found.append(f"{prefix}{name.upper()}")
        return found

    every = variables(Settings, "DOCKYARD_")
    assert len(every) > 40
    missing = [v for v in every if f"`{v}`" not in text]
    assert not missing, missing


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        reason = "mkdocs and mkdocs-material are not installed (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "reference/settings/index.html", "getting-started/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
