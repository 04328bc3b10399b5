"""Request ids and Prometheus metrics for the API.

    dailyrec_http_requests_total{endpoint,method,status}    requests answered (endpoint: the
                                                            route's template or <unmatched>;
                                                            method: GET HEAD POST PUT DELETE
                                                            PATCH OPTIONS or other; status: a
                                                            known HTTP status or other)
    dailyrec_http_request_duration_seconds{endpoint}        latency histogram (0.5 ms .. 2.5 s)
    dailyrec_recommendations_total{source}                  lists served: personalized |
                                                            session | fallback
    dailyrec_recent_items_total{known}                      ?recent= items: known | unknown
    dailyrec_fallback_share                                 fallback / all lists served, so far
    dailyrec_errors_total{kind}                             redis_unavailable, not_published,
                                                            bad_request, not_found, internal, ...
    dailyrec_served_version_age_seconds                     age of the served lists' data (since
                                                            its run.date 00:00 UTC), at scrape time
    dailyrec_served_version_max_age_seconds                 serving.max_age_hours, in seconds
    dailyrec_served_version_stale                           1 past it, else 0

Under the API server (several worker processes) the values live in PROMETHEUS_MULTIPROC_DIR,
which serving/server.py sets up, and /metrics adds up every worker's.
"""

from __future__ import annotations

import os
import re
import time
import uuid

from flask import Flask, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from werkzeug.http import HTTP_STATUS_CODES

disable_created_metrics()  # the *_created series only double the scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Label values are never taken from the request as they are: a client can send any method token
# and any path, and each new value would be a new series in every worker's metrics file. The
# endpoint is the matched route's template; methods and statuses come from fixed sets.
METHOD_LABELS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
STATUS_LABELS = {code: str(code) for code in HTTP_STATUS_CODES}
UNMATCHED = "<unmatched>"


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, "other")


def status_label(code: int) -> str:
    return STATUS_LABELS.get(code, "other")


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dailyrec_http_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("dailyrec_http_request_duration_seconds",
                                 "Time from request to response", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.recommendations = Counter("dailyrec_recommendations",
                                       "Recommendation lists served, by source", ["source"],
                                       registry=self.registry)
        self.recent_items = Counter("dailyrec_recent_items",
                                    "Items given in ?recent=, known to the served version or not",
                                    ["known"], registry=self.registry)
        self.errors = Counter("dailyrec_errors", "Requests that ended in an error, by kind",
                              ["kind"], registry=self.registry)
        # Each label set's child, looked up once: labels() takes a lock and normalises the values
        # on every call. Bounded (the label values are), and capped all the same.
        self._children: dict = {}

    def init_app(self, app: Flask) -> None:
        app.extensions["dailyrec.telemetry"] = self
        app.before_request(self._start)
        app.after_request(self._finish)

    @staticmethod
    def _start() -> None:
        # The objects behind the proxies, once each: every proxy access looks up the context.
        ctx = g._get_current_object()
        ctx.started = time.perf_counter()
        ctx.request_id = request_id_from(request._get_current_object().headers.get("X-Request-ID",
                                                                                   ""))

    def _child(self, metric, *labels):
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < 1000:
                self._children[key] = child
        return child

    def count_list(self, source: str) -> None:
        """One recommendation list served from `source`."""
        self._child(self.recommendations, source).inc()

    def answered(self, endpoint: str, method: str, status: str, seconds: float | None) -> None:
        """One request answered: counted by endpoint (a route's template), method and status
        (method_label, status_label); its time (when known) in the latency histogram."""
        self._child(self.requests, endpoint, method, status).inc()
        if seconds is not None:
            self._child(self.latency, endpoint).observe(seconds)

    def _finish(self, response):
        req = request._get_current_object()
        rule = req.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED
        ctx = g._get_current_object()
        started = ctx.get("started")
        self.answered(endpoint, method_label(req.method), status_label(response.status_code),
                      None if started is None else time.perf_counter() - started)
        rid = ctx.get("request_id")
        response.headers["X-Request-ID"] = rid if rid is not None else request_id()
        return response

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source)
        else:
            source = self.registry
        computed = CollectorRegistry()
        computed.register(_FallbackShare(source))
        store = current_app.extensions.get("dailyrec.publish")
        if store is not None:
            computed.register(_Freshness(store))
        return generate_latest(source) + generate_latest(computed), CONTENT_TYPE_LATEST


class _Freshness:
    """The served version's age, read from Redis at scrape time (no sample while Redis is down
    or nothing is published: dailyrec_errors_total and /readyz say so)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        from dailyrec.publish.reader import NotPublished, RedisUnavailable, freshness

        try:
            fresh = freshness(self.store.ready())
        except (NotPublished, RedisUnavailable):
            return
        if fresh.age_hours is not None:
            yield _gauge("dailyrec_served_version_age_seconds",
                         "Age of the served lists' data: seconds since its run.date 00:00 UTC",
                         fresh.age_hours * 3600)
        if fresh.max_age_hours is not None:
            yield _gauge("dailyrec_served_version_max_age_seconds",
                         "serving.max_age_hours of the served version, in seconds",
                         fresh.max_age_hours * 3600)
        yield _gauge("dailyrec_served_version_stale",
                     "1 when the served lists are older than serving.max_age_hours",
                     float(fresh.stale))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc)
    gauge.add_metric([], value)
    return gauge


class _FallbackShare:
    """dailyrec_fallback_share, computed at scrape time from the recommendations counter."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self):
        counts = {"fallback": 0.0, "personalized": 0.0, "session": 0.0}
        for family in self.source.collect():
            if family.name == "dailyrec_recommendations":
                for sample in family.samples:
                    if sample.name == "dailyrec_recommendations_total":
                        source = sample.labels.get("source")
                        counts[source] = counts.get(source, 0.0) + sample.value
        total = sum(counts.values())
        gauge = GaugeMetricFamily("dailyrec_fallback_share",
                                  "Share of recommendation lists served from the fallback")
        gauge.add_metric([], counts["fallback"] / total if total else 0.0)
        yield gauge


def request_id_from(given: str) -> str:
    """The caller's X-Request-ID when it is a sane one, else a new id."""
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def request_id() -> str:
    rid = g.get("request_id")
    if rid is None:
        rid = g.request_id = uuid.uuid4().hex
    return rid
