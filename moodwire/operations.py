"""State-changing actions, shared by the command line and the dashboard.

Every action here names who did it and why, and is written to the audit log.
The dashboard asks for the operator credential first (:func:`check_credential`);
the command line is trusted as the shell account that runs it. Nothing here
imports training code: the dashboard must stay light.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from learner.registry import Registry
from moodwire.settings import Settings
from moodwire.store import Store

log = structlog.get_logger(__name__)


class NotAllowed(PermissionError):
    """A state-changing action without a valid operator credential."""


def check_credential(settings: Settings, token: str | None) -> None:
    """Refuse unless ``token`` is the configured ``MOODWIRE_OPERATOR_TOKEN``.

    >>> from pydantic import SecretStr
    >>> s = Settings(operator_token=SecretStr("s3cret"))
    >>> check_credential(s, "s3cret")
    >>> check_credential(s, "guess")
    Traceback (most recent call last):
    ...
    moodwire.operations.NotAllowed: wrong operator credential
    >>> check_credential(Settings(operator_token=None), "anything")
    Traceback (most recent call last):
    ...
    moodwire.operations.NotAllowed: no operator credential is configured (set MOODWIRE_OPERATOR_TOKEN): actions are disabled
    """
    if settings.operator_token is None:
        raise NotAllowed(
            "no operator credential is configured (set MOODWIRE_OPERATOR_TOKEN): actions are disabled"
        )
    if not token:
        raise NotAllowed("this action needs the operator credential")
    expected = settings.operator_token.get_secret_value().encode()
    if not hmac.compare_digest(expected, token.encode()):
        raise NotAllowed("wrong operator credential")


def _actor(actor: str) -> str:
    actor = (actor or "").strip()
    if not actor:
        raise ValueError("say who you are: the audit log records every action's actor")
    return actor[:256]


def _publish(settings: Settings, topic: str, msg: Any, key: str | None = None) -> None:
    """Send one message and wait until the broker has it."""
    from stream.broker import ensure_topics
    from stream.clients import make_producer

    ensure_topics(settings.bootstrap_servers, [topic], settings.partitions)
    producer = make_producer(settings, client_id="moodwire-operator")
    try:
        value = msg.model_dump_json().encode()
        producer.send(topic, key=key.encode() if key else None, value=value).get(30)
    finally:
        producer.close(timeout=5)


def _serve(
    settings: Settings, action: str, version: str, actor: str, reason: str, details: dict
) -> None:
    """After the registry switched to ``version``: audit, then tell the workers."""
    from stream.schemas import ControlMessage

    Store(settings.resolved_store_url()).audit(actor, action, version, reason or None, details)
    msg = ControlMessage(action=action, version=version, actor=actor, reason=reason or None)
    try:
        _publish(settings, settings.topics.control, msg)
    except Exception as exc:  # noqa: BLE001 - workers follow the registry themselves
        log.warning("control_announce_failed", action=action, error=str(exc)[:200])


def promote(settings: Settings, version: str, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Serve ``version``; audited and announced on ``moodwire.control``."""
    actor = _actor(actor)
    previous = Registry(settings.resolved_registry()).promote(version)
    _serve(settings, "promote", version, actor, reason, {"previous": previous})
    return {"serving": version, "previous": previous}


def rollback(settings: Settings, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Serve the previously serving version; audited and announced."""
    actor = _actor(actor)
    current, target = Registry(settings.resolved_registry()).rollback()
    _serve(settings, "rollback", target, actor, reason, {"from": current})
    return {"serving": target, "previous": current}


def request_retrain(settings: Settings, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Ask the active learner to train a candidate now; audited once the broker has it."""
    from stream.schemas import ControlMessage

    actor = _actor(actor)
    msg = ControlMessage(action="retrain", actor=actor, reason=reason or None)
    _publish(settings, settings.topics.control, msg)
    Store(settings.resolved_store_url()).audit(
        actor, "retrain", None, reason or None, {"requested_at": msg.ts.isoformat()}
    )
    return {"requested": "retrain", "actor": actor, "reason": reason}


def correct(
    settings: Settings,
    item_id: str,
    *,
    actor: str,
    label: str | None = None,
    topic: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """An analyst's correction of an item's label and/or topic, sent on ``news.labels``.

    It is also stored at once (under the same id the learner gives it when it
    consumes the message, so it is stored once), so the correction shows
    immediately rather than after the learner's next poll.
    """
    from stream.schemas import LabelMessage, label_row

    actor = _actor(actor)
    if label is None and topic is None:
        raise ValueError("a correction needs a label or a topic")
    store = Store(settings.resolved_store_url())
    if store.get_item(item_id) is None:
        raise ValueError(f"no item {item_id!r} in the store")
    msg = LabelMessage(item_id=item_id, label=label, topic=topic, source="analyst", annotator=actor)
    _publish(settings, settings.topics.labels, msg, key=item_id)
    row = label_row(msg)
    store.add_labels([row])
    store.audit(actor, "correct", item_id, reason or None, {"label": label, "topic": topic})
    return {"item_id": item_id, "label": label, "topic": topic, "label_id": row["id"]}


def acknowledge(settings: Settings, alert_id: str, *, actor: str, reason: str = "") -> None:
    actor = _actor(actor)
    store = Store(settings.resolved_store_url())
    if not store.acknowledge_alert(alert_id, actor):
        raise ValueError(f"no alert {alert_id!r}")
    store.audit(actor, "acknowledge", alert_id, reason or None, {})


def mute(
    settings: Settings, alert_id: str, *, hours: float, actor: str, reason: str = ""
) -> datetime:
    actor = _actor(actor)
    if not 0 < hours <= 24 * 30:
        raise ValueError("mute for between a minute and 30 days")
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)
    store = Store(settings.resolved_store_url())
    if not store.mute_alert(alert_id, until):
        raise ValueError(f"no alert {alert_id!r}")
    store.audit(actor, "mute", alert_id, reason or None, {"until": until.isoformat()})
    return until
