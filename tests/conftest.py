"""Shared fixtures: a tiny model configuration, random batches of stars, multi-process launches."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import modeling_astro  # noqa: F401  (registers the Auto classes)
from configuration_astro import AstroConfig

SHARED_DATA = next(
    (
        folder / "shared" / "data"
        for folder in Path(__file__).resolve().parents[1:]
        if (folder / "shared" / "data").is_dir()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "data",
)
"""The read-only real survey files and original checkpoint, in the `shared/` folder beside the checkout (or above)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers (any HTTP status), for at most ``timeout`` seconds.

    Raises AssertionError if ``process`` (the server) exits first or on the timeout, with the end of ``log`` (the
    server's output file).
    """

    def output() -> str:
        return log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never through a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode} before answering {url}:\n{output()}")
        try:
            with opener.open(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{output()}")


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a server started with ``start_new_session=True`` and all its children (SIGKILL if it lingers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_process_group(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` of a launcher (accelerate / torchrun) whose workers die with it on a timeout, on a free
    rendezvous port (`{port}` in `command` is replaced), so a slow or stuck run cannot leave processes behind."""
    port = str(free_port())
    command = [port if part == "{port}" else part for part in command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{command[:6]}... did not finish in {timeout} s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


#: Prelude of a fresh-process test script: the project's packages cannot be imported there (installed or not), so
#: the code that runs must come from a checkpoint folder or a Hub server.
BLOCK_PROJECT = """import sys


class BlockProject:  # the project's packages are absent, installed or not
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_astro", "configuration_astro", "dataset_builder", "train"):
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, BlockProject())
"""


def run_python(*args: str, cwd: str | os.PathLike, env: dict[str, str], timeout: float = 300):
    """`python *args` in a fresh process (output captured); the test fails with its stderr's tail unless it exits 0."""
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tiny_config(**kwargs) -> AstroConfig:
    """The `"tiny"` preset (~15k parameters, the paper's structure) with a context of 16, for tests in seconds."""
    return AstroConfig.preset("tiny", **{"context_length": 16, **kwargs})


def random_batch(config: AstroConfig, batch_size: int = 5, num_inputs: int = 6, num_requests: int = 4, seed: int = 0):
    """Random distinct input ids per star (some stars padded at the end), values and requests."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(config.observation_names)
    input_ids = torch.stack([torch.randperm(vocab, generator=generator)[:num_inputs] + 1 for _ in range(batch_size)])
    lengths = torch.randint(1, num_inputs + 1, (batch_size,), generator=generator)
    lengths[0] = num_inputs
    attention_mask = (torch.arange(num_inputs)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    input_values = torch.randn(batch_size, num_inputs, generator=generator) * attention_mask
    request_ids = torch.randint(1, vocab + 1, (batch_size, num_requests), generator=generator)
    return {
        "input_ids": input_ids,
        "input_values": input_values,
        "attention_mask": attention_mask,
        "request_ids": request_ids,
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP spinning on a shared 2-core machine (restored after).

    Use per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Every test starts with the thread count the suite started with: `train.main` (run in-process by tests and by
    session fixtures) calls `torch.set_num_threads`, which would otherwise hold for every later test."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def config() -> AstroConfig:
    return tiny_config()
