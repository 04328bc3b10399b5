"""A stand-in pipeline stage for tests/test_daily.py: `python toy.py STAGE`.

It keeps the project's stage contract (dailyrec.core.cli.run_stage: how it ended, in the runner's status
file) and writes its output and a metrics file in the real stage's shape (dailyrec.core.metrics), with
numbers derived from run.date (tests/test_daily.py's toy_numbers mirrors them). Control files in the
working directory:
    fail-STAGE-DATE  the stage prints 60 lines and a secret, then raises
    gate-fails-DATE  evaluate's gate says no, and publish refuses (exit 3) as the real one does
    reject-STAGE-DATE  the stage ends with bad data (DataError, exit 65), as an unreadable input does
    rejects-DATE     filter_noise rejects the day (DayRejected, exit 65, a verdict) as validate does
    kill-STAGE-DATE  the stage writes half its output, then is killed (SIGKILL), as the OOM
                     killer or a power cut would leave it
    hold             fetch_delta creates `holding` and waits while `hold` exists
"""

import datetime as dt
import os
import sys
import time
from pathlib import Path

import yaml

from dailyrec.core import cli
from dailyrec.core.errors import DataError, DayRejected, NotPublished
from tests.metrics_examples import write as write_metrics

stage = sys.argv[1]
day = dt.date.fromisoformat(str(yaml.safe_load(Path("params.yaml").read_text())["run"]["date"]))
d = day.day


def output(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "part.txt").write_text(f"{stage} {day}\n")


def body(argv) -> int:
    if stage == "fetch_delta" and Path("hold").exists():
        Path("holding").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while Path("hold").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    if Path(f"kill-{stage}-{day}").exists():
        import signal

        out = {"fetch_delta": "data/delta", "filter_noise": "data/clean", "train": "models"}.get(
            stage, "metrics")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "part.txt").write_text("half writt")
        (Path(out) / ".part.txt.tmp").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "filter_noise" and Path(f"rejects-{day}").exists():
        raise DayRejected(f"day {day - dt.timedelta(days=1)} is rejected (report: x.html)")

    if Path(f"reject-{stage}-{day}").exists():
        raise DataError(f"day {day - dt.timedelta(days=1)} is rejected (report: x.html)")

    if Path(f"fail-{stage}-{day}").exists():
        print(f"connecting with {os.environ.get('TOY_SECRET')}")
        for i in range(60):
            print(f"{stage} line {i}")
        raise RuntimeError(f"the toy {stage} stage failed")

    if stage == "fetch_delta":
        output("data/delta")
        write_metrics("metrics", "fetch", day, fetched=10_000 + d, kept=10_000 - 3,
                      quarantined=3 + d,
                      quarantined_by_reason={"ts:future": 3, "user_id:null": d})
    elif stage == "filter_noise":
        output("data/clean")
        write_metrics("metrics", "filter", day,
                      window={"days": 7}, input={"rows": 9_650 + d},
                      output={"rows": 9_000, "users": 2_000, "items": 500},
                      removed={"rows": 650 + d, "bot_or_internal_users": 12},
                      rules={"crawler_ua": {"rows": 400 + d, "users": 5, "enabled": True},
                             "internal": {"rows": 250, "users": 7, "enabled": True},
                             "repeated": {"rows": 0, "users": 0, "enabled": False}})
    elif stage == "train":
        output("models")
        write_metrics("metrics", "train", day, users=2_000, items=500,
                      durations_s={"fit": 1.5, "total": 2.0})
        write_metrics("metrics", "mlflow", day)
    elif stage == "evaluate":
        ndcg = round(0.1 + d / 1000, 6)
        write_metrics("metrics", "eval", day, ndcg_at_20=ndcg, recall_at_20=0.2,
                      baselines={"most_popular": {"ndcg_at_20": 0.05, "recall_at_20": 0.1}})
        passed = not Path(f"gate-fails-{day}").exists()
        write_metrics("metrics", "gate", day, passed=passed,
                      reason="beats most-popular" if passed else "below most-popular")
    elif stage == "publish":
        import json

        if not json.loads(Path("metrics/gate.json").read_text())["passed"]:
            raise NotPublished("refusing to publish: the quality gate failed")
        write_metrics("metrics", "publish", day, version=f"{day}.1", users=2_000 + d,
                      users_written=2_000 + d)
    print(f"{stage} {day}: done")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_stage(stage, body))
