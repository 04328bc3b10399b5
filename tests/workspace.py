"""A throwaway copy of the project as its own git + DVC repository, for tests that run the pipeline.

The copy holds the project's files (tracked and new; never ignored ones nor pipeline outputs),
its own git history, a SQLite source database and DVC remotes whose endpoints and credentials go to
.dvc/config.local, as they would on a real machine. Commands run with the venv's tools first on
PATH, so dvc's `python -m stages.X` uses the venv and the copy's own stages/.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Pipeline outputs and local state that a copy must not inherit from the developer's tree.
SKIP_TOP = {"data", "models", "metrics", "reports", "node_modules", "mlruns", "logs", "dvc-remote",
            ".venv", ".git"}
# dvc.lock records a run of the checkout (after `make demo`, or committed by the daily runner):
# a copy starts with no run, whatever state the checkout is in.
SKIP_FILES = {"source.db", "mlflow.db", ".dvc/config.local", "dvc.lock"}


def project_files(root: Path = ROOT) -> list[str]:
    """The project's files: tracked ones plus new ones git does not ignore (read-only git call),
    never pipeline outputs, run records, caches, remotes or databases of the checkout."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, check=True, capture_output=True, text=True).stdout
    files = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        if rel.split("/", 1)[0] in SKIP_TOP or rel in SKIP_FILES or not (root / rel).is_file():
            continue
        files.append(rel)
    return files


@dataclass
class Workspace:
    path: Path
    env: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=cwd or self.path, env={**self.env, **(env or {})},
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}) in "
                                 f"{cwd or self.path}"
                                 f"\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n"
                                 f"{proc.stderr[-4000:]}")
        return proc

    def dvc(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(str(VENV_BIN / "dvc"), *args, **kw)

    def git(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("git", *args, **kw)

    def python(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(sys.executable, *args, **kw)

    def add_remote(self, name: str, url: str, default: bool = False, **settings: str) -> None:
        """A new remote in .dvc/config.local (this machine only), with its settings."""
        self.dvc("remote", "add", "--local", "--force", *(["--default"] if default else []),
                 name, url)
        self.configure_remote(name, **settings)

    def configure_remote(self, name: str, **settings: str) -> None:
        """Endpoints and credentials of a remote, in .dvc/config.local as on a real machine."""
        for key, value in settings.items():
            self.dvc("remote", "modify", "--local", name, key, value)

    def clone(self, dest: Path, env: dict | None = None) -> "Workspace":
        """A fresh git clone: no DVC cache, no .dvc/config.local, as on a new machine."""
        self.git("clone", "-q", str(self.path), str(dest))
        return Workspace(path=dest, env={**self.env, **(env or {})})

    def set_run_date(self, day: dt.date) -> None:
        self.python("-c", "import datetime, sys; from dailyrec.core import settings; "
                    f"settings.set_run_date(datetime.date.fromisoformat('{day.isoformat()}'))")

    def set_params(self, **dotted) -> None:
        """Edit params.yaml keeping its comments: set_params(**{"train.iterations": 5})."""
        self.python("-c", "import json, sys; from ruamel.yaml import YAML; y = YAML(); "
                    "d = y.load(open('params.yaml'))\n"
                    "for key, value in json.loads(sys.argv[1]).items():\n"
                    "    *parents, leaf = key.split('.'); node = d\n"
                    "    for p in parents: node = node[p]\n"
                    "    node[leaf] = value\n"
                    "y.dump(d, open('params.yaml', 'w'))", json.dumps(dotted))

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def lock(self) -> dict:
        import yaml

        return yaml.safe_load((self.path / "dvc.lock").read_text())


def out_hash(lock: dict, stage: str, path: str) -> str:
    """The md5 dvc.lock records for one output of one stage."""
    for out in lock["stages"][stage]["outs"]:
        if out["path"] == path:
            return out["md5"]
    raise KeyError(f"dvc.lock: stage {stage} has no output {path}")


def create(dest: Path, extra_env: dict | None = None) -> Workspace:
    """Copy the project into dest, make it a git repo with one commit, and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "DAILYREC_SOURCE_URL": f"sqlite:///{dest / 'source.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "dailyrec tests", "GIT_AUTHOR_EMAIL": "tests@dailyrec.invalid",
        "GIT_COMMITTER_NAME": "dailyrec tests", "GIT_COMMITTER_EMAIL": "tests@dailyrec.invalid",
        # Each copy publishes under a key prefix of its own: the tests share one Redis server,
        # and a version another test left there must not be taken for this copy's.
        "REDIS_KEY_PREFIX": f"ws-{dest.name}-{os.getpid()}-{id(dest)}",
        **(extra_env or {}),
    }
    # Variables of the developer's own shell that would leak into the copy.
    for name in ("DAILYREC_PARAMS", "AZURE_STORAGE_CONNECTION_STRING", "STORAGE_EMULATOR_HOST"):
        env.pop(name, None)
    ws = Workspace(path=dest, env=env)
    ws.git("init", "-q", "-b", "main")
    ws.commit("project copy")
    return ws
