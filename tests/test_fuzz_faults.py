"""Fuzz corpus of faults (issue 18): interrupted writes, SIGKILL at the dangerous instants, a second process on the
same output folder, torn JSONL, full disks -- in train.py, the dataset builder and the catalogue command.

The kills are deterministic: `modeling_astro.io_utils.pause_point` sleeps at a named point when
`ASTRO_TEST_PAUSE_AT` names it, after writing its pid to `ASTRO_TEST_PAUSE_FILE`; the test then SIGKILLs it.
Cases numbered `caseNN` are those of the issue; the others are this corpus's own.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_catalogue_inference import REQUEST, read_predictions
from test_catalogue_inference import catalogue as catalogue  # noqa: PLC0414  (the module-scoped fixture)
from test_catalogue_inference import run_command as run_catalogue
from training_fixtures import tiny_train_args

import train
from benchmarks.bench_build import write_synthetic_inputs
from dataset_builder import DatasetBuildError, build_dataset
from modeling_astro import io_utils, training_checkpoints
from modeling_astro.catalogue_inference import input_shards, predict_catalogue
from modeling_astro.inference import AstroPredictor
from modeling_astro.io_utils import (
    CorruptFileError,
    DiskFullError,
    FolderInUseError,
    atomic_write_text,
    folder_lock,
    read_jsonl,
    recover_folder,
    replace_folder,
)

pytest_plugins = ["training_fixtures"]

REPO = Path(__file__).resolve().parents[1]
BUILD_STARS = 120
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 4736 vs 4624"


# ---------------------------------------------------------------------------------------------------- helpers
def run_args(output_dir: Path, dataset: Path, steps: int, *extra: str) -> list[str]:
    """A tiny train.py run of `steps` steps, a checkpoint every 10 steps, one loss record per step."""
    return tiny_train_args(
        dataset,
        output_dir,
        *("--max_steps", str(steps), "--batch_size", "32", "--save_steps", "10", "--logging_steps", "1"),
        *("--eval_steps", "10", "--save_total_limit", "5"),
        *extra,
    )


def losses(output_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in train.read_metrics(output_dir / train.METRICS_FILE)}


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def start_paused(command: list[str], point: str, pause_file: Path, **env: str) -> subprocess.Popen:
    """Start `command`; return once it sleeps at pause point `point` (it wrote its pid to `pause_file`)."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=environment(ASTRO_TEST_PAUSE_AT=point, ASTRO_TEST_PAUSE_FILE=str(pause_file), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not pause_file.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"{command[:4]} never reached {point}:\n{process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    assert int(pause_file.read_text()) == process.pid
    return process


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def train_command(args: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def folder_bytes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under `folder` by relative path -> bytes (files or folders named in `skip` left out)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part in skip for part in path.relative_to(folder).parts)
    }


def leftovers(folder: Path) -> list[str]:
    """Hidden staging/backup/lock/temporary entries that an interrupted write left beside or in `folder`."""
    beside = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    inside = [p.name for p in folder.rglob(".*")] if folder.exists() else []
    return beside + inside


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def finished_run(tiny_survey, tmp_path_factory) -> Path:
    """A completed 20-step run (checkpoints 10 and 20, final model), to be copied by the tests."""
    output = tmp_path_factory.mktemp("finished") / "model"
    train.main(run_args(output, tiny_survey, 20))
    return output


@pytest.fixture(scope="module")
def reference_30(tiny_survey, tmp_path_factory) -> Path:
    """The same run as `finished_run` trained straight to 30 steps: what any continuation must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "model"
    train.main(run_args(output, tiny_survey, 30))
    return output


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory) -> tuple[dict, dict]:
    """Two different sets of builder inputs ('old' and 'new')."""
    root = tmp_path_factory.mktemp("build_inputs")
    return tuple(
        write_synthetic_inputs(root / name, BUILD_STARS, seed=seed, n_xp_files=2)
        for name, seed in [("old", 1), ("new", 2)]
    )


@pytest.fixture(scope="module")
def reference_builds(build_inputs, tmp_path_factory) -> tuple[dict, dict]:
    """The bytes of the dataset folders built from the old and the new inputs, uninterrupted, by the same command
    in the same environment as the interrupted builds (floats may differ in the last bit with the thread count)."""
    root = tmp_path_factory.mktemp("reference_builds")
    result = []
    for name, inputs in zip(("old", "new"), build_inputs):
        built = subprocess.run(build_command(inputs, root / name), cwd=REPO, env=environment(), capture_output=True)
        assert built.returncode == 0, built.stderr[-2000:]
        result.append(folder_bytes(root / name))
    return tuple(result)


def build_old(inputs: dict, out: Path) -> None:
    """Build `out` from the old inputs as the reference was built."""
    built = subprocess.run(build_command(inputs, out), cwd=REPO, env=environment(), capture_output=True)
    assert built.returncode == 0, built.stderr[-2000:]


def copy_run(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def build_command(inputs: dict, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dataset_builder",
        "build",
        "--gaia-xp",
        *map(str, inputs["gaia_xp"]),
        "--gaia-source",
        str(inputs["gaia_source"]),
        *(["--allstar", str(inputs["allstar"])] if inputs.get("allstar") else []),
        "--out",
        str(out),
        "--num-proc",
        "1",
        "--overwrite",
    ]


# ---------------------------------------------------------------------------------------------------- case 8
def test_case08_new_run_into_used_output_dir_is_refused_and_overwrite_starts_afresh(
    finished_run, tiny_survey, tmp_path
):
    output = copy_run(finished_run, tmp_path)
    before = folder_bytes(output)
    with pytest.raises(
        train.TrainingInputError, match="holds run .* --resume_from_checkpoint latest.*--overwrite_output_dir"
    ):
        train.main(run_args(output, tiny_survey, 10, "--learning_rate", "0.01"))
    assert folder_bytes(output) == before, "a refused run changes nothing"
    cli = subprocess.run(
        train_command(run_args(output, tiny_survey, 10)), cwd=REPO, env=environment(), capture_output=True, text=True
    )
    assert cli.returncode == 1 and "error: --output_dir" in cli.stderr and "Traceback" not in cli.stderr
    old_id = training_checkpoints.read_run(output)["run_id"]
    train.main(run_args(output, tiny_survey, 10, "--overwrite_output_dir", "true"))
    new = training_checkpoints.read_run(output)
    assert new["run_id"] != old_id
    assert sorted(p.name for p in (output / train.CHECKPOINTS).iterdir()) == ["checkpoint-10"]
    assert max(losses(output)) == 10 and not (output / "checkpoints" / "checkpoint-20").exists()
    state = json.loads((output / train.CHECKPOINTS / "checkpoint-10" / "training_state.json").read_text())
    assert state["run_id"] == new["run_id"]
    assert json.loads((output / "training_args.json").read_text())["final_step"] == 10
    assert not leftovers(output)


def test_case08_rotation_and_latest_only_touch_this_runs_checkpoints(finished_run, reference_30, tiny_survey, tmp_path):
    output = copy_run(finished_run, tmp_path)
    # A foreign run's checkpoint at a higher step (e.g. copied in by hand): never resumed, never rotated away.
    foreign = output / train.CHECKPOINTS / "checkpoint-500"
    shutil.copytree(output / train.CHECKPOINTS / "checkpoint-20", foreign)
    state = json.loads((foreign / "training_state.json").read_text())
    (foreign / "training_state.json").write_text(json.dumps({**state, "step": 500, "run_id": "someone-else"}))
    train.main(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest", "--save_total_limit", "1"))
    assert sorted(p.name for p in (output / train.CHECKPOINTS).iterdir()) == ["checkpoint-30", "checkpoint-500"]
    assert losses(output) == losses(reference_30), "resumed from this run's step 20, not the foreign step 500"
    final, expected = load_file(output / "model.safetensors"), load_file(reference_30 / "model.safetensors")
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def test_own_resume_from_a_checkpoint_of_another_run_is_refused(finished_run, tiny_survey, tmp_path):
    output = copy_run(finished_run, tmp_path)
    other = tmp_path / "other"
    train.main(run_args(other, tiny_survey, 10, "--do_eval", "false"))
    before = folder_bytes(output)
    with pytest.raises(train.TrainingInputError, match="checkpoint of run .* would mix two runs"):
        train.main(
            run_args(output, tiny_survey, 30, "--resume_from_checkpoint", str(other / "checkpoints" / "checkpoint-10"))
        )
    assert folder_bytes(output) == before


# ---------------------------------------------------------------------------------------------------- case 14
def test_case14_catalogue_started_twice_on_one_folder_second_stops_with_clear_error(catalogue, tmp_path):
    model, data = catalogue
    out = tmp_path / "predictions"
    go = tmp_path / "go"
    holder = f"""
        import pathlib, time
        import pyarrow.parquet as pq
        original = pq.ParquetWriter.write_table
        def write_slowly(self, table, *args, **kwargs):
            pathlib.Path("{tmp_path / "paused"}").write_text("paused")
            while not pathlib.Path("{go}").exists():
                time.sleep(0.05)
            return original(self, table, *args, **kwargs)
        pq.ParquetWriter.write_table = write_slowly
    """
    script = textwrap.dedent(holder) + textwrap.dedent(
        f"""
        from modeling_astro.catalogue_inference import main
        main(["--model", "{model}", "--data", "{data}", "--out", "{out}", "--split", "test",
              "--request", *{REQUEST!r}, "--rows-per-chunk", "10", "--batch-size", "4", "--dtype", "float32"])
        """
    )
    first = subprocess.Popen(
        [sys.executable, "-c", script], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (tmp_path / "paused").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = subprocess.run(
        [sys.executable, "-m", "modeling_astro.catalogue_inference", "--model", str(model), "--data", str(data),
         "--out", str(out), "--split", "test", "--request", *REQUEST, "--dtype", "float32"],
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert f"prediction folder {out} is in use by pid {first.pid}" in second.stderr
    assert "choose another folder" in second.stderr
    go.write_text("go")
    assert first.wait(timeout=120) == 0, first.stderr.read()[-3000:]
    result = read_predictions(out)
    frame = pd.concat([pd.read_parquet(path) for path in input_shards(data, "test")], ignore_index=True)
    expected = AstroPredictor.from_pretrained(str(model), device="cpu").predict(
        frame, REQUEST, keep_columns=["source_id"]
    )
    pd.testing.assert_frame_equal(result, expected, check_exact=False, rtol=1e-5)
    assert not leftovers(out)


def test_case14_torn_metrics_tail_on_resume_is_dropped_with_a_warning(
    finished_run, reference_30, tiny_survey, tmp_path
):
    output = copy_run(finished_run, tmp_path)
    with open(output / train.METRICS_FILE, "a") as handle:
        handle.write('{"step": 21, "epoch": 0.3, "lo')  # the kill tore the last record
    with pytest.warns(UserWarning, match=r"metrics\.jsonl: dropped a torn last line"):
        train.main(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest"))
    assert losses(output) == losses(reference_30)
    assert all(json.loads(line) for line in (output / train.METRICS_FILE).read_text().splitlines())


def test_own_metrics_damaged_before_the_last_line_is_an_error_naming_file_and_line(finished_run, tiny_survey, tmp_path):
    output = copy_run(finished_run, tmp_path)
    lines = (output / train.METRICS_FILE).read_text().splitlines()
    lines[2] = lines[2][:15]
    (output / train.METRICS_FILE).write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        train_command(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest")),
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: {output / train.METRICS_FILE}: line 3 of {len(lines)} is not valid JSON" in result.stderr


def test_case14_train_on_a_full_disk_says_so_and_keeps_the_checkpoints(
    reference_30, tiny_survey, tmp_path, monkeypatch
):
    output = tmp_path / "model"
    original_save = torch.save
    saves = {"count": 0}

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        saves["count"] += 1
        if "checkpoint-20" in str(f):  # torch's zip writer, as it fails on a full disk
            raise RuntimeError(TORCH_FULL_DISK)
        return original_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(DiskFullError) as error:
        train.main(run_args(output, tiny_survey, 30))
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and isinstance(error.value.__cause__, RuntimeError)
    assert "The disk is full" in message and str(output / train.CHECKPOINTS) in message and " free of " in message
    assert "checkpoints saved before step 20" in message and "--resume_from_checkpoint latest" in message
    assert sorted(p.name for p in (output / train.CHECKPOINTS).iterdir()) == ["checkpoint-10"]
    monkeypatch.setattr(torch, "save", original_save)  # space freed: the run continues exactly
    train.main(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest"))
    assert losses(output) == losses(reference_30)


def test_own_final_save_on_a_full_disk_leaves_the_folder_unchanged(finished_run, tiny_survey, tmp_path, monkeypatch):
    output = copy_run(finished_run, tmp_path)
    before = folder_bytes(output, skip=("checkpoints", "metrics.jsonl"))

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.AstroForObservationPrediction, "save_pretrained", no_space)
    with pytest.raises(
        DiskFullError, match=f"writing into {output.parent} failed.*is unchanged, its checkpoints intact"
    ):
        train.main(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest"))
    assert folder_bytes(output, skip=("checkpoints", "metrics.jsonl")) == before
    assert (output / train.CHECKPOINTS / "checkpoint-30" / "training_state.json").is_file()
    assert not leftovers(output)


def test_own_train_cli_on_a_full_disk_prints_one_clear_line(tiny_survey, tmp_path):
    output = tmp_path / "model"
    prelude = textwrap.dedent(
        f"""
        import runpy, sys, torch
        def full(*args, **kwargs):
            raise RuntimeError({TORCH_FULL_DISK!r})
        torch.save = full
        sys.argv = ["train.py", *{run_args(output, tiny_survey, 10)!r}]
        runpy.run_path("{REPO / "train.py"}", run_name="__main__")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: The disk is full: writing into" in result.stderr and "free of" in result.stderr


def test_own_train_started_twice_on_one_output_dir_second_stops(finished_run, tiny_survey, tmp_path):
    output = copy_run(finished_run, tmp_path)
    first = start_paused(
        train_command(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest")),
        "replace_folder:before_marker",
        tmp_path / "paused",
    )
    try:
        second = subprocess.run(
            train_command(run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest")),
            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        kill(first)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"error: --output_dir {output} is in use by pid {first.pid}" in second.stderr


# ---------------------------------------------------------------------------------------------------- case 15
@pytest.mark.parametrize("exchange", [False, True], ids=["two_renames", "atomic_exchange"])
def test_case15_build_overwrite_killed_during_the_swap_leaves_a_complete_folder(
    build_inputs, reference_builds, tmp_path, exchange
):
    old_inputs, new_inputs = build_inputs
    old_bytes, new_bytes = reference_builds
    out = tmp_path / "dataset"
    build_old(old_inputs, out)
    point = "replace_folder:after_exchange" if exchange else "replace_folder:between_renames"
    env = {} if exchange else {io_utils.NO_EXCHANGE_ENV: "1"}
    kill(start_paused(build_command(new_inputs, out), point, tmp_path / "paused", **env))
    if exchange:
        assert folder_bytes(out, skip=(io_utils.COMPLETE_MARKER,)) == new_bytes, (
            "exchanged in one step: never missing, already the new folder"
        )
    else:
        assert not out.exists(), "the kill hit the window between the two renames"
    # The next use of the folder (here the same build, refused without --overwrite) repairs it first.
    with pytest.raises(DatasetBuildError, match="output folder already exists"):
        build_dataset(**old_inputs, out_dir=out, num_proc=1)
    assert folder_bytes(out) == new_bytes
    assert not leftovers(out)


def test_own_build_killed_while_writing_keeps_the_old_folder(build_inputs, reference_builds, tmp_path):
    old_inputs, new_inputs = build_inputs
    out = tmp_path / "dataset"
    build_old(old_inputs, out)
    kill(start_paused(build_command(new_inputs, out), "replace_folder:before_marker", tmp_path / "paused"))
    assert folder_bytes(out) == reference_builds[0]
    assert [name for name in leftovers(out) if ".new-" in name], "the incomplete new folder was left by the kill"
    with folder_lock(out):  # the next user of the folder removes it
        pass
    assert folder_bytes(out) == reference_builds[0] and not leftovers(out)


def test_own_second_build_into_a_folder_being_built_stops_at_once(build_inputs, tmp_path):
    old_inputs, new_inputs = build_inputs
    out = tmp_path / "dataset"
    first = start_paused(build_command(new_inputs, out), "replace_folder:before_marker", tmp_path / "paused")
    try:
        with pytest.raises(FolderInUseError, match=f"dataset folder {out} is in use by pid {first.pid}"):
            build_dataset(**old_inputs, out_dir=out, num_proc=1, overwrite=True)
    finally:
        kill(first)


# ---------------------------------------------------------------------------------------------------- case 16
@pytest.mark.parametrize(
    "point, expected",
    [
        ("replace_folder:before_marker", "old"),
        ("replace_folder:between_renames", "new"),
        ("replace_folder:after_exchange", "new"),
        ("replace_folder:after_swap", "new"),
    ],
)
def test_case16_train_killed_in_the_final_save_over_an_older_model_leaves_old_or_new(
    finished_run, reference_30, tiny_survey, tmp_path, point, expected
):
    output = copy_run(finished_run, tmp_path)
    args = run_args(output, tiny_survey, 30, "--resume_from_checkpoint", "latest")
    env = {io_utils.NO_EXCHANGE_ENV: "1"} if point == "replace_folder:between_renames" else {}
    kill(start_paused(train_command(args), point, tmp_path / "paused", **env))
    with folder_lock(output):  # what the next train.py / build / catalogue of the folder does first
        pass
    source = finished_run if expected == "old" else reference_30
    weights, wanted = load_file(output / "model.safetensors"), load_file(source / "model.safetensors")
    assert all(torch.equal(weights[name], wanted[name]) for name in wanted)
    final_step = json.loads((output / "training_args.json").read_text())["final_step"]
    assert final_step == (20 if expected == "old" else 30), "the model and its training record agree"
    if expected == "new":  # the older model's evaluation and card went with it: nothing describes other weights
        assert not (output / "README.md").exists() and not (output / "eval_results.json").exists()
    else:
        assert (output / "README.md").read_bytes() == (finished_run / "README.md").read_bytes()
    AstroPredictor.from_pretrained(str(output), device="cpu")  # loads
    assert not leftovers(output)
    train.main(args)  # and the run completes from there, exactly
    assert losses(output) == losses(reference_30)
    final, expected_final = load_file(output / "model.safetensors"), load_file(reference_30 / "model.safetensors")
    assert all(torch.equal(final[name], expected_final[name]) for name in expected_final)


# ---------------------------------------------------------------------------------------------------- own: io_utils
def test_own_torn_jsonl_tail_and_middle_damage(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    with pytest.warns(UserWarning, match="log.jsonl: dropped a torn last line 3"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_bytes(b'{"a": 1}\n\x00\x00\x00\n{"a": 3}\n')
    with pytest.raises(CorruptFileError, match=r"log\.jsonl: line 2 of 3 is not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": 2}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_own_atomic_write_killed_before_the_rename_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    script = textwrap.dedent(
        f"""
        import os, signal
        from modeling_astro import io_utils, training_checkpoints
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        io_utils.atomic_write_text("{target}", "new" * 100000)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=environment(), capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")], "the kill left its temporary"
    assert [p.name for p in io_utils.remove_temporaries(tmp_path)] and sorted(os.listdir(tmp_path)) == ["results.json"]


def test_own_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "fsync", full)
    with pytest.raises(DiskFullError, match=f"writing into {tmp_path} failed.*results.json is unchanged"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_own_other_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with io_utils.disk_full_errors(tmp_path, kept="x"):
            raise RuntimeError("shape mismatch")
    with pytest.raises(PermissionError):
        with io_utils.disk_full_errors(tmp_path, kept="x"):
            raise PermissionError(errno.EACCES, "read-only")
    assert io_utils.is_disk_full(RuntimeError(TORCH_FULL_DISK))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert io_utils.is_disk_full(wrapped)


def test_own_lock_of_a_killed_process_is_free_again(tmp_path):
    folder = tmp_path / "out"
    script = (
        f"from modeling_astro import io_utils\nwith io_utils.folder_lock('{folder}'):\n    io_utils.pause_point('held')"
    )
    holder = start_paused([sys.executable, "-c", script], "held", tmp_path / "paused")
    with pytest.raises(FolderInUseError, match=f"in use by pid {holder.pid} on .* \\(started "):
        with folder_lock(folder):
            pass
    kill(holder)  # the kernel releases a flock with its process: no stale lock
    with folder_lock(folder), folder_lock(folder):  # re-entrant within a process
        pass
    assert not leftovers(folder)


def test_own_recovery_restores_the_old_folder_when_the_new_one_is_incomplete(tmp_path):
    final = tmp_path / "data"
    old, new = tmp_path / ".data.old-1", tmp_path / ".data.new-2"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("half")  # no completion marker: interrupted while being written
    with pytest.warns(UserWarning, match="restored the old complete folder"):
        assert recover_folder(final) == "old"
    assert (final / "a").read_text() == "old" and not leftovers(final)


def test_own_replace_folder_error_inside_leaves_the_folder_untouched(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "a").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with replace_folder(final) as staging:
            (staging / "a").write_text("new")
            raise ZeroDivisionError("interrupted")
    assert (final / "a").read_text() == "old" and not leftovers(final)
    with replace_folder(final) as staging:
        (staging / "b").write_text("new")
    assert sorted(os.listdir(final)) == ["b"] and not leftovers(final)


def test_own_catalogue_on_a_full_disk_keeps_finished_shards_and_resumes(catalogue, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    model, data = catalogue
    out = tmp_path / "predictions"
    predictor = AstroPredictor.from_pretrained(str(model), device="cpu", batch_size=4)
    original = pq.ParquetWriter.write_table
    writes = {"count": 0}

    def fill_the_disk(self, table, *args, **kwargs):
        writes["count"] += 1
        if writes["count"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", fill_the_disk)
    with pytest.raises(DiskFullError, match="finished prediction shards in .* run the same command again"):
        predict_catalogue(predictor, data, out, REQUEST, split="test", rows_per_chunk=10)
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in input_shards(data, "test")[:2]]
    monkeypatch.setattr(pq.ParquetWriter, "write_table", original)
    predict_catalogue(predictor, data, out, REQUEST, split="test", rows_per_chunk=10)
    resumed = run_catalogue(model, data, out)  # nothing left to do
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    frame = pd.concat([pd.read_parquet(path) for path in input_shards(data, "test")], ignore_index=True)
    expected = predictor.predict(frame, REQUEST, keep_columns=["source_id"])
    pd.testing.assert_frame_equal(read_predictions(out), expected, check_exact=False, rtol=1e-5)
    assert not leftovers(out)


def test_own_replace_folder_under_a_read_only_parent_replaces_the_contents(tmp_path, monkeypatch):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old_weights").write_text("old")
    (final / "keep").mkdir()
    monkeypatch.setattr(io_utils, "_parent_writable", lambda folder: False)  # root ignores permissions: simulated
    assert io_utils.lock_file(final) == final / ".astro.lock"
    with pytest.warns(UserWarning, match="not writable: .* replaced entry by entry"):
        with replace_folder(final) as staging:
            assert staging.parent == final
            (staging / "weights").write_text("new")
            (staging / "keep").mkdir()
    assert sorted(os.listdir(final)) == ["keep", "weights"] and (final / "weights").read_text() == "new"
