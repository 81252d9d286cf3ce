"""Benchmark catalogue-scale inference: >= 200k simulated stars through `modeling_astro.catalogue_inference`,
killed with SIGKILL part-way, then resumed; checks that no row is missing or duplicated.

The dataset is the simulated survey (`dataset_builder.default_data`) tiled to `--n-stars` rows with new
`source_id`s, written as `--n-shards` parquet shards (inputs bp0-31, rp0-31 and their errors). The model has
random weights (`--config small`, the ~160k preset, by default so the run takes minutes on 2 CPU threads;
`--config paper` for the 8.8 M model). Reports stars/s of the resumed run, the peak RSS of each run (bounded
by the chunk size, not the catalogue size) and the row checks. Stars of the survey without XP get NaN rows
(counted). Wall times include the start-up of each run (imports, model loading).

Run: ``python benchmarks/bench_catalogue.py [--n-stars 200000] [--config small]``; the last line printed is
one JSON object.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, THREADS, machine_load, setup_torch  # noqa: E402

from configuration_astro import AstroConfig  # noqa: E402
from modeling_astro import AstroForObservationPrediction, AstroTokenizer  # noqa: E402

INPUTS = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]
REQUEST = ["teff", "logg", "m_h"]


def write_catalogue(folder: Path, n_stars: int, n_shards: int) -> None:
    """The simulated survey tiled to `n_stars` rows with unique `source_id`s, as `n_shards` parquet shards."""
    from dataset_builder.default_data import default_dataset

    columns = [*INPUTS, *(name + "_err" for name in INPUTS)]
    table = pq.read_table(sorted((default_dataset() / "data").glob("*.parquet")), columns=columns)
    (folder / "data").mkdir(parents=True)
    for k, rows in enumerate(np.array_split(np.arange(n_stars), n_shards)):
        shard = table.take(pa.array(rows % table.num_rows))
        shard = shard.add_column(0, "source_id", pa.array(rows.astype(np.int64) + 10**15))
        pq.write_table(shard, folder / "data" / f"test-{k:05d}-of-{n_shards:05d}.parquet")


def save_model(folder: Path, config_name: str) -> None:
    """A random-weight model (paper or small preset) and a tokenizer fitted to the catalogue."""
    setup_torch()
    config = AstroConfig() if config_name == "paper" else AstroConfig.small()
    AstroForObservationPrediction(config).save_pretrained(folder)
    shard = pq.read_table(sorted((folder.parent / "catalogue" / "data").glob("*.parquet"))[0], columns=INPUTS)
    AstroTokenizer().fit({name: shard[name].to_numpy() for name in INPUTS}).save_pretrained(folder)


def run_command(arguments: list[str], kill_after_shards: int | None, out: Path) -> dict:
    """Run the catalogue command; SIGKILL it once `kill_after_shards` shards are finished. Returns rusage."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "modeling_astro.catalogue_inference", *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    while kill_after_shards is not None and process.poll() is None:
        if len(list(out.glob("*.parquet"))) >= kill_after_shards:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    _, status, usage = os.wait4(process.pid, 0)
    return {
        "seconds": time.perf_counter() - start,
        "killed": killed,
        "exit_status": status,
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-stars", type=int, default=200_000)
    parser.add_argument("--n-shards", type=int, default=8)
    parser.add_argument("--config", choices=["small", "paper"], default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--rows-per-chunk", type=int, default=16384)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        write_catalogue(work / "catalogue", args.n_stars, args.n_shards)
        save_model(work / "model", args.config)
        out = work / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        arguments = [
            *("--model", str(work / "model"), "--data", str(work / "catalogue"), "--out", str(out)),
            *("--request", *REQUEST, "--inputs", *INPUTS, "--dtype", args.dtype),
            *("--rows-per-chunk", str(args.rows_per_chunk)),
        ]
        first = run_command(arguments, kill_after_shards=args.n_shards // 2, out=out)
        done_before_resume = len(list(out.glob("*.parquet")))
        stars_left = sum(
            pq.ParquetFile(shard).metadata.num_rows
            for shard in (work / "catalogue" / "data").glob("*.parquet")
            if not (out / shard.name).exists()
        )
        second = run_command(arguments, kill_after_shards=None, out=out)
        ids = pq.read_table(sorted(out.glob("*.parquet")), columns=["source_id"])["source_id"].to_numpy()
        first_request = pq.read_table(sorted(out.glob("*.parquet")), columns=[REQUEST[0]])[REQUEST[0]]
        no_input = int(np.isnan(first_request.to_numpy()).sum())
    expected = np.arange(args.n_stars, dtype=np.int64) + 10**15
    result = {
        "benchmark": "catalogue",
        "stars_per_s": round(stars_left / second["seconds"], 1),
        "naive_stars_per_s": None,
        "speedup": None,
        "peak_rss_mb": max(first["peak_rss_mb"], second["peak_rss_mb"]),
        "n_stars": args.n_stars,
        "n_shards": args.n_shards,
        "config": args.config,
        "dtype": args.dtype,
        "rows_per_chunk": args.rows_per_chunk,
        "killed_with_sigkill": first["killed"],
        "shards_done_when_killed": done_before_resume,
        "stars_in_resumed_run": stars_left,
        "resumed_run_s": round(second["seconds"], 1),
        "first_run_peak_rss_mb": first["peak_rss_mb"],
        "resumed_run_peak_rss_mb": second["peak_rss_mb"],
        "rows_written": int(len(ids)),
        "duplicate_rows": int(len(ids) - len(np.unique(ids))),
        "missing_rows": int(len(np.setdiff1d(expected, ids))),
        "stars_without_inputs_nan": no_input,
        "threads": THREADS,
        "load_average_1min": machine_load(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
