"""A stand-in pipeline stage for tests/test_daily.py: `python toy.py STAGE`.

Writes its output and a metrics file in the real stage's format, with numbers derived from run.date
(tests/test_daily.py's toy_numbers mirrors them). Control files in the working directory:
    fail-STAGE-DATE  the stage prints 60 lines and a secret, then raises
    gate-fails-DATE  evaluate's gate says no, and publish refuses (exit 1) as the real one does
    hold             fetch_delta creates `holding` and waits while `hold` exists
"""

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import yaml

stage = sys.argv[1]
day = dt.date.fromisoformat(str(yaml.safe_load(Path("params.yaml").read_text())["run"]["date"]))
d = day.day


def write(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def output(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "part.txt").write_text(f"{stage} {day}\n")


if stage == "fetch_delta" and Path("hold").exists():
    Path("holding").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while Path("hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)

if Path(f"fail-{stage}-{day}").exists():
    print(f"connecting with {os.environ.get('TOY_SECRET')}")
    for i in range(60):
        print(f"{stage} line {i}")
    raise RuntimeError(f"the toy {stage} stage failed")

if stage == "fetch_delta":
    output("data/delta")
    write("metrics/fetch.json", {
        "run_date": str(day), "fetched": 10_000 + d, "kept": 10_000 - 3, "duplicates": 0,
        "quarantined": 3 + d, "quarantined_by_reason": {"ts:future": 3, "user_id:null": d}})
elif stage == "filter_noise":
    output("data/clean")
    write("metrics/filter.json", {
        "run_date": str(day), "window": {"days": 7, "rejected_days_left_out": []},
        "input": {"rows": 9_650 + d}, "output": {"rows": 9_000, "users": 2_000, "items": 500},
        "removed": {"rows": 650 + d, "bot_or_internal_users": 12},
        "rules": {"crawler_ua": {"rows": 400 + d, "users": 5, "enabled": True},
                  "internal": {"rows": 250, "users": 7, "enabled": True},
                  "repeated": {"rows": 0, "users": 0, "enabled": False}}})
elif stage == "train":
    output("models")
    write("metrics/train.json", {
        "run_date": str(day), "device": "cpu", "users": 2_000, "items": 500,
        "durations_s": {"fit": 1.5, "total": 2.0}})
    write("metrics/mlflow.json", {"run_id": None, "experiment": "dailyrec",
                                  "model_name": "dailyrec-als", "model_version": None})
elif stage == "evaluate":
    ndcg = round(0.1 + d / 1000, 6)
    write("metrics/eval.json", {
        "run_date": str(day), "ndcg_at_20": ndcg, "recall_at_20": 0.2,
        "baselines": {"most_popular": {"ndcg_at_20": 0.05, "recall_at_20": 0.1}}})
    passed = not Path(f"gate-fails-{day}").exists()
    write("metrics/gate.json", {"run_date": str(day), "passed": passed,
                                "reason": "beats most-popular" if passed else "below most-popular"})
elif stage == "publish":
    if not json.loads(Path("metrics/gate.json").read_text())["passed"]:
        sys.exit("publish: refusing to publish: the quality gate failed")
    write("metrics/publish.json", {"version": f"{day}.1", "users": 2_000 + d,
                                   "users_written": 2_000 + d})
print(f"{stage} {day}: done")
