"""A folder imports another folder's public face (its ``__init__``), never its insides.

The rule of ARCHITECTURE.md, checked on the source: ``from aimesh.<other>.<module> import``
is allowed only inside ``aimesh.<other>`` itself. The CLI is exempt: it imports service
apps (``aimesh.jobs.app``...) on their own so that a command loads no more than it needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aimesh

ROOT = Path(aimesh.__file__).parent
EXEMPT = {"cli"}


def _inside_imports(path: Path) -> list[str]:
    """Modules of other folders that ``path`` imports past their public face."""
    own = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "aimesh" and len(parts) > 2 and parts[1] != own:
                found.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
    return found


def test_no_folder_imports_another_folders_insides() -> None:
    offences = [
        offence
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).parts[0] not in EXEMPT and len(path.relative_to(ROOT).parts) > 1
        for offence in _inside_imports(path)
    ]
    assert offences == []
