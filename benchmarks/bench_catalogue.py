"""Benchmark catalogue-scale inference, today's command against the Ray Data pipeline, on >= 200k simulated stars.

Data: `--n-stars` simulated stars (5000 simulated by `dataset_builder.simulate`, tiled with new `source_id`s in the
same HEALPix pixels) written as Gaia DR3 bulk files (`XpContinuousMeanSpectrum_*.csv.gz` + `GaiaSource_*.csv.gz`,
`--n-shards` pairs, `dataset_builder.bulk`), and the same stars' model inputs (bp0-31, rp0-31 and errors, computed
by the bulk reader) as builder-format parquet shards for today's command, which cannot read bulk files.
The model has random weights (`--config small` by default, `--config paper` for the 8.8 M model).

Runs, each a fresh process, one after another (wall times include start-up: imports, `ray.init`, model loading):
1. today's command (`modeling_astro.catalogue_inference`) on the shards -> `baseline_stars_per_s`;
2. Ray (`modeling_astro.catalogue_ray`, local `ray.init`, 1 CPU actor) on the same shards ->
   `ray_shards_stars_per_s`, `ray_overhead` = 1 - ray_shards / baseline (the issue asks <= 15%);
3. Ray on the bulk `.csv.gz` files (parsing, joining, features, tokenising in CPU tasks) -> `ray_stars_per_s`;
4. Ray on a HATS copy of the bulk files (`dataset_builder.bulk.write_hats_sample`, order 1) ->
   `hats_max_abs_difference` against run 3's predictions;
5. Ray on the bulk files with the model actor SIGKILLed once the first prediction file is written ->
   `duplicates`, `missing` (source_ids, against the input);
6. Ray on the bulk files with the driver's whole process group SIGKILLed once the first prediction file is
   written, then the same command again -> `driver_rerun_files_skipped`;
7. a two-node cluster on this machine (`ray start --head --num-cpus 1` + `ray start --address ... --num-cpus 1`,
   two actors of half a CPU, read tasks of half a CPU, so that each node can hold an actor and a read task: two
   1-CPU actors would leave no CPU for reading, which the pipeline refuses) on the shards -> `nodes` (nodes that
   predicted stars), `stars_per_node`, `read_nodes` and `stars_read_per_node` (nodes that read and tokenised).
Every run's rows, duplicate and missing `source_id`s are in `exactly_once` (the driver run's after its rerun).
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
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, THREADS, cpu_description, machine_load, setup_torch  # noqa: E402

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


def run(command: list[str], out: Path | None = None, kill: str | None = None) -> dict:
    """Run a command in its own process group; sample its process tree's RSS.

    `kill`: once the first prediction file is in `out`, SIGKILL the model actor (``"actor"``: Ray retries its work)
    or the whole driver process group (``"driver"``: the run then ends with -9, which is expected).
    """

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    # output to files, not pipes: a pipe nobody reads until the end blocks a chatty process once it is full
    with tempfile.TemporaryFile("w+") as stdout_file, tempfile.TemporaryFile("w+") as stderr_file:
        process = subprocess.Popen(command, env=env, stdout=stdout_file, stderr=stderr_file, start_new_session=True)
        watched = psutil.Process(process.pid)
        peak, killed = 0.0, None
        while process.poll() is None:
            peak = max(peak, tree_rss_mb(watched))
            if kill and killed is None and out is not None and list(out.glob("**/*.parquet")):
                if kill == "driver":
                    os.killpg(process.pid, signal.SIGKILL)
                    killed = process.pid
                for member in watched.children(recursive=True) if kill == "actor" else []:
                    try:
                        if "PredictActor" in " ".join(member.cmdline()):
                            os.kill(member.pid, signal.SIGKILL)
                            killed = member.pid
                            break
                    except psutil.Error:
                        pass
            time.sleep(0.2)
        stdout_file.seek(0)
        stderr_file.seek(0)
        stdout, stderr = stdout_file.read(), stderr_file.read()
    if process.returncode != 0 and not (kill == "driver" and killed is not None):
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
        halves = ("--num-actors", "2", "--cpus-per-actor", "0.5", "--cpus-per-read", "0.5")
        result = run(ray_command(model, data, out, dtype, rows, "--address", address, *halves), out=out)
    finally:
        for node in reversed(nodes):
            try:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, signal.SIGKILL)
    return result


def same_predictions(first: Path, second: Path) -> float | None:
    """The largest absolute difference between two runs' predictions, matched by `source_id` (None: a run failed)."""
    if not (list(first.glob("**/*.parquet")) and list(second.glob("**/*.parquet"))):
        return None
    # partitioning=None: a HATS copy's Norder/Dir/Npix folders are not prediction columns
    tables = [
        pq.read_table(sorted(out.glob("**/*.parquet")), partitioning=None).to_pandas().set_index("source_id")
        for out in (first, second)
    ]
    a, b = (table.sort_index() for table in tables)
    if not a.index.equals(b.index):
        return float("inf")
    return float(np.nanmax(np.abs(a[b.columns].to_numpy() - b.to_numpy())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-stars", type=int, default=200_000)
    parser.add_argument("--n-shards", type=int, default=8)
    parser.add_argument("--config", choices=["small", "paper"], default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--rows-per-chunk", type=int, default=16384)
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the inputs and model already in --workdir")
    parser.add_argument("--skip", nargs="*", default=[], help="runs to leave out (e.g. ray_two_nodes)")
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
        begin = time.perf_counter()
        hats = work / "hats"
        if not (args.reuse and hats.is_dir()):
            from dataset_builder.bulk import write_hats_sample

            shutil.rmtree(hats, ignore_errors=True)
            write_hats_sample(sorted(bulk.glob("Xp*.csv.gz")), hats, order=1)
        timings["write_hats_s"] = round(time.perf_counter() - begin, 1)
        model = work / "model"
        rows = args.rows_per_chunk
        names = ("baseline", "ray_shards", "ray_bulk", "ray_hats", "ray_bulk_killed", "ray_driver_killed")
        for name in (*names, "ray_two_nodes"):  # a skipped run's earlier output stays (e.g. for the HATS check)
            if name not in args.skip:
                shutil.rmtree(work / name, ignore_errors=True)
        threads = ("--cpus-per-actor", "1", "--torch-threads", str(THREADS))
        baseline_command = [
            *(sys.executable, "-m", "modeling_astro.catalogue_inference", "--model", str(model)),
            *("--data", str(catalogue), "--out", str(work / "baseline"), "--request", *REQUEST, "--inputs", *INPUTS),
            *("--dtype", args.dtype, "--rows-per-chunk", str(rows)),
        ]

        def ray(data: Path, name: str) -> list[str]:
            return ray_command(model, data, work / name, args.dtype, rows, *threads)

        def driver_killed_then_rerun() -> dict:
            first = run(ray(bulk, "ray_driver_killed"), work / "ray_driver_killed", kill="driver")
            finished = len(list((work / "ray_driver_killed").glob("*.parquet")))
            rerun = run(ray(bulk, "ray_driver_killed"))
            rerun["files_finished_when_killed"] = finished
            rerun["seconds"] += first["seconds"]
            return rerun

        stages = {
            "baseline": lambda: run(baseline_command),
            "ray_shards": lambda: run(ray(catalogue, "ray_shards")),
            "ray_bulk": lambda: run(ray(bulk, "ray_bulk")),
            "ray_hats": lambda: run(ray(hats, "ray_hats")),
            "ray_bulk_killed": lambda: run(ray(bulk, "ray_bulk_killed"), work / "ray_bulk_killed", kill="actor"),
            "ray_driver_killed": driver_killed_then_rerun,
            "ray_two_nodes": lambda: two_node_run(model, catalogue, work / "ray_two_nodes", args.dtype, rows),
        }
        # one run at a time: each gets the whole machine, and the comparisons are between like conditions
        results, checks = {}, {}
        for name, stage in stages.items():
            if name in args.skip:
                continue
            try:
                results[name] = stage()
                checks[name] = exactly_once(work / name, expected)
            except (RuntimeError, OSError, ValueError) as error:  # report the other figures all the same
                print(f"{name} failed: {error}", file=sys.stderr)
                results[name] = {"seconds": float("nan"), "peak_rss_mb": None, "killed_pid": None, "summary": None}
                checks[name] = {"duplicates": None, "missing": None}
            print(f"{name}: {results[name]} {checks[name]} load {machine_load()}", file=sys.stderr, flush=True)
        hats_difference = same_predictions(work / "ray_bulk", work / "ray_hats") if "ray_hats" in checks else None
    nothing = {"seconds": float("nan"), "peak_rss_mb": None, "killed_pid": None, "summary": None}
    empty = {
        "stars_per_node": {},
        "stars_read_per_node": {},
        "stars_per_actor": {},
        "stars_per_s": float("nan"),
        "files_skipped": None,
    }
    for name in stages:
        results.setdefault(name, dict(nothing))
        checks.setdefault(name, {"duplicates": None, "missing": None})
        results[name]["summary"] = results[name]["summary"] or empty

    def rate(name: str) -> float:
        return round(args.n_stars / results[name]["seconds"], 1)

    per_node = results["ray_two_nodes"]["summary"]["stars_per_node"]
    read_per_node = results["ray_two_nodes"]["summary"]["stars_read_per_node"]
    per_actor = results["ray_bulk"]["summary"]["stars_per_s"]  # one actor: the run's throughput is the actor's
    result = {
        "benchmark": "catalogue",
        "ray_stars_per_s": rate("ray_bulk"),
        "ray_shards_stars_per_s": rate("ray_shards"),
        "baseline_stars_per_s": rate("baseline"),
        "ray_overhead": round(1 - rate("ray_shards") / rate("baseline"), 3),
        "peak_rss_mb": results["ray_bulk"]["peak_rss_mb"],
        "ray_shards_peak_rss_mb": results["ray_shards"]["peak_rss_mb"],
        "baseline_peak_rss_mb": results["baseline"]["peak_rss_mb"],
        "duplicates": checks["ray_bulk_killed"]["duplicates"],
        "missing": checks["ray_bulk_killed"]["missing"],
        "killed_actor_pid": results["ray_bulk_killed"]["killed_pid"],
        "killed_run_stars_per_actor": results["ray_bulk_killed"]["summary"]["stars_per_actor"],
        "driver_killed_files_finished": results["ray_driver_killed"].get("files_finished_when_killed"),
        "driver_rerun_files_skipped": results["ray_driver_killed"]["summary"]["files_skipped"],
        "hats_max_abs_difference": hats_difference,
        "nodes": sum(1 for count in per_node.values() if count > 0),
        "stars_per_node": per_node,
        "read_nodes": sum(1 for count in read_per_node.values() if count > 0),
        "stars_read_per_node": read_per_node,
        "exactly_once": checks,  # every run's rows, duplicate and missing source_ids (the driver run: after the rerun)
        "hours_220M_per_actor": round(CATALOGUE_STARS / per_actor / 3600, 1) if per_actor == per_actor else None,
        "hours_220M_per_actor_basis": "ray_bulk run, pipeline stars/s incl. start-up, 1 CPU actor, this machine",
        "wall_s": {name: round(results[name]["seconds"], 1) for name in stages} | timings,
        "n_stars": args.n_stars,
        "n_files": args.n_shards,
        "config": args.config,
        "dtype": args.dtype,
        "rows_per_chunk": args.rows_per_chunk,
        "threads": THREADS,
        "cpu": cpu_description(),
        "load_average_1min": machine_load(),
        "machine": "runs one after another; the load average above is the machine's at the end",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
