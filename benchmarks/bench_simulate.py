"""Benchmark of the simulated survey: simulate + build time, and the XGBoost realism check.

The realism check is the baseline of the project notes: one XGBoost regressor per label on the
paper's inputs (bp0-29 and rp0-29 / f_G, BP-RP, J-H, J-K), early stopping on the validation split,
MAD-std of the residuals on the test split, against the real APOGEE x Gaia XP figures
(50.7 K / 0.13 dex / 0.08 dex). The survey is a fair stand-in when each ratio is within 1.5.

Run: ``python benchmarks/bench_simulate.py [--n-stars 50000] [--seed 0] [--xp-model ridge|hermite] [--uncalibrated]
[--keep DIR]``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_builder.build import build_dataset  # noqa: E402
from dataset_builder.simulate import simulate_survey  # noqa: E402

REAL_DATA_MAD_STD = {"teff": 50.7, "logg": 0.13, "m_h": 0.08}
"""XGBoost baseline on the real APOGEE DR17 x Gaia XP data (project notes)."""
FEATURES = [f"bp{i}" for i in range(30)] + [f"rp{i}" for i in range(30)] + ["bprp", "jh", "jk"]


def mad_std(values: np.ndarray) -> float:
    """Robust standard deviation: 1.4826 * median absolute deviation from the median."""
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def xgboost_baseline(dataset_dir: Path, seed: int = 0) -> dict[str, dict[str, float]]:
    """Fit one XGBoost regressor per label; MAD-std on the test split against labels and truth."""
    import datasets
    import xgboost

    splits = datasets.load_dataset(str(dataset_dir))
    frames = {name: splits[name].to_pandas() for name in ("train", "validation", "test")}
    results: dict[str, dict[str, float]] = {}
    for label in REAL_DATA_MAD_STD:
        rows = {name: frame[np.isfinite(frame[label]) & np.isfinite(frame["bp0"])] for name, frame in frames.items()}
        params = {
            "eta": 0.05,
            "max_depth": 7,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "nthread": 2,
            "seed": seed,
            "objective": "reg:squarederror",
        }
        train = xgboost.DMatrix(rows["train"][FEATURES], label=rows["train"][label])
        validation = xgboost.DMatrix(rows["validation"][FEATURES], label=rows["validation"][label])
        booster = xgboost.train(
            params,
            train,
            num_boost_round=3000,
            evals=[(validation, "validation")],
            early_stopping_rounds=50,
            verbose_eval=False,
        )
        test = xgboost.DMatrix(rows["test"][FEATURES])
        prediction = booster.predict(test, iteration_range=(0, booster.best_iteration + 1))
        results[label] = {
            "mad_std_vs_label": mad_std(prediction - rows["test"][label].to_numpy()),
            "mad_std_vs_truth": mad_std(prediction - rows["test"][f"true_{label}"].to_numpy()),
            "n_train": int(len(rows["train"])),
            "n_test": int(len(rows["test"])),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xp-model", choices=("ridge", "hermite"), default="ridge", help="see simulate.XP_MODELS")
    parser.add_argument("--uncalibrated", action="store_true", help="hermite without xp_calibration")
    parser.add_argument("--keep", type=Path, help="write the raw files and the dataset here (to train on it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        start = time.perf_counter()
        files = simulate_survey(
            Path(tmp) / "raw",
            n_stars=args.n_stars,
            seed=args.seed,
            xp_model=args.xp_model,
            calibrated=not args.uncalibrated,
        )
        simulate_s = time.perf_counter() - start
        build_dataset(files.xp_files, files.gaia_source, files.allstar, Path(tmp) / "dataset", extra=[files.truth])
        total_s = time.perf_counter() - start
        baseline = xgboost_baseline(Path(tmp) / "dataset", seed=args.seed)
    for label, figures in baseline.items():
        figures["ratio_to_real"] = figures["mad_std_vs_label"] / REAL_DATA_MAD_STD[label]
        print(f"{label}: {figures}")
    summary = {
        "n_stars": args.n_stars,
        "seed": args.seed,
        "xp_model": args.xp_model,
        "calibrated": not args.uncalibrated,
        "simulate_s": round(simulate_s, 2),
        "simulate_and_build_s": round(total_s, 2),
        "xgboost_mad_std": {label: round(f["mad_std_vs_label"], 4) for label, f in baseline.items()},
        "xgboost_mad_std_vs_truth": {label: round(f["mad_std_vs_truth"], 4) for label, f in baseline.items()},
        "ratio_to_real": {label: round(f["ratio_to_real"], 3) for label, f in baseline.items()},
        "within_1_5x": all(1 / 1.5 <= f["ratio_to_real"] <= 1.5 for f in baseline.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
