"""The layers of the package hold: the import-linter contract in pyproject.toml passes, and imports of our own
modules sit at the top of each module, where they show the real coupling."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("asymmetry", "asymmetry/cli", "index", "retrieval", "router", "experts", "sampling", "eval")
# package __init__ modules that keep `import asymmetry` light for the CLI: they name what they export lazily
LAZY_OK = {"asymmetry/__init__.py", "sampling/__init__.py", "retrieval/__init__.py"}


def test_import_linter_contract_is_kept():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "lint_imports.py")], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_imports_of_our_modules_are_at_the_top():
    lazy = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in LAZY_OK:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                module = getattr(node, "module", None) if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top and any(
                        n.startswith("asymmetry") for n in names):
                    lazy.append(f"{rel}:{node.lineno}")
    assert not lazy, f"imports of our modules inside functions: {lazy}"
