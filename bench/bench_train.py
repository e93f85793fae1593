"""Time to accuracy on Fashion-MNIST: the shipped training script against a seed-style loop, each in its own process.

Both train the same CNN (``mnist/model.py``'s layers and weights) on the same Lance dataset, ingested from Debian's
``dataset-fashion-mnist`` (installed here if missing), and are scored on the 10,000 test images twice an epoch:
- the seed's way: rows read from Lance into Python lists, a ``TensorDataset`` behind a ``DataLoader``, Adam 1e-3,
  batch 64, no augmentation, the textbook order of layers (ReLU, then pooling);
- ours: ``mnist/mnist_cnn.py``'s ``run`` with its defaults (``augment`` off: drawn-digit augmentation is for the
  digit page, not for clothes).
Prints, for each, the wall time from the start of the process to each target accuracy (90% and a second one near
what this model reaches), the final accuracy, images/s while training and the peak RSS; and the compute ceiling:
forward + backward + step of the same model on one batch already in memory, at ours' settings, the same in bfloat16,
and at the seed's (float32, NCHW, batch 64).
Goals: ours reaches 90% in <= 1/3 of the seed-style loop's time, trains at >= 85% of its compute ceiling, and
peaks below 1 GB.
Run: ``.venv/bin/python bench/bench_train.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "mnist"), str(ROOT / "bench")]

from bench_pipeline import FASHION, ensure_fashion  # noqa: E402

TARGETS = (0.90, 0.915)
SEED_MAX_EPOCHS = 15
SCORES_PER_EPOCH = 2  # both loops score the test split at the same points: mnist_cnn's evals_per_epoch default


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def textbook_model() -> object:
    """The model's layers (and so its weights) as the seed's loop has them: ReLU before pooling, as it is usually
    written (``mnist/model.py`` pools first, the same function for a quarter of the ReLU work)."""
    import torch
    from model import MnistCNN, Normalized

    class TextbookCNN(MnistCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return self.fc2(self.dropout(torch.relu(self.fc1(x.flatten(1)))))

    return Normalized(TextbookCNN())


def seed_style(lake: str, limit: int, max_epochs: int, targets: tuple[float, ...]) -> dict:
    """The seed's loop: Python rows from Lance, a DataLoader, Adam 1e-3, batch 64; scored twice an epoch until the
    last target is reached."""
    started = time.perf_counter()
    import lance
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    def split(name: str, rows: int = 0) -> TensorDataset:
        table = lance.dataset(lake).to_table(columns=["image", "label"], filter=f"split = '{name}'",
                                             limit=rows or None)
        images = [[pixel / 255.0 for pixel in image] for image in table.column("image").to_pylist()]
        return TensorDataset(torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28),
                             torch.tensor(table.column("label").to_pylist()))

    torch.manual_seed(0)
    train, test = split("train", limit), split("test")
    model = textbook_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scores, scoring_s, seen = [], [0.0], 0
    batches = (len(train) + 63) // 64
    points = {round(batches * k / SCORES_PER_EPOCH) for k in range(1, SCORES_PER_EPOCH + 1)}

    def score() -> float:
        scoring_started = time.perf_counter()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(test, batch_size=1000))
        model.train()
        scores.append((time.perf_counter() - started, correct / len(test)))
        scoring_s[0] += time.perf_counter() - scoring_started
        return scores[-1][1]

    training_started = time.perf_counter()
    for _ in range(max_epochs):
        for number, (x, y) in enumerate(DataLoader(train, batch_size=64, shuffle=True), 1):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
            if number in points and score() >= max(targets):
                break
        else:
            continue
        break
    train_seconds = time.perf_counter() - training_started - scoring_s[0]
    return {"scores": scores, "images_per_s": seen / train_seconds, "peak_rss_mb": peak_rss_mb()}


def ours(lake: str, limit: int, params: dict, out: str) -> dict:
    """mnist_cnn.run with its defaults, in this process as a task runs it; every evaluation it makes is timed."""
    started = time.perf_counter()
    import mnist_cnn

    scores = []
    evaluate = mnist_cnn.evaluate

    def timed(*args: object, **kwargs: object) -> tuple[float, float]:
        accuracy, loss = evaluate(*args, **kwargs)
        scores.append((time.perf_counter() - started, accuracy))
        return accuracy, loss

    mnist_cnn.evaluate = timed
    given = {"limit": limit, **params}
    result = mnist_cnn.run(lake, out, given)
    train_seconds = sum(epoch["epoch_seconds"] for epoch in result["history"])
    return {"scores": scores, "images_per_s": result["train_images"] * len(result["history"]) / train_seconds,
            "peak_rss_mb": peak_rss_mb(), "params": {**mnist_cnn.PARAMS, **given}}


def ceiling(batch_size: int, settings: dict, seconds: float, seed_way: bool = False) -> dict:
    """Forward + backward + step of the model on one batch already in memory: what the CPU can do at all (ours: the
    fused Adam; ``seed_way``: the textbook model and the plain Adam)."""
    import mnist_cnn
    import torch
    from model import MnistCNN, Normalized

    torch.manual_seed(0)
    model = textbook_model() if seed_way else Normalized(MnistCNN())
    x, y = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if seed_way else mnist_cnn.adam(model, 1e-3)
    step = mnist_cnn.training_step(model, optimizer, settings)
    for _ in range(3):
        step(x, y)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(x, y)
        done += batch_size
    return {"images_per_s": done / (time.perf_counter() - started)}


def in_process(role: str, **arguments: object) -> dict:
    done = subprocess.run([sys.executable, __file__, "--role", role, "--arguments", json.dumps(arguments)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{role} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reached(scores: list[list[float]], target: float) -> float | None:
    return next((at for at, accuracy in scores if accuracy >= target), None)


def main(args: argparse.Namespace) -> None:
    import mnist_clean
    import mnist_cnn

    if not ensure_fashion():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    limit, targets = (4000, (0.70, 0.75)) if args.quick else (0, TARGETS)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        lake = str(work / "fashion.lance")
        mnist_clean.run(str(FASHION), lake, {})
        params = {"augment": False, **({"epochs": 1} if args.quick else {})}
        runs = {"seed": [], "ours": []}
        for _ in range(args.runs):
            runs["seed"].append(in_process("seed", lake=lake, limit=limit, max_epochs=2 if args.quick else
                                           SEED_MAX_EPOCHS, targets=targets))
            runs["ours"].append(in_process("ours", lake=lake, limit=limit, params=params,
                                           out=str(work / f"model-{len(runs['ours'])}.lance")))
        settings = mnist_cnn.training_settings(runs["ours"][0]["params"])
        batch = runs["ours"][0]["params"]["batch_size"]
        seconds = 1.0 if args.quick else 5.0
        top = in_process("ceiling", batch_size=batch, settings=settings, seconds=seconds)
        seed_settings = mnist_cnn.training_settings({"precision": "fp32", "channels_last": False, "label_smoothing": 0})
        plain = in_process("ceiling", batch_size=64, seconds=seconds, seed_way=True, settings=seed_settings)
        bf16 = in_process("ceiling", batch_size=batch, seconds=seconds, settings={**settings, "bf16": True})
        print(f"Fashion-MNIST, {'4,000' if args.quick else '60,000'} training and 10,000 test images; "
              f"{os.cpu_count()} CPUs; {args.runs} run(s) each, median (min-max)")
        print(f"ours: {json.dumps(settings)}, batch {batch}")
        for name, title in (("seed", "seed-style loop"), ("ours", "mnist_cnn.py")):
            line = f"  {title:<16}"
            for target in targets:
                times = [reached(r["scores"], target) for r in runs[name]]
                hit = [t for t in times if t is not None]
                line += f"  to {target:.1%}: " + (f"{statistics.median(hit):6.1f} s ({min(hit):.1f}-{max(hit):.1f})"
                                                   if len(hit) == len(times) else "   not reached")
            final = statistics.median(r["scores"][-1][1] for r in runs[name])
            speed = statistics.median(r["images_per_s"] for r in runs[name])
            rss = max(r["peak_rss_mb"] for r in runs[name])
            print(f"{line}  final {final:.2%}  {speed:,.0f} images/s  peak RSS {rss:,.0f} MB")
        print(f"  compute ceiling   ours' settings, batch {batch}: {top['images_per_s']:,.0f} images/s; the same in "
              f"bfloat16: {bf16['images_per_s']:,.0f} images/s; the seed's (fp32, NCHW, batch 64): "
              f"{plain['images_per_s']:,.0f} images/s")
        seed90 = [reached(r["scores"], targets[0]) for r in runs["seed"]]
        ours90 = [reached(r["scores"], targets[0]) for r in runs["ours"]]
        if all(seed90) and all(ours90):
            ratio = statistics.median(ours90) / statistics.median(seed90)
            print(f"goals: time to {targets[0]:.0%} {ratio:.2f}x the seed-style loop's (<= 0.33: "
                  f"{'met' if ratio <= 1 / 3 else 'NOT met'})", end="; ")
        else:
            print(f"goals: {targets[0]:.0%} was not reached by both", end="; ")
        share = statistics.median(r["images_per_s"] for r in runs["ours"]) / top["images_per_s"]
        rss = max(r["peak_rss_mb"] for r in runs["ours"])
        print(f"images/s {share:.0%} of the ceiling (>= 85%: {'met' if share >= 0.85 else 'NOT met'}); "
              f"peak RSS {rss:,.0f} MB (< 1 GB: {'met' if rss < 1024 else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,000 images, one epoch (the test suite's check)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each, for the spread")
    parser.add_argument("--role", default="main", choices=["main", "seed", "ours", "ceiling"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--arguments", default="{}", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.role == "main":
        main(parsed)
    else:
        given = json.loads(parsed.arguments)
        if "targets" in given:
            given["targets"] = tuple(given["targets"])
        print(json.dumps({"seed": seed_style, "ours": ours, "ceiling": ceiling}[parsed.role](**given)))
