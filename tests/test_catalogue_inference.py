"""Tests: catalogue command (modeling_astro/catalogue_inference.py): shards, resuming after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_process_group, tiny_config
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.catalogue_inference import input_shards, predict_catalogue
from modeling_astro.inference import AstroPredictor

REPO = Path(__file__).resolve().parents[1]
NAMES = ["bp0", "bp1", "rp0", "bprp", "jh", "teff", "logg"]
REQUEST = ["teff", "logg", "m_h"]
SHARD_ROWS = [23, 0, 31, 17]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[Path, Path]:
    """A saved tiny checkpoint and a builder-like dataset folder with four test shards (one empty)."""
    root = tmp_path_factory.mktemp("catalogue")
    torch.manual_seed(0)
    AstroForObservationPrediction(tiny_config(context_length=8)).save_pretrained(root / "model")
    AstroFeatureExtractor(context_length=8).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    (root / "data" / "data").mkdir(parents=True)
    first_id = 2**61
    for k, rows in enumerate(SHARD_ROWS):
        frame = pd.DataFrame({"source_id": first_id + np.arange(rows, dtype=np.int64)})
        first_id += rows
        for name in NAMES:
            values = rng.normal(size=rows).astype(np.float32)
            values[rng.random(rows) < 0.3] = np.nan
            frame[name] = values
            frame[name + "_err"] = np.full(rows, 0.1, dtype=np.float32)
        frame.to_parquet(root / "data" / "data" / f"test-{k:05d}-of-{len(SHARD_ROWS):05d}.parquet")
    pd.DataFrame({"source_id": [1]}).to_parquet(root / "data" / "data" / "train-00000-of-00001.parquet")
    return root / "model", root / "data"


def read_predictions(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))], ignore_index=True)


def run_command(
    model: Path, data: Path, out: Path, prelude: str = "", dtype: str = "float32", env: dict | None = None
) -> subprocess.CompletedProcess:
    script = textwrap.dedent(prelude) + textwrap.dedent(
        f"""
        from modeling_astro.catalogue_inference import main
        main(["--model", "{model}", "--data", "{data}", "--out", "{out}", "--split", "test",
              "--request", *{REQUEST!r}, "--rows-per-chunk", "10", "--batch-size", "4", "--dtype", "{dtype}"])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def test_predictions_match_in_memory_predictor(catalogue, tmp_path):
    model, data = catalogue
    predictor = AstroPredictor.from_pretrained(str(model), device="cpu", batch_size=4)
    written = predict_catalogue(predictor, data, tmp_path, REQUEST, split="test", rows_per_chunk=10)
    assert [path.name for path in written] == [path.name for path in input_shards(data, "test")]
    assert [pq.ParquetFile(path).metadata.num_rows for path in written] == SHARD_ROWS
    result = read_predictions(tmp_path)
    frame = pd.concat([pd.read_parquet(path) for path in input_shards(data, "test")], ignore_index=True)
    expected = predictor.predict(frame, REQUEST, keep_columns=["source_id"])
    pd.testing.assert_frame_equal(result, expected, check_exact=False, rtol=1e-5)
    assert predict_catalogue(predictor, data, tmp_path, REQUEST, split="test") == []  # all finished: skipped


def test_command_measures_its_dtype_once(catalogue, tmp_path):
    """`--dtype auto` (the default): the faster of fp32 and bf16 measured on this machine, cached, printed."""
    model, data = catalogue
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = run_command(model, data, tmp_path / "first", dtype="auto", env=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"dtype (float32|bfloat16): measured: bf16 forward [0-9.]+x fp32", first.stderr), first.stderr
    assert "(cached)" not in first.stderr
    assert (tmp_path / "cache/astro_kernels/fast_path.json").is_file()
    assert len(read_predictions(tmp_path / "first")) == sum(SHARD_ROWS)
    second = run_command(model, data, tmp_path / "second", dtype="auto", env=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"dtype (float32|bfloat16): measured.*\(cached\)", second.stderr), second.stderr
    assert len(json.loads((tmp_path / "cache/astro_kernels/fast_path.json").read_text())) == 1


def test_killed_run_resumes_without_duplicate_or_missing_rows(catalogue, tmp_path):
    model, data = catalogue
    # SIGKILL the process in the middle of its third shard (second chunk write of the shard with 31 rows).
    killer = """
        import os, signal
        import pyarrow.parquet as pq
        writes = {"count": 0}
        original = pq.ParquetWriter.write_table
        def write_then_die(self, table, *args, **kwargs):
            writes["count"] += 1
            if writes["count"] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, table, *args, **kwargs)
        pq.ParquetWriter.write_table = write_then_die
    """
    killed = run_command(model, data, tmp_path / "resumed", prelude=killer)
    assert killed.returncode == -signal.SIGKILL
    finished = sorted(path.name for path in (tmp_path / "resumed").glob("*.parquet"))
    assert finished == [path.name for path in input_shards(data, "test")[:2]]  # the third is not half-written
    resumed = run_command(model, data, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    result = read_predictions(tmp_path / "resumed")
    assert result["source_id"].is_unique and len(result) == sum(SHARD_ROWS)
    frame = pd.concat([pd.read_parquet(path) for path in input_shards(data, "test")], ignore_index=True)
    predictor = AstroPredictor.from_pretrained(str(model), device="cpu")
    expected = predictor.predict(frame, REQUEST, keep_columns=["source_id"])
    pd.testing.assert_frame_equal(result, expected, check_exact=False, rtol=1e-5)


def test_missing_folder_and_columns_are_explained(catalogue, tmp_path):
    model, data = catalogue
    with pytest.raises(FileNotFoundError, match="dataset builder"):
        input_shards(tmp_path)
    predictor = AstroPredictor.from_pretrained(str(model), device="cpu")
    with pytest.raises(KeyError, match="g_fakemag"):
        predict_catalogue(
            predictor, data, tmp_path / "out", REQUEST, split="test", inputs=["bp0", "g_fakemag"]
        )


def test_two_processes_share_the_shards(catalogue, tmp_path):
    model, data = catalogue
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "{port}",
    ]
    command += ["-m", "modeling_astro.catalogue_inference", "--model", str(model), "--data", str(data)]
    command += ["--out", str(tmp_path), "--split", "test", "--request", *REQUEST, "--dtype", "float32"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = run_process_group(command, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0" in result.stderr and "process 1" in result.stderr  # each process had its share
    predictions = read_predictions(tmp_path)
    assert len(predictions) == sum(SHARD_ROWS) and predictions["source_id"].is_unique
