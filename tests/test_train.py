"""train.py end to end on a tiny survey: outputs, exact resume after SIGKILL, two processes, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import tiny_train_args

import train
from conftest import BLOCK_PROJECT, run_process_group, run_python

pytest_plugins = ["training_fixtures"]

REPO = Path(__file__).resolve().parents[1]


def short_run_args(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    """A 30-step run of the tiny preset with a checkpoint every 10 steps and a loss record every step."""
    return tiny_train_args(
        dataset,
        output_dir,
        "--max_steps",
        "30",
        "--batch_size",
        "32",
        "--save_steps",
        "10",
        "--logging_steps",
        "1",
        "--eval_steps",
        "10",
        "--save_total_limit",
        "5",
        *extra,
    )


def losses(output_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in train.read_metrics(output_dir / train.METRICS_FILE)}


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen) -> int:
    process.communicate(timeout=300)
    return process.returncode


def test_run_writes_a_hub_ready_folder(tiny_trained_checkpoint):
    names = {path.name for path in tiny_trained_checkpoint.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_astro.py",
        "configuration_astro.py",
        "feature_extraction_astro.py",
        "data_collator_astro.py",
        "README.md",
        "metrics.jsonl",
        "training_args.json",
    } <= names
    assert not [name for name in names if "tmp" in name]
    card = (tiny_trained_checkpoint / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "Leung" in card and "$" not in card
    records = train.read_metrics(tiny_trained_checkpoint / train.METRICS_FILE)
    validation = [record["val_loss"] for record in records if "val_loss" in record]
    assert records[-1]["step"] == 120 and len(validation) == 2
    assert validation[-1] < validation[0], "the validation loss goes down"
    run = json.loads((tiny_trained_checkpoint / "training_args.json").read_text())
    assert run["num_threads"] == 1 and run["available_cores"] >= 1  # --num_threads 1 of tiny_train_args
    assert run["planned_steps"] == run["final_step"] == 120 and run["steps_per_s"] > 0
    assert f"1 process(es) x 1 CPU thread(s), {run['steps_per_s']} steps/s, 120 steps planned" in card


def test_threads_default_to_the_cores_given_to_the_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))  # the machine's load does not count
    assert train.available_cores() == 6
    assert [train.cpu_threads(processes) for processes in (1, 2, 4, 8)] == [6, 3, 1, 1]


def test_sigkill_then_resume_continues_exactly(tiny_survey, tmp_path):
    reference = tmp_path / "reference"  # same thread count as the killed run: bit-identical float reductions
    assert finish(run_cli(short_run_args(tiny_survey, reference))) == 0
    interrupted = tmp_path / "interrupted"
    process = run_cli(short_run_args(tiny_survey, interrupted))
    checkpoint = interrupted / train.CHECKPOINTS / "checkpoint-20"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists(), process.stderr.read()[-2000:]
    assert not (interrupted / "model.safetensors").exists(), "the run was killed before its end"
    resumed = run_cli(short_run_args(tiny_survey, interrupted, "--resume_from_checkpoint", "latest"))
    assert finish(resumed) == 0
    assert losses(interrupted) == losses(reference)  # same batches, masks, dropout: bit-identical losses
    final, expected = load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors")
    assert all((final[name] == expected[name]).all() for name in expected)


def test_two_processes_train_together_like_gradient_accumulation(tiny_survey, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two_processes"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "{port}",
        str(REPO / "train.py"),
        *short_run_args(tiny_survey, two, "--max_steps", "10"),
    ]
    result = run_process_group(command, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((two / "training_args.json").read_text())["num_processes"] == 2
    one = tmp_path / "one_process"
    train.main(short_run_args(tiny_survey, one, "--max_steps", "10", "--gradient_accumulation_steps", "2"))
    # Same global batch split the same way: 2 processes x 1 micro-batch == 1 process x 2 accumulated micro-
    # batches.
    np.testing.assert_allclose(list(losses(two).values()), list(losses(one).values()), rtol=1e-4)


def copy_without_column(dataset: Path, target: Path, column: str) -> Path:
    (target / "data").mkdir(parents=True)
    for shard in (dataset / "data").glob("*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([column]), target / "data" / shard.name)
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n" + "".join(
        f"  - split: {split}\n    path: data/{split}-*.parquet\n" for split in ("train", "validation", "test")
    )
    (target / "README.md").write_text(card + "---\n")
    return target


def test_dataset_missing_a_required_column_is_a_clear_error(tiny_survey, tmp_path):
    broken = copy_without_column(tiny_survey, tmp_path / "broken", "jk")
    with pytest.raises(train.TrainingInputError, match=r"lacks required column\(s\) \['jk'\]"):
        train.main(short_run_args(broken, tmp_path / "out"))
    result = run_cli(short_run_args(broken, tmp_path / "out_cli"))
    _, stderr = result.communicate(timeout=300)
    assert result.returncode == 1 and "error: " in stderr and "'jk'" in stderr and "Traceback" not in stderr


def test_resume_from_a_different_configuration_is_refused(tiny_survey, tmp_path):
    output = tmp_path / "run"
    train.main(short_run_args(tiny_survey, output, "--max_steps", "10", "--do_eval", "false"))
    checkpoint = output / train.CHECKPOINTS / "checkpoint-10"
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    for extra in (["--model_preset", "small"], ["--learning_rate", "0.01"]):
        with pytest.raises(train.TrainingInputError, match="different configuration"):
            train.main(short_run_args(tiny_survey, output, "--resume_from_checkpoint", "latest", *extra))
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before
    # a checkpoint of the train.py before the LambdaLR learning-rate plan (no "format" in its fingerprint)
    state_file = checkpoint / "training_state.json"
    state = json.loads(state_file.read_text())
    del state["fingerprint"]["format"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(train.TrainingInputError, match="another version of train.py .*format 1.* new --output_dir"):
        train.main(short_run_args(tiny_survey, output, "--resume_from_checkpoint", "latest"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoints(tiny_survey, tmp_path):
    output = tmp_path / "diverging"
    with pytest.raises(train.TrainingDivergedError, match="loss became (nan|inf)") as error:
        train.main(short_run_args(tiny_survey, output, "--learning_rate", "1e6", "--save_steps", "1"))
    assert "--learning_rate" in str(error.value)
    checkpoints = sorted((output / train.CHECKPOINTS).iterdir())
    assert checkpoints and all((path / "training_state.json").is_file() for path in checkpoints)
    assert not [path for path in checkpoints if path.name.startswith(".tmp")]
    assert not (output / "model.safetensors").exists()


FRESH_EVALUATION = BLOCK_PROJECT + textwrap.dedent(
    """
    import json
    from pathlib import Path

    import numpy as np, pandas as pd, torch
    from astropy.stats import mad_std
    from transformers import AutoFeatureExtractor, AutoModelForPreTraining

    folder, data, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    test = pd.concat([pd.read_parquet(p) for p in sorted(Path(data).glob("data/test-*.parquet"))])
    test = test[np.isfinite(test[names[:60]].to_numpy()).all(axis=1)]  # stars with XP, as the evaluation
    inputs = tokenizer(test[names + [n + "_err" for n in names]], return_tensors="pt")
    requests = tokenizer.encode_requests(["teff", "logg", "m_h"], batch_size=len(test))
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["input_values"], requests, inputs["attention_mask"])
    value, _ = tokenizer.inverse_transform(out.mean.double(), out.logvar.double(), requests)
    result = {}
    for i, label in enumerate(["teff", "logg", "m_h"]):
        ok = np.isfinite(test[label].to_numpy())
        result[label] = float(mad_std(value[:, i].numpy()[ok] - test[label].to_numpy()[ok]))
    print(json.dumps(result))
    """
)


def test_checkpoint_reproduces_the_evaluation_in_a_fresh_process(
    tiny_trained_checkpoint, tiny_survey, tmp_path
):
    from modeling_astro.evaluation import EVALUATION_INPUTS, evaluate

    results = evaluate(str(tiny_trained_checkpoint), str(tiny_survey), str(tmp_path), baseline=False)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_EVALUATION)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    fresh = run_python(
        str(script), str(tiny_trained_checkpoint), str(tiny_survey), json.dumps(EVALUATION_INPUTS), cwd=workdir, env=env
    )
    reproduced = json.loads(fresh.stdout.strip().splitlines()[-1])
    for label, spread in reproduced.items():
        assert spread == pytest.approx(results[label]["mad_std"], rel=1e-4)


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_survey, tmp_path):
    output = tmp_path / "run"
    train.main(short_run_args(tiny_survey, output, "--max_steps", "10", "--do_eval", "false"))
    shutil.rmtree(output / train.CHECKPOINTS / "checkpoint-10")
    with pytest.raises(train.TrainingInputError, match="no checkpoint"):
        train.main(short_run_args(tiny_survey, output, "--resume_from_checkpoint", "latest"))


@pytest.mark.parametrize(("restart_steps", "restart_mult"), [(0, 1), (25, 1), (10, 2), (7, 3)])
def test_learning_rate_plan_is_torch_cosine_warm_restarts(restart_steps, restart_mult):
    """On a fixed plan, `learning_rate` through `LambdaLR` gives the learning rates of torch's
    `CosineAnnealingWarmRestarts` step by step (one cycle over `max_steps` when there are no restarts)."""
    max_steps = 90
    args = train.TrainArguments(
        learning_rate=2e-3, min_learning_rate=1e-5, restart_steps=restart_steps, restart_mult=restart_mult
    )
    parameter = torch.nn.Parameter(torch.zeros(1))
    reference_optimizer, planned_optimizer = (torch.optim.SGD([parameter], lr=args.learning_rate) for _ in "ab")
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        reference_optimizer, T_0=restart_steps or max_steps, T_mult=restart_mult, eta_min=args.min_learning_rate
    )
    planned = torch.optim.lr_scheduler.LambdaLR(
        planned_optimizer, lambda step: train.learning_rate(step, max_steps, args) / args.learning_rate
    )
    seen = []
    for step in range(max_steps if not restart_steps else 3 * max_steps):
        expected = reference.get_last_lr()[0]
        assert train.learning_rate(step, max_steps, args) == pytest.approx(expected, rel=1e-12), step
        assert planned.get_last_lr()[0] == planned_optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        seen.append(expected)
        for optimizer, scheduler in ((reference_optimizer, reference), (planned_optimizer, planned)):
            optimizer.step()
            scheduler.step()
    assert max(seen) == pytest.approx(args.learning_rate) and min(seen) < 2 * args.min_learning_rate  # whole cycles
    if not restart_steps:  # the end of the plan: held at the minimum (no restart), and constant until planned
        assert train.learning_rate(max_steps, max_steps, args) == train.learning_rate(max_steps + 5, max_steps, args)
        assert train.learning_rate(max_steps, max_steps, args) == pytest.approx(args.min_learning_rate, rel=1e-12)
        assert train.learning_rate(40, None, args) == args.learning_rate


def test_training_logs_the_planned_learning_rates(tiny_trained_checkpoint):
    run = json.loads((tiny_trained_checkpoint / "training_args.json").read_text())
    args = train.TrainArguments(**{key: run[key] for key in ("learning_rate", "min_learning_rate", "restart_steps",
                                                              "restart_mult")})
    records = train.read_metrics(tiny_trained_checkpoint / train.METRICS_FILE)
    assert len(records) > 3
    for record in records:  # the rate of the next step, after `step` scheduler steps
        assert record["learning_rate"] == pytest.approx(train.learning_rate(record["step"], 120, args), rel=1e-12)


def test_bad_schedule_arguments_are_refused(tiny_survey, tmp_path):
    for extra in (["--restart_mult", "0"], ["--learning_rate", "0"], ["--restart_steps", "-5"]):
        with pytest.raises(train.TrainingInputError, match="--restart_mult .* >= 1"):
            train.main(short_run_args(tiny_survey, tmp_path / "out", *extra))


def test_prompts_are_one_argument_with_known_names(tiny_trained_checkpoint):
    run = json.loads((tiny_trained_checkpoint / "training_args.json").read_text())
    assert run["prompts"] == train.DEFAULT_PROMPTS == {"evaluation": 0.5, "labels": 0.25, "loci": 0.1}
    fingerprint = json.loads((tiny_trained_checkpoint / "run.json").read_text())["fingerprint"]["training"]
    assert fingerprint["prompts"] == train.DEFAULT_PROMPTS and "prompt_fraction" not in fingerprint
    card = (tiny_trained_checkpoint / "README.md").read_text()
    assert "prompt shares 0.5 evaluation (the evaluation's inputs, XP 0-29 and the colours), 0.25 labels" in card
    parser = train.HfArgumentParser(train.TrainArguments)
    (args,) = parser.parse_args_into_dataclasses(args=["--prompts", '{"loci": 0.2, "labels": 0.3}'])
    assert args.prompts == {"loci": 0.2, "labels": 0.3}
    (args,) = parser.parse_args_into_dataclasses(args=["--prompts", "{}"])
    assert args.prompts == {} and "no prompts" in train.training_summary(args, run)


def test_a_bad_prompt_is_a_clear_error_naming_the_known_prompts(tiny_survey, tmp_path):
    known = r"Unknown prompt\(s\) \['evaluaton'\].*the known prompts are 'evaluation' .*'labels' .*'loci' "
    with pytest.raises(train.TrainingInputError, match=known):
        train.TrainArguments(prompts='{"evaluaton": 0.5}')
    for bad, message in (('{"loci": 2}', "number in \\[0, 1\\]"), ('{"loci": 0.6, "labels": 0.6}', "more than 1"),
                         ("loci=0.1", "not JSON"), ("[0.1]", "JSON object")):
        with pytest.raises(train.TrainingInputError, match=message):
            train.TrainArguments(prompts=bad)
    result = run_cli(short_run_args(tiny_survey, tmp_path / "out", "--prompts", '{"lables": 0.2}'))
    _, stderr = result.communicate(timeout=300)
    assert result.returncode == 1 and "Unknown prompt(s) ['lables']" in stderr and "'labels'" in stderr
    assert "Traceback" not in stderr


def test_old_prompt_flags_are_deprecated_aliases():
    parser = train.HfArgumentParser(train.TrainArguments)
    with pytest.warns(FutureWarning, match="--label_prompt_fraction is deprecated: use --prompts"):
        (args,) = parser.parse_args_into_dataclasses(args=["--label_prompt_fraction", "0.3", "--prompt_fraction", "0"])
    assert args.prompts == {"evaluation": 0.0, "labels": 0.3, "loci": 0.1}
    with pytest.raises(train.TrainingInputError, match="more than 1"):
        train.TrainArguments(loci_prompt_fraction=0.9)
