"""The demo's console: what the running system is doing, for a person or a script.

Three ways to show the same :class:`Snapshot` and :class:`Event` stream:

* ``live`` — on a terminal: one compact panel (rich) that updates in place:
  items and items/s, lag behind the feed, items per model version, labels and
  each version's accuracy on the latest labels, drift events, retrains and
  promotions, the newest alerts; the dashboard's address and credential on top.
* ``plain`` — not a terminal (a log, CI): a status line every ``every_s``
  seconds and one line per event, as it happens.
* ``json`` — for scripts: one JSON object per line, ``{"event": "status", …}``
  or ``{"event": "alert" | "drift" | "model", …}``.

Events are one line per *new* alert episode (an update only when its severity
changes), per drift event and per model decision, so a person can read them.

>>> s = Snapshot(elapsed_s=60, items=1190, items_per_s=19.8, lag=4, versions={"v1": 1190},
...              labels=580, accuracy={"v1": (200, 0.97)}, drift_events=0, retrains=0,
...              promotions=0, alerts=1)
>>> print(plain_status(s))
status      1m00s  items 1190 (19.8/s, lag 4)  v1 1190  labels 580  acc v1 0.97/200  drift 0  retrains 0  promoted 0  alerts 1
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO


@dataclass
class Snapshot:
    """The system's state at one moment, from the store and the feed."""

    elapsed_s: float
    items: int
    items_per_s: float
    lag: int  # items the feed sent that are neither stored nor dead-lettered yet
    versions: dict[str, int]  # items scored per model version
    labels: int
    accuracy: dict[str, tuple[int, float]]  # version -> (labels, accuracy) on the latest labels
    drift_events: int
    retrains: int  # candidates decided (promoted, rejected or awaiting approval)
    promotions: int  # after the bootstrap
    alerts: int
    serving: str | None = None
    rejected: int = 0


@dataclass
class Event:
    """Something a person should see as it happens."""

    kind: str  # "alert", "drift", "model", "part"
    text: str
    data: dict[str, Any] = field(default_factory=dict)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def plain_status(s: Snapshot) -> str:
    """One status line (the ``plain`` mode)."""
    versions = "  ".join(f"{v} {n}" for v, n in sorted(s.versions.items())) or "no items"
    acc = " ".join(f"{v} {a:.2f}/{n}" for v, (n, a) in sorted(s.accuracy.items()))
    return (
        f"status      {_duration(s.elapsed_s)}  items {s.items} ({s.items_per_s:.1f}/s, lag "
        f"{s.lag})  {versions}  labels {s.labels}  acc {acc or '-'}  drift {s.drift_events}  "
        f"retrains {s.retrains}  promoted {s.promotions}  alerts {s.alerts}"
    )


class Console:
    """Shows snapshots and events in one of the three modes (see the module docstring)."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        out: TextIO | None = None,
        header: Iterable[str] = (),
        every_s: float = 10.0,
    ) -> None:
        self.out = out or sys.stdout
        if mode == "auto":
            mode = "live" if self.out.isatty() else "plain"
        if mode not in ("live", "plain", "json"):
            raise ValueError(f"console mode must be live, plain or json, got {mode!r}")
        self.mode = mode
        self.header = list(header)
        self.every_s = every_s
        self._last_plain = -1e9
        self._events: deque[Event] = deque(maxlen=8)
        self._snapshot: Snapshot | None = None
        self._live: Any = None

    # -- lines said once ------------------------------------------------------------------

    def say(self, line: str, **data: Any) -> None:
        """A set-up line (broker, dashboard, credential, model); above the panel in ``live``."""
        if self.mode == "json":
            self._json({"event": "setup", "text": line.strip(), **data})
            return
        self.header.append(line)
        if self._live is not None:
            self._live.console.print(line)  # printed above the live panel, and kept
        else:
            print(line, file=self.out, flush=True)

    def event(self, event: Event) -> None:
        self._events.append(event)
        if self.mode == "json":
            self._json({"event": event.kind, "text": event.text, **event.data})
        elif self.mode == "plain":
            print(event.text, file=self.out, flush=True)
        else:
            self._refresh()

    # -- the status -----------------------------------------------------------------------

    def status(self, snapshot: Snapshot, *, force: bool = False) -> None:
        self._snapshot = snapshot
        if self.mode == "json":
            if force or snapshot.elapsed_s - self._last_plain >= self.every_s:
                self._last_plain = snapshot.elapsed_s
                self._json({"event": "status", **asdict(snapshot)})
        elif self.mode == "plain":
            if force or snapshot.elapsed_s - self._last_plain >= self.every_s:
                self._last_plain = snapshot.elapsed_s
                print(plain_status(snapshot), file=self.out, flush=True)
        else:
            self._refresh()

    def start(self) -> Console:
        if self.mode == "live":
            from rich.console import Console as RichConsole
            from rich.live import Live

            self._live = Live(
                self._render(),
                console=RichConsole(file=self.out),
                refresh_per_second=2,
                transient=False,
            )
            self._live.start()
        return self

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def final(self, stats: dict[str, Any]) -> None:
        """The store's counts at the end: the last line of stdout, one JSON object."""
        self.stop()
        print(json.dumps(stats, default=str), file=self.out, flush=True)

    # -- helpers --------------------------------------------------------------------------

    def _json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, default=str), file=self.out, flush=True)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        # The set-up lines (dashboard address, credential, …) were printed above the panel
        # and stay there; the panel is what changes.
        parts: list[Any] = []
        s = self._snapshot
        if s is not None:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column()
            grid.add_row("streaming", f"{_duration(s.elapsed_s)}   serving {s.serving or '-'}")
            grid.add_row(
                "items",
                f"{s.items} scored ({s.items_per_s:.1f}/s), lag {s.lag}, {s.rejected} rejected",
            )
            grid.add_row(
                "by version", "  ".join(f"{v}: {n}" for v, n in sorted(s.versions.items())) or "-"
            )
            acc = "  ".join(f"{v}: {a:.0%} of {n}" for v, (n, a) in sorted(s.accuracy.items()))
            grid.add_row("labels", f"{s.labels}   accuracy on the latest: {acc or '-'}")
            grid.add_row(
                "learning",
                f"{s.drift_events} drift events, {s.retrains} retrains, {s.promotions} promoted",
            )
            grid.add_row("alerts", str(s.alerts))
            parts.append(Panel(grid, title="Moodwire demo", expand=False))
        if self._events:
            parts.append(Text("recent:", style="bold"))
            parts.extend(Text(e.text) for e in self._events)
        return Group(*parts)
