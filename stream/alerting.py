"""The live side of alerting: the rules fed from the store, evidence, and the sinks.

Every worker runs an :class:`Alerter` after each committed batch. It reads the
items stored since its last step from the store (all workers' items, not just
its own partitions, so per-entity counts are whole), feeds them to the
:class:`~stream.alerts.AlertEngine`, and for each new or updated alert adds the
most similar past episodes from the FAISS index, stores it, and, if this worker
stored that revision first, publishes it on ``moodwire.alerts`` and hands it
to the :class:`~stream.notify.Notifier` (Slack, Teams, PagerDuty, e-mail, the
webhook: one message per episode, then updates). Alert ids are deterministic,
so several workers agree, and a restarted worker rebuilds its windows from the store without raising an alert
twice. Alerting is advisory: a failure is logged and never fails a batch.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import numpy as np
import structlog
from prometheus_client import Counter

from state.store import Store
from stream.alerts import Alert, AlertConfig, AlertEngine, AlertItem
from stream.notify import Notifier

log = structlog.get_logger(__name__)

ALERTS = Counter("moodwire_alerts_total", "Alerts raised or updated", ["kind", "severity"])

# (vectors, k) -> for each vector, [(item id, similarity)]
Search = Callable[[np.ndarray, int], list[list[tuple[str, float]]]]


def similar_episodes(
    alert: Alert,
    store: Store,
    search: Search | None,
    *,
    k: int = 50,
    episodes: int = 5,
) -> list[dict[str, Any]]:
    """What happened the last times headlines like these came in.

    The centroid of the alert's most telling items is searched in the index;
    neighbours from before the episode are grouped by day into past episodes,
    the closest first, each with its size, negative share and examples.
    """
    top = [x["id"] for x in alert.evidence.get("top", [])]
    if search is None or not top:
        return []
    _, vectors = store.embeddings_by_ids(top)
    if len(vectors) == 0:
        return []
    centroid = vectors.mean(axis=0, keepdims=True)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    hits = search(centroid.astype(np.float32), k)[0]
    own = set(alert.evidence.get("item_ids", []))
    rows = store.items_by_ids([i for i, _ in hits if i not in own])
    before = alert.first_window_start
    days: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for item_id, sim in hits:
        row = rows.get(item_id)
        if row is None or row["ts"].timestamp() >= before:
            continue
        days[row["ts"].date().isoformat()].append((sim, row))
    out = []
    for day, found in days.items():
        found.sort(key=lambda x: -x[0])
        out.append(
            {
                "day": day,
                "n": len(found),
                "similarity": round(float(np.mean([s for s, _ in found])), 4),
                "negative_share": round(
                    sum(1 for _, r in found if r["label"] == "negative") / len(found), 4
                ),
                "examples": [
                    {
                        "id": r["id"],
                        "text": r["text"],
                        "label": r["label"],
                        "similarity": round(s, 4),
                    }
                    for s, r in found[:3]
                ],
            }
        )
    out.sort(key=lambda e: -(e["similarity"] * e["n"] ** 0.5))
    return out[:episodes]


class Alerter:
    """The alert rules, fed from the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        config: AlertConfig,
        *,
        search: Search | None = None,
        publish: Callable[[str, bytes], None] | None = None,
        notifier: Notifier | None = None,
        source_topic: str | None = None,
        partitions: Iterable[int] = (),
    ) -> None:
        self.store = store
        self.config = config
        self.engine = AlertEngine(config)
        # Live, the watermark comes from the workers' partition marks in the store (see
        # :meth:`watermark`); a replay (no source topic) is one ordered partition.
        self.source_topic = source_topic
        self.partitions = set(partitions)
        self._started = time.monotonic()
        self.search = search
        self.publish = publish
        self.notifier = notifier
        self.raised = 0
        # Rebuild the windows an alert could still involve: the baseline, the cool-down
        # of an open episode, and the windows not judged yet.
        latest = store.latest_item_ts()
        span = config.window_s * (config.baseline_windows + 2) + config.cooldown_s
        cutoff = latest - timedelta(seconds=span) if latest is not None else None
        self.seq = store.first_seq_since(cutoff) if cutoff is not None else 0
        self.drift_seq = 0
        if cutoff is not None:
            past = [e for e in store.drift_events_after(0) if e["ts"] < cutoff]
            self.drift_seq = max((int(e["seq"]) for e in past), default=0)

    def step(self, *, final: bool = False, limit: int = 5000) -> list[dict[str, Any]]:
        """Catch up with the store, judge closed windows; the alerts this call announced.

        ``final`` judges every window there is (the end of a replay).
        """
        if not self.config.enabled:
            return []
        while True:
            rows = self.store.items_for_alerts(self.seq, limit=limit)
            if not rows:
                break
            self.engine.add(AlertItem.from_row(r) for r in rows)
            self.seq = int(rows[-1]["seq"])
            if len(rows) < limit:
                break
        mark = None
        if final:
            alerts = self.engine.flush()
        elif self.source_topic is not None:
            mark = self.watermark()
            alerts = self.engine.advance(mark) if mark is not None else []
        else:
            alerts = self.engine.advance()
            mark = self.engine.watermark()
        for event in self.store.drift_events_after(self.drift_seq):
            self.drift_seq = int(event["seq"])
            drift = self.engine.drift_alert(event)
            if drift is not None:
                alerts.append(drift)
        announced = []
        for alert in alerts:
            if alert.kind != "drift":
                alert.similar = similar_episodes(alert, self.store, self.search)
            data = alert.as_dict()
            if self.store.upsert_alert(data):
                announced.append(data)
                self._announce(data)
        if self.notifier is not None:
            self.notifier.tick(mark)  # episodes the watermark has closed
        return announced

    def watermark(self) -> float | None:
        """Event time up to which every source partition's items are in the store.

        Kafka orders items within a partition only, and a worker catching up may read
        one partition far ahead of another. So: the oldest newest-time among partitions
        that still have a backlog; when none has, the newest time of all (everything is
        in). A partition never reported holds it back for ``idle_partition_s`` (then it
        is taken to be empty or unowned).
        """
        marks = {m["partition"]: m for m in self.store.partition_mark_rows(self.source_topic)}
        waited = time.monotonic() - self._started
        lagging, newest = [], []
        for p in self.partitions | set(marks):
            m = marks.get(p)
            if m is None:
                if waited < self.config.idle_partition_s:
                    return None
                continue
            ts = m["max_ts"].timestamp() if m["max_ts"] is not None else None
            if ts is not None:
                newest.append(ts)
            if not m["caught_up"]:
                if ts is None:
                    return None  # a backlog, and nothing of it stored yet
                lagging.append(ts)
        if lagging:
            return min(lagging) - self.config.lateness_s
        return max(newest) - self.config.lateness_s if newest else None

    def _announce(self, data: dict[str, Any]) -> None:
        self.raised += 1
        ALERTS.labels(data["kind"], data["severity"]).inc()
        log.warning(
            "alert",
            id=data["id"],
            kind=data["kind"],
            entity=data["entity"],
            topic=data["topic"],
            severity=data["severity"],
            statistic=data["statistic"],
            baseline=data["baseline"],
            n=data["n"],
            revision=data["revision"],
        )
        if self.publish is not None:
            try:
                self.publish(data["id"], json.dumps(data, default=str).encode("utf-8"))
            except Exception:
                log.exception("alert_publish_failed", id=data["id"])
        if self.notifier is not None:  # it skips an episode an operator muted
            self.notifier.notify(data)
