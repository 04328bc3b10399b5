"""Rebuild a past model from its git commit and prove it is byte-identical to the one recorded.

    make reproduce COMMIT=<sha>            # or: python -m tools.reproduce <sha>
    make reproduce RUN=<mlflow run id>     # finds the commit from the run's tags

What it does, without touching the working tree you run it from:
1. checks the commit out into a temporary git worktree;
2. points that worktree at this repository's DVC remote (the commit's .dvc/config plus this
   checkout's .dvc/config.local, where endpoints and credentials live; a relative local remote is
   resolved against this checkout) and pulls, into an empty cache, the data the stage reads;
3. re-runs the stage (train by default) with `dvc repro --force --single-item`, with MLflow
   tracking off (DAILYREC_MLFLOW=off) so the rebuild registers no model version;
4. compares the hash of every output the commit's dvc.lock records with the rebuilt one, file
   by file where the remote holds the recorded directory listing; prints both and the verdict.

Exit status: 0 identical, 1 different, 2 could not reproduce (bad commit, no remote data, stage
failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from dailyrec.ops import pipeline
from dailyrec.core.files import file_md5  # noqa: F401  (also used by the remote tests)

IDENTICAL, DIFFERENT, FAILED = 0, 1, 2
# Tags the train stage puts on its MLflow run (see docs/reproducibility.md); the first is the
# strongest link: the commit whose dvc.lock records exactly this models/ hash.
MODELS_HASH_TAGS = ("dvc.models.md5", "dvc.outs.models")
COMMIT_TAGS = ("git.commit", "git_commit", "mlflow.source.git.commit")


class ReproduceError(Exception):
    """Reproduction could not be attempted or finished; the message says why."""


@dataclass
class Comparison:
    path: str
    recorded: str
    rebuilt: str | None
    files: list[tuple[str, str | None, str | None]]  # relpath, recorded md5, rebuilt md5

    @property
    def identical(self) -> bool:
        return self.rebuilt == self.recorded and all(a == b for _, a, b in self.files)


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ReproduceError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve_commit(repo: Path, commit: str) -> str:
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False)
    if not sha:
        raise ReproduceError(f"{commit!r} is not a commit of {repo}")
    return sha


def commit_file(repo: Path, sha: str, path: str) -> str | None:
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{sha}:{path}"], capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else None


def stage_lock(repo: Path, sha: str, stage: str) -> dict:
    text = commit_file(repo, sha, "dvc.lock")
    if text is None:
        raise ReproduceError(f"commit {sha[:12]} has no dvc.lock: nothing was recorded there to "
                             "reproduce (pick the commit made after the pipeline ran)")
    lock = yaml.safe_load(text) or {}
    stages = lock.get("stages", {})
    if stage not in stages:
        raise ReproduceError(f"commit {sha[:12]}: dvc.lock has no stage {stage!r} "
                             f"(it records: {', '.join(stages) or 'none'})")
    return lock


def cached_outs(repo: Path, sha: str, stage: str) -> list[str]:
    """Outputs the stage caches in DVC (not metrics, not cache: false): the ones to verify."""
    found = pipeline.parse_text(commit_file(repo, sha, "dvc.yaml") or "")
    outs = [o.path for o in found.stages[stage].outputs if o.kind == "outs" and o.cache] \
        if stage in found.stages else []
    if not outs:
        raise ReproduceError(f"commit {sha[:12]}: stage {stage!r} caches no output to verify")
    return outs


def tracked_inputs(lock: dict, stage: str) -> list[str]:
    """The stage's deps that are other stages' outputs: data the remote must supply."""
    produced = {out["path"] for name, st in lock["stages"].items() if name != stage
                for out in st.get("outs", [])}
    return [dep["path"] for dep in lock["stages"][stage].get("deps", []) if dep["path"] in produced]


def recorded_hash(lock: dict, stage: str, path: str) -> str:
    for out in lock["stages"][stage].get("outs", []):
        if out["path"] == path:
            return out["md5"]
    raise ReproduceError(f"dvc.lock: stage {stage!r} records no output {path!r}")


def dir_manifest(cache: Path, dir_hash: str) -> dict[str, str] | None:
    """relpath -> md5 of a directory output, from its .dir object in the cache (if fetched)."""
    obj = cache / "files" / "md5" / dir_hash[:2] / dir_hash[2:]
    if not obj.exists():
        return None
    return {entry["relpath"]: entry["md5"] for entry in json.loads(obj.read_text())}


def compare(worktree: Path, path: str, recorded: str, rebuilt: str | None) -> Comparison:
    target = worktree / path
    files: list[tuple[str, str | None, str | None]] = []
    if recorded.endswith(".dir"):
        listed = dir_manifest(worktree / ".dvc" / "cache", recorded) or {}
        now = {p.relative_to(target).as_posix(): file_md5(p)
               for p in sorted(target.rglob("*")) if p.is_file()} if target.is_dir() else {}
        if listed:
            files = [(rel, listed.get(rel), now.get(rel)) for rel in sorted(set(listed) | set(now))]
        else:
            files = [(rel, None, md5) for rel, md5 in sorted(now.items())]
    return Comparison(path=path, recorded=recorded, rebuilt=rebuilt, files=files)


def format_table(results: list[Comparison]) -> list[str]:
    """One line per output and per file in it: recorded hash, rebuilt hash, verdict."""
    rows = [("output", "recorded (dvc.lock at commit)", "rebuilt", "verdict")]
    for res in results:
        rows.append((res.path, res.recorded, str(res.rebuilt),
                     "identical" if res.identical else "DIFFERENT"))
        for rel, was, now in res.files:
            rows.append((f"  {rel}", was or "-", now or "-",
                         "identical" if was == now else
                         ("unrecorded" if was is None else "DIFFERENT")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]


def remote_settings(repo: Path, remote: str | None) -> tuple[str, str]:
    """(name, url) of the remote to pull from, as this checkout resolves it (config + local)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        name = remote or config["core"].get("remote")
        if not name:
            raise ReproduceError("no DVC remote given and no default remote configured "
                                 "(dvc remote default NAME)")
        if name not in config["remote"]:
            raise ReproduceError(f"DVC remote {name!r} is not configured in {repo} "
                                 f"(known: {', '.join(config['remote']) or 'none'})")
        return name, str(config["remote"][name]["url"])


def run(cmd: list[str], cwd: Path, env: dict, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ReproduceError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def reproduce(repo: Path, commit: str, stage: str = "train", remote: str | None = None,
              mlflow_uri: str | None = None, keep: bool = False, out=sys.stdout) -> int:
    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    repo = Path(git(repo, "rev-parse", "--show-toplevel"))
    sha = resolve_commit(repo, commit)
    lock = stage_lock(repo, sha, stage)
    outs = cached_outs(repo, sha, stage)
    recorded = {path: recorded_hash(lock, stage, path) for path in outs}
    inputs = tracked_inputs(lock, stage)
    name, url = remote_settings(repo, remote)
    subject = git(repo, "log", "-1", "--format=%h %cs %s", sha)
    say(f"reproduce {stage} at {subject}")
    say(f"  commit  {sha}")
    say(f"  remote  {name} ({url})")

    tmp = Path(tempfile.mkdtemp(prefix="dailyrec-reproduce-"))
    worktree = tmp / "worktree"
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    if mlflow_uri:
        env["MLFLOW_TRACKING_URI"] = mlflow_uri
    else:  # the rebuild is a check, not a new model: no run, no registered version
        env["DAILYREC_MLFLOW"] = "off"
    env.pop("DAILYREC_PARAMS", None)
    git(repo, "worktree", "add", "--detach", "--quiet", str(worktree), sha)
    try:
        local_config = repo / ".dvc" / "config.local"
        if local_config.exists():
            shutil.copyfile(local_config, worktree / ".dvc" / "config.local")
        # Resolved here: a relative local remote would otherwise point inside the worktree.
        run([dvc, "remote", "modify", "--local", name, "url", url], worktree, env,
            "setting the remote in the worktree")
        say(f"  pulling {', '.join(inputs) or '(nothing: the stage reads no pipeline data)'} "
            "into an empty cache ...")
        if inputs:
            run([dvc, "pull", "--remote", name, *inputs], worktree, env, "dvc pull")
        # The recorded outputs' listings, so a difference can be shown file by file.
        fetched = subprocess.run([dvc, "fetch", "--remote", name, *outs], cwd=worktree, env=env,
                                 capture_output=True, text=True).returncode == 0
        say(f"  re-running {stage} (dvc repro --force --single-item {stage}) ...")
        run([dvc, "repro", "--force", "--single-item", stage], worktree, env, f"dvc repro {stage}")
        rebuilt_lock = yaml.safe_load((worktree / "dvc.lock").read_text())
        results = [compare(worktree, path, recorded[path],
                           next((o["md5"] for o in rebuilt_lock["stages"][stage]["outs"]
                                 if o["path"] == path), None))
                   for path in outs]
        say()
        for line in format_table(results):
            say(line)
        if not fetched:
            say("(the recorded outputs are not on the remote, so only their dvc.lock hashes are "
                "compared)")
        ok = all(res.identical for res in results)
        say()
        say(f"verdict: {'IDENTICAL' if ok else 'DIFFERENT'}: {', '.join(outs)} rebuilt from "
            f"{sha[:12]} {'match' if ok else 'do not match'} the hashes recorded in its dvc.lock")
        return IDENTICAL if ok else DIFFERENT
    finally:
        if keep:
            say(f"(worktree kept at {worktree}; remove it with: "
                f"git worktree remove --force {worktree})")
        else:
            git(repo, "worktree", "remove", "--force", str(worktree), check=False)
            shutil.rmtree(tmp, ignore_errors=True)
            git(repo, "worktree", "prune", check=False)


def commit_for_run(repo: Path, run_id: str) -> str:
    """The commit whose dvc.lock records the model an MLflow run trained."""
    from mlflow.tracking import MlflowClient

    from dailyrec.core import env

    try:  # the address asked for now, not whatever an earlier call in this process set
        tags = MlflowClient(tracking_uri=env.mlflow_uri()).get_run(run_id).data.tags
    except Exception as err:  # mlflow raises several types for an unknown run
        raise ReproduceError(f"MLflow run {run_id!r} not found: {err}") from None
    models_hash = next((tags[t] for t in MODELS_HASH_TAGS if tags.get(t)), None)
    if models_hash:
        # The run's git.commit is the commit it started from, whose dvc.lock still holds the day
        # before; the model is recorded by the commit made after the run. Git's pickaxe finds the
        # first commit that put this hash into dvc.lock.
        found = git(repo, "log", "--all", "--reverse", "--format=%H", "-S", models_hash, "--",
                    "dvc.lock").splitlines()
        if not found:
            raise ReproduceError(
                f"MLflow run {run_id}: no commit of {repo} records its models hash {models_hash} "
                "in dvc.lock (was the run committed? `python -m stages.daily --commit` does it)")
        return found[0]
    commit = next((tags[t] for t in COMMIT_TAGS if tags.get(t)), None)
    if not commit:
        raise ReproduceError(f"MLflow run {run_id} carries neither a models hash tag "
                             f"({', '.join(MODELS_HASH_TAGS)}) nor a commit tag "
                             f"({', '.join(COMMIT_TAGS)})")
    return commit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild a past model from its git commit and check "
                                             "it is byte-identical to the recorded one.")
    ap.add_argument("commit", nargs="?",
                    help="the commit (sha, tag, branch) whose model to rebuild")
    ap.add_argument("--run-id", help="an MLflow run id instead of a commit (MLFLOW_TRACKING_URI)")
    ap.add_argument("--stage", default="train", help="the stage to re-run (default: train)")
    ap.add_argument("--remote", help="DVC remote to pull from (default: the repo's default remote)")
    ap.add_argument("--repo", default=".", help="the git + DVC repository (default: .)")
    ap.add_argument("--mlflow-uri", help="log the rebuild as an MLflow run there (default: the "
                                         "rebuild is not tracked)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary worktree")
    args = ap.parse_args(argv)
    if bool(args.commit) == bool(args.run_id):
        ap.error("give a COMMIT or --run-id (one of them)")
    try:
        repo = Path(args.repo).resolve()
        commit = args.commit or commit_for_run(repo, args.run_id)
        if args.run_id:
            print(f"MLflow run {args.run_id} -> commit {commit}")
        return reproduce(repo, commit, stage=args.stage, remote=args.remote,
                         mlflow_uri=args.mlflow_uri, keep=args.keep)
    except ReproduceError as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
