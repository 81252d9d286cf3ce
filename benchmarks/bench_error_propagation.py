"""Covariance-aware inference: 1-sigma coverage of XP -> labels with no input errors, diagonal and full covariance.

A simulated survey with the instrument forward model (`xp_model="hermite"`: DR3-like errors correlated through real
DR3 correlation matrices) is built into a dataset; a model is trained on it with `train.py` (or `--model` is used);
then the test stars' Teff / log g / [M/H] are predicted from the paper's inputs (bp0-29, rp0-29, BP-RP, J-H, J-K)
three ways with `AstroPredictor.predict`:

(a) ``n_samples=0``: the model's own sigma, input errors not propagated;
(b) ``n_samples=K``: input errors drawn independently (diagonal covariance);
(c) ``n_samples=K, correlations=``: the XP coefficients drawn from each band's full covariance, the correlations
    read from the survey's XP files with `dataset_builder.readers.read_xp_correlations`.

Coverage is the `evaluate` metric module's `coverage_1sigma` (|residual| < sqrt(sigma^2 + label error^2)), against
the APOGEE-like labels of the test split; 0.683 is calibrated. Writes a PNG (coverage per label and mode) and prints
one JSON line last.

Run: ``python benchmarks/bench_error_propagation.py [--n-stars 20000] [--train-minutes 6] [--n-samples 32]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, THREADS, cpu_description, machine_load  # noqa: E402

from modeling_astro.evaluation import load_metric, load_split_tables  # noqa: E402
from modeling_astro.inference import AstroPredictor  # noqa: E402
from modeling_astro.observations import ERROR_SUFFIX, EVALUATION_INPUTS, LABELS  # noqa: E402

MODES = ("no input errors", "diagonal", "full covariance")


def build_survey(work: Path, n_stars: int, seed: int) -> tuple[Path, list[Path]]:
    """Simulate (hermite) and build; returns the dataset folder and the XP files (with their correlations)."""
    from dataset_builder.build import build_dataset
    from dataset_builder.simulate import simulate_survey

    files = simulate_survey(work / "raw", n_stars=n_stars, seed=seed, xp_model="hermite")
    build_dataset(files.xp_files, files.gaia_source, files.allstar, work / "dataset", extra=[files.truth])
    return work / "dataset", list(files.xp_files)


def train(dataset: Path, out: Path, minutes: float, preset: str, seed: int) -> Path:
    command = [
        *(sys.executable, str(REPO / "train.py"), "--dataset_dir", str(dataset), "--output_dir", str(out)),
        *("--model_preset", preset, "--max_train_minutes", str(minutes), "--seed", str(seed)),
        *("--do_eval", "false", "--num_threads", str(THREADS)),
    ]
    subprocess.run(command, check=True, cwd=REPO)
    return out


def correlations_for(xp_files: list[Path], source_id: np.ndarray) -> dict[str, np.ndarray]:
    """Each band's packed correlations (n, 1485) of the stars `source_id`, NaN rows where a star has none."""
    from dataset_builder.readers import read_xp_correlations

    parts = [read_xp_correlations(path) for path in xp_files]
    ids = np.concatenate([part["source_id"] for part in parts])
    position = pd.Series(np.arange(len(ids)), index=ids).reindex(source_id).to_numpy()
    out = {}
    for band in ("bp", "rp"):
        values = np.concatenate([part[band] for part in parts])
        rows = np.full((len(source_id), values.shape[1]), np.nan)
        found = ~np.isnan(position)
        rows[found] = values[position[found].astype(int)]
        out[band] = rows
    return out


def coverage(table: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    metric = load_metric()
    out = {}
    for label in LABELS:
        known = test[label].notna().to_numpy() & table[label].notna().to_numpy()
        error = test.get(label + ERROR_SUFFIX, pd.Series(np.zeros(len(test)))).fillna(0.0).to_numpy()[known]
        result = metric.compute(
            predictions=table[label].to_numpy()[known],
            references=test[label].to_numpy()[known],
            sigmas=table[label + "_sigma"].to_numpy()[known],
            reference_errors=error,
        )
        out[label] = round(float(result["coverage_1sigma"]), 4)
    return out


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    from modeling_astro.tasks.plotting import new_figure, save_figure  # Agg, and LaTeX off (gaiaxpy turns it on)

    figure, (axis,) = new_figure(width=6, height=3.5)
    width = 0.8 / len(results)
    for k, (mode, values) in enumerate(results.items()):
        axis.bar(np.arange(len(LABELS)) + k * width, [values[label] for label in LABELS], width, label=mode)
    axis.axhline(0.683, color="k", linestyle="--", linewidth=1, label="calibrated (0.683)")
    axis.set_xticks(np.arange(len(LABELS)) + width * (len(results) - 1) / 2, ["Teff", "log g", "[M/H]"])
    axis.set_ylabel("1-sigma coverage (test split)")
    axis.set_ylim(0.4, 1.0)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-stars", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a checkpoint trained on a hermite survey (default: train one)")
    parser.add_argument("--train-minutes", type=float, default=6.0)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--max-test-stars", type=int, default=3000)
    parser.add_argument("--workdir", help="keep the survey and model here (default: a temporary folder)")
    parser.add_argument("--plot", default="error_propagation.png")
    args = parser.parse_args()
    timings = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        begin = time.perf_counter()
        if (work / "dataset" / "README.md").is_file():
            dataset, xp_files = work / "dataset", sorted((work / "raw" / "xp_continuous").glob("XP_CONTINUOUS_*"))
        else:
            dataset, xp_files = build_survey(work, args.n_stars, args.seed)
        timings["survey_s"] = round(time.perf_counter() - begin, 1)
        begin = time.perf_counter()
        model = Path(args.model) if args.model else work / "model"
        if not args.model and not (model / "config.json").is_file():
            train(dataset, model, args.train_minutes, args.preset, args.seed)
        timings["train_s"] = round(time.perf_counter() - begin, 1)
        test = load_split_tables(str(dataset))["test"]
        test = test[test[list(LABELS)].notna().all(axis=1)].head(args.max_test_stars).reset_index(drop=True)
        inputs = {name: test[name].to_numpy() for name in EVALUATION_INPUTS if name in test}
        inputs |= {
            name + ERROR_SUFFIX: test[name + ERROR_SUFFIX].to_numpy()
            for name in list(inputs)
            if name + ERROR_SUFFIX in test
        }
        correlations = correlations_for(xp_files, test["source_id"].to_numpy())
        predictor = AstroPredictor.from_pretrained(str(model))
        begin = time.perf_counter()
        tables = {
            MODES[0]: predictor.predict(inputs, LABELS),
            MODES[1]: predictor.predict(inputs, LABELS, n_samples=args.n_samples, seed=1),
            MODES[2]: predictor.predict(inputs, LABELS, n_samples=args.n_samples, seed=1, correlations=correlations),
        }
        timings["predict_s"] = round(time.perf_counter() - begin, 1)
        results = {mode: coverage(table, test) for mode, table in tables.items()}
        mad = {
            mode: {
                label: round(float(1.4826 * np.nanmedian(np.abs((table[label] - test[label]).to_numpy()))), 4)
                for label in LABELS
            }
            for mode, table in tables.items()
        }
        propagation = tables[MODES[2]].attrs["error_propagation"]
    plot(results, Path(args.plot))
    for mode in MODES:
        print(f"{mode:>16}: coverage {results[mode]}  MAD-std {mad[mode]}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "error_propagation",
                "coverage_1sigma": results,
                "mad_std": mad,
                "full_covariance_stars": propagation["full_covariance_stars"],
                "test_stars": len(test),
                "n_samples": args.n_samples,
                "n_stars": args.n_stars,
                "model": str(args.model or f"train.py --model_preset {args.preset} {args.train_minutes} min"),
                "plot": str(Path(args.plot).resolve()),
                "seconds": timings,
                "cpu": cpu_description(),
                "load_average_1min": machine_load(),
            }
        )
    )


if __name__ == "__main__":
    main()
