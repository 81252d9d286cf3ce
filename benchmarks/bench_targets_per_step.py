"""Several targets per star per step vs one (the paper): training time to a given validation loss.

    python benchmarks/bench_targets_per_step.py --targets 1 4 8 --max_steps 600 --eval_steps 100

Each setting trains the same model with train.py (same seed, same batches of stars, uniform targets as in the
paper); every `eval_steps` a checkpoint is kept. Afterwards every checkpoint is scored on the same validation
stars with the paper's task, ONE uniformly drawn target per star with fixed masks, so the losses are
comparable.
Reports, per setting, that loss against steps and training seconds, and the time to reach the final loss of
the
one-target run. Writes `results.json` in --output_dir.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from modeling_astro import AstroConfig, AstroFeatureExtractor, AstroForObservationPrediction  # noqa: E402
from modeling_astro.data_collator_astro import AstroDataCollator  # noqa: E402


def score_checkpoints(run_dir: Path, values, errors) -> dict[int, float]:
    """Paper-task validation loss (one uniform target, masks fixed by seed 0) of every checkpoint of a run."""
    config = AstroConfig.from_pretrained(run_dir)
    tokenizer = AstroFeatureExtractor.from_pretrained(run_dir)
    collator = AstroDataCollator(tokenizer, num_targets=1)
    model = AstroForObservationPrediction(config)
    losses = {}
    for checkpoint in sorted(
        (run_dir / train.CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name[11:])
    ):
        model.load_state_dict(load_file(checkpoint / "model.safetensors"))
        losses[int(checkpoint.name[11:])] = train.validation_loss(
            model, collator, values, errors, 512, seed=0
        )
    return losses


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset_dir", default=None, help="dataset folder (default: the embedded survey)")
    parser.add_argument("--output_dir", default="outputs/bench_targets_per_step")  # outputs/ is git-ignored
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--eval_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--model_preset", default="small")
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    dataset_dir, splits = train.load_splits(args.dataset_dir)
    results = {"dataset_dir": dataset_dir, "settings": {}}
    for num_targets in args.targets:
        run_dir = output / f"targets-{num_targets}"
        train.main(
            [
                "--dataset_dir",
                dataset_dir,
                "--output_dir",
                str(run_dir),
                "--model_preset",
                args.model_preset,
                "--num_targets",
                str(num_targets),
                "--label_target_fraction",
                "0",
                "--max_steps",
                str(args.max_steps),
                "--restart_steps",
                str(args.max_steps),
                "--batch_size",
                str(args.batch_size),
                "--eval_steps",
                str(args.eval_steps),
                "--save_steps",
                str(args.eval_steps),
                "--save_total_limit",
                "1000",
                "--max_train_minutes",
                "0",
                "--do_eval",
                "false",
                "--logging_steps",
                str(args.eval_steps),
            ]
        )
        tokenizer = AstroFeatureExtractor.from_pretrained(run_dir)
        values, errors = AstroDataCollator(tokenizer).encode(splits["validation"].iloc[:4096])
        elapsed = {r["step"]: r["elapsed_s"] for r in train.read_metrics(run_dir / train.METRICS_FILE)}
        losses = score_checkpoints(run_dir, values, errors)
        results["settings"][num_targets] = [
            {"step": step, "train_seconds": elapsed.get(step), "paper_task_val_loss": loss}
            for step, loss in losses.items()
        ]
    reference = min(args.targets)
    target_loss = results["settings"][reference][-1]["paper_task_val_loss"]
    results["target_loss"] = target_loss
    print(
        f"validation loss, one uniform target per star (lower is better); target = final loss of {reference}"
    )
    print(f"{'targets':>8} {'step':>6} {'seconds':>8} {'val loss':>9}")
    for num_targets, rows in results["settings"].items():
        for row in rows:
            print(
                f"{num_targets:>8} {row['step']:>6} {row['train_seconds']:>8} "
                f"{row['paper_task_val_loss']:>9.4f}"
            )
        reached = [row for row in rows if row["paper_task_val_loss"] <= target_loss]
        results.setdefault("time_to_target", {})[num_targets] = (
            {"step": reached[0]["step"], "train_seconds": reached[0]["train_seconds"]} if reached else None
        )
    (output / "results.json").write_text(json.dumps(results, indent=1))
    summary = {key: results[key] for key in ("target_loss", "time_to_target")}
    print(json.dumps({"benchmark": "targets_per_step", **summary}))  # last line: JSON, as run_all reads it
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
