"""The requirements split: what the page and the server import is in requirements.txt.

tqdm and psutil serve development/ and tests/ only (requirements-dev.txt); a runtime module that
imported one of them would work here, where everything is installed, and fail after
``pip install -r requirements.txt`` alone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
RUNTIME_FILES = ["app.py", "backend.py", "server.py", "settings.py", "fhe_server/**/*.py"]


def _packages(path: Path) -> set[str]:
    """Pinned package names of a requirements file (without the files it includes)."""
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==", line.strip())
        if match:
            names.add(match.group(1).lower())
    return names


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_development_tools_are_not_runtime_requirements() -> None:
    runtime = _packages(REPO_DIR / "requirements.txt")
    development = _packages(REPO_DIR / "requirements-dev.txt")
    assert {"tqdm", "psutil"} <= development
    assert not runtime & development
    assert "-r requirements.txt" in (REPO_DIR / "requirements-dev.txt").read_text()
    assert "-r requirements-dev.txt" in (REPO_DIR / "requirements-test.txt").read_text()


def test_runtime_modules_import_no_development_tool() -> None:
    development_only = _packages(REPO_DIR / "requirements-dev.txt")
    files = [path for pattern in RUNTIME_FILES for path in sorted(REPO_DIR.glob(pattern))]
    assert len(files) >= 5
    for path in files:
        found = _imported_top_modules(path) & development_only
        assert not found, f"{path.relative_to(REPO_DIR)} imports {sorted(found)}"
