from __future__ import annotations

import json
from itertools import islice

from stream.feed import looped, row_to_item
from stream.synthetic import demo_feed, labelled_headlines


def test_rows_become_items_with_optional_fields() -> None:
    item = row_to_item(
        {"text": "x", "created_at": "2020-04-15 01:03:46+00:00", "id": 9, "tickers": "ACME; GLBX"}
    )
    assert item == {
        "text": "x",
        "id": "9",
        "ts": "2020-04-15T01:03:46+00:00",
        "entities": ["ACME", "GLBX"],
    }


def test_loop_gives_fresh_ids_per_pass() -> None:
    items = [{"text": "a"}, {"text": "b", "id": "b1"}]
    ids = [i.get("id") for i in islice(looped(items, loop=True), 6)]
    assert ids[:2] == [None, "b1"]
    assert len(set(ids[2:])) == 4 and ids[3] == "b1~1" and ids[5] == "b1~2"


def test_demo_feed_scripts_a_surge_and_a_drift() -> None:
    feed = demo_feed(1000, seed=0)
    phases = [i["meta"]["phase"] for i in feed]
    assert phases.index("surge") == 350 and phases.index("chatter") == 600
    surge = [i for i in feed if i["meta"]["phase"] == "surge"]
    assert all(i["entities"] == ["INIT"] and i["meta"]["true_label"] == "negative" for i in surge)
    assert len({i["id"] for i in feed}) == 1000
    json.dumps(feed)  # every item is JSON as it goes on the wire
    assert {r["label"] for r in labelled_headlines(9)} == {"negative", "neutral", "positive"}
