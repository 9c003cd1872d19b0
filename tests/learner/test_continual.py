"""The continual learner's decisions: triggers, held-out splits, replay mix, gates, state."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from learner.config import LearnerConfig
from learner.continual import ContinualLearner, held_out
from learner.data import LABELS, LabelledText
from learner.replay import ClassBalancedReservoir


class _Calibrated:
    """A test double's base: a temperature to fold (the learner's calibration), and
    probabilities from the labels its ``predict`` gives."""

    temperature = 1.0

    def fold_temperature(self, temperature: float) -> None:
        self.temperature *= temperature

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        raise NotImplementedError

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """0.8 on the label predict() gives, 0.1 on each other."""
        p = np.full((len(texts), 3), 0.1, dtype=np.float32)
        for i, label in enumerate(self.predict(texts)):
            p[i, LABELS.index(label)] = 0.8
        return p


class _Fixed(_Calibrated):
    """A test double of the classifier: predicts one label for everything."""

    labels = LABELS

    def __init__(self, label: str = "neutral") -> None:
        self.label = label

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        return [self.label] * len(texts)


def _items(n: int, prefix: str = "t", label: str | None = None) -> list[LabelledText]:
    return [LabelledText(f"{prefix} {i}", label or LABELS[i % 3]) for i in range(n)]


def test_held_out_is_stable_and_about_one_in_n() -> None:
    texts = [f"headline {i}" for i in range(5000)]
    share = np.mean([held_out(t, 5) for t in texts])
    assert 0.17 < share < 0.23
    assert [held_out(t, 5) for t in texts[:50]] == [held_out(t, 5) for t in texts[:50]]


def test_labels_split_into_train_and_holdout_by_hash() -> None:
    learner = ContinualLearner(_Fixed(), "v1", LearnerConfig())  # type: ignore[arg-type]
    items = _items(500)
    learner.observe(items, ["neutral"] * 500)
    assert len(learner.fresh_train) + len(learner.fresh_holdout) == 500
    assert all(held_out(x.text, 5) for x in learner.fresh_holdout)
    assert not any(held_out(x.text, 5) for x in learner.fresh_train)


@pytest.mark.parametrize(
    ("strategy", "given", "pending", "due"),
    [
        ("moodwire", 50, None, False),  # too few, nothing asked
        ("moodwire", 50, "drift", False),  # asked, but fewer than min_new_labels
        ("moodwire", 200, "drift", True),  # asked and enough
        ("moodwire", 200, None, False),  # enough for a command, not for the schedule
        ("moodwire", 700, None, True),  # the schedule: retrain_every new labels
        ("frozen", 700, "drift", False),  # frozen never retrains
    ],
)
def test_when_a_retrain_is_due(strategy: str, given: int, pending: str | None, due: bool) -> None:
    cfg = LearnerConfig(strategy=strategy, retrain_every=500, min_new_labels=100)
    learner = ContinualLearner(_Fixed(), "v1", cfg)  # type: ignore[arg-type]
    learner.observe(_items(given), ["neutral"] * given)
    if pending:
        learner.request(pending)
    assert (learner.due() is not None) is due


def test_supervised_drift_fires_once_when_the_error_rate_jumps() -> None:
    cfg = LearnerConfig(error_warmup=50, error_cooldown=10_000)
    learner = ContinualLearner(_Fixed("neutral"), "v1", cfg)  # type: ignore[arg-type]
    right = [LabelledText(f"a {i}", "neutral") for i in range(600)]
    assert learner.observe(right) == []
    rng = np.random.default_rng(0)
    wrong = [
        LabelledText(f"b {i}", "positive" if rng.random() < 0.6 else "neutral") for i in range(300)
    ]
    events = [e for i in range(0, 300, 10) for e in learner.observe(wrong[i : i + 10])]
    assert len(events) == 1 and events[0].signal == "error_rate"
    assert learner.pending is not None and learner.pending.startswith("drift")


def test_replay_mix_follows_the_seen_class_proportions_and_skips_held_out() -> None:
    buf = ClassBalancedReservoir(capacity=3000, seed=0)
    learner = ContinualLearner(_Fixed(), "v1", LearnerConfig(), buf)  # type: ignore[arg-type]
    old = _items(600, "old", "neutral") + _items(200, "old-neg", "negative")
    old += _items(200, "old-pos", "positive")
    learner.remember(old)
    learner.observe(_items(300, "new"), ["neutral"] * 300)
    data, summary = learner.training_data()
    replayed = data[summary["fresh"] :]
    assert summary["replayed"] == len(replayed) > 0
    shares = {lab: sum(x.label == lab for x in replayed) / len(replayed) for lab in LABELS}
    assert shares["neutral"] == pytest.approx(0.6, abs=0.05)
    assert learner.old_holdout() == []  # nothing held out yet: remember() got no held-out data


def test_naive_does_not_replay_and_joint_keeps_everything() -> None:
    for strategy, key in (("naive", "replayed"), ("joint", "everything")):
        learner = ContinualLearner(_Fixed(), "v1", LearnerConfig(strategy=strategy))  # type: ignore[arg-type]
        learner.remember(_items(100, "old"))
        learner.observe(_items(50, "new"), ["neutral"] * 50)
        data, summary = learner.training_data()
        if strategy == "naive":
            assert summary[key] == 0 and all(x.text.startswith("new") for x in data)
        else:
            assert summary[key] == len(data) >= 140


def test_state_survives_a_restart() -> None:
    learner = ContinualLearner(_Fixed(), "v1", LearnerConfig())  # type: ignore[arg-type]
    learner.observe(_items(120), ["neutral"] * 120)
    learner.request("operator alice: try it")
    again = ContinualLearner(_Fixed(), "v1", LearnerConfig())  # type: ignore[arg-type]
    again.restore(copy.deepcopy(learner.state()))
    assert again.fresh_train == learner.fresh_train
    assert again.fresh_holdout == learner.fresh_holdout
    assert again.due() == learner.due() == "operator alice: try it"


def test_bad_config_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        LearnerConfig(strategy="magic")
    with pytest.raises(ValueError, match="holdout_every"):
        LearnerConfig(holdout_every=1)


# -- gates, on the real model --------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model_registry: Path):  # noqa: ANN201
    from learner.classifier import SentimentClassifier
    from state.registry import Registry

    reg = Registry(model_registry)
    return SentimentClassifier.from_pretrained(reg.path(reg.serving()), device="cpu")


def _headlines(n: int, seed: int) -> list[LabelledText]:
    from stream.synthetic import labelled_headlines

    return [LabelledText(r["text"], r["label"]) for r in labelled_headlines(n, seed=seed)]


def test_a_candidate_worse_on_old_data_is_never_promoted(served) -> None:  # noqa: ANN001
    """Train on 'new' labels that contradict what the model knows: it must be rejected."""
    # No replay, so the candidate really learns the contradiction (and gains on "new").
    cfg = LearnerConfig(
        min_new_labels=20, min_holdout=5, replay_ratio=0.0, epochs=3, lr=3e-4, time_budget_s=600
    )
    learner = ContinualLearner(copy.deepcopy(served), "v1", cfg)
    old = _headlines(300, seed=11)
    learner.remember(old[:200], old[200:])
    rotate = {"negative": "neutral", "neutral": "positive", "positive": "negative"}
    poisoned = [LabelledText(x.text, rotate[x.label]) for x in _headlines(150, seed=12)]
    learner.observe(poisoned)
    learner.request("operator: test")
    outcome = learner.step(shadow_texts=[x.text for x in _headlines(50, seed=13)])
    assert outcome is not None and outcome.gate is not None
    assert outcome.decision == "reject", outcome.gate
    assert any("forgets old data" in r for r in outcome.gate.reasons), outcome.gate
    assert outcome.gate.old["candidate"] < outcome.gate.old["serving"] - cfg.old_tolerance
    assert learner.classifier is not outcome.classifier  # the serving one untouched


def test_a_candidate_that_learns_the_new_domain_and_keeps_the_old_is_promoted(served) -> None:  # noqa: ANN001
    from stream.synthetic import demo_feed

    cfg = LearnerConfig(min_new_labels=60, min_holdout=15, epochs=2, lr=2e-4, time_budget_s=600)
    learner = ContinualLearner(copy.deepcopy(served), "v1", cfg)
    old = _headlines(300, seed=11)
    learner.remember(old[:200], old[200:])
    chatter = [
        LabelledText(i["text"], i["meta"]["true_label"])
        for i in demo_feed(1200, seed=5, drift_at=0.0)
        if i["meta"]["phase"] == "chatter"
    ][:400]
    learner.observe(chatter)
    learner.request("drift: test")
    outcome = learner.step(shadow_texts=[x.text for x in chatter[:100]])
    assert outcome is not None and outcome.gate is not None
    assert outcome.decision == "promote", outcome.gate
    assert outcome.gate.new["candidate"] > outcome.gate.new["serving"]
    learner.adopt(outcome.classifier, "v2")
    assert learner.version == "v2" and learner.fresh_train == []
    remembered = {x.text for x in learner.replay.items() + learner.old_holdout()}
    assert {x.text for x in chatter} <= remembered  # what it learned is now memory


def test_drift_makes_the_fresh_pool_old_memory_and_waits_for_new_labels() -> None:
    cfg = LearnerConfig(min_new_labels=50)
    learner = ContinualLearner(_Fixed(), "v1", cfg)  # type: ignore[arg-type]
    learner.observe(_items(300, "before"), ["neutral"] * 300)
    learner.drift("drift: embedding_shift on embedding")
    assert learner.fresh_train == [] and learner.due() is None
    memory = {x.text for x in learner.replay.items() + learner.old_holdout()}
    assert memory >= {f"before {i}" for i in range(300)}
    learner.drift("drift: adwin on confidence")  # the same shift: nothing more happens
    learner.observe(_items(100, "after"), ["neutral"] * 100)
    assert learner.due() == "drift: embedding_shift on embedding"
    assert all(x.text.startswith("after") for x in learner.fresh_train)


def test_a_drift_after_an_episode_whose_candidate_learned_nothing_is_a_new_shift() -> None:
    from learner.continual import Outcome
    from learner.train import TrainReport

    cfg = LearnerConfig(min_new_labels=50, min_holdout=5)
    learner = ContinualLearner(_Fixed("neutral"), "v1", cfg)  # type: ignore[arg-type]
    learner.drift("drift seen at the surge")  # a false start: the model reads it fine
    learner.observe(_items(100, "surge", "neutral"), ["neutral"] * 100)
    assert learner.due() == "drift seen at the surge"
    report = TrainReport(1, 1, 1.0, 0.1, 10.0, False, 0.1)
    same = Outcome("t", _Fixed("neutral"), report, {}, None, "reject", "v1")  # type: ignore[arg-type]
    judged = learner.judge(same, ["a"])
    assert judged.decision == "reject" and judged.gate is not None
    assert judged.gate.reasons[0].startswith("no gain"), judged.gate.reasons
    # (across a restart)
    restored = ContinualLearner(  # memory is saved on its own: hand it over
        _Fixed("neutral"),  # type: ignore[arg-type]
        "v1",
        cfg,
        replay=learner.replay,
        heldout=learner.heldout,
    )
    restored.restore(learner.state())
    learner = restored
    # The real shift comes next: its labels, not the false start's, are the fresh pool.
    learner.drift("drift seen at the real shift")
    assert learner.fresh_train == [] and learner.fresh_holdout == [] and learner.due() is None
    memory = {x.text for x in learner.replay.items() + learner.old_holdout()}
    assert memory >= {f"surge {i}" for i in range(100)}
    learner.observe(_items(100, "after", "positive"), ["neutral"] * 100)
    assert learner.due() == "drift seen at the real shift"
    assert all(x.text.startswith("after") for x in learner.fresh_train)
    # Without the failed candidate, a second event is the same shift (fresh labels stay).
    learner.drift("drift: adwin on confidence")
    assert all(x.text.startswith("after") for x in learner.fresh_train) and learner.fresh_train


def test_a_passing_candidate_waits_for_an_operator_when_approval_is_required() -> None:
    from learner.continual import Outcome
    from learner.train import TrainReport

    cfg = LearnerConfig(require_approval=True, min_holdout=5)
    learner = ContinualLearner(_Fixed("neutral"), "v1", cfg)  # type: ignore[arg-type]
    learner.remember(_items(200, "old", "positive"), _items(50, "old-heldout", "positive"))
    learner.observe(_items(200, "new", "positive"), ["neutral"] * 200)
    report = TrainReport(1, 1, 1.0, 0.1, 10.0, False, 0.1)
    outcome = Outcome("test", _Fixed("positive"), report, {}, None, "reject", "v1")  # type: ignore[arg-type]
    judged = learner.judge(outcome, ["a", "b"])
    assert judged.gate is not None and judged.gate.passed, judged.gate
    assert judged.decision == "await_approval"
    assert judged.gate.shadow["agreement"] == 0.0
    # Right every time at 0.8: the temperature fitted on the held-out labels sharpens it,
    # is folded into the candidate, and goes into its card.
    cal = judged.card()["calibration"]
    assert cal is not None and cal["temperature"] < 1.0 and cal["ece_after"] < cal["ece_before"]
    assert outcome.classifier.temperature == cal["temperature"]


def test_a_stop_request_interrupts_training_and_says_so(served) -> None:  # noqa: ANN001
    import threading

    from learner.train import TrainConfig, fine_tune

    stop = threading.Event()
    stop.set()
    clf = copy.deepcopy(served)
    report = fine_tune(
        clf, _headlines(64, seed=3), TrainConfig(epochs=1), progress=False, stop=stop
    )
    assert report.interrupted and report.stopped_early and report.steps == 0


def test_after_a_drift_it_retrains_each_time_the_labels_since_have_doubled() -> None:
    cfg = LearnerConfig(min_new_labels=50, retrain_every=1000)
    learner = ContinualLearner(_Fixed(), "v1", cfg)  # type: ignore[arg-type]
    learner.drift("drift: embedding_shift on embedding")
    attempts = []
    for i in range(0, 1500, 10):
        learner.observe(_items(10, f"x{i}"), ["neutral"] * 10)
        if learner.due() is not None:
            attempts.append(learner.labels_seen)
            learner.start_attempt()  # what train_candidate does first
        if i == 150:
            learner.drift("drift: adwin on confidence")  # the same shift: fresh labels stay
            assert len(learner.fresh_train) + len(learner.fresh_holdout) == 160
    # First once min_new_labels (50) of the 60 are for training; then at each doubling
    # and once for the second event; after 1000 labels, the regular schedule.
    assert attempts == [60, 120, 170, 340, 680], attempts


class _Knows(_Calibrated):
    """A test double that gets right exactly the texts it knows (else says neutral)."""

    labels = LABELS

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        return [self.known.get(t, "neutral") for t in texts]


class _Dial(_Calibrated):
    """A test double whose knowledge is one weight w (a real torch module, so it can be
    interpolated): it gets right the new texts whose difficulty is below w, and the old
    texts only while w is at most ``keeps_old_until``."""

    labels = LABELS

    def __init__(self, w: float, keeps_old_until: float = 0.6) -> None:
        import torch

        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.constant_(self.model.weight, w)
        self.keeps_old_until = keeps_old_until

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        w = float(self.model.weight.item())
        out = []
        for t in texts:
            kind, i = t.split()
            if kind == "new":
                out.append("negative" if int(i) % 100 / 100 < w else "neutral")
            else:
                out.append("positive" if w <= self.keeps_old_until else "neutral")
        return out


@pytest.mark.parametrize("merge", [True, False])
def test_a_candidate_that_forgets_serves_as_its_best_passing_blend_with_the_serving_model(
    merge: bool,
) -> None:
    """The fine-tuned candidate learns all of the new world and forgets all of the old:
    alone it is rejected. Interpolated with the serving weights, the half-way point keeps
    the old world and half the new, and it is the one that serves."""
    from learner.continual import Outcome
    from learner.train import TrainReport

    cfg = LearnerConfig(min_holdout=5, merge=merge)
    learner = ContinualLearner(_Dial(0.0), "v1", cfg)  # type: ignore[arg-type]
    learner.remember([], _items(100, "old", "positive"))
    learner.observe(_items(500, "new", "negative"))
    report = TrainReport(1, 1, 1.0, 0.1, 10.0, False, 0.1)
    outcome = Outcome("t", _Dial(1.0), report, {}, None, "reject", "v1")  # type: ignore[arg-type]
    gate = learner.judge(outcome, []).gate
    assert gate is not None
    if not merge:
        assert outcome.decision == "reject" and gate.merge is None
        assert any("forgets old data" in r for r in gate.reasons), gate.reasons
        return
    assert outcome.decision == "promote", gate.reasons
    assert gate.merge is not None and gate.merge["weight"] == 0.5
    assert float(outcome.classifier.model.weight.item()) == pytest.approx(0.5)
    assert [t["passed"] for t in gate.merge["tried"]] == [False, False, True, True]
    assert gate.old["candidate"] == 1.0 and 0.4 < gate.new["candidate"] < 0.6


def test_a_blend_is_only_chosen_when_it_scores_better_than_the_full_candidate() -> None:
    """A candidate that forgets nothing serves as fine-tuned: its blends learn less."""
    from learner.continual import Outcome
    from learner.train import TrainReport

    learner = ContinualLearner(_Dial(0.0, 2.0), "v1", LearnerConfig(min_holdout=5, merge=True))  # type: ignore[arg-type]
    learner.remember([], _items(100, "old", "positive"))
    learner.observe(_items(500, "new", "negative"))
    report = TrainReport(1, 1, 1.0, 0.1, 10.0, False, 0.1)
    outcome = Outcome("t", _Dial(1.0, 2.0), report, {}, None, "reject", "v1")  # type: ignore[arg-type]
    gate = learner.judge(outcome, []).gate
    assert outcome.decision == "promote" and gate is not None and gate.merge is not None
    assert gate.merge["weight"] == 1.0 and gate.new["candidate"] == 1.0


def test_merged_real_models_are_the_endpoints_at_0_and_1_and_between_them_at_half(
    served,  # noqa: ANN001
) -> None:
    from learner.continual import merged
    from learner.train import TrainConfig, fine_tune

    data = _headlines(48, seed=3)
    flipped = [LabelledText(x.text, LABELS[(LABELS.index(x.label) + 1) % 3]) for x in data]
    cand = copy.deepcopy(served)
    fine_tune(cand, flipped, TrainConfig(epochs=2, lr=1e-3, batch_size=16), progress=False)
    texts = [x.text for x in data]
    ws = {k: v.clone() for k, v in served.model.state_dict().items()}
    wc = {k: v.clone() for k, v in cand.model.state_dict().items()}
    p_serv, p_cand = served.predict_proba(texts), cand.predict_proba(texts)
    assert not np.allclose(p_serv, p_cand, atol=1e-3)  # the fine-tune moved it
    assert np.allclose(merged(served, cand, 0.0).predict_proba(texts), p_serv, atol=1e-5)
    assert np.allclose(merged(served, cand, 1.0).predict_proba(texts), p_cand, atol=1e-5)
    import torch

    half = merged(served, cand, 0.5).model.state_dict()
    moved = [k for k in wc if wc[k].is_floating_point() and not torch.equal(ws[k], wc[k])]
    assert moved  # what fine-tuning moved is blended half and half
    for k in moved:
        assert torch.allclose(half[k], (ws[k] + wc[k]) / 2, atol=1e-6), k
    for model, before in ((served, ws), (cand, wc)):  # neither endpoint is touched
        assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items())


def test_promotions_in_a_row_cannot_add_their_forgetting_up() -> None:
    """Each candidate forgets 1.5 points of the old world (tolerance 2) and learns more
    of the new. The first passes; the second looks fine against its parent on a memory
    that now holds new-world labels too, but is 3 points below the version that served
    before the shift on the old world, and is rejected."""
    from learner.continual import Outcome
    from learner.train import TrainReport

    old = _items(200, "old", "positive")
    new = _items(400, "new", "negative")
    knows = {x.text: x.label for x in old}
    new_known = {x.text: x.label for x in new}

    def model(forgets: int, learns: int) -> _Knows:
        known = {t: lab for i, (t, lab) in enumerate(knows.items()) if i >= forgets}
        known.update(dict(list(new_known.items())[:learns]))
        return _Knows(known)

    cfg = LearnerConfig(min_holdout=5, old_tolerance=0.02)
    learner = ContinualLearner(_Knows(knows), "v1", cfg)  # type: ignore[arg-type]
    learner.remember([], old)
    learner.drift("drift: test")
    assert learner.before_shift_version == "v1" and learner.before_shift_acc == 1.0
    learner.observe(new)
    report = TrainReport(1, 1, 1.0, 0.1, 10.0, False, 0.1)

    first = Outcome("t", model(3, 200), report, {}, None, "reject", "v1")  # type: ignore[arg-type]
    assert learner.judge(first, []).decision == "promote", first.gate
    learner.adopt(first.classifier, "v2")  # its held-out new labels join the memory
    learner.observe(_items(400, "newer", "negative"))

    second = Outcome("t", model(6, 400), report, {}, None, "reject", "v2")  # type: ignore[arg-type]
    gate = learner.judge(second, []).gate
    assert gate is not None and not gate.passed
    assert gate.old["candidate"] >= gate.old["serving"]  # the mixed memory hides the loss
    assert gate.old["before_shift_candidate"] == pytest.approx(0.97)
    assert any("forgets the world before the shift" in r for r in gate.reasons), gate

    restored = ContinualLearner(_Knows(knows), "v2", cfg)  # type: ignore[arg-type]
    restored.restore(learner.state())
    assert restored.before_shift_acc == 1.0 and len(restored.before_shift) == 200


def test_distillation_holds_the_serving_models_outputs_on_replayed_examples(served) -> None:  # noqa: ANN001
    """Labels that contradict the serving model: with its probabilities as a teacher, the
    candidate stays closer to what it said; a teacher row of NaN changes nothing."""
    from learner.train import TrainConfig, fine_tune

    data = _headlines(48, seed=11)
    flipped = [LabelledText(x.text, LABELS[(LABELS.index(x.label) + 1) % 3]) for x in data]
    texts = [x.text for x in data]
    teacher = served.predict_proba(texts)
    before = teacher.argmax(1)
    cfg = TrainConfig(epochs=3, lr=3e-4, batch_size=16, distill_weight=4.0)

    def train(t: np.ndarray | None):  # noqa: ANN202
        clf = copy.deepcopy(served)
        fine_tune(clf, flipped, cfg, progress=False, teacher=t)
        return clf

    plain, distilled = train(None), train(teacher)
    agree_plain = np.mean(plain.predict_proba(texts).argmax(1) == before)
    agree_distilled = np.mean(distilled.predict_proba(texts).argmax(1) == before)
    assert agree_distilled > agree_plain + 0.2, (agree_plain, agree_distilled)

    nan = train(np.full_like(teacher, np.nan))
    assert np.allclose(nan.predict_proba(texts), plain.predict_proba(texts), atol=1e-5)
    with pytest.raises(ValueError, match="teacher must have shape"):
        fine_tune(copy.deepcopy(served), flipped, cfg, progress=False, teacher=teacher[:5])


def test_only_replayed_examples_get_a_teacher() -> None:
    cfg = LearnerConfig(min_new_labels=10, replay_ratio=1.0)
    learner = ContinualLearner(_Fixed("positive"), "v1", cfg)  # type: ignore[arg-type]
    learner.remember(_items(40, "old"))
    learner.observe(_items(30, "new"), ["positive"] * 30)
    data, summary = learner.training_data()
    teacher = learner.teacher_targets(data, summary)
    fresh = summary["fresh"]
    assert teacher is not None and teacher.shape == (len(data), 3)
    assert np.isnan(teacher[:fresh]).all() and not np.isnan(teacher[fresh:]).any()
    assert (teacher[fresh:].argmax(1) == LABELS.index("positive")).all()
    off = ContinualLearner(_Fixed(), "v1", LearnerConfig(distill=0.0))  # type: ignore[arg-type]
    assert off.teacher_targets(data, summary) is None
