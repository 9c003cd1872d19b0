"""Alert rules in event time: surges, spikes and shifts per entity and per topic.

Items are bucketed into tumbling windows of their own timestamps (``window_s``
seconds, aligned to the epoch), so replaying a day gives the same alerts as
living it. A window is judged once the watermark has passed its end: by default
the newest timestamp seen less ``lateness_s`` (a replay, in order); live, the
caller passes one computed from every source partition (see
:meth:`stream.alerting.Alerter.watermark`). An item that arrives after its
window was judged reopens it while the window is remembered (the last
``baseline_windows``), and the window is judged again; an older one is counted
as late and left out. Each judged window is compared, per entity and per topic,
with the ``baseline_windows`` windows before it:

* ``negative_surge``: the share of negative items, as a one-sided binomial
  z-score against the key's trailing share (shrunk toward the stream's share
  when the key has little history);
* ``volume_spike``: the key's share of the window's items, as a z-score against
  its share of the trailing windows' items (a busier stream is not a spike);
* ``sentiment_shift``: the mean score (p_positive - p_negative), as a z-score
  of the window mean against the trailing items' mean and spread, both ways.

The rules that fire on one key in one window make one alert; its ``kind`` is
the most telling of them (negative surge, then shift, then volume). An alert
stays open while its key keeps firing, and for ``cooldown_s`` after: firings in
that time update it (same id, higher ``revision``) instead of raising a new
one. Ids are a hash of the key and the episode's first window, so a replay or
a second worker computes the same alerts.

Everything in an alert can be recomputed from what it names: the ids of the
items of the window (``evidence.item_ids``), and of the baseline windows
(``baseline_windows``, each with its bounds and ids).

>>> cfg = AlertConfig(window_s=60, baseline_windows=4, lateness_s=0)
>>> engine = AlertEngine(cfg)
>>> steady = [AlertItem(f"s{i}", float(i * 6), ("ACME",), None, "neutral", 0.0, "ok")
...           for i in range(50)]
>>> surge = [AlertItem(f"x{i}", 300.0 + i, ("ACME",), None, "negative", -0.9, "bad")
...          for i in range(30)]
>>> engine.add(steady + surge)
>>> [a.kind for a in engine.advance(400.0)]
['negative_surge']
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KINDS = ("negative_surge", "sentiment_shift", "volume_spike", "drift")
SCOPES = ("entity", "topic")


@dataclass(frozen=True)
class RuleConfig:
    """When one rule fires."""

    enabled: bool = True
    z: float = 4.0  # the statistic at which it fires
    critical_z: float = 6.0  # and at which the alert is critical
    min_count: int = 8  # items of the key in the window before it is judged
    min_delta: float = 0.0  # the least effect (share, items or score) worth an alert


@dataclass(frozen=True)
class SurgeRule(RuleConfig):
    """``negative_surge``: the share of negatives; ``min_delta`` is in share points."""

    min_delta: float = 0.2


@dataclass(frozen=True)
class VolumeRule(RuleConfig):
    """``volume_spike``: the key's share of the items; ``min_delta`` is in items above the usual.

    Small counts have a heavier right tail than the normal approximation, hence the
    higher threshold.
    """

    z: float = 5.5
    min_count: int = 10
    min_delta: float = 5.0


@dataclass(frozen=True)
class ShiftRule(RuleConfig):
    """``sentiment_shift``: the mean score, either way; ``min_delta`` is in score units."""

    z: float = 4.5
    min_delta: float = 0.3


@dataclass(frozen=True)
class AlertConfig:
    """Windows and rules (settings: ``MOODWIRE_ALERTS__WINDOW_S``, ``…__NEGATIVE_SURGE__Z``)."""

    enabled: bool = True
    window_s: int = 900
    baseline_windows: int = 16
    min_baseline_windows: int = 3  # windows of history the stream needs before any judgement
    lateness_s: int = 60
    idle_partition_s: float = 120.0  # a source partition silent this long stops the watermark
    cooldown_s: int = 3600  # an episode stays open this long after its last firing
    scopes: tuple[str, ...] = SCOPES
    prior_strength: float = 20.0  # pseudo-items of the stream's share in a key's baseline
    negative_surge: SurgeRule = SurgeRule()
    volume_spike: VolumeRule = VolumeRule()
    sentiment_shift: ShiftRule = ShiftRule()
    evidence_top: int = 10  # the most negative items shown in full
    max_ids: int = 2000  # item ids an alert names (windows beyond are truncated, and say so)

    def __post_init__(self) -> None:
        checks = [
            (self.window_s >= 1, "window_s must be at least 1"),
            (self.baseline_windows >= 1, "baseline_windows must be at least 1"),
            (
                1 <= self.min_baseline_windows <= self.baseline_windows,
                "min_baseline_windows must be in [1, baseline_windows]",
            ),
            (self.lateness_s >= 0 and self.cooldown_s >= 0, "lateness_s and cooldown_s >= 0"),
            (set(self.scopes) <= set(SCOPES), f"scopes must be among {SCOPES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"AlertConfig: {message}")


@dataclass(frozen=True)
class AlertItem:
    """What the rules need of a scored item."""

    id: str
    ts: float  # event time, epoch seconds
    entities: tuple[str, ...]
    topic: str | None
    label: str
    score: float  # p_positive - p_negative
    text: str = ""
    p_negative: float | None = None
    model_version: str | None = None  # which version scored it (labels and scores are its)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AlertItem:
        """From a store row or a scored item as a dict."""
        ts = row["ts"]
        if isinstance(ts, datetime):
            ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        probs = row.get("probs") or {
            "negative": row["p_negative"],
            "positive": row["p_positive"],
        }
        return cls(
            id=str(row["id"]),
            ts=float(ts),
            entities=tuple(row.get("entities") or ()),
            topic=row.get("topic"),
            label=row["label"],
            score=float(probs["positive"]) - float(probs["negative"]),
            text=row.get("text", ""),
            p_negative=float(probs["negative"]),
            model_version=row.get("model_version"),
        )


@dataclass
class Alert:
    """One episode on one key: what fired, against what, and the items behind it."""

    id: str
    kind: str
    scope: str
    key: str | None
    severity: str
    window_start: float
    window_end: float
    first_window_start: float
    statistic: float
    baseline: float
    value: float
    n: int
    signals: dict[str, dict[str, float]]
    evidence: dict[str, Any]
    baseline_windows: list[dict[str, Any]]
    revision: int = 1
    similar: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def entity(self) -> str | None:
        return self.key if self.scope == "entity" else None

    @property
    def topic(self) -> str | None:
        return self.key if self.scope == "topic" else None

    def as_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready data (times as ISO-8601 UTC)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "scope": self.scope,
            "entity": self.entity,
            "topic": self.topic,
            "severity": self.severity,
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "first_window_start": _iso(self.first_window_start),
            "statistic": self.statistic,
            "baseline": self.baseline,
            "value": self.value,
            "n": self.n,
            "signals": self.signals,
            "evidence": self.evidence,
            "baseline_windows": self.baseline_windows,
            "similar": self.similar,
            "revision": self.revision,
            "details": self.details,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def alert_id(kind_family: str, scope: str, key: str | None, first_window_start: float) -> str:
    raw = f"{kind_family}|{scope}|{key}|{int(first_window_start)}"
    return "al-" + hashlib.sha256(raw.encode()).hexdigest()[:16]


# -- the statistics (pure; an alert's numbers are these applied to the items it names) ------


def negative_share_z(
    k: int, n: int, k_base: int, n_base: int, prior: float, strength: float
) -> tuple[float, float, float]:
    """One-sided z of ``k`` negatives in ``n`` against the key's trailing share.

    The trailing share is shrunk toward the stream's (``prior``, worth ``strength``
    items); the variance counts the baseline's own uncertainty, and a continuity
    correction keeps small windows from crying wolf. Returns (z, baseline, share).

    >>> round(negative_share_z(9, 10, 10, 100, 0.1, 20.0)[0], 2)
    7.6
    >>> round(negative_share_z(3, 10, 30, 100, 0.3, 20.0)[0], 2)  # as usual: nothing
    -0.33
    """
    p0 = (k_base + strength * prior) / (n_base + strength)
    p0 = min(max(p0, 0.01), 0.99)
    var = n * p0 * (1 - p0) * (1 + n / (n_base + strength))
    return (k - 0.5 - n * p0) / math.sqrt(var), p0, k / n


def volume_z(count: int, total: int, base_count: int, base_total: int) -> tuple[float, float]:
    """z of a key's share of the stream in a window against its share in the baseline.

    ``count`` of the window's ``total`` items are the key's, against
    ``base_count`` of ``base_total`` before. Measuring the share, not the raw
    count, keeps a busier stream (or a quiet night) from making every key spike.
    The variance includes the baseline's own uncertainty. Returns (z, the count
    the baseline share expects).

    >>> round(volume_z(30, 200, 20, 800)[0], 2)
    9.92
    >>> round(volume_z(12, 400, 20, 800)[0], 2)  # twice the stream, twice the key: nothing
    0.39
    """
    q = min(max(base_count, 0.5), base_total - 0.5) / base_total if base_total > 1 else 0.5
    expected = total * q
    var = total * q * (1 - q) * (1 + total / base_total)
    return (count - 0.5 - expected) / math.sqrt(var), expected


def mean_shift_z(
    scores: list[float], base_sum: float, base_sq: float, base_n: int
) -> tuple[float, float, float]:
    """z of a window's mean score against the trailing items' (spread floored at 0.1).

    Returns (z, trailing mean, window mean).
    """
    n = len(scores)
    mean = sum(scores) / n
    mu = base_sum / base_n
    sd = math.sqrt(max(base_sq / base_n - mu * mu, 0.01))
    return (mean - mu) / (sd * math.sqrt(1 / n + 1 / base_n)), mu, mean


@dataclass
class _Bucket:
    items: list[AlertItem] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def negatives(self) -> int:
        return sum(1 for x in self.items if x.label == "negative")


@dataclass
class _Episode:
    alert: Alert
    last_fired_end: float


class AlertEngine:
    """Windows, rules and episodes (no I/O: feed items, advance the watermark, get alerts)."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        # window index -> (scope, key) -> bucket; plus the stream's totals per window
        self._windows: dict[int, dict[tuple[str, str], _Bucket]] = defaultdict(dict)
        self._totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # n, negatives
        # The same per model version: the stream's negative share is a version's reading.
        self._by_version: dict[int, dict[str | None, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0])
        )
        self._closed_upto: int | None = None  # every window below this index is judged
        self._reopened: set[int] = set()  # judged windows that received items since
        self._first_window: int | None = None
        self._max_ts: float | None = None
        self._seen: set[str] = set()
        self._episodes: dict[tuple[str, str], _Episode] = {}
        self._fired: dict[tuple[str, str], set[int]] = defaultdict(set)  # windows that alerted
        self.late = 0

    # -- input ----------------------------------------------------------------------------

    def window_of(self, ts: float) -> int:
        return math.floor(ts / self.config.window_s)

    def add(self, items: Iterable[AlertItem]) -> None:
        """Take scored items (any order within the lateness; a re-sent id counts once)."""
        for item in items:
            if item.id in self._seen:
                continue
            w = self.window_of(item.ts)
            if self._closed_upto is not None and w < self._closed_upto:
                if w < self._closed_upto - self.config.baseline_windows:
                    self.late += 1  # its window is forgotten: it cannot count any more
                    continue
                self._reopened.add(w)
            self._seen.add(item.id)
            if self._first_window is None or w < self._first_window:
                self._first_window = w
            self._max_ts = item.ts if self._max_ts is None else max(self._max_ts, item.ts)
            for totals in (self._totals[w], self._by_version[w][item.model_version]):
                totals[0] += 1
                totals[1] += item.label == "negative"
            buckets = self._windows[w]
            for scope, key in self._keys(item):
                buckets.setdefault((scope, key), _Bucket()).items.append(item)

    def _keys(self, item: AlertItem) -> list[tuple[str, str]]:
        keys = []
        if "entity" in self.config.scopes:
            keys += [("entity", e) for e in dict.fromkeys(item.entities)]
        if "topic" in self.config.scopes and item.topic and item.topic != "other":
            keys.append(("topic", item.topic))
        return keys

    # -- judging --------------------------------------------------------------------------

    def watermark(self) -> float | None:
        """The newest time seen less the lateness (None: nothing seen yet)."""
        if self._max_ts is None:
            return None
        return self._max_ts - self.config.lateness_s

    def advance(self, watermark: float | None = None) -> list[Alert]:
        """Judge every window that ended at or before the watermark; new or updated alerts."""
        mark = self.watermark() if watermark is None else watermark
        if mark is None or self._first_window is None:
            return []
        last = math.floor(mark / self.config.window_s)  # windows below ``last`` have ended
        start = self._first_window if self._closed_upto is None else self._closed_upto
        out: dict[str, Alert] = {}
        # Windows judged before that received items since (a slow partition caught up):
        # judged again, with everything they hold now.
        for w in sorted(self._reopened):
            for alert in self._judge(w):
                out[alert.id] = alert
        self._reopened.clear()
        for w in range(start, last):
            for alert in self._judge(w):
                out[alert.id] = alert
        if last > start:
            self._closed_upto = last
            self._forget_before(last - self.config.baseline_windows)
        return list(out.values())

    def flush(self) -> list[Alert]:
        """Judge every window there is (the end of a replay)."""
        if self._max_ts is None:
            return []
        return self.advance((self.window_of(self._max_ts) + 1) * self.config.window_s)

    def _forget_before(self, w: int) -> None:
        for old in [x for x in self._windows if x < w]:
            for bucket in self._windows.pop(old).values():
                self._seen.difference_update(x.id for x in bucket.items)
        for old in [x for x in self._totals if x < w]:
            del self._totals[old]
            self._by_version.pop(old, None)
        for windows in self._fired.values():
            windows.difference_update([x for x in windows if x < w])

    def _judge(self, w: int) -> list[Alert]:
        cfg = self.config
        # The trailing windows since the stream began; its first window is partial (the
        # stream started inside it), so it is never a baseline.
        first = self._first_window if self._first_window is not None else w
        # Windows in which the stream had nothing at all are a gap in the feed, not a
        # quiet spell: they are no baseline either.
        history = [
            h
            for h in (w - i for i in range(cfg.baseline_windows, 0, -1))
            if h > first and self._totals.get(h, (0, 0))[0] > 0
        ]
        if len(history) < cfg.min_baseline_windows:
            return []
        total = self._totals.get(w, (0, 0))[0]
        # The stream's negative share over the baseline, as each version read it.
        priors: dict[str | None, float | None] = {}
        for version in self._by_version.get(w, {}):
            n = sum(self._by_version[h][version][0] for h in history if h in self._by_version)
            k = sum(self._by_version[h][version][1] for h in history if h in self._by_version)
            priors[version] = k / n if n else None
        fired = []
        for (scope, key), bucket in sorted(self._windows.get(w, {}).items()):
            # A key's own alerting windows are not its normal: leave them out of its
            # baseline (unless that leaves too little), so a surge that lasts is judged
            # against the time before it, not against itself.
            usual = [h for h in history if h not in self._fired[(scope, key)]]
            if len(usual) < cfg.min_baseline_windows:
                usual = history
            base = [self._windows.get(h, {}).get((scope, key)) for h in usual]
            base_total = sum(self._totals[h][0] for h in usual)
            signals = self._signals(bucket, base, priors, total, base_total)
            if signals:
                self._fired[(scope, key)].add(w)
                prior = priors.get(_dominant_version(bucket.items)) or 0.0
                alert = self._raise(w, scope, key, bucket, usual, base, signals, prior)
                if alert is not None:
                    fired.append(alert)
        return fired

    def _signals(
        self,
        bucket: _Bucket,
        base: list[_Bucket | None],
        priors: dict[str | None, float | None],
        total: int,
        base_total: int,
    ) -> dict[str, dict[str, float]]:
        cfg = self.config
        out: dict[str, dict[str, float]] = {}
        n = bucket.n
        base_items = [x for b in base if b is not None for x in b.items]
        rule = cfg.volume_spike
        if rule.enabled and n >= rule.min_count:
            z, mu = volume_z(n, total, len(base_items), base_total)
            if z >= rule.z and n - mu >= rule.min_delta:
                out["volume_spike"] = _signal(z, mu, float(n), n, rule)
        # Labels and scores are the model's: a window is judged against a baseline scored
        # by the same version, so a promotion (a model that reads the stream differently)
        # is not taken for a change of sentiment; until that version has history, only
        # volume is judged.
        version = _dominant_version(bucket.items)
        prior = priors.get(version)
        if prior is None:  # this version has no history in the baseline yet
            return out
        items = [x for x in bucket.items if x.model_version == version]
        base_items = [x for x in base_items if x.model_version == version]
        n = len(items)
        negatives = sum(1 for x in items if x.label == "negative")
        rule = cfg.negative_surge
        # The key needs same-version history of its own: just after a promotion the new
        # version has seen a key a handful of times, and a share judged against a prior
        # shrunk from so few items is the stream's share, not the key's usual.
        if rule.enabled and n >= rule.min_count and len(base_items) >= rule.min_count:
            k_base = sum(1 for x in base_items if x.label == "negative")
            z, p0, p = negative_share_z(
                negatives, n, k_base, len(base_items), prior, cfg.prior_strength
            )
            if z >= rule.z and p - p0 >= rule.min_delta:
                out["negative_surge"] = _signal(z, p0, p, n, rule)
        rule = cfg.sentiment_shift
        if rule.enabled and n >= rule.min_count and len(base_items) >= rule.min_count:
            z, mu, mean = mean_shift_z(
                [x.score for x in items],
                sum(x.score for x in base_items),
                sum(x.score * x.score for x in base_items),
                len(base_items),
            )
            if abs(z) >= rule.z and abs(mean - mu) >= rule.min_delta:
                out["sentiment_shift"] = _signal(z, mu, mean, n, rule)
        return out

    def _raise(
        self,
        w: int,
        scope: str,
        key: str,
        bucket: _Bucket,
        history: list[int],
        base: list[_Bucket | None],
        signals: dict[str, dict[str, float]],
        prior: float,
    ) -> Alert | None:
        cfg = self.config
        kind = next(k for k in KINDS if k in signals)
        main = signals[kind]
        start, end = w * cfg.window_s, (w + 1) * cfg.window_s
        severity = (
            "critical" if any(s["severity"] == "critical" for s in signals.values()) else "warning"
        )
        episode = self._episodes.get((scope, key))
        if episode is not None and start < episode.alert.window_start:
            return None  # an earlier window of the episode, judged again: it shows a later one
        if episode is not None and start - episode.last_fired_end <= cfg.cooldown_s:
            alert = episode.alert
            alert.revision += 1
            first = alert.first_window_start
        else:
            first = start
            alert = None
        ranked = sorted(bucket.items, key=lambda x: (x.score, x.id))
        ids = [x.id for x in bucket.items]
        evidence = {
            "item_ids": ids[: cfg.max_ids],
            "truncated": len(ids) > cfg.max_ids,
            "n": bucket.n,
            "negatives": bucket.negatives,
            "stream_n": self._totals.get(w, (0, 0))[0],  # all items of the window
            "top": [
                {
                    "id": x.id,
                    "text": x.text,
                    "score": round(x.score, 4),
                    "label": x.label,
                    "ts": _iso(x.ts),
                }
                for x in ranked[: cfg.evidence_top]
            ],
        }
        baseline_windows = [
            {
                "start": _iso(h * cfg.window_s),
                "end": _iso((h + 1) * cfg.window_s),
                "n": b.n if b is not None else 0,
                "negatives": b.negatives if b is not None else 0,
                "stream_n": self._totals.get(h, (0, 0))[0],
                "mean_score": (
                    round(sum(x.score for x in b.items) / b.n, 4) if b is not None and b.n else None
                ),
                "item_ids": [x.id for x in b.items][: cfg.max_ids] if b is not None else [],
            }
            for h, b in zip(history, base, strict=True)
        ]
        details = {"stream_negative_share": round(prior, 6), "prior_strength": cfg.prior_strength}
        if alert is None:
            alert = Alert(
                id=alert_id("episode", scope, key, first),
                kind=kind,
                scope=scope,
                key=key,
                severity=severity,
                window_start=start,
                window_end=end,
                first_window_start=first,
                statistic=main["statistic"],
                baseline=main["baseline"],
                value=main["value"],
                n=bucket.n,
                signals=signals,
                evidence=evidence,
                baseline_windows=baseline_windows,
                details=details,
            )
        else:
            # The episode goes on: it now shows the latest window; the worst severity and
            # the most telling kind seen so far stay.
            if KINDS.index(kind) < KINDS.index(alert.kind):
                alert.kind = kind
            if severity == "critical":
                alert.severity = "critical"
            alert.window_start, alert.window_end = start, end
            alert.statistic, alert.baseline, alert.value = (
                main["statistic"],
                main["baseline"],
                main["value"],
            )
            alert.n, alert.signals, alert.evidence = bucket.n, signals, evidence
            alert.baseline_windows, alert.details = baseline_windows, details
        alert.details["peak_statistic"] = max(
            abs(alert.statistic), alert.details.get("peak_statistic", 0.0)
        )
        self._episodes[(scope, key)] = _Episode(alert, max(end, alert.window_end))
        return alert

    # -- drift events become alerts too ----------------------------------------------------

    def drift_alert(self, event: dict[str, Any]) -> Alert | None:
        """An alert for a stored drift event; events within ``cooldown_s`` join one episode."""
        ts = event["ts"]
        if isinstance(ts, datetime):
            ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        key = ("stream", "drift")
        episode = self._episodes.get(key)
        signal = {
            "statistic": float(event.get("statistic", 0.0)),
            "baseline": 0.0,
            "value": float(event.get("statistic", 0.0)),
            "n": int(event.get("window", 0)),
            "severity": "warning",
        }
        name = f"{event.get('detector')} on {event.get('signal')}"
        if episode is not None and ts - episode.last_fired_end <= self.config.cooldown_s:
            alert = episode.alert
            alert.revision += 1
            alert.window_end = max(alert.window_end, ts)
            alert.signals[name] = signal
            alert.details.setdefault("events", []).append(event.get("seq"))
        else:
            alert = Alert(
                id=alert_id("drift", "stream", None, ts),
                kind="drift",
                scope="stream",
                key=None,
                severity="warning",
                window_start=ts,
                window_end=ts,
                first_window_start=ts,
                statistic=signal["statistic"],
                baseline=0.0,
                value=signal["statistic"],
                n=signal["n"],
                signals={name: signal},
                evidence={"item_ids": [], "n": 0, "top": [], "truncated": False},
                baseline_windows=[],
                details={
                    "events": [event.get("seq")],
                    "origin": event.get("origin"),
                    "model_version": event.get("model_version"),
                },
            )
        self._episodes[key] = _Episode(alert, ts)
        return alert


def _dominant_version(items: list[AlertItem]) -> str | None:
    """The model version that scored most of ``items`` (the newest name on a tie)."""
    counts: dict[str | None, int] = defaultdict(int)
    for x in items:
        counts[x.model_version] += 1
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], v or ""))


def _signal(z: float, baseline: float, value: float, n: int, rule: RuleConfig) -> dict[str, Any]:
    return {
        "statistic": round(z, 4),
        "baseline": round(baseline, 6),
        "value": round(value, 6),
        "n": n,
        "severity": "critical" if abs(z) >= rule.critical_z else "warning",
    }
