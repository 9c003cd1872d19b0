"""The alerter hands its alerts to the notifier: a real surge over a real store opens one
episode at a loopback webhook, and the watermark passing its cool-down closes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import _item
from test_notify import Receiver, _receiver

from state.store import Store
from stream.alerting import Alerter
from stream.alerts import AlertConfig
from stream.destinations import Destination
from stream.notify import Notifier

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CFG = AlertConfig(window_s=600, baseline_windows=4, min_baseline_windows=3, lateness_s=0,
                  cooldown_s=600, scopes=("entity",))  # fmt: skip


def _rows(
    first: int, n: int, entity: str, start: datetime, labels: tuple[str, ...]
) -> list[dict[str, Any]]:
    out = []
    for k in range(n):
        row = _item(
            first + k, entity, labels[k % len(labels)], "earnings", f"{entity} news {first + k}"
        )
        ts = start + timedelta(seconds=600 * k / n)
        row.update(ts=ts, kafka_ts=ts, scored_at=ts, model_version="v1")
        out.append(row)
    return out


STEADY = ("negative", "neutral", "positive", "positive")


def test_the_alerter_opens_then_closes_one_episode_at_the_destination(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    hook: Receiver = _receiver()
    notifier = Notifier.build(
        [Destination(url=f"{hook.base}/hook")], store, dashboard_url="https://dash.example",
        window_s=CFG.window_s, cooldown_s=CFG.cooldown_s, check_every_s=0,
    )  # fmt: skip
    alerter = Alerter(store, CFG, notifier=notifier)
    n = 0
    for w in range(6):  # an hour of steady news on two entities
        for entity in ("ACME", "GLBX"):
            store.write_batch(_rows(n, 30, entity, T0 + timedelta(minutes=10 * w), STEADY), [])
            n += 30
    surge = T0 + timedelta(minutes=60)
    store.write_batch(_rows(n, 30, "ACME", surge, ("negative",)), [])
    store.write_batch(_rows(n + 30, 30, "GLBX", surge, STEADY), [])
    n += 60
    # An item after the surge's window moves the watermark past it.
    store.write_batch(_rows(n, 1, "GLBX", surge + timedelta(minutes=10), STEADY), [])
    n += 1
    announced = alerter.step()
    assert [(a["entity"], a["kind"]) for a in announced] == [("ACME", "negative_surge")]
    assert notifier.wait_idle()
    (opened,) = [r.json() for r in hook.got]
    assert opened["id"] == announced[0]["id"]
    assert opened["notification"]["event"] == "opened"
    assert (
        opened["notification"]["dashboard_url"]
        == f"https://dash.example/alerts?alert={opened['id']}"
    )

    # Later news, past the cool-down and one more window: the episode closes, once.
    later = surge + timedelta(seconds=CFG.window_s * 2 + CFG.cooldown_s + CFG.window_s)
    store.write_batch(_rows(n, 30, "GLBX", later, STEADY), [])
    alerter.step()
    alerter.step()
    assert notifier.wait_idle()
    assert [r.json()["notification"]["event"] for r in hook.got] == ["opened", "closed"]
    notifier.close()
    hook.server.shutdown()
