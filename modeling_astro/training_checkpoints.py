"""The identity, checkpoints and metrics of a `train.py` run: what makes a resumed run continue exactly.

An output folder belongs to one run, recorded in `run.json` (its id, start time and fingerprint: the model
configuration, the training arguments that shape the batches and the schedule, and the number of training stars).
Checkpoints are `checkpoints/checkpoint-<step>/` folders written by `Accelerator.save_state` plus a
`training_state.json` (step, planned steps, fingerprint, run id); resuming checks the fingerprint, so that a
continuation with other arguments is refused instead of silently differing from an uninterrupted run. Every write
goes through `io_utils` (atomic files, a checkpoint folder renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io_utils import DiskFullError, atomic_write_text, disk_full_errors, empty_folder, read_jsonl

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .configuration_astro import AstroConfig

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"  # the identity of the run that owns an output folder: its id and fingerprint
TRAINING_STATE = "training_state.json"  # beside the accelerate state of a checkpoint
# what a checkpoint's state means; a checkpoint of another format cannot be resumed exactly. 1 (no "format"): the
# learning rate of a CosineAnnealingWarmRestarts edited in place; 2: train.learning_rate through LambdaLR.
STATE_FORMAT = 2


class TrainingInputError(ValueError):
    """The dataset, the arguments or the checkpoint to resume from cannot be used; the message says why."""


def run_fingerprint(config: AstroConfig, training: Mapping[str, Any], num_train_stars: int) -> dict:
    """What a resumed run must share with the checkpoint for the continuation to be exact: the model configuration,
    the training arguments `training` (those that change batches, masks or the schedule) and the training stars."""
    model = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "auto_map")}
    fingerprint = {
        "format": STATE_FORMAT,
        "model": model,
        "training": dict(training),
        "num_train_stars": num_train_stars,
    }
    return json.loads(json.dumps(fingerprint))  # as read back from training_state.json


def read_run(output_dir: Path) -> dict | None:
    """The run recorded in `output_dir/run.json` (its `run_id`, `started`, `fingerprint`), or None."""
    path = output_dir / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def run_checkpoints(output_dir: Path, run_id: str | None) -> list[Path]:
    """The checkpoints of run `run_id` in `output_dir`, lowest step first (those written before run ids count)."""
    found = []
    for state in output_dir.glob(f"{CHECKPOINTS}/checkpoint-*/{TRAINING_STATE}"):
        owner = json.loads(state.read_text()).get("run_id")
        if owner is None or owner == run_id:
            found.append(state.parent)
    return sorted(found, key=_step)


def identify_run(output_dir: Path, resume: str | None, overwrite: bool) -> tuple[str | None, bool]:
    """
    The id of the run this invocation continues (None: a new run) and whether `output_dir` must be emptied first.
    A new run into a folder that holds another run (its `run.json`, checkpoints, metrics or model) is refused
    unless `overwrite`; resuming from a checkpoint of another run than the folder's is refused.
    """
    recorded = read_run(output_dir)
    if resume and resume != "latest":
        state = Path(resume, TRAINING_STATE)
        owner = json.loads(state.read_text()).get("run_id") if state.is_file() else None
        if recorded and owner and owner != recorded["run_id"]:
            raise TrainingInputError(
                f"--resume_from_checkpoint {resume} is a checkpoint of run {owner}, but --output_dir {output_dir} "
                f"holds run {recorded['run_id']} (started {recorded['started']}): continuing there would mix two "
                "runs. Choose another --output_dir."
            )
        return (recorded["run_id"] if recorded else owner), False
    if resume == "latest":
        if recorded:
            return recorded["run_id"], False
        # a folder without run.json: its latest checkpoint's run
        states = sorted(output_dir.glob(f"{CHECKPOINTS}/checkpoint-*/{TRAINING_STATE}"), key=lambda p: _step(p.parent))
        return (json.loads(states[-1].read_text()).get("run_id") if states else None), False
    owned = (RUN_FILE, METRICS_FILE, "config.json", "model.safetensors")
    used = [name for name in owned if (output_dir / name).exists()]
    if any(output_dir.glob(f"{CHECKPOINTS}/checkpoint-*")):
        used.append(CHECKPOINTS)
    if used and not overwrite:
        owner = f"run {recorded['run_id']} (started {recorded['started']})" if recorded else "an earlier run"
        raise TrainingInputError(
            f"--output_dir {output_dir} holds {owner} ({', '.join(used)}): a new run there would mix with it. "
            "Continue it with --resume_from_checkpoint latest, start afresh there with --overwrite_output_dir "
            "(deletes its contents), or choose another --output_dir."
        )
    return None, bool(used)


def start_run(
    accelerator: Accelerator, output_dir: Path, fingerprint: dict, resume: str | None, overwrite: bool
) -> str:
    """Check and record the identity of this run in `output_dir/run.json` (see `identify_run`); returns its id."""
    run_id, clear = identify_run(output_dir, resume, overwrite)
    accelerator.wait_for_everyone()  # every process has looked at the folder before it changes
    if accelerator.is_main_process:
        if clear:
            empty_folder(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if run_id is None or read_run(output_dir) is None:
            record = {
                "run_id": run_id or uuid.uuid4().hex,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "fingerprint": fingerprint,
            }
            atomic_write_text(output_dir / RUN_FILE, json.dumps(record, indent=1))
    accelerator.wait_for_everyone()
    return read_run(output_dir)["run_id"]


def find_checkpoint(output_dir: Path, name: str, run_id: str | None = None) -> Path:
    """The checkpoint folder meant by `--resume_from_checkpoint` ('latest' = this run's highest step)."""
    if name != "latest":
        if not Path(name, TRAINING_STATE).is_file():
            raise TrainingInputError(f"{name} is not a checkpoint folder of train.py (no {TRAINING_STATE}).")
        return Path(name)
    found = run_checkpoints(output_dir, run_id)
    if not found:
        raise TrainingInputError(
            f"--resume_from_checkpoint latest: no checkpoint of run {run_id} in {output_dir / CHECKPOINTS}."
        )
    return found[-1]


def check_resumable(checkpoint: Path, fingerprint: dict) -> tuple[int, int | None]:
    """The step and planned steps of `checkpoint`; raises if its run had another model, data or schedule."""
    state = json.loads((checkpoint / TRAINING_STATE).read_text())
    saved = state["fingerprint"]
    if saved.get("format", 1) != fingerprint["format"]:
        raise TrainingInputError(
            f"Cannot resume from {checkpoint}: it was written by another version of train.py (checkpoint format "
            f"{saved.get('format', 1)}, this version writes {fingerprint['format']}), whose schedule or batches this "
            "version does not reproduce. Finish that run with the train.py that wrote it, or train into a new "
            "--output_dir."
        )
    differences = [
        f"{part}.{key}: checkpoint {saved[part].get(key)!r}, now {value!r}"
        for part in ("model", "training")
        for key, value in fingerprint[part].items()
        if saved[part].get(key) != value
    ]
    if saved["num_train_stars"] != fingerprint["num_train_stars"]:
        differences.append(
            f"training stars: checkpoint {saved['num_train_stars']}, now {fingerprint['num_train_stars']}"
        )
    if differences:
        raise TrainingInputError(
            f"Cannot resume from {checkpoint}: it was written with a different configuration ("
            + "; ".join(differences[:6])
            + "). Resume with the arguments of that run, or train into a new --output_dir."
        )
    return int(state["step"]), state.get("max_steps")


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    step: int,
    max_steps: int | None,
    fingerprint: dict,
    limit: int,
    run_id: str | None = None,
) -> None:
    """
    `save_state` into a temporary folder renamed into place; drop this run's oldest checkpoints beyond `limit`.
    A full disk raises `DiskFullError` (the temporary folder removed, earlier checkpoints intact).
    """
    final = output_dir / CHECKPOINTS / f"checkpoint-{step}"
    temporary = output_dir / CHECKPOINTS / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    kept = (
        f"the checkpoints saved before step {step} in {final.parent} are intact; continue with "
        "--resume_from_checkpoint latest"
    )
    try:
        with disk_full_errors(final.parent, kept=kept):
            accelerator.save_state(str(temporary))
            if accelerator.is_main_process:
                state = {"step": step, "max_steps": max_steps, "fingerprint": fingerprint, "run_id": run_id}
                atomic_write_text(temporary / TRAINING_STATE, json.dumps(state))
    except DiskFullError:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        ours = run_checkpoints(output_dir, run_id)
        for old in ours[: max(len(ours) - limit, 0)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def write_metrics(path: Path, records: list[dict]) -> None:
    """Rewrite the metrics JSONL atomically (used when resuming, to drop steps after the checkpoint)."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics JSONL file (empty if it does not exist; a torn last line dropped, with a warning)."""
    return read_jsonl(path)


__all__ = [
    "CHECKPOINTS",
    "METRICS_FILE",
    "RUN_FILE",
    "STATE_FORMAT",
    "TRAINING_STATE",
    "TrainingInputError",
    "check_resumable",
    "find_checkpoint",
    "identify_run",
    "read_metrics",
    "read_run",
    "run_checkpoints",
    "run_fingerprint",
    "save_checkpoint",
    "start_run",
    "write_metrics",
]
