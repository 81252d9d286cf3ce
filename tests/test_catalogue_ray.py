"""Tests: Gaia bulk / HATS readers (dataset_builder/bulk.py) and the Ray Data catalogue pipeline
(modeling_astro/catalogue_ray.py): exactly once after a killed worker and a killed driver, HATS == bulk.

The Ray tests share one local Ray instance (2 CPUs) for the module and skip when `ray` (the `[scale]` extra) is
not installed.
"""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_config
from dataset_builder.bulk import (
    iter_bulk_inputs,
    iter_bulk_xp,
    iter_hats_inputs,
    paired_gaia_source,
    read_bulk_photometry,
    simulated_bulk_sample,
    write_hats_sample,
)
from dataset_builder.errors import DatasetBuildError
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction

REPO = Path(__file__).resolve().parents[1]
REQUEST = ["teff", "logg"]
INPUTS = [f"bp{i}" for i in range(7)] + [f"rp{i}" for i in range(7)] + ["bprp"]  # within the tiny tokenizer's range
N_STARS = 2000
ROWS_PER_FILE = 250


def write_bulk_text(path: Path, lines: list[str]) -> None:
    header = ["# %ECSV 1.0", "# ---", "# delimiter: ','", "# datatype:", "# - {name: source_id, datatype: int64}"]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(header + lines) + "\n")


def xp_line(source_id: int, bp: str, rp: str) -> str:
    rp_relevant = 43 if rp != "null" else "null"
    return f"{source_id},{bp},{bp.replace('1.5', '0.5')},55,{rp},{rp.replace('2.5', '0.25')},{rp_relevant}"


XP_HEADER = ",".join(
    ["source_id"]
    + [f"{b}_{f}" for b in ("bp", "rp") for f in ("coefficients", "coefficient_errors", "n_relevant_bases")]
)


def test_bulk_reader_parses_null_band_and_bracketed_arrays(tmp_path):
    array = '"[' + ", ".join(["1.5"] * 55) + ']"'
    rp_array = '"[' + ", ".join(["2.5"] * 54 + ["-3e-2"]) + ']"'
    path = tmp_path / "XpContinuousMeanSpectrum_000000-000001.csv.gz"
    write_bulk_text(
        path, [XP_HEADER, xp_line(7, array, rp_array), xp_line(9, array, "null"), xp_line(11, array, rp_array)]
    )
    chunks = list(iter_bulk_xp(path, rows_per_chunk=2))
    assert [len(chunk) for chunk in chunks] == [2, 1]
    first, second = chunks
    np.testing.assert_array_equal(first.source_id, [7, 9])
    np.testing.assert_array_equal(first.bp_coefficients, np.full((2, 55), 1.5))
    np.testing.assert_array_equal(first.bp_coefficient_errors, np.full((2, 55), 0.5))
    np.testing.assert_array_equal(first.rp_coefficients[0], [2.5] * 54 + [-0.03])
    assert np.isnan(first.rp_coefficients[1]).all() and np.isnan(first.rp_coefficient_errors[1]).all()
    np.testing.assert_array_equal(first.rp_n_relevant_bases, [43, 0])  # null band: no relevant basis
    np.testing.assert_array_equal(second.rp_coefficient_errors[0], [0.25] * 54 + [-0.03])

    short = '"[' + ", ".join(["1.5"] * 54) + ']"'
    write_bulk_text(
        path, [XP_HEADER, xp_line(7, array, rp_array), xp_line(9, array, rp_array), xp_line(13, short, rp_array)]
    )
    with pytest.raises(DatasetBuildError, match=r"data row 3 \(source_id 13\), column bp_coefficients: expected 55"):
        list(iter_bulk_xp(path, rows_per_chunk=2))
    write_bulk_text(path, [XP_HEADER.replace("rp_coefficients", "rp_coefs"), xp_line(7, array, rp_array)])
    with pytest.raises(DatasetBuildError, match=r"missing required column\(s\) \['rp_coefficients'\]"):
        list(iter_bulk_xp(path))


@pytest.fixture(scope="module")
def bulk(tmp_path_factory) -> Path:
    """2000 simulated stars (1000 simulated, tiled) in 8 bulk-format XP + GaiaSource file pairs."""
    folder = tmp_path_factory.mktemp("bulk")
    simulated_bulk_sample(folder, N_STARS, seed=0, rows_per_file=ROWS_PER_FILE, simulated_stars=1000)
    return folder


def input_ids(bulk: Path) -> np.ndarray:
    return np.concatenate([chunk["source_id"] for path in sorted(bulk.glob("Xp*")) for chunk in iter_bulk_inputs(path)])


def test_bulk_sample_roundtrip_and_features(bulk):
    xp_files = sorted(bulk.glob("XpContinuousMeanSpectrum_*.csv.gz"))
    assert len(xp_files) >= 4 and len(list(bulk.glob("GaiaSource_*.csv.gz"))) == len(xp_files)
    ids = input_ids(bulk)
    assert len(ids) == N_STARS == len(np.unique(ids)) and np.all(np.diff(ids) > 0)  # sorted across files
    photometry = read_bulk_photometry(paired_gaia_source(xp_files[0]))
    assert photometry["ra"].between(0, 360).all() and photometry["dec"].between(-90, 90).all()
    chunk = next(iter_bulk_inputs(xp_files[0]))
    # the builder's normalisation: coefficient / f_G with f_G from G
    xp = next(iter_bulk_xp(xp_files[0]))
    g = photometry.loc[xp.source_id, "phot_g_mean_mag"].to_numpy()
    flux = 10 ** ((25.6873668671 - g) / 2.5)
    present = xp.bp_n_relevant_bases > 0
    np.testing.assert_allclose(chunk["bp0"][present], (xp.bp_coefficients[present, 0] / flux[present]), rtol=1e-6)
    assert np.isfinite(chunk["g_fakemag"]).mean() > 0.3 and np.isfinite(chunk["bprp"]).all()


# ------------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[scale]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[scale]'")
    from modeling_astro.catalogue_ray import start_ray

    start_ray(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory, bulk) -> Path:
    """A tiny random model with a tokenizer fitted on the bulk sample (as train.py fits it on its training stars)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    AstroForObservationPrediction(tiny_config(context_length=16)).save_pretrained(folder)
    tokenizer = AstroFeatureExtractor(context_length=16)
    chunks = [chunk for path in sorted(bulk.glob("Xp*")) for chunk in iter_bulk_inputs(path)]
    names = [name for name in tokenizer.observation_names if name in chunks[0]]
    tokenizer.fit({name: np.concatenate([np.asarray(chunk[name]) for chunk in chunks]) for name in names})
    tokenizer.save_pretrained(folder)
    return folder


def run_options(**kwargs) -> dict:
    return dict(request=REQUEST, inputs=INPUTS, rows_per_chunk=100, progress=False, **kwargs)


def read_all(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("**/*.parquet"))
    return pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)


def check_exactly_once(folder: Path, expected_ids: np.ndarray) -> pd.DataFrame:
    table = read_all(folder)
    ids = table["source_id"].to_numpy()
    assert len(ids) - len(np.unique(ids)) == 0, "duplicate source_ids"
    assert len(np.setdiff1d(expected_ids, ids)) == 0, "missing source_ids"
    assert len(ids) == len(expected_ids)
    assert not list(folder.glob("**/.*.partial")), "temporary files left behind"
    return table


@pytest.fixture(scope="module")
def bulk_predictions(ray_cluster, bulk, model, tmp_path_factory) -> pd.DataFrame:
    from modeling_astro.catalogue_ray import predict_catalogue_ray

    out = tmp_path_factory.mktemp("bulk_predictions")
    summary = predict_catalogue_ray(model, bulk, out, **run_options())
    assert summary.files_written == 8 and summary.stars == N_STARS and summary.duplicate_rows_dropped == 0
    node = ray_cluster.get_runtime_context().get_node_id()
    assert summary.stars_read_per_node == {node: N_STARS} and summary.stars_per_node == {node: N_STARS}
    table = check_exactly_once(out, input_ids(bulk))
    # one output per input file, rows in input order
    for path in sorted(bulk.glob("Xp*")):
        written = pd.read_parquet(out / path.name.replace(".csv.gz", ".parquet"))
        expected = np.concatenate([chunk["source_id"] for chunk in iter_bulk_inputs(path)])
        np.testing.assert_array_equal(written["source_id"], expected)
    assert list(table.columns) == ["source_id", "teff", "teff_sigma", "logg", "logg_sigma"]
    assert table[["teff", "teff_sigma"]].notna().all().all()
    return table.set_index("source_id").sort_index()


def test_matches_in_process_predictor(bulk_predictions, bulk, model):
    from modeling_astro.inference import AstroPredictor

    predictor = AstroPredictor.from_pretrained(str(model), device="cpu")
    path = sorted(bulk.glob("Xp*"))[2]
    stars = {k: v for chunk in iter_bulk_inputs(path) for k, v in chunk.items() if k.removesuffix("_err") in INPUTS}
    stars["source_id"] = np.concatenate([chunk["source_id"] for chunk in iter_bulk_inputs(path)])
    expected = predictor.predict(stars, REQUEST, keep_columns=["source_id"]).set_index("source_id")
    pd.testing.assert_frame_equal(bulk_predictions.loc[expected.index], expected, rtol=1e-5, atol=1e-6)


def test_worker_killed_mid_run_exactly_once(ray_cluster, bulk, model, bulk_predictions, tmp_path):
    from modeling_astro.catalogue_ray import PID_COLUMN, predict_catalogue_ray

    killed = []

    def kill_actor(batch) -> None:
        if not killed:
            pid = int(batch.column(PID_COLUMN)[0].as_py())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = predict_catalogue_ray(model, bulk, tmp_path, on_batch=kill_actor, **run_options())
    assert killed and summary.stars == N_STARS
    assert len(summary.stars_per_actor) >= 2, f"the killed actor was not replaced: {summary.stars_per_actor}"
    assert summary.stars_per_actor.get(str(killed[0]), 0) < N_STARS
    table = check_exactly_once(tmp_path, input_ids(bulk)).set_index("source_id").sort_index()
    pd.testing.assert_frame_equal(table, bulk_predictions, rtol=1e-5, atol=1e-6)


def test_driver_killed_and_rerun_exactly_once(ray_cluster, bulk, model, bulk_predictions, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    command = [
        *(sys.executable, "-m", "modeling_astro.catalogue_ray", "--model", str(model), "--data", str(bulk)),
        *("--out", str(tmp_path), "--request", *REQUEST, "--inputs", *INPUTS),
        *("--rows-per-chunk", "100", "--address", address, "--dtype", "float32"),  # compared with fp32
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not list(tmp_path.glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"the driver ended before it could be killed: {process.stderr.read()[-2000:]}"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = sorted(tmp_path.glob("*.parquet"))
    assert 1 <= len(done) < 8, f"{len(done)} files finished when the driver was killed"
    for path in done:  # whatever is visible is complete
        source = bulk / path.name.replace(".parquet", ".csv.gz")
        expected = np.concatenate([chunk["source_id"] for chunk in iter_bulk_inputs(source)])
        np.testing.assert_array_equal(pq.read_table(path)["source_id"].to_numpy(), expected)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'"files_skipped": {len(done)}' in rerun.stdout
    table = check_exactly_once(tmp_path, input_ids(bulk)).set_index("source_id").sort_index()
    pd.testing.assert_frame_equal(table, bulk_predictions, rtol=1e-5, atol=1e-6)


def test_hats_copy_gives_identical_predictions(ray_cluster, bulk, model, bulk_predictions, tmp_path):
    from hats.io.validation import is_valid_catalog

    from modeling_astro.catalogue_ray import predict_catalogue_ray

    catalogue = write_hats_sample(sorted(bulk.glob("Xp*")), tmp_path / "hats", order=1)
    assert is_valid_catalog(catalogue)
    partitions = sorted(catalogue.glob("dataset/Norder=1/Dir=0/Npix=*.parquet"))
    assert len(partitions) > 8  # the sky, not the bulk files, decides the partitions
    from_bulk = pd.concat([pd.DataFrame(c) for path in sorted(bulk.glob("Xp*")) for c in iter_bulk_inputs(path)])
    from_hats = pd.concat([pd.DataFrame(c) for path in partitions for c in iter_hats_inputs(path)])
    assert from_bulk.set_index("source_id").sort_index().equals(from_hats.set_index("source_id").sort_index())
    summary = predict_catalogue_ray(model, catalogue, tmp_path / "out", **run_options())
    assert summary.kind == "hats" and summary.files_written == len(partitions)
    for partition in partitions:  # partitioned like the input
        assert (tmp_path / "out" / partition.relative_to(catalogue)).is_file()
    table = check_exactly_once(tmp_path / "out", input_ids(bulk)).set_index("source_id").sort_index()
    # model inputs are bit-identical (above); predictions differ only by float32 rounding of other batchings
    pd.testing.assert_frame_equal(table, bulk_predictions, rtol=1e-6, atol=1e-6)


def test_collector_drops_rows_delivered_twice_and_waits_for_missing_ones(tmp_path):
    """The driver's exactly-once bookkeeping (no Ray needed): a retried task's rows arrive twice."""
    import pyarrow as pa

    from modeling_astro.catalogue_ray import CatalogueRun, _Collector

    def rows(first: int, stop: int, total: int = -1) -> pa.Table:
        n = stop - first
        return pa.table(
            {
                "_file": np.zeros(n, np.int32),
                "_row": np.arange(first, stop),
                "_file_rows": np.full(n, total),
                "source_id": np.arange(first, stop) + 10**15,
                "teff": np.ones(n, np.float32),
                "teff_sigma": np.ones(n, np.float32),
                "_node": np.full(n, "node"),
                "_read_node": np.full(n, "node"),
                "_pid": np.full(n, 7),
            }
        )

    summary = CatalogueRun(kind="bulk", files_total=1, files_skipped=0)
    written = []
    collector = _Collector([tmp_path / "a.parquet"], ["teff"], summary, lambda path, n: written.append(n))
    collector.add(rows(0, 4))
    collector.add(rows(0, 4))  # the same chunk again (a retried task)
    collector.add(rows(8, 10, total=10))  # 10 rows seen, but rows 4-7 are missing: not complete
    assert not written and not (tmp_path / "a.parquet").exists()
    collector.add(rows(4, 8))
    collector.add(rows(8, 10, total=10))  # after the file is written: dropped
    collector.close()
    assert written == [10] and summary.duplicate_rows_dropped == 6
    table = pq.read_table(tmp_path / "a.parquet")
    np.testing.assert_array_equal(table["source_id"].to_numpy(), np.arange(10) + 10**15)
    assert table.column_names == ["source_id", "teff", "teff_sigma"]


def test_cluster_without_room_for_reads_is_refused_not_left_waiting():
    """Actors hold their CPUs for the whole run: if no node keeps a read task's CPUs, Ray would wait forever."""
    from modeling_astro.catalogue_ray import check_cluster_fits

    two_nodes = [{"CPU": 1.0}, {"CPU": 1.0}]
    with pytest.raises(ValueError, match="no node left with the --cpus-per-read 1 CPUs"):
        check_cluster_fits(two_nodes, num_actors=2, cpus_per_actor=1.0, num_gpus=0.0, cpus_per_read=1.0)
    # spread as Ray spreads them, two half-CPU actors leave half a CPU on each node: too little for a 1-CPU read
    with pytest.raises(ValueError, match="smaller --cpus-per-read"):
        check_cluster_fits(two_nodes, num_actors=2, cpus_per_actor=0.5, num_gpus=0.0, cpus_per_read=1.0)
    check_cluster_fits(two_nodes, num_actors=2, cpus_per_actor=0.5, num_gpus=0.0, cpus_per_read=0.5)
    check_cluster_fits(two_nodes, num_actors=1, cpus_per_actor=1.0, num_gpus=0.0, cpus_per_read=1.0)
    gpu_actors = dict(num_actors=2, cpus_per_actor=1.0, num_gpus=1.0, cpus_per_read=1.0)
    with pytest.raises(ValueError, match="cannot place actor 2 of --num-actors 2"):
        check_cluster_fits([{"CPU": 8.0, "GPU": 1.0}], **gpu_actors)
    check_cluster_fits([{"CPU": 8.0, "GPU": 2.0}], **gpu_actors)


def test_too_many_actors_for_the_cluster_fail_at_once(ray_cluster, bulk, model, tmp_path):
    """The test cluster has 2 CPUs: two 1-CPU actors would starve the read tasks (the job used to hang)."""
    from modeling_astro.catalogue_ray import predict_catalogue_ray

    started = time.monotonic()
    with pytest.raises(ValueError, match="no input would ever be read"):
        predict_catalogue_ray(model, bulk, tmp_path, num_actors=2, **run_options())
    assert time.monotonic() - started < 60
    assert not list(tmp_path.glob("*.parquet"))
