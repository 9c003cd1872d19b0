"""State-changing actions, shared by the command line and the dashboard.

Every action here names who did it and why, and is written to the audit log
in the same step as its effect (audit first): the audit row is inserted in a
transaction, the effect happens inside it, then it commits. A failed audit
write means no effect; a serving-pointer switch whose audit row cannot be
committed is put back (:func:`audited_switch`). Both the dashboard and the
command line name a :class:`~stream.access.Principal`: each action re-reads its role
from the store and refuses, before anything is written, unless that role may do it
(``stream.access``: viewer, analyst, operator, admin).
Nothing here imports training code: the dashboard must stay light.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from state.shared_registry import AnyRegistry, open_registry
from state.store import Store
from stream.access import Principal, authorise
from stream.config import OperationsConfig
from stream.errors import NotAllowed

log = structlog.get_logger(__name__)


def _authorised(config: OperationsConfig, by: Principal, action: str) -> tuple[Store, str]:
    """The store, and ``by``'s audit actor once the store says its role may do ``action``."""
    if not isinstance(by, Principal):
        raise NotAllowed(f"{action} needs a signed-in user")
    store = Store(config.store_url)
    return store, authorise(store, by, action).actor


@contextmanager
def _producer(config: OperationsConfig, topic: str) -> Iterator[Any]:
    """A producer for ``topic``, connected before any transaction is opened around its send."""
    from stream.clients import ensure_topics, make_producer

    ensure_topics(config.kafka, [topic], config.partitions)
    producer = make_producer(config.kafka, client_id="moodwire-operator")
    try:
        yield producer
    finally:
        producer.close(timeout=5)


def _value(config: OperationsConfig, msg: Any) -> bytes:
    """The message as sent: signed with this side's origin key when it has one."""
    if config.signer is None:
        return msg.model_dump_json().encode()
    return config.signer.sign_json(msg)


def _need_signer(config: OperationsConfig, what: str) -> None:
    """Refuse, before anything is written, a message the learner would refuse unsigned."""
    if config.signer is None:
        raise NotAllowed(
            f"{what} is signed for the learner, and this side has no origin key: set "
            'MOODWIRE_ORIGINS=\'{"cli": "…"}\' (the dashboard\'s origin is "dashboard") '
            "with the key the learner holds for it"
        )


def _send(
    producer: Any, topic: str, msg: Any, config: OperationsConfig, key: str | None = None
) -> None:
    """Send one message (signed when this side has a key) and wait until the broker has it."""
    value = _value(config, msg)
    producer.send(topic, key=key.encode() if key else None, value=value).get(30)


def _publish(config: OperationsConfig, topic: str, msg: Any, key: str | None = None) -> None:
    with _producer(config, topic) as producer:
        _send(producer, topic, msg, config, key)


@contextmanager
def audited_switch(
    store: Store,
    registry: AnyRegistry,
    *,
    actor: str,
    action: str,
    target: str | None,
    reason: str | None,
    details: dict[str, Any],
) -> Iterator[None]:
    """An action that moves the serving pointer (the block moves it) and its audit row, as one step.

    The row is inserted first: if that fails, the block never runs. If the
    block raises, the row is rolled back. If the commit fails after the block
    switched the pointer, the pointer is put back exactly as it was and the
    error raised: a switch that stands is always audited.
    """
    saved = registry.pointer_state()
    token = uuid.uuid4().hex
    try:
        # The pointer records the audit row's token: a process killed between the switch
        # and the commit leaves a switch with no row, which reconcile_serving undoes.
        with (
            store.audited(actor, action, target, reason, {**details, "switch": token}),
            registry.switch_token(token),
        ):
            yield
    except BaseException as exc:
        if registry.pointer_state() != saved:
            try:
                registry.restore(saved)
            except BaseException as undo:
                log.critical(
                    "serving_switch_not_undone",
                    action=action,
                    target=target,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    undo_error=f"{type(undo).__name__}: {str(undo)[:200]}",
                )
                raise
            log.error(
                "serving_switch_undone",
                action=action,
                target=target,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
        raise


def reconcile_serving(store: Store, registry: AnyRegistry, *, grace_s: float = 60.0) -> str | None:
    """Undo a serving switch whose audit row never committed (its writer died in between).

    Audit first: a switch stands only with its audit row. One made under a
    token (:func:`audited_switch`) that the audit log does not hold, older
    than ``grace_s`` (its transaction cannot still be open), is reverted to
    what served before it. Returns the version that serves after the revert,
    or None when there was nothing to undo.
    """
    switch = registry.pending_switch()
    if switch is None or store.has_audited_switch(switch["token"]):
        return None
    try:
        at = datetime.fromisoformat(switch["at"])
    except (TypeError, ValueError):
        at = datetime.now(UTC) - timedelta(seconds=grace_s)
    if (datetime.now(UTC) - at).total_seconds() < grace_s:
        return None
    unaudited = registry.serving()
    serving = registry.revert_switch()
    log.critical(
        "serving_switch_reverted_unaudited",
        unaudited=unaudited,
        serving=serving,
        switched_at=switch.get("at"),
    )
    return serving


def _announce(config: OperationsConfig, action: str, version: str, actor: str, reason: str) -> None:
    """Tell the workers (they follow the registry themselves, so a failure is only logged)."""
    from stream.schemas import ControlMessage

    msg = ControlMessage(action=action, version=version, actor=actor, reason=reason or None)
    try:
        _publish(config, config.topics.control, msg)
    except Exception as exc:  # noqa: BLE001 - workers follow the registry themselves
        log.warning("control_announce_failed", action=action, error=str(exc)[:200])


def promote(
    config: OperationsConfig, version: str, *, by: Principal, reason: str = ""
) -> dict[str, Any]:
    """Serve ``version``; audited in the same step, then announced on ``moodwire.control``."""
    store, actor = _authorised(config, by, "promote")
    registry = open_registry(config.registry, config.registry_url)
    registry.verify_stored(version)  # refused before anything is written
    reconcile_serving(store, registry)  # never build on a switch that was not audited
    previous = registry.serving()
    with audited_switch(
        store,
        registry,
        actor=actor,
        action="promote",
        target=version,
        reason=reason or None,
        details={"previous": previous},
    ):
        registry.promote(version)
    _announce(config, "promote", version, actor, reason)
    return {"serving": version, "previous": previous}


def rollback(config: OperationsConfig, *, by: Principal, reason: str = "") -> dict[str, Any]:
    """Serve the previously serving version; audited in the same step, then announced."""
    store, actor = _authorised(config, by, "rollback")
    registry = open_registry(config.registry, config.registry_url)
    reconcile_serving(store, registry)  # never build on a switch that was not audited
    current, target = registry.rollback_target()
    registry.verify_stored(target)
    with audited_switch(
        store,
        registry,
        actor=actor,
        action="rollback",
        target=target,
        reason=reason or None,
        details={"from": current},
    ):
        registry.rollback()
    _announce(config, "rollback", target, actor, reason)
    return {"serving": target, "previous": current}


def request_retrain(config: OperationsConfig, *, by: Principal, reason: str = "") -> dict[str, Any]:
    """Ask the active learner to train a candidate now.

    The audit row is inserted, the command published and acknowledged by the
    broker, then the row committed. A commit that fails after the broker has
    the command cannot take it back: that is logged as ``retrain_request_unaudited``.
    """
    from stream.schemas import ControlMessage

    store, actor = _authorised(config, by, "retrain")
    _need_signer(config, "a retrain command")
    msg = ControlMessage(action="retrain", actor=actor, reason=reason or None)
    topic = config.topics.control
    with _producer(config, topic) as producer:
        sent = False
        try:
            with store.audited(
                actor, "retrain", None, reason or None, {"requested_at": msg.ts.isoformat()}
            ):
                _send(producer, topic, msg, config)
                sent = True
        except Exception as exc:
            if sent:
                log.error(
                    "retrain_request_unaudited",
                    actor=actor,
                    reason=reason,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
            raise
    return {"requested": "retrain", "actor": actor, "reason": reason}


def correct(
    config: OperationsConfig,
    item_id: str,
    *,
    by: Principal,
    label: str | None = None,
    topic: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """An analyst's correction of an item's label and/or topic, sent on ``news.labels``.

    It is also stored at once (under the same id the learner gives it when it
    consumes the message, so it is stored once), so the correction shows
    immediately rather than after the learner's next poll. The audit row and
    the stored label are one transaction, committed once the broker has the
    message; a commit that fails after that is logged as ``correction_unaudited``
    (the message cannot be taken back; the learner stores the label from it).
    """
    from stream.schemas import LabelMessage, label_row

    store, actor = _authorised(config, by, "correct")
    if label is None and topic is None:
        raise ValueError("a correction needs a label or a topic")
    _need_signer(config, "a label correction")
    if store.get_item(item_id) is None:
        raise ValueError(f"no item {item_id!r} in the store")
    msg = LabelMessage(item_id=item_id, label=label, topic=topic, source="analyst", annotator=actor)
    row = label_row(msg)
    labels_topic = config.topics.labels
    with _producer(config, labels_topic) as producer:
        sent = False
        try:
            with store.audited(
                actor, "correct", item_id, reason or None, {"label": label, "topic": topic}
            ) as conn:
                store.add_labels_in(conn, [row])
                _send(producer, labels_topic, msg, config, key=item_id)
                sent = True
        except Exception as exc:
            if sent:
                log.error(
                    "correction_unaudited",
                    actor=actor,
                    item_id=item_id,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
            raise
    return {"item_id": item_id, "label": label, "topic": topic, "label_id": row["id"]}


def acknowledge(
    config: OperationsConfig, alert_id: str, *, by: Principal, reason: str = ""
) -> None:
    """Mark an alert seen; the mark and its audit row are one transaction."""
    store, actor = _authorised(config, by, "acknowledge")
    with store.audited(actor, "acknowledge", alert_id, reason or None, {}) as conn:
        if not store.acknowledge_alert_in(conn, alert_id, actor):
            raise ValueError(f"no alert {alert_id!r}")  # rolls the audit row back


def mute(
    config: OperationsConfig, alert_id: str, *, hours: float, by: Principal, reason: str = ""
) -> datetime:
    """Hide an alert's episode for ``hours``; the mute and its audit row are one transaction."""
    store, actor = _authorised(config, by, "mute")
    if not 0 < hours <= 24 * 30:
        raise ValueError("mute for between a minute and 30 days")
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)
    with store.audited(
        actor, "mute", alert_id, reason or None, {"until": until.isoformat()}
    ) as conn:
        if not store.mute_alert_in(conn, alert_id, until):
            raise ValueError(f"no alert {alert_id!r}")  # rolls the audit row back
    return until
