"""Benchmark `build_dataset` on synthetic inputs made by tiling the real Gaia XP sample rows.

    python benchmarks/bench_build.py --n-stars 100000 --workdir /tmp/bench_build

Inputs: XP_CONTINUOUS CSV chunks (real rows tiled with new source_ids, coefficients perturbed by
their errors; the correlation column is omitted since the builder does not read it), a
gaia_source + 2MASS + ebv FITS table, an allStar FITS (2/3 of the XP stars, 5% APOGEE-only
stars, 2% duplicate rows) and a true_* parquet. Prints one JSON line last: rows/s and peak RSS
(ru_maxrss of this process and of its worker processes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset_builder import build_dataset, read_xp_continuous  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gaia_archive_samples" / "xp_continuous"
BASE_FILES = ("XP_CONTINUOUS_RAW_with_missing_BP.csv", "XP_CONTINUOUS_RAW_colour_eq_dr3int6.csv")
FIRST_SOURCE_ID = 1_000_000_000_000


def _array_text(values: np.ndarray) -> str:
    return "(" + ", ".join(repr(float(v)) for v in values) + ")"


def write_synthetic_inputs(folder: Path, n_stars: int, seed: int = 0, n_xp_files: int = 4) -> dict:
    """Write build inputs for ``n_stars`` XP stars into ``folder``; returns build_dataset kwargs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bases = [read_xp_continuous(SAMPLES / name) for name in BASE_FILES]
    base = {
        field: np.concatenate([getattr(b, field) for b in bases])
        for field in (
            "bp_coefficients",
            "bp_coefficient_errors",
            "bp_n_relevant_bases",
            "rp_coefficients",
            "rp_coefficient_errors",
            "rp_n_relevant_bases",
        )
    }
    pick = rng.integers(0, len(base["bp_coefficients"]), n_stars)
    source_id = FIRST_SOURCE_ID + np.sort(rng.choice(50 * n_stars, n_stars, replace=False)).astype(np.int64)
    rows = []
    for i, b in enumerate(pick):
        row = {"source_id": int(source_id[i])}
        for band in ("bp", "rp"):
            relevant = int(base[f"{band}_n_relevant_bases"][b])
            if relevant == 0:
                row.update(
                    {
                        f"{band}_coefficients": "",
                        f"{band}_coefficient_errors": "",
                        f"{band}_n_relevant_bases": "",
                    }
                )
                continue
            errors = base[f"{band}_coefficient_errors"][b]
            coefficients = base[f"{band}_coefficients"][b] + errors * rng.standard_normal(errors.shape)
            row[f"{band}_coefficients"] = _array_text(coefficients)
            row[f"{band}_coefficient_errors"] = _array_text(errors)
            row[f"{band}_n_relevant_bases"] = relevant
        rows.append(row)
    frame = pd.DataFrame(rows)
    xp_paths = []
    for k, chunk in enumerate(np.array_split(np.arange(n_stars), n_xp_files)):
        path = folder / f"XpContinuousMeanSpectrum_{k:03d}.csv"
        frame.iloc[chunk].to_csv(path, index=False)
        xp_paths.append(path)

    g = rng.uniform(5.5, 18.0, n_stars)
    photometry = Table(
        {
            "source_id": source_id,
            "phot_g_mean_mag": g,
            "bp_rp": rng.uniform(-0.2, 3.5, n_stars),
            "parallax": rng.uniform(0.1, 5.0, n_stars),
            "parallax_error": rng.uniform(0.01, 0.15, n_stars),
            "ruwe": rng.uniform(0.8, 1.6, n_stars),
            "phot_bp_rp_excess_factor": rng.uniform(1.1, 2.1, n_stars),
            "nu_eff_used_in_astrometry": rng.uniform(1.3, 1.7, n_stars),
            "pseudocolour": np.full(n_stars, np.nan),
            "ecl_lat": rng.uniform(-90, 90, n_stars),
            "astrometric_params_solved": np.full(n_stars, 31, dtype=np.int16),
            "phot_bp_mean_flux_over_error": rng.uniform(50, 2000, n_stars),
            "phot_rp_mean_flux_over_error": rng.uniform(50, 2000, n_stars),
            "j_m": np.where(rng.random(n_stars) < 0.05, 99.999, g - 1.5),
            "j_msigcom": rng.uniform(0.02, 0.05, n_stars),
            "h_m": g - 2.0,
            "h_msigcom": rng.uniform(0.02, 0.05, n_stars),
            "ks_m": g - 2.1,
            "ks_msigcom": rng.uniform(0.02, 0.05, n_stars),
            "ebv": rng.exponential(0.2, n_stars) - 0.01,
        }
    )
    gaia_source = folder / "gaia_source.fits"
    photometry.write(gaia_source, overwrite=True)

    labelled = source_id[rng.random(n_stars) < 2 / 3]
    apogee_only = FIRST_SOURCE_ID + 50 * n_stars + np.arange(n_stars // 20, dtype=np.int64)
    duplicates = rng.choice(labelled, max(1, n_stars // 50)) if len(labelled) else labelled
    apogee_ids = np.concatenate([labelled, apogee_only, duplicates, [0]])
    n_apogee = len(apogee_ids)
    allstar = Table(
        {
            "APOGEE_ID": [f"2M{i:016d}" for i in range(n_apogee)],
            "GAIAEDR3_SOURCE_ID": apogee_ids,
            "SNR": rng.uniform(50, 500, n_apogee).astype(np.float32),
            "TEFF": rng.normal(4750, 500, n_apogee).astype(np.float32),
            "TEFF_ERR": np.full(n_apogee, 10.0, dtype=np.float32),
            "LOGG": rng.normal(2.6, 1.0, n_apogee).astype(np.float32),
            "LOGG_ERR": np.full(n_apogee, 0.03, dtype=np.float32),
            "M_H": rng.normal(-0.2, 0.3, n_apogee).astype(np.float32),
            "M_H_ERR": np.full(n_apogee, 0.01, dtype=np.float32),
            "ASPCAPFLAG": np.where(rng.random(n_apogee) < 0.05, 1 << 23, 0).astype(np.int64),
            "STARFLAG": np.where(rng.random(n_apogee) < 0.05, 4, 0).astype(np.int64),
            "J": rng.uniform(7, 13, n_apogee).astype(np.float32),
            "J_ERR": np.full(n_apogee, 0.02, dtype=np.float32),
            "H": rng.uniform(6, 12, n_apogee).astype(np.float32),
            "H_ERR": np.full(n_apogee, 0.02, dtype=np.float32),
            "K": rng.uniform(6, 12, n_apogee).astype(np.float32),
            "K_ERR": np.full(n_apogee, 0.02, dtype=np.float32),
        }
    )
    allstar_path = folder / "allStar-dr17-synspec_rev1.fits"
    allstar.write(allstar_path, overwrite=True)

    truth_ids = np.concatenate([source_id, apogee_only])
    truth = pd.DataFrame(
        {
            "source_id": truth_ids,
            "true_teff": rng.normal(4750, 500, len(truth_ids)).astype(np.float32),
            "true_ebv": rng.exponential(0.2, len(truth_ids)).astype(np.float32),
        }
    )
    extra_path = folder / "truth.parquet"
    truth.to_parquet(extra_path, index=False)
    return {"gaia_xp": xp_paths, "gaia_source": gaia_source, "allstar": allstar_path, "extra": [extra_path]}


def _build_and_measure(inputs_dir: Path, out: Path, num_proc: int) -> dict:
    """Run in a fresh process so that ru_maxrss reflects the build alone (workers under CHILDREN)."""
    inputs = json.loads((inputs_dir / "inputs.json").read_text())
    summary = build_dataset(**inputs, out_dir=out, num_proc=num_proc, overwrite=True)
    print(summary.table(), file=sys.stderr)
    return {
        "rows_written": sum(summary.rows_per_split.values()),
        "xp_input_rows": summary.input_rows["gaia_xp (all files)"],
        "build_s": round(summary.elapsed_s, 2),
        "rows_per_s": round(summary.rows_per_s, 1),
        "xp_input_mib": round(sum(Path(p).stat().st_size for p in inputs["gaia_xp"]) / 2**20, 1),
        "peak_rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
        "num_proc": num_proc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-stars", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_build"))
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--n-xp-files", type=int, default=4)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    inputs_dir = args.workdir / f"inputs-{args.n_stars}-{args.n_xp_files}"
    out = args.workdir / "dataset"
    if args.build_only:
        print(json.dumps(_build_and_measure(inputs_dir, out, args.num_proc)))
        return
    if args.make_only:
        inputs = write_synthetic_inputs(inputs_dir, args.n_stars, n_xp_files=args.n_xp_files)
        as_text = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in inputs.items()}
        (inputs_dir / "inputs.json").write_text(json.dumps(as_text))
        return
    # each phase runs in its own process: Linux carries ru_maxrss across fork+exec, so making the
    # inputs in this process would inflate the build's figure
    common = [
        "--n-stars",
        str(args.n_stars),
        "--workdir",
        str(args.workdir),
        "--n-xp-files",
        str(args.n_xp_files),
    ]
    if not (inputs_dir / "inputs.json").exists():
        subprocess.run([sys.executable, __file__, "--make-only", *common], check=True)
    completed = subprocess.run(
        [
            sys.executable,
            __file__,
            "--build-only",
            "--n-stars",
            str(args.n_stars),
            "--workdir",
            str(args.workdir),
            "--num-proc",
            str(args.num_proc),
            "--n-xp-files",
            str(args.n_xp_files),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    print(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
