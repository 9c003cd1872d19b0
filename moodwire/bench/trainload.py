"""A learner's load, in a process of its own, for ``bench throughput --while-training``.

``python -m moodwire.bench.trainload --seconds S --device D`` fine-tunes a fresh
classifier (the default encoder, the served shape's frozen layers) for ``S``
seconds on generated texts, as the learner process does when it retrains on the
same host or GPU as a worker. It prints one JSON line when the model is loaded
(``{"ready": true}``) and one with its training rate when it stops. Speed does
not depend on the labels, so they are drawn at random.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moodwire.bench.trainload")
    parser.add_argument("--seconds", type=float, required=True, help="train for this long")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)

    import numpy as np

    from learner.classifier import SentimentClassifier, select_device
    from learner.data import LABELS, LabelledText
    from learner.train import TrainConfig, fine_tune
    from stream.synthetic import demo_feed

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    device = select_device(args.device)
    classifier = SentimentClassifier.from_encoder(device=str(device), max_length=args.max_length)
    rng = np.random.default_rng(0)
    data = [
        LabelledText(item["text"], LABELS[int(rng.integers(len(LABELS)))])
        for item in demo_feed(2000, seed=3)
    ]
    print(json.dumps({"ready": True}), flush=True)
    report = fine_tune(
        classifier,
        data,
        TrainConfig(epochs=1000.0, time_budget_s=args.seconds),
        progress=False,
        stop=stop,
    )
    print(
        json.dumps(
            {
                "device": str(device),
                "samples_per_s": round(report.samples_per_s, 2),
                "steps": report.steps,
                "seconds": round(report.seconds, 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
