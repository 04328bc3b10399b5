"""The DVC workspace of the daily run, through DVC's own commands: made whole before the day
(recover: what an interrupted run left, a damaged cache object), the day's inputs pulled, its
outputs pushed (and the pushes earlier nights could not make), and the day committed to git."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from dailyrec.core import paths
from dailyrec.core.files import dvc_md5
from dailyrec.ops import pipeline
from dailyrec.ops.runner.commands import DayContext, Finished, StepFailed
from dailyrec.ops.runner.state import (last_completed, load_state, recorded_hash,
                                       recorded_outputs, save_state)


def default_remote(env: dict) -> str | None:
    proc = subprocess.run(pipeline.dvc("remote", "default"), env=env, capture_output=True,
                          text=True)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


# --------------------------------------------------------------------------- recovery

def workspace_holds(stage: str, path: str) -> bool:
    """The workspace's copy of an output is, byte for byte, what dvc.lock records (hashed as DVC
    hashes it: a damaged cache makes `dvc status` say "not in cache" whatever the workspace
    holds, so its word is not enough)."""
    recorded = recorded_hash(stage, path)
    return recorded is not None and dvc_md5(path) == recorded


def interrupted_outputs(env: dict) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({stage: [paths]} of cached outputs that differ from what dvc.lock records (a stage killed
    mid-write, or one that wrote its outputs and then failed), {stage: [paths]} of outputs the
    workspace holds rightly but whose copy in the local DVC cache is damaged or gone), from
    `dvc status --json` and, for "not in cache", the workspace's own hash.

    Only outputs dvc.lock has a hash for: one it does not record (a history brought in before
    the first run, or a dvc.lock that was lost) has nothing to be restored to, and a forced
    checkout of it would delete it."""
    cached = {o.path for o in pipeline.load().outputs() if o.cache}
    changed: dict[str, list[str]] = {}
    damaged: dict[str, list[str]] = {}
    for stage, entries in pipeline.status(env).items():
        recorded = recorded_outputs(stage)
        for entry in entries if isinstance(entries, list) else []:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            for path, how in outs.items():
                if path not in cached or path not in recorded or \
                        how not in ("modified", "not in cache"):
                    continue
                intact = how == "not in cache" and workspace_holds(stage, path)
                (damaged if intact else changed).setdefault(stage, []).append(path)
    return changed, damaged


def recover(run: DayContext, remote: str | None) -> list[str]:
    """Bring the workspace and the local DVC cache back to what dvc.lock records before the day
    runs, so an earlier fault cannot wedge this run (`dvc pull` refuses to overwrite unsaved
    outputs) nor a damaged cache object go unnoticed. Returns what was done, in words (empty
    when nothing was needed)."""
    changed, damaged = interrupted_outputs(run.env)
    done = repair_cache(run, remote, damaged) if damaged else []
    return done + (restore(run, remote, changed) if changed else [])


def repair_cache(run: DayContext, remote: str | None, damaged: dict[str, list[str]]) -> list[str]:
    """The workspace holds these outputs rightly (checked by hash) but the local cache's copy is
    damaged or gone: fetch it again from the remote, or say plainly that it cannot be."""
    stages = sorted(damaged)
    what = ", ".join(p for s in stages for p in damaged[s])
    if remote and run.execute("dvc fetch", pipeline.dvc("fetch", *stages), quiet=True).status \
            == 0 and not interrupted_outputs(run.env)[1]:
        return [f"the local DVC cache's copy of {what} was missing or damaged; fetched it again "
                "from the remote (the workspace held what dvc.lock records)"]
    where = "the remote could not replace it" if remote else "no DVC remote holds another copy"
    return [f"the local DVC cache's copy of {what} is missing or damaged and {where}; the "
            "workspace holds what dvc.lock records (checked by hash), and the stage that writes "
            "it saves a new copy when it next runs"]


def restore(run: DayContext, remote: str | None, changed: dict[str, list[str]]) -> list[str]:
    """Outputs that differ from dvc.lock: checked out from the cache, else pulled from the
    remote, else removed so the pipeline rebuilds them."""
    stages = sorted(changed)
    what = ", ".join(p for s in stages for p in changed[s])
    for argv in ([pipeline.dvc("checkout", "--force", *stages)] +
                 ([pipeline.dvc("pull", "--force", *stages)] if remote else [])):
        if run.execute("recover", argv, quiet=True).status == 0 \
                and not interrupted_outputs(run.env)[0]:
            return [f"restored {what} to what dvc.lock records (left changed by an interrupted "
                    f"or failed run)"]
    # Not in the cache nor on the remote: outputs a stage rebuilds are removed, the rebuild
    # follows; a persistent one (the history) is kept, and merge_history's re-run replaces what
    # the interrupted run wrote.
    found = pipeline.load()
    removed = []
    for stage in stages:
        for out in found.stages[stage].outputs:
            if out.path in changed[stage] and not out.persist:
                target = Path(out.path)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                removed.append(out.path)
    return [f"{what} differed from dvc.lock and could not be restored; removed {removed or 'none'}"
            " so the pipeline rebuilds them"]


# --------------------------------------------------------------------------- the remote

def pull(run: DayContext) -> list[str]:
    """`dvc pull`. A remote that does not answer is not fatal when the workspace already holds
    what dvc.lock records (the usual case on the machine that ran yesterday): the day runs on it,
    with an alert; on a fresh machine it is (exit 69, the next run retries).

    Only the stages dvc.lock records outputs of: DVC's checkout deletes a workspace output it has
    no hash for, and such an output (a history brought in before the first run, or kept while a
    dvc.lock was lost) is data, not debris. With none recorded there is nothing to pull; with
    every stage recorded (the usual day), no targets: the same outputs, and DVC parses dvc.yaml
    and dvc.lock once instead of twice per target (1 s less at 7 stages)."""
    order = pipeline.load().order()
    recorded = [s for s in order if recorded_outputs(s)]
    if not recorded:
        run.progress("dvc pull", "skipped (dvc.lock records no outputs yet)")
        return []
    targets = [] if recorded == order else recorded
    try:
        run.step("dvc pull", pipeline.dvc("pull", "--allow-missing", *targets))
        return []
    except StepFailed as failure:
        cached = {o.path for o in pipeline.load().outputs() if o.cache}
        lacking = [p for s in recorded for p in sorted(recorded_outputs(s) & cached)
                   if not workspace_holds(s, p)]  # checked by hash, not by DVC's word
        if lacking and last_completed() is not None:
            raise
        said = "the workspace holds what dvc.lock records (each output checked by hash)" \
            if not lacking else f"the workspace lacks {', '.join(lacking)}: the stages rebuild it"
        run.progress("dvc pull", f"failed; {said}: going on")
        run.alert_failure(f"dvc pull failed; the day runs on the local workspace ({said})",
                          failure)
        return ["dvc pull failed (the DVC remote did not answer); the day ran on the local "
                "workspace"]


def push_pending(run: DayContext) -> list[str]:
    """Push the data of earlier commits whose `dvc push` failed; returns what it did, in words."""
    pending = load_state().get("pending_push") or []
    if not pending:
        return []
    argv = [sys.executable, "-m", "dailyrec.ops.pipeline", "push", *pending]
    if run.execute("dvc push (pending)", argv, quiet=True).status == 0:
        save_state(pending_push=[])
        return [f"pushed the data of {len(pending)} earlier run(s) whose push had failed"]
    return [f"the data of {len(pending)} earlier run(s) is still not on the DVC remote "
            "(will retry)"]


def push(run: DayContext, remote: str | None) -> bool:
    """`dvc push` of the day; False when the remote did not take it (what was served stays
    served and is committed; the next run pushes it)."""
    if not remote:
        run.progress("dvc push", "skipped (no default DVC remote)")
        return True
    try:
        run.step("dvc push", pipeline.dvc("push"))
        return True
    except StepFailed as failure:
        run.progress("dvc push", f"FAILED ({failure.why}); the next run pushes it")
        run.notes.append("dvc push failed: the day's data is not on the DVC remote yet; the next "
                         "run pushes it")
        run.alert_failure(f"daily run {run.day}: dvc push failed, the next run retries", failure)
        return False


# --------------------------------------------------------------------------- git

def commit(run: DayContext, pushed: bool) -> None:
    """Commit the day (params.yaml, dvc.lock, git-tracked outputs); a commit whose data the
    remote did not take is remembered, for the next run to push."""
    started = time.monotonic()
    committed, sha = git_commit(run)
    run.progress("git commit", f"{committed} in {time.monotonic() - started:.1f} s")
    if not pushed and sha:
        save_state(pending_push=[*(load_state().get("pending_push") or []), sha])


def commit_paths() -> list[str]:
    """What --commit records: params.yaml, dvc.lock, git-tracked outputs, and the .gitignore
    files dvc writes beside its outputs."""
    found = pipeline.load()
    ignores = sorted({str(Path(o.path).parent / ".gitignore") for o in found.outputs()})
    candidates = [str(paths.DVC_LOCK), "params.yaml", *found.git_tracked(), *ignores]
    return [p for p in dict.fromkeys(candidates) if Path(p).exists()]


def git_commit(run: DayContext) -> tuple[str, str | None]:
    """Commit the day's record; returns (what was done, in words; the commit, or None).

    With --branch, the commit goes onto that branch (created from HEAD if it does not exist)
    through a private index: the checked-out branch, the index and the working tree stay as they
    are (the demo's runs, or a team that keeps the nightly commits off its own branch)."""
    env, log, branch = run.env, run.log, run.opts.branch
    files = commit_paths()
    ignored = subprocess.run(["git", "check-ignore", "--", *files], env=env,
                             capture_output=True, text=True).stdout.split()
    files = [p for p in files if p not in set(ignored)]
    message = f"daily run {run.day.isoformat()}"
    if branch is None:
        _git(["git", "add", "--", *files], env, log)
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *files], env=env)
        if staged.returncode == 0:
            return "nothing to commit", None
        _git(["git", "commit", "-q", "-m", message, "--", *files], env, log)
        sha = _git(["git", "rev-parse", "HEAD"], env, log).strip()
        return f"committed {sha[:7]}", sha
    ref = f"refs/heads/{branch}"
    parent = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                            env=env, capture_output=True, text=True).stdout.strip()
    parent = parent or _git(["git", "rev-parse", "HEAD"], env, log).strip()
    with tempfile.TemporaryDirectory(prefix="dailyrec-index-") as tmp:
        private = {**env, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(["git", "read-tree", parent], private, log)
        _git(["git", "add", "--", *files], private, log)
        tree = _git(["git", "write-tree"], private, log).strip()
    if tree == _git(["git", "rev-parse", f"{parent}^{{tree}}"], env, log).strip():
        return f"nothing to commit on {branch}", None
    sha = _git(["git", "commit-tree", tree, "-p", parent, "-m", message], env, log).strip()
    old = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], env=env,
                         capture_output=True, text=True).stdout.strip()
    _git(["git", "update-ref", "-m", message, ref, sha, *([old] if old else [])], env, log)
    return f"committed {sha[:7]} on {branch}", sha


def _git(cmd: list[str], env: dict, log: TextIO) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode:
        raise StepFailed(Finished("git commit", proc.returncode,
                                  (proc.stdout + proc.stderr).splitlines()), kind="bug")
    return proc.stdout
