"""Benchmark catalogue-scale inference, today's command against the Ray Data pipeline, on >= 200k simulated stars.

Data: `--n-stars` simulated stars (5000 simulated by `dataset_builder.simulate`, tiled with new `source_id`s in the
same HEALPix pixels) written as Gaia DR3 bulk files (`XpContinuousMeanSpectrum_*.csv.gz` + `GaiaSource_*.csv.gz`,
`--n-shards` pairs, `dataset_builder.bulk`), and the same stars' model inputs (bp0-31, rp0-31 and errors, computed
by the bulk reader) as builder-format parquet shards for today's command, which cannot read bulk files.
The model has random weights (`--config small` by default, `--config paper` for the 8.8 M model).

Runs, each a fresh process (wall times include start-up: imports, `ray.init`, model loading):
1. today's command (`modeling_astro.catalogue_inference`) on the shards -> `baseline_stars_per_s`;
2. Ray (`modeling_astro.catalogue_ray`, local `ray.init`, 1 CPU actor) on the same shards ->
   `ray_shards_stars_per_s`, `ray_overhead` = 1 - ray_shards / baseline (the issue asks <= 15%);
3. Ray on the bulk `.csv.gz` files (parsing, joining, features, tokenising in CPU tasks) -> `ray_stars_per_s`;
4. Ray on the bulk files with the model actor SIGKILLed once the first prediction file is written ->
   `duplicates`, `missing` (source_ids, against the input);
5. a two-node cluster on this machine (`ray start --head --num-cpus 1` + `ray start --address ... --num-cpus 1`,
   two actors) on the shards -> `nodes` (nodes that predicted stars) and `stars_per_node`.
Peak RSS is the peak, sampled every 0.2 s, of the summed RSS of the run's process tree (driver, raylet, Ray
workers; shared object-store pages count once per process, so it over-counts).
`hours_220M_per_actor` projects 220 million stars from the per-actor throughput of run 3.

Run: ``python benchmarks/bench_catalogue.py [--n-stars 200000] [--config small]``; the last line printed is
one JSON object.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, THREADS, machine_load, setup_torch  # noqa: E402

from configuration_astro import AstroConfig  # noqa: E402
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction  # noqa: E402

INPUTS = [f"bp{i}" for i in range(32)] + [f"rp{i}" for i in range(32)]
REQUEST = ["teff", "logg", "m_h"]
CATALOGUE_STARS = 220e6
"""Gaia DR3 stars with XP continuous spectra."""


def write_inputs(work: Path, n_stars: int, n_shards: int) -> tuple[Path, Path, np.ndarray]:
    """Bulk-format files of `n_stars` simulated stars, and the same stars' inputs as builder shards."""
    from dataset_builder.bulk import iter_bulk_inputs, simulated_bulk_sample

    bulk = work / "bulk"
    xp_files = simulated_bulk_sample(bulk, n_stars, seed=0, rows_per_file=-(-n_stars // n_shards))
    shards = work / "catalogue" / "data"
    shards.mkdir(parents=True)
    columns = ["source_id", *INPUTS, *(name + "_err" for name in INPUTS)]
    ids = []
    for k, path in enumerate(xp_files):
        parts = [pa.table({name: chunk[name] for name in columns}) for chunk in iter_bulk_inputs(path)]
        table = pa.concat_tables(parts)
        ids.append(table["source_id"].to_numpy())
        pq.write_table(table, shards / f"test-{k:05d}-of-{len(xp_files):05d}.parquet")
    return bulk, shards.parent, np.concatenate(ids)


def save_model(folder: Path, config_name: str, shard: Path) -> None:
    """A random-weight model (paper or small preset) and a tokenizer fitted to the catalogue."""
    setup_torch()
    config = AstroConfig.preset(config_name)
    AstroForObservationPrediction(config).save_pretrained(folder)
    table = pq.read_table(shard, columns=INPUTS)
    AstroFeatureExtractor().fit({name: table[name].to_numpy() for name in INPUTS}).save_pretrained(folder)


def tree_rss_mb(process: psutil.Process) -> float:
    """Summed RSS of a process and its descendants [MB]."""

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run(command: list[str], out: Path | None = None, kill_actor: bool = False) -> dict:
    """Run a command; sample its process tree's RSS; optionally SIGKILL the model actor after the first output."""

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    peak, killed = 0.0, None
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(watched))
        if kill_actor and killed is None and out is not None and list(out.glob("**/*.parquet")):
            for member in watched.children(recursive=True):
                try:
                    if "PredictActor" in " ".join(member.cmdline()):
                        os.kill(member.pid, signal.SIGKILL)
                        killed = member.pid
                        break
                except psutil.Error:
                    pass
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({process.returncode}):\n{stderr[-4000:]}")
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": round(peak, 1),
        "killed_pid": killed,
        "summary": json.loads(lines[-1]) if lines else None,
    }


def exactly_once(out: Path, expected: np.ndarray) -> dict:
    ids = pq.read_table(sorted(out.glob("**/*.parquet")), columns=["source_id"])["source_id"].to_numpy()
    return {
        "rows": int(len(ids)),
        "duplicates": int(len(ids) - len(np.unique(ids))),
        "missing": int(len(np.setdiff1d(expected, ids))),
    }


def ray_command(model: Path, data: Path, out: Path, dtype: str, rows: int, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "modeling_astro.catalogue_ray", "--model", str(model), "--data", str(data)),
        *("--out", str(out), "--request", *REQUEST, "--inputs", *INPUTS, "--dtype", dtype),
        *("--rows-per-chunk", str(rows), "--no-progress", *extra),
    ]


def two_node_run(model: Path, data: Path, out: Path, dtype: str, rows: int) -> dict:
    """`ray start --head --num-cpus 1` + a second `ray start --address ... --num-cpus 1`, both --block in our own
    process groups (stopped by signalling those groups, not with `ray stop`, which would stop every Ray here)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    # one authentication mode for the head, the second node and the driver (the driver inherits os.environ)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    nodes = []
    try:
        head = [
            *("ray", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1"),
            "--include-dashboard=false",
            *common,
        ]
        nodes.append(subprocess.Popen(head, env=env, start_new_session=True, stdout=subprocess.DEVNULL))
        time.sleep(15)
        worker = ["ray", "start", "--address", address, "--node-ip-address", "127.0.0.1", *common]
        nodes.append(subprocess.Popen(worker, env=env, start_new_session=True, stdout=subprocess.DEVNULL))
        time.sleep(15)
        result = run(ray_command(model, data, out, dtype, rows, "--address", address, "--num-actors", "2"), out=out)
    finally:
        for node in reversed(nodes):
            try:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, signal.SIGKILL)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-stars", type=int, default=200_000)
    parser.add_argument("--n-shards", type=int, default=8)
    parser.add_argument("--config", choices=["small", "paper"], default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--rows-per-chunk", type=int, default=16384)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the inputs and model already in --workdir")
    args = parser.parse_args()
    timings = {}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.workdir or temporary)
        begin = time.perf_counter()
        bulk, catalogue = work / "bulk", work / "catalogue"
        if args.reuse and (catalogue / "data").is_dir() and (work / "model").is_dir():
            shards = sorted((catalogue / "data").glob("*.parquet"))
            expected = pq.read_table(shards, columns=["source_id"])["source_id"].to_numpy()
        else:
            bulk, catalogue, expected = write_inputs(work, args.n_stars, args.n_shards)
            save_model(work / "model", args.config, sorted((catalogue / "data").glob("*.parquet"))[0])
        timings["write_inputs_s"] = round(time.perf_counter() - begin, 1)
        model = work / "model"
        rows = str(args.rows_per_chunk)
        for name in ("baseline", "ray_shards", "ray_bulk", "ray_bulk_killed", "ray_two_nodes"):
            shutil.rmtree(work / name, ignore_errors=True)
        threads = ("--cpus-per-actor", "1", "--torch-threads", str(THREADS))
        baseline_command = [
            *(sys.executable, "-m", "modeling_astro.catalogue_inference", "--model", str(model)),
            *("--data", str(catalogue), "--out", str(work / "baseline"), "--request", *REQUEST, "--inputs", *INPUTS),
            *("--dtype", args.dtype, "--rows-per-chunk", rows),
        ]
        stages = {
            "baseline": lambda: run(baseline_command),
            "ray_shards": lambda: run(
                ray_command(model, catalogue, work / "ray_shards", args.dtype, args.rows_per_chunk, *threads)
            ),
            "ray_bulk": lambda: run(
                ray_command(model, bulk, work / "ray_bulk", args.dtype, args.rows_per_chunk, *threads)
            ),
            "ray_bulk_killed": lambda: run(
                ray_command(model, bulk, work / "ray_bulk_killed", args.dtype, args.rows_per_chunk, *threads),
                work / "ray_bulk_killed",
                True,
            ),
            "ray_two_nodes": lambda: two_node_run(
                model, catalogue, work / "ray_two_nodes", args.dtype, args.rows_per_chunk
            ),
        }
        # all runs at once: on a shared machine they then see the same conditions (and the whole takes less time)
        with ThreadPoolExecutor(len(stages)) as pool:
            futures = {name: pool.submit(stage) for name, stage in stages.items()}
        results, checks = {}, {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
                checks[name] = exactly_once(work / name, expected)
            except (RuntimeError, OSError, ValueError) as error:  # report the other figures all the same
                print(f"{name} failed: {error}", file=sys.stderr)
                results[name] = {"seconds": float("nan"), "peak_rss_mb": None, "killed_pid": None, "summary": None}
                checks[name] = {"duplicates": None, "missing": None}
            print(f"{name}: {results[name]} {checks[name]}", file=sys.stderr, flush=True)
    baseline, ray_shards, ray_bulk = results["baseline"], results["ray_shards"], results["ray_bulk"]
    killed, two_nodes = results["ray_bulk_killed"], results["ray_two_nodes"]
    killed_check, two_node_check = checks["ray_bulk_killed"], checks["ray_two_nodes"]
    bulk_check, baseline_check = checks["ray_bulk"], checks["baseline"]
    empty = {"stars_per_node": {}, "stars_per_actor": {}, "stars_per_s": float("nan")}
    for result in results.values():
        result["summary"] = result["summary"] or empty

    def rate(result: dict) -> float:
        return round(args.n_stars / result["seconds"], 1)

    per_node = two_nodes["summary"]["stars_per_node"]
    per_actor = ray_bulk["summary"]["stars_per_s"]  # one actor: the run's throughput is the actor's
    result = {
        "benchmark": "catalogue",
        "ray_stars_per_s": rate(ray_bulk),
        "ray_shards_stars_per_s": rate(ray_shards),
        "baseline_stars_per_s": rate(baseline),
        "ray_overhead": round(1 - rate(ray_shards) / rate(baseline), 3),
        "peak_rss_mb": ray_bulk["peak_rss_mb"],
        "ray_shards_peak_rss_mb": ray_shards["peak_rss_mb"],
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "duplicates": killed_check["duplicates"],
        "missing": killed_check["missing"],
        "killed_actor_pid": killed["killed_pid"],
        "killed_run_stars_per_actor": killed["summary"]["stars_per_actor"],
        "nodes": sum(1 for count in per_node.values() if count > 0),
        "stars_per_node": per_node,
        "two_node_stars_per_actor": two_nodes["summary"]["stars_per_actor"],
        "two_node_duplicates": two_node_check["duplicates"],
        "two_node_missing": two_node_check["missing"],
        "bulk_run_duplicates": bulk_check["duplicates"],
        "bulk_run_missing": bulk_check["missing"],
        "baseline_duplicates": baseline_check["duplicates"],
        "baseline_missing": baseline_check["missing"],
        "hours_220M_per_actor": round(CATALOGUE_STARS / per_actor / 3600, 1),
        "hours_220M_per_actor_basis": "ray_bulk run, pipeline stars/s incl. start-up, 1 CPU actor, this machine",
        "wall_s": {
            "baseline": round(baseline["seconds"], 1),
            "ray_shards": round(ray_shards["seconds"], 1),
            "ray_bulk": round(ray_bulk["seconds"], 1),
            "ray_bulk_killed": round(killed["seconds"], 1),
            "ray_two_nodes": round(two_nodes["seconds"], 1),
            **timings,
        },
        "n_stars": args.n_stars,
        "n_files": args.n_shards,
        "config": args.config,
        "dtype": args.dtype,
        "rows_per_chunk": args.rows_per_chunk,
        "threads": THREADS,
        "load_average_1min": machine_load(),
        "machine": "2 CPU cores shared with other jobs (load average above); the 5 runs ran at the same time",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
