"""Which project files a module brings in, and dvc.yaml's code deps kept in step with them.

    python -m tools.code_deps            list, per stage, code deps dvc.yaml lacks or has in excess
    python -m tools.code_deps --write    rewrite each stage's code deps in dvc.yaml (comments,
                                         data deps and everything else stay as they are)

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


def stage_closure(module: str) -> list[str]:
    """The code deps of a stage whose command is `python -m module`: its file first."""
    start = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    files = relative(closure(start))
    first = start.relative_to(ROOT).as_posix()
    return [first] + [f for f in files if f != first]


def is_code(path: str) -> bool:
    return path.split("/", 1)[0] in PACKAGES and path.endswith((".py", ".j2"))


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's code deps replaced by wanted[stage] (data deps kept,
    after them)."""
    import re

    out, stage = [], None
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if m:
            stage = m.group(1)
        if stage in wanted and re.match(r"^    deps:\s*$", line):
            out.append(line)
            i += 1
            data = []
            while i < len(lines) and re.match(r"^      - ", lines[i]):
                item = lines[i].strip()[2:].strip()
                if not is_code(item):
                    data.append(lines[i])
                i += 1
            out += [f"      - {p}\n" for p in wanted[stage]] + data
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from dailyrec.ops import pipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = ap.parse_args(argv)
    found = pipeline.load(ROOT / "dvc.yaml")
    wanted = {s.name: stage_closure(s.module) for s in found.stages.values() if s.module}
    if args.write:
        path = ROOT / "dvc.yaml"
        path.write_text(rewrite(path.read_text(), wanted))
        print(f"rewrote the code deps of {len(wanted)} stages in {path}")
        return 0
    drift = 0
    for name, files in wanted.items():
        declared = {d for d in found.stages[name].deps if is_code(d)}
        for f in sorted(set(files) - declared):
            print(f"{name}: missing {f}")
            drift += 1
        for f in sorted(declared - set(files)):
            print(f"{name}: stale {f}")
            drift += 1
    print("dvc.yaml's code deps match the imports" if not drift else
          f"{drift} difference(s): python -m tools.code_deps --write", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
