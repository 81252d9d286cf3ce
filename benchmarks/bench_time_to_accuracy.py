"""Time to accuracy: validation NLL and XP -> labels MAD-std against wall-clock training minutes.

    python benchmarks/bench_time_to_accuracy.py [--minutes 10] [--settings paper defaults] [--checkpoints 8]

Each setting runs train.py on the same data for the same time budget (`--max_train_minutes`, steps planned by
train.py from its measured speed) and keeps a checkpoint at `--checkpoints` evenly spaced steps. Every checkpoint is
then scored on the same validation stars: the paper's task loss (one uniformly drawn target per star, fixed masks:
comparable across settings) and the MAD-std of Teff, log g and [M/H] predicted from the paper's XP + colour
inputs. Settings: `paper` (one uniform target per star, no prompts: the paper's sampling), `defaults` (train.py's
defaults), or `name=--option value ...` for any other train.py arguments. Writes `results.json` and
`time_to_accuracy.png` in --output_dir; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from astropy.stats import mad_std
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_targets_per_step import score_checkpoints  # noqa: E402
from common import cpu_description, machine_load  # noqa: E402

import train  # noqa: E402
from modeling_astro import AstroConfig, AstroFeatureExtractor, AstroForObservationPrediction  # noqa: E402
from modeling_astro.data_collator_astro import AstroDataCollator  # noqa: E402
from modeling_astro.inference import AstroPredictor  # noqa: E402
from modeling_astro.observations import EVALUATION_INPUTS, EVALUATION_LABELS  # noqa: E402
from modeling_astro.tasks.plotting import new_figure, save_figure  # noqa: E402

#: train.py arguments of the named settings.
SETTINGS = {
    "paper": [
        "--num_targets", "1", "--label_target_fraction", "0", "--prompts", "{}",
    ],
    "defaults": [],
}  # fmt: skip


def parse_setting(text: str) -> tuple[str, list[str]]:
    """`paper`, `defaults` or `name=--option value ...` -> (name, train.py arguments)."""
    if "=" in text:
        name, options = text.split("=", 1)
        return name, shlex.split(options)
    if text not in SETTINGS:
        raise SystemExit(f"unknown setting {text!r}: use one of {sorted(SETTINGS)} or name='--option value ...'")
    return text, SETTINGS[text]


def label_mad_std(run_dir: Path, table, steps: list[int]) -> dict[int, dict[str, float]]:
    """MAD-std of the paper's labels predicted from its XP + colour inputs, per checkpoint step."""
    config = AstroConfig.from_pretrained(run_dir)
    tokenizer = AstroFeatureExtractor.from_pretrained(run_dir)
    model = AstroForObservationPrediction(config)
    has_xp = np.isfinite(table[list(EVALUATION_INPUTS[:60])].to_numpy()).all(axis=1)
    inputs = {name: table[name].to_numpy()[has_xp] for name in EVALUATION_INPUTS}
    truth = {label: table[label].to_numpy()[has_xp] for label in EVALUATION_LABELS}
    scores = {}
    for step in steps:
        model.load_state_dict(load_file(run_dir / train.CHECKPOINTS / f"checkpoint-{step}" / "model.safetensors"))
        predicted = AstroPredictor(model, tokenizer, device="cpu").predict(
            inputs, request=list(EVALUATION_LABELS), progress=False
        )
        scores[step] = {}
        for label in EVALUATION_LABELS:
            residual = predicted[label].to_numpy() - truth[label]
            scores[step][label] = float(mad_std(residual[np.isfinite(residual)]))
    return scores


def plot(results: dict, path: Path) -> Path:
    """Validation NLL and the three MAD-stds against training minutes, one line per setting."""
    figure, axes = new_figure(ncols=4, width=4.6, height=3.4)
    for name, rows in results["settings"].items():
        minutes = [row["train_seconds"] / 60 for row in rows]
        axes[0].plot(minutes, [row["paper_task_val_loss"] for row in rows], marker="o", label=name)
        for axis, label in zip(axes[1:], EVALUATION_LABELS):
            axis.plot(minutes, [row["mad_std"][label] for row in rows], marker="o", label=name)
    axes[0].set_ylabel("validation NLL (paper task)")
    for axis, label in zip(axes[1:], EVALUATION_LABELS):
        axis.set_ylabel(f"{label} MAD-std (validation)")
    for axis in axes:
        axis.set_xlabel("training minutes")
        axis.legend()
    figure.suptitle(f"time to accuracy on {results['cpu']['model_name']}, {results['threads']} threads")
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=None, help="dataset folder (default: the embedded survey)")
    parser.add_argument("--output_dir", default="outputs/bench_time_to_accuracy")  # outputs/ is git-ignored
    parser.add_argument("--settings", nargs="+", default=["paper", "defaults"])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each setting")
    parser.add_argument("--checkpoints", type=int, default=8, help="checkpoints scored per setting")
    parser.add_argument("--steps_per_minute", type=float, default=None, help="default: measured by a short run")
    parser.add_argument("--validation_stars", type=int, default=4096)
    parser.add_argument("--extra", default="", help="train.py arguments given to every setting")
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    dataset_dir, splits = train.load_splits(args.dataset_dir)
    validation = splits["validation"].iloc[: args.validation_stars]
    results = {
        "dataset_dir": dataset_dir,
        "minutes": args.minutes,
        "threads": train.cpu_threads(1),
        "cpu": cpu_description(),
        "settings": {},
    }
    for text in args.settings:
        name, options = parse_setting(text)
        run_dir = output / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run of the setting
        # Checkpoints every `save_steps`: the steps that fit in the budget are planned by train.py itself, so
        # the spacing is estimated from a first short timing of the same setting.
        save_steps = max(1, int(estimate_steps(dataset_dir, run_dir, options, args) / args.checkpoints))
        train.main(
            [
                "--dataset_dir", dataset_dir, "--output_dir", str(run_dir),
                "--max_steps", "0", "--max_train_minutes", str(args.minutes),
                "--save_steps", str(save_steps), "--save_total_limit", "1000", "--logging_steps", str(save_steps),
                "--eval_steps", str(save_steps), "--do_eval", "false",
                *shlex.split(args.extra), *options,
            ]
        )  # fmt: skip
        tokenizer = AstroFeatureExtractor.from_pretrained(run_dir)
        values, errors = AstroDataCollator(tokenizer).encode(validation)
        elapsed = {r["step"]: r["elapsed_s"] for r in train.read_metrics(run_dir / train.METRICS_FILE)}
        losses = score_checkpoints(run_dir, values, errors)
        scores = label_mad_std(run_dir, validation, list(losses))
        results["settings"][name] = [
            {"step": step, "train_seconds": elapsed.get(step), "paper_task_val_loss": loss, "mad_std": scores[step]}
            for step, loss in losses.items()
            if elapsed.get(step) is not None
        ]
        results.setdefault("arguments", {})[name] = options
    output.mkdir(parents=True, exist_ok=True)
    results["plot"] = str(plot(results, output / "time_to_accuracy.png"))
    results["load_average_1min"] = machine_load()
    temporary = output / "results.json.tmp"
    temporary.write_text(json.dumps(results, indent=1))
    temporary.replace(output / "results.json")
    final = {name: rows[-1] for name, rows in results["settings"].items() if rows}
    print(json.dumps({"benchmark": "time_to_accuracy", "minutes": args.minutes, "final": final, "cpu": results["cpu"]}))
    return results


def estimate_steps(dataset_dir: str, run_dir: Path, options: list[str], args) -> float:
    """Steps the setting fits in `--minutes`: `--steps_per_minute`, else timed over a 25-step run of it."""
    if args.steps_per_minute:
        return args.steps_per_minute * args.minutes
    probe = run_dir.with_name(run_dir.name + "-timing")
    shutil.rmtree(probe, ignore_errors=True)
    train.main(
        [
            "--dataset_dir", dataset_dir, "--output_dir", str(probe),
            "--max_steps", str(train.PLAN_STEPS), "--save_steps", "1000000", "--do_eval", "false",
            *shlex.split(args.extra), *options,
        ]
    )  # fmt: skip
    run = json.loads((probe / "training_args.json").read_text())
    torch.set_num_threads(train.cpu_threads(1))
    return run["steps_per_s"] * 60 * args.minutes


if __name__ == "__main__":
    main()
