"""Static import analysis of the project's own code: which project files a module brings in.

Every `import x` and `from x import y` anywhere in a file counts, the ones inside functions too
(lazy imports run as well), and so do the packages' __init__.py files Python executes on the way.
A template a module renders by name (a string literal ending in .j2) counts as a file of the closure:
it shapes the output as much as code does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dailyrec", "serving", "stages", "tools")
TEMPLATES = ROOT / "dailyrec" / "templates"


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None when it is not the project's."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_inits(name: str) -> list[Path]:
    parts = name.split(".")
    found = []
    for i in range(1, len(parts)):
        init = ROOT.joinpath(*parts[:i]) / "__init__.py"
        if init.is_file():
            found.append(init)
    return found


def direct_imports(path: Path) -> set[Path]:
    """Project files this file imports (and the package __init__ files on the way)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import mod`
    found: set[Path] = set()
    for name in names:
        file = module_file(name)
        if file is not None:
            found.add(file)
            found.update(_package_inits(name))
    return found


def templates(path: Path) -> set[Path]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {TEMPLATES / node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.endswith(".j2") and (TEMPLATES / node.value).is_file()}


def closure(start: Path) -> set[Path]:
    """Every project file `start` needs: itself, what it imports, transitively, and templates."""
    seen: set[Path] = set()
    todo = [start.resolve(), *_package_inits(module_name(start))]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            todo += sorted(direct_imports(path) - seen)
            todo += sorted(templates(path) - seen)
    return seen


def relative(paths: set[Path]) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in paths)
