"""Shared plumbing of the example scripts: model/data arguments, loading, the JSON result line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def parser(description: str, data: bool = False) -> argparse.ArgumentParser:
    """An argument parser with ``--model DIR``, ``--out PNG`` and, with ``data``, ``--data DIR`` options."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--model", required=True, help="checkpoint folder (model + tokenizer)")
    arguments.add_argument("--out", default=None, help="where to write the PNG plot (default: no plot)")
    arguments.add_argument("--batch-size", type=int, default=1024, help="stars per forward pass")
    if data:
        arguments.add_argument("--data", required=True, help="dataset folder written by dataset_builder")
        arguments.add_argument("--split", default="test", help="dataset split (default: test)")
        arguments.add_argument("--max-stars", type=int, default=5000, help="use at most this many stars")
    return arguments


def load_predictor(args: argparse.Namespace):
    """The ``AstroPredictor`` of ``args.model`` (loaded with trust_remote_code, as a user would)."""
    from modeling_astro.inference import AstroPredictor

    if not Path(args.model).is_dir():
        raise SystemExit(f"--model {args.model!r} is not a folder; pass a checkpoint folder.")
    return AstroPredictor.from_pretrained(args.model, batch_size=args.batch_size)


def load_stars(args: argparse.Namespace) -> pd.DataFrame:
    """The first ``args.max_stars`` stars of split ``args.split`` of the dataset folder ``args.data``."""
    from datasets import load_dataset

    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data!r} is not a folder; pass a dataset_builder output folder.")
    split = load_dataset(args.data, split=args.split)
    return split.select(range(min(args.max_stars, len(split)))).to_pandas()


def report(result: dict) -> None:
    """Print the key figures as one JSON line (the last line of every example's output)."""
    print(json.dumps({key: _plain(value) for key, value in result.items()}))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
