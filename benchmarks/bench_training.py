"""Benchmark training: stars/s of AdamW steps at batch 1024 and peak RSS, on the simulated survey's rows.

Paths, each in its own process: the naive reference (per-star Python sampling of inputs and one target, every
star padded to the full context, fp32), the fast path (`AstroDataCollator`'s vectorised sampling, batches
padded to their longest star, fp32) and the same in bf16 autocast. Paper configuration (8.8 M parameters),
random initial weights, 2 threads, one warm-up step then `--steps` timed steps (median step time).

Run: ``python benchmarks/bench_training.py [--steps 3]``; the last line printed is one JSON object.
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import THREADS, machine_load, paper_model, peak_rss_mb, run_phase  # noqa: E402

from modeling_astro.data_collator_astro import AstroDataCollator  # noqa: E402

BATCH_SIZE = 1024


def survey_rows(num_stars: int, names: list[str]) -> dict[str, np.ndarray]:
    """Rows of the simulated survey's train split (repeated if needed): every observation and error column."""
    import pyarrow.parquet as pq

    from dataset_builder.default_data import default_dataset

    shards = sorted((default_dataset() / "data").glob("train-*.parquet"))
    table = pq.read_table(shards)
    rows = np.resize(np.arange(table.num_rows), num_stars)
    columns = [name for name in table.column_names if name in names or name.removesuffix("_err") in names]
    return {name: table[name].to_numpy()[rows] for name in columns}


def naive_sample(values: torch.Tensor, errors: torch.Tensor, context: int, rng: np.random.Generator) -> dict:
    """The original code's sampling: a Python loop over stars, one target each, inputs padded to `context`."""
    size = len(values)
    input_ids = np.zeros((size, context), dtype=np.int64)
    input_values = np.zeros((size, context), dtype=np.float32)
    request_ids = np.zeros((size, 1), dtype=np.int64)
    labels = np.zeros((size, 1), dtype=np.float32)
    label_errors = np.zeros((size, 1), dtype=np.float32)
    values, errors = values.numpy(), errors.numpy()
    for star in range(size):
        present = rng.permutation(np.flatnonzero(np.isfinite(values[star])))
        target, inputs = present[0], present[1 : context + 1]
        inputs = inputs[: len(inputs) - rng.integers(0, max(min(len(inputs) - 1, 59), 0) + 1)]
        input_ids[star, : len(inputs)] = inputs + 1
        input_values[star, : len(inputs)] = values[star, inputs]
        request_ids[star, 0] = target + 1
        labels[star, 0], label_errors[star, 0] = values[star, target], errors[star, target]
    arrays = dict(input_ids=input_ids, input_values=input_values, request_ids=request_ids, labels=labels)
    batch = {key: torch.from_numpy(value) for key, value in arrays.items()}
    batch["label_errors"] = torch.from_numpy(label_errors)
    batch["attention_mask"] = (batch["input_ids"] != 0).long()
    return batch


def measure(phase: str, steps: int) -> dict:
    """Train `steps` timed AdamW steps (after one warm-up step) along path `phase`, in this process."""
    model, tokenizer = paper_model()
    model.train()
    names = tokenizer.observation_names
    data = survey_rows(BATCH_SIZE * (steps + 1), names)
    tokenizer.fit(data)
    collator = AstroDataCollator(tokenizer, num_targets=1, seed=0)
    values, errors = collator.encode(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if phase == "fast_bf16" else contextlib.nullcontext()
    )
    seconds = []
    for step in range(steps + 1):
        rows = slice(step * BATCH_SIZE, (step + 1) * BATCH_SIZE)
        start = time.perf_counter()
        if phase == "naive":
            batch = naive_sample(values[rows], errors[rows], tokenizer.context_length, rng)
        else:
            batch = collator.sample(values[rows], errors[rows])
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds.append(time.perf_counter() - start)
    return {
        "stars_per_s": round(BATCH_SIZE / float(np.median(seconds)), 1),
        "seconds": [round(s, 2) for s in seconds],
        "loss": float(loss.detach()),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phase", choices=["naive", "fast", "fast_bf16"])
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(measure(args.phase, args.steps)))
        return
    phases = {
        phase: run_phase(__file__, phase, "--steps", str(args.steps))
        for phase in ("naive", "fast", "fast_bf16")
    }
    best = max(("fast", "fast_bf16"), key=lambda phase: phases[phase]["stars_per_s"])
    result = {
        "benchmark": "training",
        "stars_per_s": phases[best]["stars_per_s"],
        "naive_stars_per_s": phases["naive"]["stars_per_s"],
        "speedup": round(phases[best]["stars_per_s"] / phases["naive"]["stars_per_s"], 2),
        "peak_rss_mb": phases[best]["peak_rss_mb"],
        "best_path": best,
        "naive_peak_rss_mb": phases["naive"]["peak_rss_mb"],
        "fast_fp32_stars_per_s": phases["fast"]["stars_per_s"],
        "fast_fp32_peak_rss_mb": phases["fast"]["peak_rss_mb"],
        "fast_bf16_stars_per_s": phases["fast_bf16"]["stars_per_s"],
        "fast_bf16_peak_rss_mb": phases["fast_bf16"]["peak_rss_mb"],
        "batch_size": BATCH_SIZE,
        "timed_steps": args.steps,
        "threads": THREADS,
        "load_average_1min": machine_load(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
