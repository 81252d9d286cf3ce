"""The paper's evaluation: Teff, log g and [M/H] from Gaia XP + colours on held-out stars, against XGBoost.

    python -m modeling_astro.evaluation --model DIR --data DIR --output_dir DIR

Inputs are BP 0-29, RP 0-29 (divided by the G flux), BP-RP, J-H and J-K, as in Leung & Bovy (2024); predictions of
the test split are compared to its labels. Results go to `eval_results.json` (per label: the model's and XGBoost's
`mad_std`, `bias`, `rmse`, `outlier_fraction`, the model's `coverage_1sigma`, PIT histogram and
`calibration_error`) with predicted-vs-true PNG plots. The metrics are the `evaluate` metric module
`metrics/stellar_regression` (its README.md defines them), loaded with `evaluate.load`.
"""

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from huggingface_hub.repocard import metadata_load

from .feature_extraction_astro import StarTable
from .inference import AstroPredictor
from .io_utils import atomic_path, atomic_write_text
from .observations import EVALUATION_INPUTS, EVALUATION_LABELS

SPLITS = ("train", "validation", "test")
LABEL_TITLES = {"teff": "Teff [K]", "logg": "log g [dex]", "m_h": "[M/H] [dex]"}
METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "stellar_regression"  # the `evaluate` metric module


def load_metric(config_name: str = "default"):
    """
    The project's `evaluate` metric module (`metrics/stellar_regression`, see its README.md): configuration
    "default" takes predictions, references, sigmas and reference_errors; "residuals" predictions and references.
    """
    import evaluate as hf_evaluate  # this module's `evaluate` function would shadow the library's name

    return hf_evaluate.load(str(METRIC_PATH), config_name)


def trainer_compute_metrics(tokenizer, label_names: Sequence[str] = EVALUATION_LABELS) -> Callable[[Any], dict]:
    """
    A `compute_metrics` for `transformers.Trainer` that scores the predicted targets of `label_names` with the
    metric module, in physical units. Run the Trainer with `label_names=["labels", "request_ids",
    "label_errors"]` (so that each target's observation and error reach the metric) and a collator that makes
    those labels targets (e.g. `AstroDataCollator(..., label_names=label_names, label_target_fraction=1.0)`).
    Returns `{<label>_<metric>: value}` floats (the PIT histogram is left out of the logged metrics).
    """
    metric = load_metric()
    token_ids = {name: tokenizer.token_id(name) for name in label_names}

    def compute_metrics(evaluation) -> dict[str, float]:
        mean, logvar = evaluation.predictions[:2]
        if not isinstance(evaluation.label_ids, tuple) or len(evaluation.label_ids) != 3:
            raise ValueError(
                "trainer_compute_metrics needs the Trainer's label_ids as (labels, request_ids, label_errors): set "
                'TrainingArguments(label_names=["labels", "request_ids", "label_errors"]).'
            )
        labels, request_ids, label_errors = (np.asarray(array) for array in evaluation.label_ids)
        request_ids = request_ids.astype(np.int64)  # padding between batches is -100: no observation's id
        ids = request_ids.clip(0)
        value, sigma = tokenizer.inverse_transform(np.asarray(mean), np.asarray(logvar), ids)
        true, scale = tokenizer.inverse_transform(labels, np.zeros_like(labels), ids)  # sigma of logvar 0: the scale
        true_error = label_errors * scale
        results = {}
        for name, token in token_ids.items():
            chosen = (request_ids == token) & (labels != -100) & np.isfinite(labels)
            if not chosen.any():
                continue
            entry = metric.compute(
                predictions=value[chosen],
                references=true[chosen],
                sigmas=sigma[chosen],
                reference_errors=true_error[chosen],
                ignore_nan=True,
            )
            results.update({f"{name}_{key}": float(v) for key, v in entry.items() if key != "pit_histogram"})
        return results

    return compute_metrics


def xgboost_predictions(splits: dict[str, pd.DataFrame], seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """One XGBoost regressor per label on the evaluation inputs, early-stopped on the validation split."""
    try:
        import xgboost
    except ImportError as error:
        raise ImportError(
            "The XGBoost baseline needs xgboost: `pip install xgboost-cpu` (CPU-only wheel) or `pip install xgboost`."
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


def load_split_tables(data_dir: str, required: Sequence[str] = (*EVALUATION_INPUTS, *EVALUATION_LABELS)) -> dict:
    """
    train/validation/test of a dataset folder as pandas DataFrames, read from the parquet files its card's
    `configs` name (no `datasets` cache, which can serve stale tables for a rewritten folder). Raises `ValueError`
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
    true: pd.DataFrame, model: pd.DataFrame, baseline: pd.DataFrame | None, path: Path, results: dict[str, Any]
) -> None:
    """
    Predicted-vs-true panels per label (model, and XGBoost when given), titled with the MAD-std of `results`
    (`evaluate`'s), saved atomically as a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("model", model, "")] + ([("XGBoost", baseline, "xgboost_")] if baseline is not None else [])
    with matplotlib.rc_context({"text.usetex": False}):  # some astronomy packages switch LaTeX on globally
        figure, axes = plt.subplots(
            len(rows),
            len(EVALUATION_LABELS),
            squeeze=False,
            figsize=(4 * len(EVALUATION_LABELS), 4 * len(rows)),
        )
        for row, (name, predicted, prefix) in enumerate(rows):
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
                axis.set_title(f"{name}: MAD-std {results[label][prefix + 'mad_std']:.3g}")
        figure.tight_layout()
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


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

    Stars are evaluated when they have all 60 XP coefficients of the inputs and the label. Returns (and writes to
    `output_dir/eval_results.json`) per label the model's `mad_std`, `bias`, `rmse`, `outlier_fraction`,
    `coverage_1sigma`, `pit_histogram` and the number of test stars, plus XGBoost's metrics under `xgboost_<name>`
    when `baseline` is true. Also writes `predicted_vs_true.png`. `predictor_kwargs` go to
    `AstroPredictor.from_pretrained` (default device: the CPU); `training` (facts of the run that made the model:
    threads, steps/s, planned steps) is recorded under `"training"`.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    splits = load_split_tables(data_dir)
    test = splits["test"]
    predictor = AstroPredictor.from_pretrained(model_path, **{"device": "cpu", **(predictor_kwargs or {})})
    inputs = StarTable(test).select(EVALUATION_INPUTS)
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
    with_sigmas, residuals_only = load_metric(), load_metric("residuals")
    for label in EVALUATION_LABELS:
        labelled = has_xp & np.isfinite(test[label].to_numpy()) & np.isfinite(model[label].to_numpy())
        true = test[label].to_numpy()[labelled]
        error_column = StarTable(test).error_column(label)
        error = test[error_column].to_numpy()[labelled] if error_column else np.zeros(labelled.sum())
        entry = with_sigmas.compute(
            predictions=model[label].to_numpy()[labelled],
            references=true,
            sigmas=model[f"{label}_sigma"].to_numpy()[labelled],
            reference_errors=error,
        )
        entry["num_stars"] = entry.pop("num_examples")
        if baseline:
            baseline_entry = residuals_only.compute(predictions=xgb[label].to_numpy()[labelled], references=true)
            entry.update({f"xgboost_{k}": v for k, v in baseline_entry.items() if k != "num_examples"})
        results[label] = entry
    paper_stars = [frame[has_xp].reset_index(drop=True) if frame is not None else None for frame in (test, model, xgb)]
    plot_predictions(*paper_stars, output / "predicted_vs_true.png", results)  # the stars of the table
    atomic_write_text(output / "eval_results.json", json.dumps(results, indent=2))
    return results


MODEL_INDEX_METRICS = ("mad_std", "bias", "rmse", "outlier_fraction", "coverage_1sigma", "calibration_error")


def add_model_index(card_text: str, results: dict[str, Any], model_name: str, dataset_name: str) -> str:
    """
    `card_text` (a model card with YAML front matter) with a `model-index` carrying `evaluate`'s results: one
    task, with one metric `<label>_<metric>` per label and metric of `MODEL_INDEX_METRICS` (units of the label;
    test split).
    """
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard(card_text)
    card.data.model_name = model_name
    card.data.eval_results = [
        EvalResult(
            task_type="tabular-regression",
            task_name="Gaia XP and colours to Teff, log g and [M/H]",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=f"{label}_{metric}",
            metric_name=f"{LABEL_TITLES[label]} {metric}",
            metric_config="stellar_regression",
            metric_value=float(results[label][metric]),
        )
        for label in EVALUATION_LABELS
        for metric in MODEL_INDEX_METRICS
        if metric in results[label]
    ]
    return str(card)


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
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *rows])


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
