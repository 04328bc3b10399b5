"""Every visitor gets a personal list (most visitors are new or anonymous), against a real Redis:
similar items, fold-in of unknown visitors from ?recent=, explanations, and the most-popular version
of a new deployment. Reference answers come from implicit itself (similar_items, recalculate_user,
explain)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from dailyrec.model.confidence import one_event_confidence
from dailyrec.model.recommender import PopularRecommender
from dailyrec.model.settings import train_from_dict
from dailyrec.publish.settings import PublishSettings
from dailyrec.publish import writer as pub
from serving.app import create_app
from tests import tiny_models as tm

DAY = dt.date(2026, 11, 21)
SETTINGS = PublishSettings(top_n=10, filter_already_liked=True, batch_size=128, keep_versions=3,
                           similar_items=True, explain_items=6)


@pytest.fixture(scope="module")
def model():
    return tm.bundle(n_users=300, n_items=80, seed=5, per_user=5)


@pytest.fixture
def client(redis_server, redis_client, model):
    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)
    return create_app({"REDIS_URL": redis_server.url}).test_client()


def ids(body) -> list[str]:
    return [i["id"] for i in body["items"]]


def test_similar_items_are_implicits_without_the_item_itself(client, model):
    item = 7
    want, scores = model.model.similar_items(item, N=11)
    keep = want != item
    body = client.get(f"/items/{model.item_ids[item]}/similar?n=10").get_json()
    assert ids(body) == [model.item_ids[i] for i in want[keep][:10]]
    assert np.allclose([i["score"] for i in body["items"]], scores[keep][:10], atol=1e-5)
    assert ids(client.get(f"/items/{model.item_ids[item]}/similar?n=3").get_json()) == ids(body)[:3]
    # every item has its list
    for j in range(0, 80, 13):
        assert client.get(f"/items/{model.item_ids[j]}/similar").status_code == 200

    missing = client.get("/items/no-such-item/similar")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    assert "does not know this item" in missing.get_json()["message"]
    assert client.get("/items/item-1/similar?n=0").status_code == 400


def test_an_unknown_visitor_gets_a_list_folded_in_from_recent_items(client, model):
    recent = [3, 17, 42]
    regularization = float(model.model.regularization)
    confidence = one_event_confidence(train_from_dict(model.meta["params"]).confidence)
    # implicit's own least-squares step for a user whose row is those items at that confidence
    import scipy.sparse as sp

    row = sp.csr_matrix((np.full(3, confidence, dtype=np.float32), (np.zeros(3), recent)),
                        shape=(1, 80))
    factors = model.model.recalculate_user(0, row)
    scores = model.model.item_factors @ factors
    scores[recent] = -np.inf
    want = [model.item_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert regularization > 0

    query = ",".join(model.item_ids[i] for i in recent) + ",never-sold,item-3"
    answer = client.get(f"/recommendations/new-visitor?recent={query}")
    body = answer.get_json()
    assert answer.status_code == 200 and body["source"] == "session"
    assert ids(body) == want
    assert body["recent"] == {"given": 4, "known": 3, "unknown": 1}
    assert not set(ids(body)) & {model.item_ids[i] for i in recent}

    nothing_known = client.get("/recommendations/new-visitor?recent=never-sold,nor-this").get_json()
    top, _ = PopularRecommender(model.user_items).top_list(10)
    assert nothing_known["source"] == "fallback"
    assert ids(nothing_known) == [model.item_ids[p] for p in top[0]]
    assert nothing_known["recent"] == {"given": 2, "known": 0, "unknown": 2}

    # The most popular item in recent: left out of the fallback list too.
    first = model.item_ids[top[0][0]]
    assert first not in ids(client.get(f"/recommendations/x?recent={first},zz").get_json())


def test_a_known_user_keeps_the_nightly_list_without_what_they_just_saw(client, model):
    full = client.get("/recommendations/user-4").get_json()
    seen = full["items"][0]["id"] + "," + full["items"][2]["id"]
    body = client.get(f"/recommendations/user-4?recent={seen}").get_json()
    assert body["source"] == "personalized"
    assert ids(body) == [i for i in ids(full) if i not in seen.split(",")]


def test_explanations_are_implicits_explain(client, model):
    user = 9  # 5 items or fewer: the stored history is the whole row, so explain is exact
    assert model.user_items[user].nnz <= SETTINGS.explain_items
    body = client.get("/recommendations/user-9?n=4&explain=1").get_json()
    assert body["source"] == "personalized"
    for item in body["items"]:
        position = int(np.flatnonzero(model.item_ids == item["id"])[0])
        _, contributions, _ = model.model.explain(user, model.user_items, itemid=position)
        want = [(model.item_ids[j], c) for j, c in sorted(contributions, key=lambda t: -t[1])
                if c > 0][:3]
        assert [b["id"] for b in item["because"]] == [i for i, _ in want]
        assert np.allclose([b["weight"] for b in item["because"]], [c for _, c in want],
                           atol=1e-5)
    assert any(item["because"] for item in body["items"])

    recent = ",".join(model.item_ids[[3, 17]])
    session = client.get(f"/recommendations/nobody?recent={recent}&explain=1").get_json()
    assert session["source"] == "session"
    assert all({b["id"] for b in i["because"]} <= set(recent.split(",")) for i in session["items"])
    assert all(i["because"] for i in session["items"])

    fallback = client.get("/recommendations/nobody?explain=1").get_json()
    assert all(i["because"] == [] for i in fallback["items"])
    assert "because" not in client.get("/recommendations/user-9").get_json()["items"][0]


@pytest.mark.parametrize("query, message", [
    ("recent=" + ",".join(f"i{k}" for k in range(51)), "recent lists 51 items; at most 50"),
    ("recent=item-1,bad%20id", "recent item 'bad id' may contain only"),
    ("explain=maybe", "explain must be 1 or 0, got 'maybe'"),
])
def test_bad_recent_or_explain_is_a_400(client, query, message):
    answer = client.get(f"/recommendations/u1?{query}")
    assert answer.status_code == 400 and message in answer.get_json()["message"]


def test_metrics_count_sessions_and_unknown_recent_items(client, model):
    client.get(f"/recommendations/v1?recent={model.item_ids[1]},nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'dailyrec_recommendations_total{source="session"} 1.0' in text
    assert 'dailyrec_recent_items_total{known="unknown"} 1.0' in text


def test_a_new_deployment_serves_the_popular_version_with_200(redis_server, redis_client, model):
    version = pub.publish_popular(model, redis_client, SETTINGS, run_date=DAY, reason="no gate")
    assert pub.publish_popular(model, redis_client, SETTINGS, run_date=DAY) is None  # once
    client = create_app({"REDIS_URL": redis_server.url}).test_client()
    body = client.get("/recommendations/anyone?recent=item-1").get_json()
    assert body["source"] == "fallback" and body["model_version"] == version
    ready = client.get("/readyz").get_json()
    assert (ready["status"], ready["model_version"], ready["kind"]) == ("ready", version, "popular")
    similar = client.get("/items/item-1/similar")
    assert similar.status_code == 404 and "most-popular list only" in similar.get_json()["message"]

    pub.publish(model, redis_client, SETTINGS, run_date=DAY, progress=False)  # a model passes
    assert client.get("/recommendations/user-1").get_json()["source"] == "personalized"
