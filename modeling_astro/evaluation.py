"""The paper's evaluation: Teff, log g and [M/H] from Gaia XP + colours on held-out stars, against XGBoost.

    python -m modeling_astro.evaluation --model DIR --data DIR --output_dir DIR

Inputs are BP 0-29, RP 0-29 (divided by the G flux), BP-RP, J-H and J-K, as in Leung & Bovy (2024);
predictions of
the test split are compared to its labels. Results go to `eval_results.json` (per label: the model's and
XGBoost's
`mad_std`, `bias`, `rmse`, `outlier_fraction`, the model's `coverage_1sigma` and PIT histogram) with
predicted-vs-true PNG plots.
"""

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.stats import mad_std
from huggingface_hub.repocard import metadata_load
from scipy.stats import norm

from .inference import AstroPredictor
from .observations import EVALUATION_INPUTS, EVALUATION_LABELS

SPLITS = ("train", "validation", "test")
LABEL_TITLES = {"teff": "Teff [K]", "logg": "log g [dex]", "m_h": "[M/H] [dex]"}
OUTLIER_MAD_STDS = 3.0
PIT_BINS = 10


def residual_metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAD-std, median bias, RMSE and the fraction of residuals beyond `OUTLIER_MAD_STDS` MAD-stds of bias."""
    residual = np.asarray(predicted, dtype=float) - np.asarray(true, dtype=float)
    spread = float(mad_std(residual))
    bias = float(np.median(residual))
    return {
        "mad_std": spread,
        "bias": bias,
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "outlier_fraction": float(np.mean(np.abs(residual - bias) > OUTLIER_MAD_STDS * spread)),
    }


def calibration_metrics(
    predicted: np.ndarray, sigma: np.ndarray, true: np.ndarray, true_error: np.ndarray
) -> dict:
    """Fraction of |z| < 1 and the PIT histogram, with z = residual / sqrt(sigma_model^2 + sigma_label^2)."""
    z = (predicted - true) / np.sqrt(sigma**2 + np.nan_to_num(true_error) ** 2)
    pit = norm.cdf(z)
    histogram, _ = np.histogram(pit, bins=PIT_BINS, range=(0.0, 1.0))
    return {"coverage_1sigma": float(np.mean(np.abs(z) < 1)), "pit_histogram": (histogram / len(z)).tolist()}


def xgboost_predictions(
    splits: dict[str, pd.DataFrame], seed: int = 0
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One XGBoost regressor per label on the evaluation inputs, early-stopped on the validation split."""
    try:
        import xgboost
    except ImportError as error:
        raise ImportError(
            "The XGBoost baseline needs xgboost: `pip install xgboost-cpu` (CPU-only wheel) or "
            "`pip install xgboost`."
        ) from error
    params = {
        "eta": 0.05,
        "max_depth": 7,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "tree_method": "hist",
        "nthread": os.cpu_count(),
        "seed": seed,
    }
    inputs = list(EVALUATION_INPUTS)
    test = xgboost.DMatrix(splits["test"][inputs])
    predictions, rounds = {}, {}
    for label in EVALUATION_LABELS:
        train = splits["train"][np.isfinite(splits["train"][label])]
        validation = splits["validation"][np.isfinite(splits["validation"][label])]
        booster = xgboost.train(
            params,
            xgboost.DMatrix(train[inputs], label=train[label]),
            num_boost_round=2000,
            evals=[(xgboost.DMatrix(validation[inputs], label=validation[label]), "validation")],
            early_stopping_rounds=50,
            verbose_eval=False,
        )
        predictions[label] = booster.predict(test, iteration_range=(0, booster.best_iteration + 1))
        rounds[label] = booster.best_iteration + 1
    return pd.DataFrame(predictions), rounds


def load_split_tables(
    data_dir: str, required: Sequence[str] = (*EVALUATION_INPUTS, *EVALUATION_LABELS)
) -> dict:
    """
    train/validation/test of a dataset folder as pandas DataFrames, read from the parquet files its card's
    `configs` name (no `datasets` cache, which can serve stale tables for a rewritten folder). Raises
    `ValueError`
    naming the split and the columns of `required` it lacks.
    """
    folder = Path(data_dir)
    if not (folder / "README.md").is_file():
        raise ValueError(
            f"{data_dir} is not a dataset folder (no README.md with the split configuration): build one with "
            "`python -m dataset_builder build`."
        )
    configs = (metadata_load(folder / "README.md") or {}).get("configs") or [{"data_files": []}]
    patterns = {entry["split"]: entry["path"] for entry in configs[0]["data_files"]}
    tables = {}
    for split in SPLITS:
        files = sorted(folder.glob(patterns.get(split, f"data/{split}-*.parquet")))
        if not files:
            raise ValueError(f"Dataset {data_dir} has no {split!r} split (no data/{split}-*.parquet files).")
        shards = []
        for file in files:  # per shard: a concat would fill a column one shard lacks with NaN
            shards.append(pd.read_parquet(file))
            missing = [name for name in required if name not in shards[-1].columns]
            if missing:
                raise ValueError(
                    f"The {split!r} split of {data_dir} lacks required column(s) {missing[:8]}"
                    f"{' ...' if len(missing) > 8 else ''} in {file}; rebuild the dataset with "
                    "`python -m dataset_builder build`."
                )
        tables[split] = pd.concat(shards, ignore_index=True)
    return tables


def plot_predictions(
    true: pd.DataFrame, model: pd.DataFrame, baseline: pd.DataFrame | None, path: Path
) -> None:
    """Predicted-vs-true panels per label (model, and XGBoost when given), saved atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("model", model)] + ([("XGBoost", baseline)] if baseline is not None else [])
    with matplotlib.rc_context({"text.usetex": False}):  # some astronomy packages switch LaTeX on globally
        figure, axes = plt.subplots(
            len(rows),
            len(EVALUATION_LABELS),
            squeeze=False,
            figsize=(4 * len(EVALUATION_LABELS), 4 * len(rows)),
        )
        for row, (name, predicted) in enumerate(rows):
            for column, label in enumerate(EVALUATION_LABELS):
                axis = axes[row, column]
                low, high = np.nanpercentile(true[label], [0.5, 99.5])
                axis.scatter(true[label], predicted[label], s=2, alpha=0.3, rasterized=True)
                axis.plot([low, high], [low, high], color="k", lw=1)
                axis.set(
                    xlim=(low, high),
                    ylim=(low, high),
                    xlabel=f"label {LABEL_TITLES[label]}",
                    ylabel=f"{name} {LABEL_TITLES[label]}",
                )
                spread = mad_std(predicted[label] - true[label], ignore_nan=True)
                axis.set_title(f"{name}: MAD-std {spread:.3g}")
        figure.tight_layout()
        temporary = path.with_name(path.stem + ".tmp.png")
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def evaluate(
    model_path: str,
    data_dir: str,
    output_dir: str,
    baseline: bool = True,
    predictor_kwargs: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Run the paper's protocol on the test split of `data_dir` with the model saved in `model_path`.

    Stars are evaluated when they have all 60 XP coefficients of the inputs and the label. Returns (and writes
    to
    `output_dir/eval_results.json`) per label the model's `mad_std`, `bias`, `rmse`,
    `outlier_fraction`, `coverage_1sigma`, `pit_histogram` and the number of test stars, plus XGBoost's
    metrics
    under `xgboost_<name>` when `baseline` is true. Also writes `predicted_vs_true.png`. `predictor_kwargs` go to
    `AstroPredictor.from_pretrained` (default device: the CPU); `training` (facts of the run that made the model:
    threads, steps/s, planned steps) is recorded under `"training"`.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    splits = load_split_tables(data_dir)
    test = splits["test"]
    predictor = AstroPredictor.from_pretrained(model_path, **{"device": "cpu", **(predictor_kwargs or {})})
    inputs = {name: test[name].to_numpy() for name in EVALUATION_INPUTS}
    inputs.update(
        {f"{name}_err": test[f"{name}_err"].to_numpy() for name in EVALUATION_INPUTS if f"{name}_err" in test}
    )
    started = time.perf_counter()
    model = predictor.predict(inputs, request=list(EVALUATION_LABELS))
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    xgb, rounds = xgboost_predictions(splits) if baseline else (None, {})
    xgb_seconds = time.perf_counter() - started

    results: dict[str, Any] = {"test_stars": len(test), "model_predict_seconds": round(model_seconds, 2)}
    if training is not None:
        results["training"] = training
    if baseline:
        results.update({"xgboost_fit_seconds": round(xgb_seconds, 2), "xgboost_rounds": rounds})
    has_xp = np.isfinite(test[list(EVALUATION_INPUTS[:60])].to_numpy()).all(axis=1)  # the paper's test stars
    for label in EVALUATION_LABELS:
        labelled = has_xp & np.isfinite(test[label].to_numpy()) & np.isfinite(model[label].to_numpy())
        true = test[label].to_numpy()[labelled]
        error = (
            test[f"{label}_err"].to_numpy()[labelled] if f"{label}_err" in test else np.zeros(labelled.sum())
        )
        entry = {
            "num_stars": int(labelled.sum()),
            **residual_metrics(model[label].to_numpy()[labelled], true),
        }
        entry.update(
            calibration_metrics(
                model[label].to_numpy()[labelled], model[f"{label}_sigma"].to_numpy()[labelled], true, error
            )
        )
        if baseline:
            entry.update(
                {
                    f"xgboost_{k}": v
                    for k, v in residual_metrics(xgb[label].to_numpy()[labelled], true).items()
                }
            )
        results[label] = entry
    paper_stars = [frame[has_xp].reset_index(drop=True) if frame is not None else None for frame in (test, model, xgb)]
    plot_predictions(*paper_stars, output / "predicted_vs_true.png")  # the same stars as the table
    temporary = output / "eval_results.json.tmp"
    temporary.write_text(json.dumps(results, indent=2))
    os.replace(temporary, output / "eval_results.json")
    return results


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The side-by-side table of `evaluate`'s results (plain text, or Markdown for the model card)."""
    has_baseline = "xgboost_mad_std" in results[EVALUATION_LABELS[0]]
    header = ["label", "model MAD-std", "model bias", "model RMSE", "model outliers", "coverage 1σ"]
    if has_baseline:
        header += ["XGBoost MAD-std", "XGBoost bias", "XGBoost RMSE", "XGBoost outliers", "model better"]
    rows = []
    for label in EVALUATION_LABELS:
        entry = results[label]
        row = [
            LABEL_TITLES[label],
            f"{entry['mad_std']:.4g}",
            f"{entry['bias']:+.3g}",
            f"{entry['rmse']:.4g}",
            f"{entry['outlier_fraction']:.3f}",
            f"{entry['coverage_1sigma']:.3f}",
        ]
        if has_baseline:
            row += [
                f"{entry['xgboost_mad_std']:.4g}",
                f"{entry['xgboost_bias']:+.3g}",
                f"{entry['xgboost_rmse']:.4g}",
                f"{entry['xgboost_outlier_fraction']:.3f}",
                "yes" if entry["mad_std"] < entry["xgboost_mad_std"] else "no",
            ]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *rows]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: `python -m modeling_astro.evaluation --model DIR --data DIR --output_dir DIR`."""
    parser = argparse.ArgumentParser(
        prog="python -m modeling_astro.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) saved by train.py")
    parser.add_argument("--data", required=True, help="dataset folder with train/validation/test splits")
    parser.add_argument("--output_dir", required=True, help="where eval_results.json and the plots go")
    parser.add_argument("--no_baseline", action="store_true", help="skip the XGBoost baseline")
    args = parser.parse_args(argv)
    results = evaluate(args.model, args.data, args.output_dir, baseline=not args.no_baseline)
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
