"""Check the import-linter contracts in pyproject.toml against the real package layout.

The folders of the repository root are mapped onto subpackages of ``asymmetry`` by ``[tool.setuptools.package-dir]``;
an editable install resolves them through an import hook that import-linter's graph builder does not see. This script
copies the sources into the layout an installed wheel has (a temporary folder) and runs ``lint-imports`` there.

    python tools/lint_imports.py          # exit 0 when every contract is kept
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage(target: Path) -> None:
    """Copy every mapped package folder of pyproject.toml to where it sits in an installed distribution."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = project["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items()):
        dest = target.joinpath(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for src in (ROOT / folder).glob("*.py"):
            shutil.copy2(src, dest / src.name)


def main() -> int:
    exe = shutil.which("lint-imports")
    if exe is None:
        print("lint-imports is not installed: pip install -e '.[test]' (import-linter is in the test extra)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="asymmetry-layers-") as tmp:
        stage(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [exe, str(ROOT / "pyproject.toml"), "--no-cache", *sys.argv[1:]]
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
