"""dvc.yaml, read in one place, and DVC's own view of the pipeline (`dvc status --json`).

    pipeline.load() -> Pipeline       stages in dvc.yaml order, each with cmd, deps, params, outputs
    pipeline.status(env) -> dict      `dvc status --json`: which stages changed, and how

The runner, MLflow's lineage tags, the reproduce tool and tests/test_dvc_yaml.py all read dvc.yaml
through this module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dailyrec.core import paths
from dailyrec.core.errors import ConfigError
from dailyrec.core.files import parse_yaml


@dataclass(frozen=True)
class Output:
    path: str
    kind: str  # outs, metrics or plots
    cache: bool = True  # cache: false -> kept in git beside dvc.lock
    persist: bool = False  # not deleted before the stage runs


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # dotted params.yaml keys (a key covers everything under it)
    outputs: tuple[Output, ...] = ()
    always_changed: bool = False

    @property
    def module(self) -> str | None:
        """The Python module the command runs (`python -m X`), if it is one."""
        words = self.cmd.split()
        return words[2] if len(words) > 2 and words[:2] == ["python", "-m"] else None


@dataclass(frozen=True)
class Pipeline:
    stages: dict[str, Stage] = field(default_factory=dict)

    def order(self) -> list[str]:
        """Stages in an order that runs every stage after the ones whose outputs it reads
        (dvc.yaml's own order where the data flow allows)."""
        producer = {o.path: s.name for s in self.stages.values() for o in s.outputs}
        needs = {s.name: {producer[d] for d in s.deps if d in producer and producer[d] != s.name}
                 for s in self.stages.values()}
        done: list[str] = []
        while len(done) < len(self.stages):
            ready = [n for n in self.stages if n not in done and needs[n] <= set(done)]
            if not ready:
                raise ConfigError(f"{paths.DVC_FILE}: the stages' deps and outs form a cycle")
            done.append(ready[0])
        return done

    def outputs(self) -> list[Output]:
        return [o for s in self.stages.values() for o in s.outputs]

    def git_tracked(self) -> list[str]:
        """Outputs kept in git (cache: false): committed with dvc.lock."""
        return [o.path for o in self.outputs() if not o.cache]


def _entries(raw: Any) -> list[tuple[str, dict]]:
    """dvc.yaml lists hold plain paths or {path: {options}}."""
    out = []
    for entry in raw or []:
        if isinstance(entry, dict):
            for path, options in entry.items():
                out.append((str(path), options if isinstance(options, dict) else {}))
        else:
            out.append((str(entry), {}))
    return out


def _params(raw: Any) -> tuple[str, ...]:
    keys = []
    for entry in raw or []:
        if isinstance(entry, dict):  # {other_params_file.yaml: [keys]}
            for _, names in entry.items():
                keys += [str(n) for n in names or []]
        else:
            keys.append(str(entry))
    return tuple(keys)


def parse(spec: dict) -> Pipeline:
    stages = {}
    for name, raw in (spec.get("stages") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{paths.DVC_FILE}: stage {name} is not a mapping")
        cmd = raw.get("cmd", "")
        outputs = tuple(Output(path=p, kind=kind, cache=opts.get("cache", True) is not False,
                               persist=bool(opts.get("persist", False)))
                        for kind in ("outs", "metrics", "plots")
                        for p, opts in _entries(raw.get(kind)))
        stages[name] = Stage(name=name, cmd=" && ".join(cmd) if isinstance(cmd, list) else cmd,
                             deps=tuple(p for p, _ in _entries(raw.get("deps"))),
                             params=_params(raw.get("params")), outputs=outputs,
                             always_changed=bool(raw.get("always_changed", False)))
    return Pipeline(stages=stages)


def parse_text(text: str, where: str = str(paths.DVC_FILE)) -> Pipeline:
    try:
        return parse(parse_yaml(text) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None


def load(path: Path | str = paths.DVC_FILE) -> Pipeline:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project root") from None
    return parse_text(text, str(path))


def load_or_none(path: Path | str = paths.DVC_FILE) -> Pipeline | None:
    try:
        return load(path)
    except ConfigError:
        return None


def dvc(*args: str) -> list[str]:
    """A dvc command run with this Python (the venv's DVC)."""
    return [sys.executable, "-m", "dvc", *args]


def status(env: dict | None = None, targets: list[str] = (), cwd: Path | None = None
           ) -> dict[str, Any]:
    """`dvc status --json`: {stage: [what changed]} for the stages that are not up to date."""
    proc = subprocess.run(dvc("status", "--json", *targets), capture_output=True, text=True,
                          env=env, cwd=cwd)
    if proc.returncode != 0:
        raise ConfigError(f"dvc status failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    text = proc.stdout.strip()
    return json.loads(text[text.index("{"):]) if "{" in text else {}


def push_revs(revs: list[str]) -> None:
    """Push the DVC data of these git commits (what `dvc push` cannot do from the command line:
    the runner calls it for days whose own push failed)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        repo.push(revs=revs, workspace=False)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dailyrec.ops.pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    push_cmd = sub.add_parser("push", help="push the DVC data of these git commits")
    push_cmd.add_argument("revs", nargs="+")
    args = ap.parse_args()
    push_revs(args.revs)


def default_remote(dvc_dir: Path | str = ".dvc") -> tuple[str | None, str | None]:
    """(name, url) of DVC's default remote, from .dvc/config and .dvc/config.local (this
    machine's, read last: it wins), without starting DVC. A relative url is resolved against the
    .dvc folder as DVC does; credentials in a url are left out. (None, None) without one."""
    import configparser
    from urllib.parse import urlsplit, urlunsplit

    config = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#", ";"))
    dvc_dir = Path(dvc_dir)
    config.read([dvc_dir / "config", dvc_dir / "config.local"])
    name = config.get("core", "remote", fallback=None)
    if not name:
        return None, None
    url = config.get(f"'remote \"{name}\"'", "url", fallback=None)
    if url is None:
        return name, None
    parts = urlsplit(url)
    if parts.scheme and "://" in url:
        host = parts.hostname or ""
        url = urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""),
                          parts.path, "", ""))
    else:
        url = str((dvc_dir / url).resolve())
    return name, url
