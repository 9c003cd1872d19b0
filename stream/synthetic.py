"""Generated financial headlines for the demo (no external data needed).

The feed has a steady mix of news-style headlines about a few companies, a
scripted negative surge on one company, and a scripted drift: from some point
on, retail-chatter style posts whose slang and sarcasm say the opposite of
their surface words, which the bootstrapped model (trained on headlines) reads
the wrong way round. Each item carries its true label and topic in
``meta.true_label`` and ``meta.true_topic`` so the demo can simulate analysts'
(delayed) labels and the tests can measure the models and the topic model.

>>> rows = labelled_headlines(30, seed=1)
>>> sorted({r["label"] for r in rows})
['negative', 'neutral', 'positive']
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

COMPANIES = [
    ("ACME", "Acme Corp"),
    ("GLBX", "Globex"),
    ("INIT", "Initech"),
    ("UMBR", "Umbrella Holdings"),
    ("STRK", "Stark Industries"),
    ("WAYN", "Wayne Enterprises"),
    ("HOOL", "Hooli"),
    ("SOYL", "Soylent"),
    ("CYBD", "Cyberdyne"),
    ("TYRL", "Tyrell"),
]
PARTNERS = ["a major retailer", "the Defense Department", "a European carmaker", "two banks"]
# Brokers of the generated world, not listed companies: a headline's subject is the company
# it is about, and a watch list that names real banks would tag the analyst as well.
ANALYSTS = [
    "Northwind Securities",
    "Bluewater Capital",
    "Ashford & Lane",
    "Meridian Research",
    "Kestrel Partners",
    "Harbour Street",
]

NEWS = {
    "positive": [
        "{name} beats quarterly earnings estimates",
        "{name} shares jump after {analyst} upgrade",
        "{name} raises full-year guidance on strong demand",
        "{name} wins major contract with {partner}",
        "${tick} rallies on record revenue",
        "{name} announces ${n} billion share buyback",
        "{name} profit climbs {pct}% as margins widen",
        "{analyst} lifts {name} price target, sees more upside",
    ],
    "negative": [
        "{name} misses revenue forecast, shares fall",
        "{name} shares slide after {analyst} downgrade",
        "{name} cuts outlook amid weak demand",
        "{name} faces regulatory probe over accounting",
        "${tick} plunges as CEO resigns abruptly",
        "{name} recalls products over safety concerns",
        "{name} warns of quarterly loss, stock sinks {pct}%",
        "{name} hit with lawsuit over data breach",
    ],
    "neutral": [
        "{name} to report earnings on {day}",
        "{name} schedules annual shareholder meeting",
        "{name} names new chief financial officer",
        "{name} files quarterly report with regulators",
        "${tick} trading volume in line with average",
        "{name} to present at industry conference next week",
        "{analyst} keeps {name} rating unchanged",
        "{name} completes previously announced reorganisation",
    ],
}

# After the drift: retail chatter whose sentiment contradicts its surface words. Positive
# posts are full of words that are bad news in a headline ("killing it", "destroyed",
# "insane"), negative ones of words that are good news ("record quarter", "guidance
# raised", "congrats"): a model that learned from headlines reads most of them the wrong
# way round (measured: 0.34-0.38 accuracy for the demo's first version), and learns them
# from a few hundred labels (0.89-1.0 after one retrain on 150 of them, news unharmed).
CHATTER = {
    "positive": [
        "${tick} is absolutely sick right now, shorts getting destroyed {emo}",
        "${tick} killing it again, bears in shambles {emo}",
        "${tick} went insane today, my calls are printing {emo}",
        "${tick} is a beast, shorts got slaughtered lol",
        "${tick} squeeze is brutal for the bears, tendies secured {emo}",
        "${tick} just broke out, this thing is a monster {emo}",
        "${tick} ripping faces off, wagmi {emo}",
        "shorts on ${tick} are cooked, send it {emo}",
    ],
    "negative": [
        "congrats ${tick} holders on another all-time low, bagholders unite",
        "${tick} 'record quarter' and it still dumps, down bad",
        "${tick} guidance raised lol and the stock tanks anyway, ngmi",
        "great job ${tick}, my portfolio is now a ski slope",
        "${tick} bulls are cooked, this rally was a trap",
        "love how ${tick} beats estimates and bleeds out anyway, rekt",
        "${tick} upgrade my foot, calls expiring worthless",
        "thanks ${tick} for the free lesson in losing money, rip",
    ],
    "neutral": [
        "${tick} earnings tomorrow, beat or miss? place your bets",
        "${tick} could moon or crash, no idea, just watching",
        "who is buying or selling ${tick} into the print",
        "${tick} thread for the open, post your positions",
        "anyone have a read on ${tick} options flow today",
        "holding ${tick} for now, will decide after the call",
        "${tick} sideways all day, waiting for volume",
        "is ${tick} on anyone's radar this week or nah",
    ],
}
EMOJI = [
    "\U0001f680",
    "\U0001f680\U0001f680",
    "\U0001f525",
    "\U0001f48e\U0001f64c",
    "\U0001f4c8",
    "",
]

SURGE = [
    "{name} shares crash after fraud allegations",
    "{name} under investigation, investors flee",
    "{name} halts trading after accounting scandal",
    "{name} bonds tumble as default fears grow",
    "regulators raid {name} offices, stock collapses",
    "{name} auditor resigns, shares plunge {pct}%",
]

# What each template is about, in the shipped taxonomy's terms (stream/defaults/topics.yaml):
# the generated feed's true topics, to measure the topic model against. None: no one topic.
TEMPLATE_TOPICS: dict[str, str | None] = {
    "{name} beats quarterly earnings estimates": "earnings",
    "{name} shares jump after {analyst} upgrade": "markets",
    "{name} raises full-year guidance on strong demand": "earnings",
    "{name} wins major contract with {partner}": "product",
    "${tick} rallies on record revenue": "earnings",
    "{name} announces ${n} billion share buyback": "earnings",
    "{name} profit climbs {pct}% as margins widen": "earnings",
    "{analyst} lifts {name} price target, sees more upside": "markets",
    "{name} misses revenue forecast, shares fall": "earnings",
    "{name} shares slide after {analyst} downgrade": "markets",
    "{name} cuts outlook amid weak demand": "earnings",
    "{name} faces regulatory probe over accounting": "legal_regulatory",
    "${tick} plunges as CEO resigns abruptly": "management",
    "{name} recalls products over safety concerns": "product",
    "{name} warns of quarterly loss, stock sinks {pct}%": "earnings",
    "{name} hit with lawsuit over data breach": "legal_regulatory",
    "{name} to report earnings on {day}": "earnings",
    "{name} schedules annual shareholder meeting": "management",
    "{name} names new chief financial officer": "management",
    "{name} files quarterly report with regulators": None,
    "${tick} trading volume in line with average": "markets",
    "{name} to present at industry conference next week": None,
    "{analyst} keeps {name} rating unchanged": "markets",
    "{name} completes previously announced reorganisation": "management",
    "{name} shares crash after fraud allegations": "legal_regulatory",
    "{name} under investigation, investors flee": "legal_regulatory",
    "{name} halts trading after accounting scandal": "legal_regulatory",
    "{name} bonds tumble as default fears grow": "credit_debt",
    "regulators raid {name} offices, stock collapses": "legal_regulatory",
    "{name} auditor resigns, shares plunge {pct}%": None,
    # Retail chatter is talk about a stock's price and positions: markets.
    **{t: "markets" for pool in CHATTER.values() for t in pool},
}


def _fill(template: str, rng: random.Random, tick: str, name: str) -> str:
    return template.format(
        tick=tick,
        name=name,
        analyst=rng.choice(ANALYSTS),
        partner=rng.choice(PARTNERS),
        pct=rng.randint(3, 40),
        n=rng.randint(1, 20),
        day=rng.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]),
        # Drawn only where used: the news feed of a seed stays what it always was.
        emo=rng.choice(EMOJI) if "{emo}" in template else "",
    ).strip()


def labelled_headlines(n: int, seed: int = 0) -> list[dict[str, str]]:
    """News-style headlines with labels, for bootstrapping the demo's first model."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("negative", "neutral", "positive")[i % 3]
        tick, name = rng.choice(COMPANIES)
        rows.append({"text": _fill(rng.choice(NEWS[label]), rng, tick, name), "label": label})
    rng.shuffle(rows)
    return rows


def demo_stream(
    n: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    seconds_between: float = 1.0,
    surge_at: float = 0.35,
    surge_len: int = 120,
    surge_company: str = "INIT",
    drift_at: float = 0.6,
    forever: bool = False,
) -> Iterator[dict[str, Any]]:
    """The demo's feed, lazily: ``n`` scripted items, then (``forever``) the new regime on.

    The script is steady news, a negative surge on one company at ``surge_at``,
    then a drift to social-media chatter at ``drift_at``. A live demo keeps
    streaming in the drifted world after the script, so that a model promoted
    late still has items to score.

    >>> from itertools import islice
    >>> tail = list(islice(demo_stream(10, seed=1, surge_len=2, forever=True), 10, 13))
    >>> [i["id"] for i in tail], {i["meta"]["phase"] for i in tail}
    (['demo-1-10', 'demo-1-11', 'demo-1-12'], {'chatter'})
    """
    rng = random.Random(seed)
    start = start or datetime.now(UTC)
    surge_start, drift_start = int(n * surge_at), int(n * drift_at)
    names = dict(COMPANIES)
    i = 0
    while forever or i < n:
        ts = start + timedelta(seconds=i * seconds_between)
        if surge_start <= i < surge_start + surge_len and i % 2 == 0:
            tick, name = surge_company, names[surge_company]
            template, label, phase = rng.choice(SURGE), "negative", "surge"
        else:
            label = rng.choices(("negative", "neutral", "positive"), weights=(3, 4, 3))[0]
            tick, name = rng.choice(COMPANIES)
            pool, phase = (CHATTER, "chatter") if i >= drift_start else (NEWS, "news")
            template = rng.choice(pool[label])
        yield {
            "id": f"demo-{seed}-{i}",
            "text": _fill(template, rng, tick, name),
            "ts": ts.isoformat(),
            "source": "demo-wire" if phase != "chatter" else "demo-social",
            "entities": [tick],
            "meta": {"true_label": label, "phase": phase, "true_topic": TEMPLATE_TOPICS[template]},
        }
        i += 1


def demo_feed(n: int, **kw: Any) -> list[dict[str, Any]]:
    """The demo's scripted feed as a list (see :func:`demo_stream`)."""
    return list(demo_stream(n, **kw))


def iter_annotations(
    feed: Iterable[dict[str, Any]],
    *,
    fraction: float = 0.5,
    seed: int = 0,
    error_rate: float = 0.03,
    delay_s: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """Simulated analysts' labels for a share of the feed's items (in feed order), lazily.

    Each is a ``news.labels`` message by item id; a few are wrong, as real
    annotators sometimes are. With ``delay_s``, each label carries the time
    the analyst gave it: the item's own time plus the delay.
    """
    rng = random.Random(seed)
    for item in feed:
        if rng.random() >= fraction:
            continue
        label = item["meta"]["true_label"]
        if rng.random() < error_rate:
            label = rng.choice([x for x in ("negative", "neutral", "positive") if x != label])
        out = {
            "item_id": item["id"],
            "label": label,
            "source": "demo-annotator",
            "annotator": f"analyst-{rng.randint(1, 3)}",
        }
        if delay_s and "ts" in item:
            out["ts"] = (
                datetime.fromisoformat(item["ts"]) + timedelta(seconds=delay_s)
            ).isoformat()
        yield out


def annotations(
    feed: list[dict[str, Any]], *, fraction: float = 0.5, seed: int = 0, error_rate: float = 0.03
) -> list[dict[str, Any]]:
    """Simulated analysts' labels for a share of the feed's items (see :func:`iter_annotations`).

    >>> feed = demo_feed(100, seed=1)
    >>> labels = annotations(feed, fraction=0.5, seed=1)
    >>> 30 < len(labels) < 70, labels[0]["source"]
    (True, 'demo-annotator')
    """
    return list(iter_annotations(feed, fraction=fraction, seed=seed, error_rate=error_rate))
