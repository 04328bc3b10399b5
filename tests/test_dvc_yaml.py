"""dvc.yaml tells the truth: every project file a stage imports is in its deps, every params.yaml key
it reads is in its params, and no output another stage depends on changes when nothing did.

The imports are found statically (tools/code_deps.py: the whole import closure of the stage's module,
lazy imports and rendered templates included). The keys read are recorded by the settings accessor
itself while the real stages run (DAILYREC_PARAMS_TRACE, dailyrec/core/settings.py), so a key
read on any path those runs take is seen, whatever code reads it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from dailyrec.ops import pipeline
from tests import workspace
from tools.code_deps import PACKAGES, ROOT, closure, direct_imports, relative

pytestmark = pytest.mark.slow

FIRST_DAY = dt.date(2026, 11, 14)


def code_dep(path: str) -> bool:
    return path.split("/", 1)[0] in PACKAGES and path.endswith((".py", ".j2"))


def import_problems(found: pipeline.Pipeline) -> list[str]:
    """For each stage: project files it imports that are not deps, and code deps it does not
    import (a stale dep re-runs the stage for nothing)."""
    problems = []
    for stage in found.stages.values():
        if stage.module is None:
            problems.append(f"{stage.name}: cmd {stage.cmd!r} is not `python -m <module>`")
            continue
        needed = set(relative(closure(ROOT.joinpath(*stage.module.split(".")).with_suffix(".py"))))
        declared = {d for d in stage.deps if code_dep(d)}
        problems += [f"{stage.name}: imports {p} but does not list it in deps"
                     for p in sorted(needed - declared)]
        problems += [f"{stage.name}: lists {p} in deps but does not import it"
                     for p in sorted(declared - needed)]
    return problems


def covered(key: str, declared: tuple[str, ...]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


def param_problems(found: pipeline.Pipeline, read: dict[str, set[str]]) -> list[str]:
    """For each stage: keys it read that its params do not cover, and params it never read."""
    problems = []
    for stage in found.stages.values():
        keys = read.get(stage.module, set())
        problems += [f"{stage.name}: reads params.yaml {k} but does not list it in params"
                     for k in sorted(k for k in keys if not covered(k, stage.params))]
        problems += [f"{stage.name}: lists {d} in params but never reads it"
                     for d in stage.params if not any(covered(k, (d,)) for k in keys)]
    return problems


def without(found: pipeline.Pipeline, stage: str, dep: str | None = None,
            param: str | None = None) -> pipeline.Pipeline:
    """The pipeline with one dep or param of one stage left out."""
    import dataclasses

    old = found.stages[stage]
    new = dataclasses.replace(old, deps=tuple(d for d in old.deps if d != dep),
                              params=tuple(p for p in old.params if p != param))
    return pipeline.Pipeline(stages={**found.stages, stage: new})


# --- imports ------------------------------------------------------------------------------------

def test_every_stage_lists_exactly_the_files_it_imports():
    assert import_problems(pipeline.load(ROOT / "dvc.yaml")) == []


@pytest.mark.parametrize("stage, dep", [
    ("publish", "dailyrec/model/recommender.py"),  # the scorer publish writes lists with
    ("train", "dailyrec/core/settings.py"),  # the settings every stage reads
    ("train", "dailyrec/model/pyfunc.py"),  # logged to MLflow as code
    ("validate", "dailyrec/ingest/history.py"),  # which files make a day
    ("publish", "dailyrec/publish/connection.py"),
    ("publish", "dailyrec/ops/notify.py"),
    ("validate", "dailyrec/templates/validation.html.j2"),
])
def test_a_missing_dep_is_caught(stage, dep):
    found = pipeline.load(ROOT / "dvc.yaml")
    assert dep in found.stages[stage].deps
    assert f"{stage}: imports {dep} but does not list it in deps" in \
        import_problems(without(found, stage, dep=dep))


def test_no_module_imports_a_stage_module_and_the_layers_hold():
    """stages/ are leaves; the library imports neither stages/, serving/ nor tools/; serving/
    imports the library only."""
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            targets = {p.relative_to(ROOT).parts[0] + "/" + p.relative_to(ROOT).as_posix()
                       .split("/", 1)[-1] for p in direct_imports(path)}
            rel = path.relative_to(ROOT).as_posix()
            for target in sorted(targets):
                top = target.split("/", 1)[0]
                if top == "stages" and target != "stages/__init__.py":
                    problems.append(f"{rel} imports the stage module {target}")
                if package == "dailyrec" and top != "dailyrec":
                    problems.append(f"{rel} (the library) imports {target}")
                if package == "serving" and top not in ("dailyrec", "serving"):
                    problems.append(f"{rel} (the API) imports {target}")
    assert problems == []


# The library's packages in the order data flows through them: each may import those before it
# (and itself), never one after it. core imports nothing above it.
LAYERS = ("core", "ingest", "quality", "model", "publish", "ops")


def test_the_library_layers_follow_the_data_flow():
    """dailyrec/core imports only core; ingest core and itself; ... ops anything in the library.
    The dailyrec/ root holds no module but its __init__."""
    library = ROOT / "dailyrec"
    problems = []
    for path in sorted(library.rglob("*.py")):
        parts = path.relative_to(library).parts
        if len(parts) == 1:
            if parts[0] != "__init__.py":
                problems.append(f"dailyrec/{parts[0]} sits at the library's root")
            continue
        layer = LAYERS.index(parts[0])
        for target in direct_imports(path):
            inner = target.relative_to(library).parts if target.is_relative_to(library) else ()
            if len(inner) > 1 and inner[0] in LAYERS and LAYERS.index(inner[0]) > layer:
                problems.append(f"{path.relative_to(ROOT)} ({parts[0]}) imports "
                                f"{target.relative_to(ROOT)} ({inner[0]}), a later layer")
    assert problems == []


def test_dvc_yaml_is_parsed_in_one_place():
    """No YAML load anywhere takes dvc.yaml itself: the runner, MLflow's lineage tags and the
    reproduce tool go through dailyrec/ops/pipeline.py, which parses it."""
    import ast

    def mentions_dvc_yaml(node: ast.AST) -> bool:
        return any((isinstance(n, ast.Constant) and n.value == "dvc.yaml")
                   or (isinstance(n, (ast.Name, ast.Attribute))
                       and getattr(n, "id", getattr(n, "attr", "")) == "DVC_FILE")
                   for n in ast.walk(node))

    direct = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in \
                        ("safe_load", "load") and getattr(node.func, "value", None) is not None \
                        and getattr(node.func.value, "id", "") == "yaml" \
                        and mentions_dvc_yaml(node):
                    direct.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert direct == []
    for user in ("dailyrec/ops/runner/day.py", "dailyrec/ops/tracking.py", "tools/reproduce.py"):
        assert "pipeline." in (ROOT / user).read_text(), user


# --- params and wall-clock values, from real stage runs ------------------------------------------

@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """Two days of `dvc repro` on the simulator's data, every params.yaml read recorded; then a
    third `dvc repro` with nothing changed, recorded apart."""
    from tests.servers import start_redis

    redis = start_redis()
    root = tmp_path_factory.mktemp("dvcyaml")
    trace, again = root / "trace.jsonl", root / "again.jsonl"
    ws = workspace.create(root / "repo", {"REDIS_URL": redis.url,
                                          "DAILYREC_PARAMS_TRACE": str(trace)})
    try:
        ws.python("-m", "tools.simulate", "--start", FIRST_DAY.isoformat(), "--days", "2",
                  "--users", "300", "--items", "80", "--events-per-day", "1500", "--seed", "5")
        # A gate that passes on this little data, so publish runs and is recorded too.
        ws.set_params(**{"eval.min_lift": -1.0, "eval.min_test_users": 1, "train.iterations": 3})
        ws.set_run_date(FIRST_DAY + dt.timedelta(days=1))
        first = ws.dvc("repro", check=False)  # no history before the holdout: publish refuses
        assert first.returncode != 0 and "refusing to publish" in first.stdout + first.stderr
        ws.set_run_date(FIRST_DAY + dt.timedelta(days=2))
        ws.dvc("repro")
        publish = json.loads((ws.path / "metrics" / "publish.json").read_text())
        ws.dvc("repro", env={"DAILYREC_PARAMS_TRACE": str(again)})
        yield {"trace": _read(trace), "again": _read(again), "publish": publish, "ws": ws}
    finally:
        redis.stop()


def _read(path: Path) -> dict[str, set[str]]:
    read: dict[str, set[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            read.setdefault(record["module"], set()).update(record["keys"])
    return read


def test_every_stage_lists_exactly_the_params_it_reads(traced):
    found = pipeline.load(traced["ws"].path / "dvc.yaml")
    assert {s.module for s in found.stages.values()} <= set(traced["trace"])
    assert param_problems(found, traced["trace"]) == []


@pytest.mark.parametrize("stage, param", [
    ("publish", "run.date"), ("train", "mlflow"), ("evaluate", "mlflow"),
    ("validate", "filter.window_days"), ("publish", "alerts.throttle_minutes"),
])
def test_a_missing_param_is_caught(traced, stage, param):
    found = pipeline.load(traced["ws"].path / "dvc.yaml")
    assert param in found.stages[stage].params
    problems = param_problems(without(found, stage, param=param), traced["trace"])
    assert any(p.startswith(f"{stage}: reads params.yaml {param}") for p in problems), problems


def test_a_rerun_on_unchanged_data_runs_nothing_after_fetch_delta(traced):
    """fetch_delta always runs (the source is outside DVC's view); with the same rows its outputs
    are byte-identical, and no output another stage reads holds a wall-clock value, so DVC finds
    every later stage unchanged: none of them starts (none reads params.yaml)."""
    assert traced["publish"]["users_written"] > 0  # the whole pipeline had run, publish included
    assert set(traced["again"]) == {"stages.fetch_delta"}
    status = pipeline.status(traced["ws"].env, cwd=traced["ws"].path)
    assert set(status) <= {"fetch_delta"}


def test_files_committed_to_git_name_no_person(traced):
    """What --commit puts in git (the cache: false outputs) holds counts and salted hashes, no user
    id, IP or user agent (personal data stays out of git); the DVC-cached offenders report holds
    them."""
    import re

    ws = traced["ws"]
    found = pipeline.load(ws.path / "dvc.yaml")
    committed = [p for out in found.git_tracked() for p in
                 ([ws.path / out] if (ws.path / out).is_file() else (ws.path / out).rglob("*"))
                 if p.is_file()]
    assert any(p.name == "filter.json" for p in committed)
    for path in committed:
        text = path.read_text()
        ips = set(re.findall(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b", text))
        assert ips <= {"127.0.0.1"}, (path, ips)  # the Redis the test publishes to, no visitor
        assert "Mozilla" not in text and "bot.html" not in text, path
        if path.suffix == ".json":
            assert not list(_named_people(json.loads(text))), path
    offenders = (ws.path / "reports/filter/offenders.json").read_text()
    assert "Mozilla" in offenders or re.search(r"\d+\.\d+\.\d+\.\d+", offenders)


def _named_people(data, key=None):
    """Values under user_id / ip / user_agent keys that are not pseudonyms (a table's column
    mapping, {"ip": "client_ip"}, names columns, not people)."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k != "columns":
                yield from _named_people(v, k)
    elif isinstance(data, list):
        for v in data:
            yield from _named_people(v, key)
    elif key in ("user_id", "ip", "user_agent") and data is not None \
            and not str(data).startswith("h:"):
        yield key, data


# --- DVC metrics: headline numbers a person can read --------------------------------------------

def test_dvc_metrics_are_flat_numbers_and_dvc_metrics_show_is_a_readable_table(traced):
    """Every declared metrics file of a real run holds numbers and booleans only, no nested object
    and no text; `dvc metrics show` is one row per file, at most 16 columns (Path included) and
    200 characters wide."""
    ws = traced["ws"]
    found = pipeline.load(ws.path / "dvc.yaml")
    declared = [o.path for o in found.outputs() if o.kind == "metrics"]
    assert len(declared) >= 10
    for path in declared:
        values = json.loads((ws.path / path).read_text())
        assert isinstance(values, dict), path
        bad = {k: v for k, v in values.items()
               if isinstance(v, (dict, list, str)) or v is None}
        assert bad == {}, (path, bad)
    train = json.loads((ws.path / "metrics/summary/train.json").read_text())
    assert train["nonzeros"] > 0 and train["fit_s"] > 0
    gate = json.loads((ws.path / "metrics/summary/gate.json").read_text())
    assert gate["passed"] is True
    shown = ws.dvc("metrics", "show", env={"COLUMNS": "400"}).stdout
    lines = [line for line in shown.splitlines() if line.strip()]
    header = lines[0].split()
    assert header[0] == "Path" and len(header) <= 16, header
    assert {line.split()[0] for line in lines[1:]} == set(declared)
    assert max(len(line) for line in lines) <= 200, max(len(line) for line in lines)
    for column in ("events", "kept", "quarantined", "removed", "users", "items", "nonzeros",
                   "fit_s", "ndcg@20", "recall@20", "precision@20", "lift", "passed"):
        assert column in header, column


# --- dvc plots show draws offline: the scheduler's machine may have no internet ----------------

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it


def test_dvc_plots_show_draws_its_charts_with_no_network(traced, tmp_path):
    """The page `dvc plots show` writes carries Vega itself (.dvc/config's plots.html_template):
    headless Chromium, with every network request refused, draws both charts."""
    import subprocess

    ws = traced["ws"]
    out = tmp_path / "plots"
    ws.dvc("plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and "vegaEmbed(" in page
    assert page.count("vegaEmbed(") == 2  # recall@k and ndcg@k
    dom = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
         "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('class="marks"') == 2, dom[-2000:]  # vega-embed's canvas, one per chart
    assert "vega-embed" in dom


def test_yaml_is_parsed_in_c_as_safe_load_parses_it():
    """The runner (dvc.lock, twice per stage), dvc.yaml's reader and params.yaml's read YAML with
    libyaml's parser (files.parse_yaml): the documents yaml.safe_load gives. DVC parses with
    ruamel.yaml's C parser, ruamel.yaml.clib, which ruamel.yaml 0.19 no longer installs: it is
    pinned, and without it every dvc command parses dvc.yaml and dvc.lock in Python
    (docs/benchmarks.md, "fixed_cost")."""
    import yaml
    from ruamel.yaml import main as ruamel_main

    from dailyrec.core import files

    assert files.SAFE_LOADER is yaml.CSafeLoader and ruamel_main.CParser is not None
    tricky = ("a: &x {b: 1e-3, c: 2026-11-21, d: '007', e: null, f: [on, yes, 0o17, .inf]}\n"
              "g: *x\nh: |\n  two\n  lines\n")
    for text in (tricky, (ROOT / "dvc.yaml").read_text(), (ROOT / "params.yaml").read_text()):
        assert files.parse_yaml(text) == yaml.safe_load(text)
