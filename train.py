"""Train the Leung & Bovy (2024) transformer foundation model for stars with Accelerate.

    python train.py                                    # embedded simulated survey, ~200k-parameter model, CPU
    python train.py --dataset_dir my_dataset --output_dir my_model --max_steps 20000
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py   # two processes together
    accelerate launch train.py --model_preset paper --mixed_precision bf16           # the paper's 8.8M model
    on GPUs
    python train.py --resume_from_checkpoint latest    # continue an interrupted run exactly where it stopped

Every optimizer step draws `batch_size` training stars from a permutation seeded by (seed, epoch), splits them
across processes and gradient-accumulation micro-batches, and samples inputs/targets with a generator seeded
by
(seed, step, micro-batch, process): a run resumed from a checkpoint sees exactly the batches, masks and
dropout of
an uninterrupted run. At the end the model, tokenizer and collator code are saved in `output_dir` with a model
card and `eval_results.json` (the paper's XP -> labels protocol against XGBoost), ready for the Hub.
"""

import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from configuration_astro import AstroConfig
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.data_collator_astro import AstroDataCollator
from modeling_astro.evaluation import (
    add_model_index,
    evaluate,
    format_table,
    load_split_tables,
)
from modeling_astro.io_utils import (
    INTERNAL_PREFIX,
    CorruptFileError,
    DiskFullError,
    FolderInUseError,
    append_jsonl,
    atomic_write_text,
    disk_full_errors,
    empty_folder,
    folder_lock,
    link_tree,
    read_jsonl,
    replace_folder,
)
from modeling_astro.observations import EVALUATION_INPUTS, EVALUATION_LABELS, LABEL_PROMPT, LOCI_PROMPT

REPO_ROOT = Path(__file__).resolve().parent
MODEL_PRESETS = {
    "tiny": lambda **kwargs: AstroConfig.small(
        hidden_size=16,
        encoder_attention_heads=[2, 2],
        encoder_ffn_dims=[32, 32],
        decoder_attention_heads=[2, 2],
        decoder_ffn_dims=[32, 32],
        decoder_mlp_dims=[32, 16],
        **kwargs,
    ),
    "small": AstroConfig.small,
    "paper": AstroConfig,
}
REQUIRED_COLUMNS = ("source_id", *EVALUATION_INPUTS, *EVALUATION_LABELS)
CHECKPOINTS = "checkpoints"
PLAN_STEPS = 25  # with --max_steps 0, the steps are re-planned every PLAN_STEPS steps
UNPLANNED = 10**9  # cosine period until the steps are planned: a constant learning rate
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"  # the identity of the run that owns an output folder: its id and fingerprint
# an older model's files, not carried into the folder of a new model (its evaluation and card are written again)
FINAL_MODEL_FILES = ("model*.safetensors", "model.safetensors.index.json", "eval_results.json", "README.md", "*.png")


class TrainingInputError(ValueError):
    """The dataset, the arguments or the checkpoint to resume from cannot be used; the message says why."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------
# arguments
@dataclass
class DataArguments:
    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "Dataset folder from `python -m dataset_builder build` (default: the embedded survey)."
        },
    )
    max_train_stars: int | None = field(
        default=None, metadata={"help": "Use only the first N training stars."}
    )


@dataclass
class ModelArguments:
    model_preset: str = field(
        default="small", metadata={"help": "'tiny' (tests), 'small' (~200k parameters) or 'paper' (8.8M)."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Encoder and decoder dropout."})


@dataclass
class TrainArguments:
    output_dir: str = field(
        default="astro-small-simulated", metadata={"help": "Checkpoints and final model."}
    )
    seed: int = 42
    max_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps; 0 = as many as fit in --max_train_minutes (timed over the first steps)."
        },
    )
    max_train_minutes: float = field(
        default=12.0,
        metadata={"help": "Stop training after this many minutes, even before max_steps (0: no limit)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Stars per optimizer step, over all processes."})
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    restart_steps: int = field(
        default=0,
        metadata={"help": "Steps of the first cosine cycle (T_0); 0 = one cycle over all the steps."},
    )
    restart_mult: int = field(default=1, metadata={"help": "Growth factor of the cosine cycles (T_mult)."})
    min_learning_rate: float = 1e-5
    num_targets: int = field(default=4, metadata={"help": "Targets per star per step (the paper: 1)."})
    label_target_fraction: float = field(
        default=0.75,
        metadata={
            "help": "Chance a star's first target is a label (teff/logg/m_h); 0 = uniform (the paper)."
        },
    )
    prompt_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Share of the stars shown the evaluation's inputs (XP 0-29, bprp, jh, jk) unblanked instead "
            "of a random subset; 0 = the paper's sampling only."
        },
    )
    label_prompt_fraction: float = field(
        default=0.25,
        metadata={
            "help": "Share of the stars shown their labels and extinction (teff, logg, m_h, logebv) as inputs, "
            "as when generating spectra; 0 = the paper's sampling only."
        },
    )
    loci_prompt_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Share of the stars shown only log g, [M/H] and extinction as inputs, as for stellar loci; 0 = "
            "the paper's sampling only."
        },
    )
    num_threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads per process; 0 = the cores this process may run on (os.sched_getaffinity) "
            "divided among the processes of this machine (at least 1)."
        },
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'bf16' or 'fp16' (fp16 needs a GPU)."}
    )
    logging_steps: int = 50
    eval_steps: int = 500
    eval_stars: int = field(default=4096, metadata={"help": "Validation stars for the validation loss."})
    save_steps: int = 1000
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted first)."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (this output folder's run's latest checkpoint) or a checkpoint folder."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an --output_dir that holds another run, deleting its contents."},
    )
    do_eval: bool = field(
        default=True, metadata={"help": "Evaluate against XGBoost on the test split at the end."}
    )
    push_to_hub: bool = False
    hub_model_id: str | None = field(default=None, metadata={"help": "'user/name' of the Hub repository."})
    hub_private_repo: bool = False


# ---------------------------------------------------------------------------------------------------- data
def load_splits(dataset_dir: str | None) -> tuple[str, dict[str, pd.DataFrame]]:
    """The dataset folder and its train/validation/test tables; the embedded simulated survey by default."""
    if dataset_dir is None:
        from dataset_builder.default_data import default_dataset

        dataset_dir = str(default_dataset())
    try:
        return dataset_dir, load_split_tables(dataset_dir, required=REQUIRED_COLUMNS)
    except ValueError as error:
        raise TrainingInputError(
            f"{error} train.py needs source_id, the evaluation inputs bp0-29, rp0-29, bprp, jh, jk and the "
            "labels "
            "teff, logg, m_h."
        ) from error


def available_cores() -> int:
    """The cores this process may run on: its CPU set (`os.sched_getaffinity`: a container's or `taskset`'s)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(local_processes: int) -> int:
    """Threads per process: the available cores shared equally by the processes of this machine (at least 1).

    Not reduced by the machine's load: a load heuristic silently halved runs whose own data simulation had just
    raised the load average.
    """
    return max(1, available_cores() // max(local_processes, 1))


def epoch_batch(step: int, num_stars: int, batch_size: int, seed: int) -> torch.Tensor:
    """Star indices of optimizer step `step`: consecutive slices of a permutation seeded by (seed, epoch)."""
    steps_per_epoch = num_stars // batch_size
    epoch, position = divmod(step, steps_per_epoch)
    permutation = torch.randperm(num_stars, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return permutation[position * batch_size : (position + 1) * batch_size]


def seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, step, micro-batch, process, ...)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------------------------------
# checkpoints
def run_fingerprint(config: AstroConfig, args: TrainArguments, num_train_stars: int) -> dict:
    """What a resumed run must share with the checkpoint for the continuation to be exact."""
    keys = (
        "seed",
        "batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "weight_decay",
        "restart_steps",
        "restart_mult",
        "min_learning_rate",
        "num_targets",
        "label_target_fraction",
        "prompt_fraction",
        "label_prompt_fraction",
        "loci_prompt_fraction",
    )
    model = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "auto_map")}
    fingerprint = {
        "model": model,
        "training": {k: getattr(args, k) for k in keys},
        "num_train_stars": num_train_stars,
    }
    return json.loads(json.dumps(fingerprint))  # as read back from training_state.json


def read_run(output_dir: Path) -> dict | None:
    """The run recorded in `output_dir/run.json` (its `run_id`, `started`, `fingerprint`), or None."""
    path = output_dir / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_checkpoints(output_dir: Path, run_id: str | None) -> list[Path]:
    """The checkpoints of run `run_id` in `output_dir`, lowest step first (those written before run ids count)."""
    found = []
    for state in output_dir.glob(f"{CHECKPOINTS}/checkpoint-*/training_state.json"):
        owner = json.loads(state.read_text()).get("run_id")
        if owner is None or owner == run_id:
            found.append(state.parent)
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def identify_run(output_dir: Path, resume: str | None, overwrite: bool) -> tuple[str | None, bool]:
    """
    The id of the run this invocation continues (None: a new run) and whether `output_dir` must be emptied first.
    A new run into a folder that holds another run (its `run.json`, checkpoints, metrics or model) is refused
    unless `overwrite`; resuming from a checkpoint of another run than the folder's is refused.
    """
    recorded = read_run(output_dir)
    if resume and resume != "latest":
        state = Path(resume, "training_state.json")
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
        states = sorted(
            output_dir.glob(f"{CHECKPOINTS}/checkpoint-*/training_state.json"),
            key=lambda p: int(p.parent.name.split("-")[1]),
        )  # a folder without run.json: its latest checkpoint's run
        return (json.loads(states[-1].read_text()).get("run_id") if states else None), False
    used = [
        name
        for name in (RUN_FILE, METRICS_FILE, "config.json", "model.safetensors")
        if (output_dir / name).exists()
    ] + ([CHECKPOINTS] if any(output_dir.glob(f"{CHECKPOINTS}/checkpoint-*")) else [])
    if used and not overwrite:
        owner = f"run {recorded['run_id']} (started {recorded['started']})" if recorded else "an earlier run"
        raise TrainingInputError(
            f"--output_dir {output_dir} holds {owner} ({', '.join(used)}): a new run there would mix with it. "
            "Continue it with --resume_from_checkpoint latest, start afresh there with --overwrite_output_dir "
            "(deletes its contents), or choose another --output_dir."
        )
    return None, bool(used)


def start_run(accelerator: Accelerator, output_dir: Path, fingerprint: dict, args: "TrainArguments") -> str:
    """Check and record the identity of this run in `output_dir/run.json` (see `identify_run`); returns its id."""
    run_id, clear = identify_run(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
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
        if not Path(name, "training_state.json").is_file():
            raise TrainingInputError(
                f"{name} is not a checkpoint folder of train.py (no training_state.json)."
            )
        return Path(name)
    found = run_checkpoints(output_dir, run_id)
    if not found:
        raise TrainingInputError(
            f"--resume_from_checkpoint latest: no checkpoint of run {run_id} in {output_dir / CHECKPOINTS}."
        )
    return found[-1]


def check_resumable(checkpoint: Path, fingerprint: dict) -> tuple[int, int | None]:
    """The step and planned steps of `checkpoint`; raises if its run had another model, data or schedule."""
    state = json.loads((checkpoint / "training_state.json").read_text())
    saved = state["fingerprint"]
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
                atomic_write_text(temporary / "training_state.json", json.dumps(state))
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


# ---------------------------------------------------------------------------------------------------- metrics
def write_metrics(path: Path, records: list[dict]) -> None:
    """Rewrite the metrics JSONL atomically (used when resuming, to drop steps after the checkpoint)."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics JSONL file (empty if it does not exist; a torn last line dropped, with a warning)."""
    return read_jsonl(path)


@torch.no_grad()
def validation_loss(model, collator, values, errors, batch_size: int, seed: int) -> float:
    """Mean Gaussian NLL per target on validation stars, masks fixed by `seed` (comparable across steps)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(values), batch_size):
        batch = collator.sample(
            values[start : start + batch_size], errors[start : start + batch_size], generator
        )
        valid = int((batch["request_ids"] != 0).sum())
        batch = {key: value.to(model.device) for key, value in batch.items()}
        total += float(model(**batch).loss) * valid
        count += valid
    model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Path:
    """Train, save, evaluate and (optionally) push; returns the output folder."""
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainArguments))
    data_args, model_args, args = parser.parse_args_into_dataclasses(args=argv)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps
    )
    if not accelerator.is_main_process:
        return train(accelerator, data_args, model_args, args)
    with folder_lock(args.output_dir, what="--output_dir"):  # a second train.py into it stops at once
        return train(accelerator, data_args, model_args, args)


def train(
    accelerator: Accelerator, data_args: DataArguments, model_args: ModelArguments, args: TrainArguments
) -> Path:
    """`main` once the arguments are parsed (and the output folder locked by the main process)."""
    output_dir = Path(args.output_dir)
    num_processes = accelerator.num_processes
    micro_batches = num_processes * args.gradient_accumulation_steps
    if args.batch_size % micro_batches:
        raise TrainingInputError(
            f"--batch_size {args.batch_size} must be a multiple of processes x gradient_accumulation_steps "
            f"({num_processes} x {args.gradient_accumulation_steps})."
        )
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingInputError("--push_to_hub needs --hub_model_id user/name.")
    set_seed(args.seed)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))  # processes on this machine
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.num_threads or cpu_threads(local_processes))
    accelerator.print(
        f"{num_processes} process(es) on {accelerator.device.type}, {torch.get_num_threads()} CPU thread(s) each "
        f"({available_cores()} cores available to this process)."
    )

    # Data: the tokenizer is fitted on the training split; stars are encoded once into dense tensors.
    dataset_dir, splits = load_splits(data_args.dataset_dir)
    train_table = splits["train"]
    if data_args.max_train_stars:
        train_table = train_table.iloc[: data_args.max_train_stars]
    if len(train_table) < args.batch_size:
        raise TrainingInputError(
            f"{len(train_table)} training stars: fewer than one --batch_size ({args.batch_size})."
        )
    if model_args.model_preset not in MODEL_PRESETS:
        raise TrainingInputError(
            f"--model_preset must be one of {list(MODEL_PRESETS)}, got {model_args.model_preset!r}."
        )
    config = MODEL_PRESETS[model_args.model_preset](
        encoder_dropout=model_args.dropout, decoder_dropout=model_args.dropout
    )
    tokenizer = AstroFeatureExtractor(
        observation_names=config.observation_names, context_length=config.context_length
    )
    tokenizer.fit(train_table)
    collator = AstroDataCollator(
        tokenizer,
        num_targets=args.num_targets,
        label_target_fraction=args.label_target_fraction or None,
        prompts=(EVALUATION_INPUTS, LABEL_PROMPT, LOCI_PROMPT),
        prompt_fractions=(args.prompt_fraction, args.label_prompt_fraction, args.loci_prompt_fraction),
        seed=args.seed,
    )
    train_values, train_errors = collator.encode(train_table)
    val_values, val_errors = collator.encode(splits["validation"].iloc[: args.eval_stars])

    # Model, optimizer, schedule.
    model = AstroForObservationPrediction(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer,
        T_0=args.restart_steps or args.max_steps or UNPLANNED,
        T_mult=args.restart_mult,
        eta_min=args.min_learning_rate,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    fingerprint = run_fingerprint(config, args, len(train_table))

    if not args.max_steps and not args.max_train_minutes:
        raise TrainingInputError(
            "Give --max_steps, or --max_train_minutes to fit the steps into a time budget."
        )
    run_id = start_run(accelerator, output_dir, fingerprint, args)
    start_step, max_steps = 0, args.max_steps or None
    metrics_path = output_dir / METRICS_FILE
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint, run_id)
        start_step, planned = check_resumable(checkpoint, fingerprint)
        max_steps = args.max_steps or planned
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint} at step {start_step}.")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["step"] <= start_step])
    accelerator.wait_for_everyone()

    # Training loop.
    rank, micro_size = accelerator.process_index, args.batch_size // micro_batches
    model.train()
    progress = tqdm(
        initial=start_step, total=max_steps, desc="training", disable=not accelerator.is_local_main_process
    )
    started, window_start, window_stars, done = time.perf_counter(), time.perf_counter(), 0, start_step
    steps_per_s, planned_steps = None, max_steps
    while max_steps is None or done < max_steps:
        step = done
        stars = epoch_batch(step, len(train_values), args.batch_size, args.seed)
        batches = []
        for micro in range(args.gradient_accumulation_steps):
            part = micro * num_processes + rank  # same slices and masks for any processes x accumulation
            index = stars[part * micro_size : (part + 1) * micro_size]
            generator = torch.Generator().manual_seed(seed_for(args.seed, step, part))
            batches.append(collator.sample(train_values[index], train_errors[index], generator))
        # Exact mean over the step's valid targets, whatever the processes and accumulation (see the model's
        # loss).
        local_targets = sum(int((batch["request_ids"] != 0).sum()) for batch in batches)
        num_targets = accelerator.reduce(torch.tensor(local_targets, device=accelerator.device), "sum").item()
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, batch in enumerate(batches):
            torch.manual_seed(seed_for(args.seed, step, micro * num_processes + rank, 1))  # dropout
            with accelerator.accumulate(model), accelerator.autocast():
                batch = {key: value.to(accelerator.device) for key, value in batch.items()}
                loss = model(**batch, num_items_in_batch=num_targets / micro_batches).loss
                accelerator.backward(loss)
                step_loss += loss.detach() / micro_batches
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
        scheduler.step()
        step_loss = accelerator.reduce(step_loss, "sum").item()
        window_stars += args.batch_size
        if not math.isfinite(step_loss):
            accelerator.end_training()
            raise TrainingDivergedError(
                f"The training loss became {step_loss} at step {step + 1} (learning rate "
                f"{args.learning_rate}): lower --learning_rate or --max_grad_norm, or --mixed_precision no. "
                "Checkpoints saved before "
                f"step {step + 1} in {output_dir / CHECKPOINTS} are intact."
            )
        done = step + 1
        progress.update()
        if done - start_step == PLAN_STEPS:
            steps_per_s = PLAN_STEPS / (time.perf_counter() - started)
        if not args.max_steps and (done - start_step) % PLAN_STEPS == 0:  # fit the cosine into the time left
            max_steps = plan_steps(
                accelerator, done, done - start_step, time.perf_counter() - started, args.max_train_minutes
            )
            if not args.restart_steps:  # one cosine cycle; kept ahead of the step count so it never restarts
                scheduler.T_0 = scheduler.T_i = max(max_steps, done + PLAN_STEPS + 1)
            progress.total = max_steps
        if done - start_step == PLAN_STEPS:
            planned_steps = max_steps
            accelerator.print(
                f"Measured {steps_per_s:.2f} steps/s over the first {PLAN_STEPS} steps; {planned_steps} steps planned."
            )
        if done % args.logging_steps == 0 or done % args.eval_steps == 0 or done == max_steps:
            now = time.perf_counter()
            record = {
                "step": done,
                "epoch": round(done * args.batch_size / len(train_values), 3),
                "loss": step_loss,
                "learning_rate": scheduler.get_last_lr()[0],
                "stars_per_s": round(window_stars / (now - window_start), 1),
                "elapsed_s": round(now - started, 1),
            }
            if done % args.eval_steps == 0 or done == max_steps:
                record["val_loss"] = validation_loss(
                    accelerator.unwrap_model(model), collator, val_values, val_errors, 512, args.seed
                )
            window_start, window_stars = time.perf_counter(), 0
            progress.set_postfix(
                loss=f"{step_loss:.3f}",
                **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}),
            )
            if accelerator.is_main_process:
                append_jsonl(metrics_path, record)
        if done % args.save_steps == 0:
            save_checkpoint(accelerator, output_dir, done, max_steps, fingerprint, args.save_total_limit, run_id)
        if args.max_train_minutes and out_of_time(accelerator, started, args.max_train_minutes):
            accelerator.print(
                f"Stopping at step {done}: --max_train_minutes {args.max_train_minutes} reached."
            )
            break
    progress.close()
    accelerator.wait_for_everyone()

    # Final model folder: model + tokenizer + collator code, evaluation and model card.
    if accelerator.is_main_process:
        seconds = time.perf_counter() - started
        run_info = {
            "dataset_dir": dataset_dir,
            "num_processes": num_processes,
            "num_threads": torch.get_num_threads(),
            "available_cores": available_cores(),
            "steps_per_s_first_steps": None if steps_per_s is None else round(steps_per_s, 3),
            "steps_per_s": round((done - start_step) / seconds, 3),
            "planned_steps": planned_steps,
            "final_step": done,
            "train_seconds": round(seconds, 1),
        }
        save_final(accelerator.unwrap_model(model), tokenizer, output_dir, args, run_info)
        results = (
            evaluate(
                str(output_dir),
                dataset_dir,
                str(output_dir),
                predictor_kwargs={"device": accelerator.device},
                training={key: value for key, value in run_info.items() if key != "dataset_dir"},
            )
            if args.do_eval
            else None
        )
        if results is not None:
            print(format_table(results))
        write_model_card(output_dir, results, args, model_args, run_info)
        if args.push_to_hub:
            url = push_to_hub(output_dir, args.hub_model_id, private=args.hub_private_repo)
            print(f"Pushed to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def plan_steps(accelerator: Accelerator, done: int, steps_timed: int, seconds: float, minutes: float) -> int:
    """Total steps that fit in `minutes` at the average speed so far (95% margin; same on every process)."""
    remaining = max(60 * minutes - seconds, 0.0)
    planned = torch.tensor(done + int(0.95 * remaining * steps_timed / seconds), device=accelerator.device)
    return int(accelerator.gather(planned[None]).min())


def out_of_time(accelerator: Accelerator, started: float, minutes: float) -> bool:
    """Whether any process has trained for `minutes` (all processes get the same answer and stop together)."""
    late = torch.tensor(float(time.perf_counter() - started > 60 * minutes), device=accelerator.device)
    return bool(accelerator.reduce(late, "sum").item())


def save_final(
    model, tokenizer: AstroFeatureExtractor, output_dir: Path, args: TrainArguments, run_info: dict
) -> None:
    """
    Save model, tokenizer and collator code into a new copy of `output_dir` swapped in whole (`replace_folder`):
    a kill at any instant leaves the old or the new model, never a mix. The new copy keeps the folder's other
    files (checkpoints, metrics, run.json: hard links, no copying) but not an older model's weights, evaluation
    and card, which `evaluate` and `write_model_card` write again for the new model.
    """
    kept = f"{output_dir} is unchanged, its checkpoints intact"
    with replace_folder(output_dir, kept=kept) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.copy(REPO_ROOT / "modeling_astro" / "data_collator_astro.py", staging)
        (staging / "training_args.json").write_text(json.dumps({**asdict(args), **run_info}, indent=1))
        written = {path.name for path in staging.iterdir()}
        for path in output_dir.iterdir():
            if path.name in written or path.name.startswith(INTERNAL_PREFIX):
                continue
            if not any(path.match(pattern) for pattern in FINAL_MODEL_FILES):
                link_tree(path, staging / path.name)


def write_model_card(
    output_dir: Path, results: dict | None, args: TrainArguments, model_args: ModelArguments, run_info: dict
) -> None:
    """Fill the `model_card.md` template of the repository into `output_dir/README.md`."""
    from string import Template

    template = Template((REPO_ROOT / "model_card.md").read_text())
    config = AstroConfig.from_pretrained(output_dir)
    card = template.substitute(
        model_id=args.hub_model_id or output_dir.name,
        dataset_name=Path(run_info["dataset_dir"]).name,
        num_parameters=f"{AstroForObservationPrediction(config).num_parameters():,}",
        model_preset=model_args.model_preset,
        training_summary=(
            f"{run_info['final_step']} steps of {args.batch_size} stars, AdamW (lr {args.learning_rate}, "
            f"weight decay {args.weight_decay}) with cosine warm restarts "
            f"(T_0 {args.restart_steps or run_info['final_step']}), "
            f"{args.num_targets} targets per star per step, label target fraction "
            f"{args.label_target_fraction}, prompt fractions {args.prompt_fraction} (XP 0-29 and colours) and "
            f"{args.label_prompt_fraction} (labels and extinction) and {args.loci_prompt_fraction} (log g, [M/H] and "
            f"extinction), seed {args.seed}; {run_info['num_processes']} process(es) x {run_info['num_threads']} "
            f"CPU thread(s), {run_info['steps_per_s']} steps/s, {run_info['planned_steps']} steps planned"
        ),
        evaluation_table=format_table(results, markdown=True)
        if results is not None
        else "Not evaluated (trained with `--do_eval false`): run `python -m modeling_astro.evaluation`.",
    )
    if results is not None:
        card = add_model_index(card, results, args.hub_model_id or output_dir.name, Path(run_info["dataset_dir"]).name)
    atomic_write_text(output_dir / "README.md", card)


def push_to_hub(output_dir: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Hub repository if needed, upload the model folder (no checkpoints); return the URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        ignore_patterns=[f"{CHECKPOINTS}/**", ".tmp*", "*.tmp"],
        commit_message="Upload Astro model trained with train.py",
    )
    return commit.commit_url


if __name__ == "__main__":
    try:
        main()
    except (TrainingInputError, TrainingDivergedError, FolderInUseError, DiskFullError, CorruptFileError) as error:
        sys.exit(f"error: {error}")
