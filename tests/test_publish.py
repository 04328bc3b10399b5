"""publish against a real Redis: versions, the atomic switch, rollback, retention, the quality gate,
the MLflow alias, and a reader that never sees a half-written version, even if publish is killed."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time

import numpy as np
import pytest
import redis

from dailyrec.core.errors import Busy, ConfigError, NotPublished
from dailyrec.model.recommender import ALSRecommender, PopularRecommender
from dailyrec.publish import settings as publish_settings
from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import keys as K
from dailyrec.publish import lists
from dailyrec.publish import writer as pub
from dailyrec.publish.reader import RecommendationStore
from stages import publish as stage
from tests import servers
from tests import tiny_models as tm
from tests.params import of, project_params

DAY = dt.date(2026, 11, 21)
LAYOUT = K.Layout()
SMALL = PublishSettings(top_n=10, filter_already_liked=True, batch_size=150, keep_versions=3,
                        similar_items=True, explain_items=5)


def settings(top_n=20, filter_already_liked=True, batch_size=100_000, keep_versions=3,
             similar_items=True, explain_items=5):
    return PublishSettings(top_n, filter_already_liked, batch_size, keep_versions, similar_items,
                           explain_items)


def served(client) -> str | None:
    value = client.get(LAYOUT.current)
    return value.decode() if value is not None else None


def expected_lists(bundle, users: list[int], top_n: int = 10) -> dict[str, tuple[str, ...]]:
    positions, _ = ALSRecommender.from_bundle(bundle).recommend(np.asarray(users), None, top_n,
                                                                True)
    return {bundle.user_ids[u]: tuple(bundle.item_ids[p] for p in row if p >= 0)
            for u, row in zip(users, positions)}


def read_list(store: RecommendationStore, user: str) -> tuple[str, tuple[str, ...] | None]:
    version, record, _ = store.lookup(user)
    items = tuple(version.item_ids[p] for p, _ in record) if record is not None else None
    return version.name, items


def test_publish_switches_keeps_versions_and_rolls_back(redis_client):
    models = [tm.bundle(seed=s) for s in range(4)]
    versions = [pub.publish(m, redis_client, SMALL, run_date=DAY, progress=False)["version"]
                for m in models]
    assert versions == [f"2026-11-21.{i}" for i in range(1, 5)]
    assert served(redis_client) == versions[3]
    # keep_versions=3: the oldest is gone, every one of its keys
    assert [r["version"] for r in pub.version_table(redis_client, LAYOUT)] == versions[1:]
    assert list(redis_client.scan_iter(match=LAYOUT.version_pattern(versions[0]))) == []

    store = RecommendationStore(redis_client, LAYOUT)
    assert read_list(store, "user-7") == (versions[3], expected_lists(models[3], [7])["user-7"])

    assert pub.rollback(redis_client) == (versions[3], versions[2])
    assert read_list(store, "user-7") == (versions[2], expected_lists(models[2], [7])["user-7"])
    assert pub.rollback(redis_client) == (versions[2], versions[1])
    with pytest.raises(ConfigError, match="no complete version older than 2026-11-21.2"):
        pub.rollback(redis_client)
    with pytest.raises(ConfigError, match="'2026-11-21.1' is not a complete version"):
        pub.rollback(redis_client, to=versions[0])
    assert pub.rollback(redis_client, to=versions[3]) == (versions[1], versions[3])
    assert read_list(store, "user-7")[0] == versions[3]

    summary = pub.publish(models[0], redis_client, SMALL, run_date=DAY, progress=False)
    assert summary["removed_versions"] == [versions[1]]
    assert summary["previous_version"] == versions[3]
    assert redis_client.get(LAYOUT.lock) is None  # released


def test_lists_are_implicits_top_n_without_what_users_have(redis_client):
    model = tm.bundle(seed=5, n_users=300, full_users=2)
    summary = pub.publish(model, redis_client, settings(top_n=10, batch_size=64),
                          run_date=DAY, progress=False)
    assert summary["users_written"] == 298 and summary["users_without_recommendations"] == 2
    store = RecommendationStore(redis_client, LAYOUT)
    for u in range(2, 40):  # implicit's own single-user recommend is the reference
        ids, scores = model.model.recommend(u, model.user_items[u], N=10,
                                            filter_already_liked_items=True)
        version, record, _ = store.lookup(model.user_ids[u])
        assert [p for p, _ in record] == ids.tolist()
        np.testing.assert_allclose([s for _, s in record], scores, rtol=1e-5)
        assert not set(ids.tolist()) & set(model.user_items[u].indices.tolist())
    assert store.lookup("user-0")[1] is None  # has every item: served the fallback

    pub.publish(model, redis_client, settings(top_n=10, batch_size=64,
                                                  filter_already_liked=False),
                run_date=DAY, progress=False)
    store = RecommendationStore(redis_client, LAYOUT)
    again = [set(p for p, _ in store.lookup(model.user_ids[u])[1]) for u in range(300)]
    assert any(rec & set(model.user_items[u].indices.tolist()) for u, rec in enumerate(again))


def test_batch_lists_equal_implicits_own_filter_in_every_overfetch_tier():
    """Users are scored in tiers by how many items they have (OVERFETCH_TIERS), each asking
    implicit for top_n + the tier's cap unfiltered; heavier users take implicit's own filter. For
    users in every tier, at each tier's edges, and users with every item but a few, the lists are
    those of implicit's batch recommend with its own filter."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from dailyrec.model import recommender as R

    rng = np.random.default_rng(21)
    n_items, top_n = 400, 10
    edges = [c + d for c in R.OVERFETCH_TIERS for d in (-1, 0, 1)]
    counts = np.array(edges + [0, 1, 300, n_items - 3, n_items - top_n]
                      + rng.integers(0, 260, 200).tolist())
    with threadpool_limits(1, "blas"):  # implicit warns about a threaded BLAS otherwise
        model = AlternatingLeastSquares(factors=6, random_state=3)
    model.user_factors = rng.standard_normal((len(counts), 6)).astype(np.float32)
    model.item_factors = rng.standard_normal((n_items, 6)).astype(np.float32)
    # What users have is their best-scored items (every one must be skipped: the overfetch is
    # used to the last item), or for every other user, items drawn at random.
    best = np.argsort(-(model.user_factors @ model.item_factors.T), axis=1, kind="stable")
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = np.concatenate([best[u, :c] if u % 2 else rng.choice(n_items, c, replace=False)
                           for u, c in enumerate(counts)])  # a loop in the test's data only
    liked = sp.csr_matrix((rng.random(len(rows)).astype(np.float32) + 1, (rows, cols)),
                          shape=(len(counts), n_items))
    assert set(np.searchsorted(R.OVERFETCH_TIERS, counts)) == set(range(len(R.OVERFETCH_TIERS) + 1))

    users = np.arange(len(counts))
    ids, scores = R.ALSRecommender(model, liked).recommend(users, None, top_n)
    want_ids, want_scores = model.recommend(users, liked, N=top_n,
                                            filter_already_liked_items=True)
    found = want_scores > np.finfo(np.float32).min  # implicit pads with what it filtered
    assert (ids == np.where(found, want_ids, -1)).all()
    np.testing.assert_array_equal(scores, np.where(found, want_scores, 0))


def test_fallback_is_the_most_popular_items(redis_client):
    model = tm.bundle(seed=3, n_items=30)
    pub.publish(model, redis_client, settings(top_n=40, batch_size=100), run_date=DAY,
                progress=False)
    version = RecommendationStore(redis_client, LAYOUT).version(served(redis_client))
    users_per_item = np.bincount(model.user_items.indices, minlength=30)
    order = [int(i) for i in np.argsort(-users_per_item, kind="stable") if users_per_item[i] > 0]
    assert [p for p, _ in version.fallback] == order  # top_n 40 > 30 items: every item, once
    assert version.fallback[0][1] == pytest.approx(users_per_item.max() / 400)
    assert version.top_n == 40


@pytest.mark.parametrize("section, message", [
    ({"top_n": 0}, "publish.top_n must be an integer in 1..1000, got 0"),
    ({"top_n": "20"}, "publish.top_n must be an integer"),
    ({"filter_already_liked": "yes"}, "publish.filter_already_liked must be true or false"),
    ({"batch_size": 0}, "publish.batch_size must be an integer"),
    ({"keep_versions": 0}, "publish.keep_versions must be an integer in 1..100"),
    ({"batch_size": 10_000_000, "top_n": 1000}, "over 1 GiB; lower publish.batch_size"),
])
def test_bad_settings_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        publish_settings.publish(of(project_params(**{f"publish.{k}": v
                                                      for k, v in section.items()})))


def test_settings_section_is_required():
    raw = project_params()
    del raw["publish"]
    with pytest.raises(ConfigError, match="section 'publish' is missing"):
        publish_settings.publish(of(raw))


def _mlflow(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("dailyrec-als")
    for i in (1, 2):
        client.create_model_version("dailyrec-als", source=str(tmp_path / f"model{i}"))
    return uri, client


def alias_version(mlflow_client) -> str:
    return str(mlflow_client.get_model_version_by_alias("dailyrec-als", "published").version)


def test_command_line_gate_force_metrics_rollback_and_mlflow_alias(redis_server, redis_client,
                                                                    tmp_path, monkeypatch, capsys):
    """The command line in this process (MLflow's import costs seconds per subprocess)."""
    uri, mlflow_client = _mlflow(tmp_path)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    def cli(cwd, *args):
        monkeypatch.chdir(cwd)
        code = stage.main(["--no-progress", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    first = tm.workdir(tmp_path / "first", tm.bundle(seed=1),
                       gate={"passed": False, "reason": "ndcg_at_20 0.01 < 0.05"},
                       mlflow_run={"run_id": "r1", "experiment": "dailyrec",
                                   "model_name": "dailyrec-als", "model_version": 1})
    code, _, err = cli(first)
    assert code == 3
    assert "quality gate failed" in err and "ndcg_at_20 0.01 < 0.05" in err
    assert not (first / "metrics/publish.json").exists()
    # A brand-new deployment: the most-popular list is served, as a version of its own.
    popular = served(redis_client)
    assert popular is not None and f"most-popular list is now served as version {popular}" in err
    meta = pub.version_meta(redis_client, LAYOUT, popular)
    assert meta["kind"] == "popular" and meta["users"] == "0" and "0.01 < 0.05" in meta["reason"]
    store = RecommendationStore(redis_client, LAYOUT)
    version, record, _ = store.lookup("user-3")
    top, _ = PopularRecommender(tm.bundle(seed=1).user_items).top_list(10)
    assert record is None and version.kind == "popular" and store.fold_in(version) is None
    assert [p for p, _ in version.fallback] == top[0].tolist()

    (first / "metrics/gate.json").unlink()
    code, _, err = cli(first)
    assert code == 3 and "gate.json is missing or unreadable" in err
    assert served(redis_client) == popular and "most-popular" not in err  # only once

    (first / "metrics/gate.json").write_text(json.dumps(tm.gate_file(False, "too low")))
    code, _, err = cli(first, "--force")
    assert code == 0, err
    assert "WARNING: --force: publishing although the quality gate failed" in err
    report = json.loads((first / "metrics/publish.json").read_text())
    assert report["gate"] == {"passed": False, "forced": True, "reason": "too low"}
    assert report["users_written"] == 400 and report["version"] == served(redis_client)
    assert report["model_run"]["run_id"] == "r1"
    assert report["mlflow_alias"] == {"model_name": "dailyrec-als", "alias": "published",
                                      "model_version": "1"}
    assert alias_version(mlflow_client) == "1"

    second = tm.workdir(tmp_path / "second", tm.bundle(seed=2), gate={"passed": True},
                        mlflow_run={"run_id": "r2", "model_name": "dailyrec-als",
                                    "model_version": 2})
    code, _, err = cli(second)
    assert code == 0, err
    report2 = json.loads((second / "metrics/publish.json").read_text())
    assert report2["previous_version"] == report["version"]
    assert report2["gate"]["passed"] is True and report2["gate"]["forced"] is False
    assert alias_version(mlflow_client) == "2"

    code, out, _ = cli(second, "versions")
    assert code == 0
    assert f"* {report2['version']}" in out and f"  {report['version']}" in out
    assert f"  {popular}" in out and report["previous_version"] == popular

    code, out, err = cli(second, "rollback")
    assert code == 0, err
    assert f"now serving {report['version']} (was {report2['version']})" in out
    assert served(redis_client) == report["version"]
    assert alias_version(mlflow_client) == "1"


def test_a_gate_that_judged_another_model_does_not_let_it_through(redis_server, redis_client,
                                                                  tmp_path):
    """Run by hand after a retrain, publish must not ship the new models/ on an older gate's
    "passed": the gate names the model it judged, by hash."""
    from dailyrec.model import artifacts

    work = tm.workdir(tmp_path, tm.bundle(n_users=50, seed=1), gate={"passed": True})
    artifacts.save(tm.bundle(n_users=50, seed=2), work / "models")  # retrained, not evaluated
    refused = tm.run_publish(work, redis_server.url)
    assert refused.returncode == 3 and "judged another model" in refused.stderr
    assert pub.version_meta(redis_client, LAYOUT, served(redis_client))["kind"] == "popular"


def test_command_line_errors_are_one_clear_line(redis_server, tmp_path):
    work = tm.workdir(tmp_path, tm.bundle(n_users=50), gate={"passed": True},
                      publish={"top_n": 0})
    bad = tm.run_publish(work, redis_server.url)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("publish: error: params.yaml: publish.top_n must be an integer "
                                  "in 1..1000, got 0")

    tm.workdir(tmp_path, tm.bundle(n_users=50), gate={"passed": True})
    down = tm.run_publish(work, f"redis://:pw@127.0.0.1:{servers.free_port()}/0")
    assert down.returncode == 69  # a service fault, worth retrying
    assert down.stderr.startswith("publish: error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "pw" not in down.stderr

    for name in ("als.npz", "ids.npz"):
        (work / "models" / name).unlink()
    gone = tm.run_publish(work, redis_server.url)
    assert gone.returncode == 2 and "model files missing: ['als.npz', 'ids.npz']" in gone.stderr


def test_reader_sees_only_whole_versions_when_publish_is_killed_midway(redis_server,
                                                                      redis_client, tmp_path):
    n_users = 20_000
    old_model = tm.bundle(n_users=n_users, n_items=200, seed=1, per_user=3)
    new_model = tm.bundle(n_users=n_users, n_items=200, seed=2, per_user=3)
    sample = list(range(0, n_users, 97))
    v_old = pub.publish(old_model, redis_client, SMALL, run_date=DAY, progress=False)["version"]
    expected = {v_old: expected_lists(old_model, sample)}

    observations: list[tuple[str, str, tuple]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader():
        store = RecommendationStore(redis.Redis.from_url(redis_server.url), LAYOUT)
        i = 0
        try:
            while not stop.is_set():
                user = old_model.user_ids[sample[i % len(sample)]]
                observations.append((*read_list(store, user), user))
                i += 1
        except BaseException as err:  # surfaced by the main thread
            failures.append(err)

    def reads_continue(count: int = 50) -> None:
        target, deadline = len(observations) + count, time.monotonic() + 60
        while len(observations) < target:
            assert not failures and time.monotonic() < deadline, failures
            time.sleep(0.005)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    work = tm.workdir(tmp_path, new_model, gate={"passed": True}, publish={"batch_size": 100})
    proc = subprocess.Popen(tm.publish_cmd(), cwd=work, env=tm.publish_env(redis_server.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # the killed publish registers its version first...
            started = [v.decode() for v in redis_client.zrange(LAYOUT.versions, 0, -1)
                       if v.decode() != v_old]
            if started:
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        killed = started[0]
        while True:  # ...then writes users: freeze every writer the moment some are in Redis
            pipe = redis_client.pipeline(transaction=True)
            pipe.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
            pipe.hlen(LAYOUT.bucket(killed, 0))
            if pipe.execute()[1] > 0:
                break
            redis_client.execute_command("CLIENT", "UNPAUSE")
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.001)

        n_buckets = int(redis_client.hget(LAYOUT.meta(killed), "buckets"))
        stored = sum(redis_client.hlen(LAYOUT.bucket(killed, b)) for b in range(n_buckets))
        assert 0 < stored < n_users  # truly midway
        assert redis_client.hget(LAYOUT.meta(killed), "status") == b"writing"
        assert served(redis_client) == v_old
        reads_continue()  # the reader runs while the half-written version sits in Redis
        proc.kill()
        proc.wait()
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
        if proc.poll() is None:
            proc.kill()
    reads_continue()
    assert served(redis_client) == v_old

    # the next publish takes over the dead publisher's lock, removes its leftovers, and switches
    summary = pub.publish(new_model, redis_client, SMALL, run_date=DAY, progress=False)
    assert killed in summary["removed_versions"]
    assert list(redis_client.scan_iter(match=LAYOUT.version_pattern(killed))) == []
    v_new = summary["version"]
    expected[v_new] = expected_lists(new_model, sample)
    assert expected[v_new] != expected[v_old]
    deadline = time.monotonic() + 60
    while not any(v == v_new for v, _, _ in observations[-10:]):
        assert time.monotonic() < deadline and not failures, failures
        time.sleep(0.005)
    reads_continue()
    stop.set()
    thread.join()

    assert not failures
    assert {v for v, _, _ in observations} == {v_old, v_new}
    wrong = [(v, u) for v, items, u in observations if items != expected[v][u]]
    assert wrong == []


def test_a_second_publish_is_refused_while_one_runs(redis_client):
    model = tm.bundle(n_users=50)
    with pub.PublishLock(redis_client, LAYOUT.lock, "publish"):  # held by this (live) process
        with pytest.raises(Busy, match="another publish or rollback is running"):
            pub.publish(model, redis_client, SMALL, run_date=DAY, progress=False)
        with pytest.raises(Busy):
            pub.rollback(redis_client)
    redis_client.set(LAYOUT.lock, json.dumps({"host": "elsewhere", "pid": 1, "token": "t"}))
    with pytest.raises(Busy, match="held by .*elsewhere"):  # another host: wait for the TTL
        pub.publish(model, redis_client, SMALL, run_date=DAY, progress=False)
    redis_client.delete(LAYOUT.lock)
    assert pub.publish(model, redis_client, SMALL, run_date=DAY, progress=False)["users_written"]
    assert served(redis_client) is not None


def test_histories_are_each_users_most_confident_items_ties_to_the_lower_position():
    """The explanations' histories: per user the k most confident items, most confident first,
    ties to the lower item position, -1 / 0 padded; against a plain per-user reference, on a
    matrix with many ties whose rows' positions are not in order."""
    import scipy.sparse as sp

    rng = np.random.default_rng(6)
    dense = np.where(rng.random((300, 80)) < 0.15, rng.integers(1, 5, (300, 80)), 0)
    coo = sp.coo_matrix(dense.astype(np.float32))
    shuffle = np.lexsort((rng.random(coo.nnz), coo.row))  # rows' positions out of order
    matrix = sp.csr_matrix((coo.data[shuffle], coo.col[shuffle], np.r_[0, np.cumsum(
        np.bincount(coo.row, minlength=300))]), shape=dense.shape)
    matrix.has_sorted_indices = False
    rows = rng.permutation(300)[:200]
    positions, confidence = lists.histories(matrix, rows, 6)
    for r, user in enumerate(rows):  # a loop in the test's reference only
        items = sorted(np.flatnonzero(dense[user]), key=lambda i: (-dense[user, i], i))[:6]
        assert positions[r].tolist() == items + [-1] * (6 - len(items))
        assert confidence[r].tolist() == [float(dense[user, i]) for i in items] + \
            [0.0] * (6 - len(items))



def test_a_past_days_model_never_replaces_newer_served_lists(redis_client):
    """Rebuilding a past day (run.date before the served version's) publishes nothing unless
    forced: users keep the newer lists."""
    model = tm.bundle(n_users=50)
    newer = pub.publish(model, redis_client, SMALL, run_date=DAY, progress=False)["version"]
    older = DAY - dt.timedelta(days=3)
    with pytest.raises(NotPublished, match=f"not replacing the served version {newer} "
                                           f"\\(run.date {DAY}\\) with a model of the older "
                                           f"run.date {older}"):
        pub.publish(model, redis_client, SMALL, run_date=older, progress=False)
    assert served(redis_client) == newer
    assert pub.publish(model, redis_client, SMALL, run_date=DAY, progress=False)  # same day: ok
    forced = pub.publish(model, redis_client, SMALL, run_date=older, progress=False,
                         replace_newer=True)["version"]
    assert served(redis_client) == forced and forced.startswith(str(older))


def test_redis_emptied_mid_publish_is_unavailable_not_a_bug(redis_server, redis_client,
                                                             tmp_path):
    """Redis loses what publish wrote (FLUSHALL, a restart without persistence): exit 69, the
    version is not served, and the next run publishes (the fault table says so)."""
    model = tm.bundle(n_users=20_000, n_items=200, seed=2, per_user=3)
    work = tm.workdir(tmp_path, model, gate={"passed": True}, publish={"batch_size": 100})
    proc = subprocess.Popen(tm.publish_cmd(), cwd=work, env=tm.publish_env(redis_server.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Empty the database (one atomic script) the moment the first users are in it.
    flush_once_written = ("local v = redis.call('ZRANGE', KEYS[1], 0, 0)[1] "
                          "if v and redis.call('HLEN', (KEYS[2]:gsub('VERSION', v))) > 0 then "
                          "redis.call('FLUSHDB') return 1 end return 0")
    deadline = time.monotonic() + 120
    while not redis_client.eval(flush_once_written, 2, LAYOUT.versions,
                                LAYOUT.bucket("VERSION", 0)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 69, out + err
    assert "Redis" in err and "Traceback" not in err, err
    assert served(redis_client) is None
    again = tm.run_publish(work, redis_server.url)
    assert again.returncode == 0, again.stderr
    assert served(redis_client) is not None
