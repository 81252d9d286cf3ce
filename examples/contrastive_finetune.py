"""Contrastive fine-tuning: align the spectra-only and labels-only embeddings of the same star (InfoNCE).

    PYTHONPATH=. python examples/contrastive_finetune.py --model CHECKPOINT --data DATASET --save OUT_DIR \
        --out loss.png

Trains on the train split, measures the top-1 accuracy of retrieving a star's labels-only embedding from its
spectra-only one on held-out stars (--split) before and after, saves the fine-tuned checkpoint (atomically)
and prints both accuracies as the last line (JSON).
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import load_predictor, load_stars, parser, report

from modeling_astro.tasks import (
    LABELS_VIEW,
    SPECTRA_INPUTS,
    contrastive_finetune,
    embed_stars,
    retrieval_accuracy,
)
from modeling_astro.tasks.plotting import new_figure, save_figure


def held_out_accuracy(predictor, stars) -> float:
    """Top-1 spectra -> labels retrieval accuracy over the stars that have both views."""
    spectra = embed_stars(predictor, stars, SPECTRA_INPUTS)
    labels = embed_stars(predictor, stars, LABELS_VIEW)
    both = np.isfinite(spectra).all(axis=1) & np.isfinite(labels).all(axis=1)
    return retrieval_accuracy(spectra[both], labels[both])


def save_atomically(predictor, path: str) -> None:
    """Save model and tokenizer into a temporary sibling folder, then move it to ``path``."""
    target = Path(path)
    if target.exists():
        raise SystemExit(f"--save {path!r} exists; choose a new folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        predictor.model.save_pretrained(staging)
        predictor.tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main() -> None:
    arguments = parser(__doc__.splitlines()[0], data=True)
    arguments.add_argument("--save", default=None, help="folder for the fine-tuned checkpoint")
    arguments.add_argument("--train-stars", type=int, default=20000)
    arguments.add_argument("--steps", type=int, default=300)
    arguments.add_argument("--learning-rate", type=float, default=3e-4)
    arguments.add_argument("--temperature", type=float, default=0.1)
    args = arguments.parse_args()
    predictor = load_predictor(args)
    held_out = load_stars(args)
    train = load_stars(type(args)(**{**vars(args), "split": "train", "max_stars": args.train_stars}))
    before = held_out_accuracy(predictor, held_out)
    losses = contrastive_finetune(
        predictor.model,
        predictor.tokenizer,
        train,
        steps=args.steps,
        learning_rate=args.learning_rate,
        temperature=args.temperature,
    )
    after = held_out_accuracy(predictor, held_out)
    if args.save:
        save_atomically(predictor, args.save)
    if args.out:
        figure, (axis,) = new_figure()
        axis.plot(losses)
        axis.set_xlabel("step")
        axis.set_ylabel("InfoNCE loss")
        save_figure(figure, args.out)
    report(
        {
            "task": "contrastive_finetune",
            "steps": args.steps,
            "top1_accuracy_before": round(before, 4),
            "top1_accuracy_after": round(after, 4),
        }
    )


if __name__ == "__main__":
    main()
