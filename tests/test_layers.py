"""The layers of docs/architecture.md, read from the source: what each part of the package may import of
labelopt (relative and absolute imports, at module level and inside functions), and the size limits."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# part -> the parts of labelopt it may import (itself always)
ALLOWED = {
    "models": set(),
    "store": set(),
    "stages": {"models", "store"},
    "pipeline.shared": {"store"},  # errors, atomic, locks, limits, progress: used by every group
    "pipeline.data": {"pipeline.shared", "models", "store"},
    # mix_choice reads a method's `mixes` declaration; the rest of views needs no method
    "pipeline.views": {"pipeline.shared", "pipeline.data", "models", "store", "stages"},
    # the run joins .beton rows and store rows in its batch loader; teachers' checkpoint hashes come from store
    "pipeline.run": {"pipeline.shared", "pipeline.data", "pipeline.views", "models", "stages", "store"},
    "pipeline.jobs": {"pipeline.shared", "pipeline.data", "pipeline.views", "pipeline.run", "models", "stages",
                      "store"},
}
SHARED = {"errors", "atomic", "locks", "limits", "progress"}


def part_of(module: str) -> str | None:
    parts = module.split(".")[1:]  # drop "labelopt"
    if not parts:
        return None
    if parts[0] != "pipeline":
        return parts[0] if parts[0] in ALLOWED else None
    if len(parts) > 1 and parts[1] in ("data", "views", "run", "jobs"):
        return f"pipeline.{parts[1]}"
    return "pipeline.shared" if len(parts) == 1 or parts[1] in SHARED else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(["labelopt", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def imported_modules(path: Path):
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("labelopt"):
                # `from . import x` names a module: count the names too
                yield from ([f"{target}.{a.name}" for a in node.names] if not node.module else [target])
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("labelopt"))


def package_files():
    for part in ("models", "store", "stages", "pipeline"):
        yield from sorted((ROOT / part).rglob("*.py"))


@pytest.mark.parametrize("path", list(package_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    own = part_of(module_name(path))
    assert own is not None, f"{path} is in no layer of the architecture"
    wrong = sorted({m for m in imported_modules(path) if (p := part_of(m)) not in (None, own)
                    and p not in ALLOWED[own]})
    assert wrong == [], f"{own} may import only {sorted(ALLOWED[own])}"


# A file holds one concept whole. Past SOFT_FILE_LINES it is probably two concepts: split it, or name it here with
# the reason it stays one file (docs/architecture.md, "Size rules").
SOFT_FILE_LINES = 400
LONG_FILES: dict[str, str] = {}
MAX_FUNCTION_LINES = 60


def test_no_function_over_60_lines():
    long_functions = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length})")
    assert long_functions == []


def test_files_past_the_soft_limit_are_named_with_a_reason():
    long_files = sorted(str(path.relative_to(ROOT)) for path in package_files()
                        if len(path.read_text().splitlines()) > SOFT_FILE_LINES)
    unnamed = [f for f in long_files if f not in LONG_FILES]
    stale = [f for f in LONG_FILES if f not in long_files]  # an exception that no longer applies goes
    assert (unnamed, stale) == ([], [])
