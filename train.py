"""Train the Leung & Bovy (2024) transformer foundation model for stars with Accelerate.

    python train.py                                    # embedded simulated survey, ~200k-parameter model, CPU
    python train.py --dataset_dir my_dataset --output_dir my_model --max_steps 20000
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py   # two processes together
    accelerate launch train.py --model_preset paper --mixed_precision bf16   # the paper's 8.8M model on GPUs
    python train.py --resume_from_checkpoint latest    # continue an interrupted run exactly where it stopped

Every optimizer step draws `batch_size` training stars from a permutation seeded by (seed, epoch), splits them
across processes and gradient-accumulation micro-batches, and samples inputs/targets with a generator seeded by
(seed, step, micro-batch, process): a run resumed from a checkpoint sees exactly the batches, masks and dropout of
an uninterrupted run. At the end the model, feature extractor and collator code are saved in `output_dir` with a
model card and `eval_results.json` (the paper's XP -> labels protocol against XGBoost), ready for the Hub.

The file reads top to bottom: arguments, data helpers, the learning-rate plan, then `train` (setup, data, model,
resume, loop, final folder). A run's identity, checkpoints and resume live in `modeling_astro/training_checkpoints.py`,
the final folder, model card and Hub upload in `modeling_astro/publishing.py`.
"""

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from configuration_astro import PRESETS, AstroConfig
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.data_collator_astro import AstroDataCollator
from modeling_astro.evaluation import evaluate, format_table, load_split_tables
from modeling_astro.io_utils import CorruptFileError, DiskFullError, FolderInUseError, append_jsonl, folder_lock
from modeling_astro.observations import EVALUATION_INPUTS, EVALUATION_LABELS, PROMPT_DESCRIPTIONS, PROMPTS
from modeling_astro.publishing import push_to_hub, save_final, write_model_card
from modeling_astro.training_checkpoints import (
    CHECKPOINTS,
    METRICS_FILE,
    TrainingInputError,
    check_resumable,
    find_checkpoint,
    read_metrics,
    run_fingerprint,
    save_checkpoint,
    start_run,
    write_metrics,
)

REPO_ROOT = Path(__file__).resolve().parent
REQUIRED_COLUMNS = ("source_id", *EVALUATION_INPUTS, *EVALUATION_LABELS)
PLAN_STEPS = 25  # with --max_steps 0, the steps that fit in --max_train_minutes are re-planned every PLAN_STEPS steps
DEFAULT_PROMPTS = {"evaluation": 0.5, "labels": 0.25, "loci": 0.1}  # shares of the stars shown each prompt
DEPRECATED_PROMPT_FLAGS = {
    "prompt_fraction": "evaluation",
    "label_prompt_fraction": "labels",
    "loci_prompt_fraction": "loci",
}
# the arguments a resumed run must share with its checkpoint (they change the batches, the masks or the schedule)
FINGERPRINT_ARGUMENTS = (
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
    "prompts",
)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------------
# arguments
def parse_prompts(prompts: str | Mapping[str, float] | None) -> dict[str, float]:
    """`--prompts`: a JSON object (or a mapping) of prompt names of `observations.PROMPTS` to shares of the stars."""
    if prompts is None:
        return {}
    if isinstance(prompts, str):
        try:
            prompts = json.loads(prompts)
        except json.JSONDecodeError as error:
            example = json.dumps(DEFAULT_PROMPTS)
            raise TrainingInputError(
                f"--prompts {prompts!r} is not JSON ({error}): give an object such as '{example}'."
            ) from None
    if not isinstance(prompts, Mapping):
        raise TrainingInputError(f"--prompts must be a JSON object {{prompt: share}}, got {prompts!r}.")
    unknown = [name for name in prompts if name not in PROMPTS]
    if unknown:
        raise TrainingInputError(
            f"Unknown prompt(s) {unknown} in --prompts: the known prompts are "
            + "; ".join(f"{name!r} ({what})" for name, what in PROMPT_DESCRIPTIONS.items())
            + " (modeling_astro.observations.PROMPTS)."
        )
    shares = {}
    for name, share in prompts.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise TrainingInputError(f"--prompts: the share of {name!r} must be a number in [0, 1], got {share!r}.")
        shares[name] = float(share)
    if sum(shares.values()) > 1:
        raise TrainingInputError(f"--prompts: the shares {shares} add up to {sum(shares.values()):g}, more than 1.")
    return shares


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
    prompts: dict[str, float] | str | None = field(
        default_factory=lambda: dict(DEFAULT_PROMPTS),
        metadata={
            "help": "JSON {prompt: share of the stars}: a prompted star is shown all its observations of the "
            "prompt's input set, unblanked, and targets among the others; '{}' = the paper's sampling only. "
            "Prompts: " + "; ".join(f"{name}: {what}" for name, what in PROMPT_DESCRIPTIONS.items()) + "."
        },
    )
    prompt_fraction: float | None = field(
        default=None, metadata={"help": "Deprecated: --prompts '{\"evaluation\": F}'."}
    )
    label_prompt_fraction: float | None = field(
        default=None, metadata={"help": "Deprecated: --prompts '{\"labels\": F}'."}
    )
    loci_prompt_fraction: float | None = field(
        default=None, metadata={"help": "Deprecated: --prompts '{\"loci\": F}'."}
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

    def __post_init__(self):
        self.prompts = parse_prompts(self.prompts)
        for flag, name in DEPRECATED_PROMPT_FLAGS.items():
            if getattr(self, flag) is not None:
                warnings.warn(
                    f"--{flag} is deprecated: use --prompts '{{\"{name}\": {getattr(self, flag)}}}' (one JSON "
                    "argument for all the prompts).",
                    FutureWarning,
                    stacklevel=3,
                )
                self.prompts = parse_prompts({**self.prompts, name: getattr(self, flag)})


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
            f"{error} train.py needs source_id, the evaluation inputs bp0-29, rp0-29, bprp, jh, jk and the labels "
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


def step_batches(collator: AstroDataCollator, values: torch.Tensor, errors: torch.Tensor, step: int,
                 args: TrainArguments, rank: int, num_processes: int) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of optimizer step `step` on process `rank`: the step's stars (`epoch_batch`) cut into
    processes x accumulation slices, each with masks drawn from its own seed, so any split sees the same stars."""
    stars = epoch_batch(step, len(values), args.batch_size, args.seed)
    size = args.batch_size // (num_processes * args.gradient_accumulation_steps)
    batches = []
    for micro in range(args.gradient_accumulation_steps):
        part = micro * num_processes + rank
        index = stars[part * size : (part + 1) * size]
        generator = torch.Generator().manual_seed(seed_for(args.seed, step, part))
        batches.append(collator.sample(values[index], errors[index], generator))
    return batches


@torch.no_grad()
def validation_loss(model, collator, values, errors, batch_size: int, seed: int) -> float:
    """Mean Gaussian NLL per target on validation stars, masks fixed by `seed` (comparable across steps)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(values), batch_size):
        batch = collator.sample(values[start : start + batch_size], errors[start : start + batch_size], generator)
        valid = int((batch["request_ids"] != 0).sum())
        batch = {key: value.to(model.device) for key, value in batch.items()}
        total += float(model(**batch).loss) * valid
        count += valid
    model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------------- schedule
def learning_rate(step: int, max_steps: int | None, args: TrainArguments) -> float:
    """
    The learning rate after `step` optimizer steps of a run planned to `max_steps` steps (None: not planned yet).

    A cosine from `--learning_rate` down to `--min_learning_rate`: one cycle over the `max_steps` steps (then held
    at the minimum), or, with `--restart_steps`, warm restarts every `restart_steps` steps, each cycle
    `--restart_mult` times longer than the one before (torch's `CosineAnnealingWarmRestarts`, as a function of the
    step). A run timed by `--max_train_minutes` keeps `--learning_rate` until its steps are planned.
    """
    high, low = args.learning_rate, args.min_learning_rate
    if args.restart_steps:
        position, period = step, args.restart_steps
        if args.restart_mult == 1:
            position %= period
        while position >= period:  # cycles of period restart_steps * restart_mult**k
            position, period = position - period, period * args.restart_mult
    elif max_steps:
        position, period = min(step, max_steps), max_steps
    else:
        return high
    return low + (high - low) * (1 + math.cos(math.pi * position / period)) / 2


def plan_steps(accelerator: Accelerator, done: int, steps_timed: int, seconds: float, minutes: float) -> int:
    """Total steps that fit in `minutes` at the average speed so far (95% margin; same on every process)."""
    remaining = max(60 * minutes - seconds, 0.0)
    planned = torch.tensor(done + int(0.95 * remaining * steps_timed / seconds), device=accelerator.device)
    return int(accelerator.gather(planned[None]).min())


def out_of_time(accelerator: Accelerator, started: float, minutes: float) -> bool:
    """Whether any process has trained for `minutes` (all processes get the same answer and stop together)."""
    late = torch.tensor(float(time.perf_counter() - started > 60 * minutes), device=accelerator.device)
    return bool(accelerator.reduce(late, "sum").item())


def training_summary(args: TrainArguments, run_info: dict) -> str:
    """How the model was trained, in one sentence of the model card."""
    if args.restart_steps:
        growth = f", each cycle {args.restart_mult} times longer" if args.restart_mult != 1 else ""
        schedule = f"cosine warm restarts every {args.restart_steps} steps{growth}"
    else:
        schedule = f"a cosine over {run_info['planned_steps'] or run_info['final_step']} steps"
    shown = [f"{share} {name} ({PROMPT_DESCRIPTIONS[name]})" for name, share in args.prompts.items() if share]
    prompts = f"prompt shares {', '.join(shown)}" if shown else "no prompts"
    return (
        f"{run_info['final_step']} steps of {args.batch_size} stars, AdamW (lr {args.learning_rate} to "
        f"{args.min_learning_rate}, weight decay {args.weight_decay}) with {schedule}, "
        f"{args.num_targets} targets per star per step, label target fraction "
        f"{args.label_target_fraction}, {prompts}, seed {args.seed}; {run_info['num_processes']} process(es) x "
        f"{run_info['num_threads']} CPU thread(s), {run_info['steps_per_s']} steps/s, {run_info['planned_steps']} "
        "steps planned"
    )


def check_arguments(args: TrainArguments, model_args: ModelArguments, num_processes: int) -> None:
    """Refuse arguments that cannot work, before any data is read."""
    micro_batches = num_processes * args.gradient_accumulation_steps
    if args.batch_size % micro_batches:
        raise TrainingInputError(
            f"--batch_size {args.batch_size} must be a multiple of processes x gradient_accumulation_steps "
            f"({num_processes} x {args.gradient_accumulation_steps})."
        )
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingInputError("--push_to_hub needs --hub_model_id user/name.")
    if not args.max_steps and not args.max_train_minutes:
        raise TrainingInputError("Give --max_steps, or --max_train_minutes to fit the steps into a time budget.")
    if model_args.model_preset not in PRESETS:
        raise TrainingInputError(f"--model_preset must be one of {list(PRESETS)}, got {model_args.model_preset!r}.")
    if not args.learning_rate > 0 or args.restart_steps < 0 or args.restart_mult < 1:
        raise TrainingInputError(
            f"--learning_rate ({args.learning_rate}) must be > 0, --restart_steps ({args.restart_steps}) >= 0 and "
            f"--restart_mult ({args.restart_mult}) >= 1."
        )


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
    num_processes = accelerator.num_processes
    check_arguments(args, model_args, num_processes)
    output_dir = Path(args.output_dir)
    set_seed(args.seed)
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))  # processes on this machine
        torch.set_num_threads(args.num_threads or cpu_threads(local_processes))
    accelerator.print(
        f"{num_processes} process(es) on {accelerator.device.type}, {torch.get_num_threads()} CPU thread(s) each "
        f"({available_cores()} cores available to this process)."
    )

    # Data: the feature extractor is fitted on the training split; stars are encoded once into dense tensors.
    dataset_dir, splits = load_splits(data_args.dataset_dir)
    train_table = splits["train"].iloc[: data_args.max_train_stars or None]
    if len(train_table) < args.batch_size:
        raise TrainingInputError(f"{len(train_table)} training stars: fewer than one --batch_size ({args.batch_size}).")
    config = AstroConfig.preset(
        model_args.model_preset, encoder_dropout=model_args.dropout, decoder_dropout=model_args.dropout
    )
    tokenizer = AstroFeatureExtractor(observation_names=config.observation_names, context_length=config.context_length)
    tokenizer.fit(train_table)
    collator = AstroDataCollator(
        tokenizer,
        num_targets=args.num_targets,
        label_target_fraction=args.label_target_fraction or None,
        prompts=[PROMPTS[name] for name in args.prompts],
        prompt_fractions=list(args.prompts.values()),
        seed=args.seed,
    )
    train_values, train_errors = collator.encode(train_table)
    val_values, val_errors = collator.encode(splits["validation"].iloc[: args.eval_stars])

    # Model, optimizer and learning-rate plan: a function of the step and of `max_steps`, read as planned at each
    # step (a run timed by --max_train_minutes plans `max_steps` from its speed, below).
    model = AstroForObservationPrediction(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    max_steps = args.max_steps or None
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, max_steps, args) / args.learning_rate
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    # The run this output folder holds; resuming restores model, optimizer, schedule and step exactly.
    fingerprint = run_fingerprint(config, {key: getattr(args, key) for key in FINGERPRINT_ARGUMENTS}, len(train_table))
    run_id = start_run(accelerator, output_dir, fingerprint, args.resume_from_checkpoint, args.overwrite_output_dir)
    start_step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint, run_id)
        start_step, planned = check_resumable(checkpoint, fingerprint)
        max_steps = args.max_steps or planned
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint} at step {start_step}.")
    metrics_path = output_dir / METRICS_FILE
    if accelerator.is_main_process:  # a resumed run drops the records of the steps after its checkpoint
        write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["step"] <= start_step])
    accelerator.wait_for_everyone()

    # Training loop: one optimizer step of `batch_size` stars per iteration.
    micro_batches = num_processes * args.gradient_accumulation_steps
    model.train()
    progress = tqdm(
        initial=start_step, total=max_steps, desc="training", disable=not accelerator.is_local_main_process
    )
    started = window_start = time.perf_counter()
    window_stars, done, steps_per_s, planned_steps = 0, start_step, None, max_steps
    while max_steps is None or done < max_steps:
        step = done
        batches = step_batches(collator, train_values, train_errors, step, args, accelerator.process_index,
                               num_processes)
        # The exact mean over the step's valid targets, whatever the processes and accumulation (the model's loss).
        local_targets = sum(int((batch["request_ids"] != 0).sum()) for batch in batches)
        num_targets = accelerator.reduce(torch.tensor(local_targets, device=accelerator.device), "sum").item()
        step_loss = torch.zeros((), device=accelerator.device)
        for micro, batch in enumerate(batches):
            torch.manual_seed(seed_for(args.seed, step, micro * num_processes + accelerator.process_index, 1))
            with accelerator.accumulate(model), accelerator.autocast():  # the seed above: dropout
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
        if not math.isfinite(step_loss):
            accelerator.end_training()
            raise TrainingDivergedError(
                f"The training loss became {step_loss} at step {step + 1} (learning rate {args.learning_rate}): "
                "lower --learning_rate or --max_grad_norm, or --mixed_precision no. Checkpoints saved before step "
                f"{step + 1} in {output_dir / CHECKPOINTS} are intact."
            )
        done, window_stars = step + 1, window_stars + args.batch_size
        progress.update()

        # A time budget: plan the steps that fit in the time left from the speed so far (the schedule follows).
        if not args.max_steps and (done - start_step) % PLAN_STEPS == 0:
            max_steps = progress.total = plan_steps(
                accelerator, done, done - start_step, time.perf_counter() - started, args.max_train_minutes
            )
        if done - start_step == PLAN_STEPS:
            steps_per_s, planned_steps = PLAN_STEPS / (time.perf_counter() - started), max_steps
            accelerator.print(
                f"Measured {steps_per_s:.2f} steps/s over the first {PLAN_STEPS} steps; {planned_steps} steps planned."
            )

        # Metrics, validation loss, checkpoints.
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
            shown = {"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}
            progress.set_postfix(loss=f"{step_loss:.3f}", **shown)
            if accelerator.is_main_process:
                append_jsonl(metrics_path, record)
        if done % args.save_steps == 0:
            save_checkpoint(accelerator, output_dir, done, max_steps, fingerprint, args.save_total_limit, run_id)
        if args.max_train_minutes and out_of_time(accelerator, started, args.max_train_minutes):
            accelerator.print(f"Stopping at step {done}: --max_train_minutes {args.max_train_minutes} reached.")
            break
    progress.close()
    accelerator.wait_for_everyone()

    # The model folder: model, feature extractor and collator code, evaluation, model card; then the Hub.
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
        save_final(accelerator.unwrap_model(model), tokenizer, output_dir, {**asdict(args), **run_info})
        results = None
        if args.do_eval:
            training = {key: value for key, value in run_info.items() if key != "dataset_dir"}
            results = evaluate(
                str(output_dir), dataset_dir, str(output_dir), predictor_kwargs={"device": accelerator.device},
                training=training,
            )
            print(format_table(results))
        write_model_card(
            output_dir,
            results,
            template=REPO_ROOT / "model_card.md",
            model_id=args.hub_model_id or output_dir.name,
            dataset_name=Path(dataset_dir).name,
            model_preset=model_args.model_preset,
            training_summary=training_summary(args, run_info),
        )
        if args.push_to_hub:
            print(f"Pushed to {push_to_hub(output_dir, args.hub_model_id, private=args.hub_private_repo)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    try:
        main()
    except (TrainingInputError, TrainingDivergedError, FolderInUseError, DiskFullError, CorruptFileError) as error:
        sys.exit(f"error: {error}")
