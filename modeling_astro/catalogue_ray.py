"""Catalogue-scale inference on Ray Data: Gaia DR3 bulk files, HATS catalogues or builder shards in, predictions out.

    python -m modeling_astro.catalogue_ray --model CHECKPOINT --data INPUT --out PREDICTIONS --request teff logg m_h
        [--address ray://... | HOST:PORT] [--num-actors 2] [--num-gpus 1] [--batch-size 1024] [--dtype bfloat16]
        [--cpus-per-actor 1] [--cpus-per-read 1]
    python -m modeling_astro.catalogue_inference --engine ray ...     # the same, from the catalogue command

`INPUT` is one of
- a folder of Gaia DR3 bulk files, ``XpContinuousMeanSpectrum_<range>.csv.gz`` each with its
  ``GaiaSource_<range>.csv.gz`` (beside it or in ``--gaia-source-dir``), joined by ``source_id``;
- a HATS catalogue (``Norder=*/Dir=*/Npix=*.parquet``) of the joined XP and GaiaSource columns;
- a dataset folder of the builder (``data/<split>-*.parquet``, observations already computed).

The pipeline: one CPU task per input file streams it in chunks of ``--rows-per-chunk`` stars, computes the
model's inputs with the builder's preprocessing (`dataset_builder.bulk`) and tokenises them; a pool of actors
(``--num-actors``, each with ``--num-gpus`` GPUs, CPU actors by default, ``--batch-size`` stars per forward pass)
runs `AstroPredictor` on the tokenised chunks; the driver gathers the (small) results and writes one prediction
file per input file, ``source_id`` + ``<request>`` + ``<request>_sigma`` in the input row order, partitioned like
the input (``PREDICTIONS/<input stem>.parquet``, or the same ``Norder=/Dir=/Npix=`` path for HATS).

Exactly once: every output row is keyed by (input file, row); a file is written, under a temporary name then
renamed, only when all its rows are in, with rows that a retried Ray task delivered twice dropped by that key.
A killed worker is retried by Ray (actors are restarted); a killed driver loses only unfinished files: running
the command again skips the finished ones. Memory stays bounded by Ray Data's streaming backpressure: a few
chunks in flight per operator, whatever the catalogue size.

``ray.init()`` starts a local Ray on this machine unless ``--address`` names an existing cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .catalogue_inference import DTYPES, input_shards
from .io_utils import atomic_path
from .observations import ERROR_SUFFIX, SIGMA_SUFFIX

FILE_COLUMN, ROW_COLUMN, FILE_ROWS_COLUMN = "_file", "_row", "_file_rows"
NODE_COLUMN, PID_COLUMN, READ_NODE_COLUMN = "_node", "_pid", "_read_node"
KINDS = ("bulk", "hats", "shards")
READ_TASK_MEMORY = 256 << 20
"""Declared memory of a read task [bytes], plus `READ_MEMORY_PER_STAR` per star of a chunk."""
READ_MEMORY_PER_STAR = 4096


# ---------------------------------------------------------------------------------------------------- inputs
def list_inputs(data: str | os.PathLike, split: str | None = None) -> tuple[str, Path, list[Path]]:
    """`(kind, root, files)`: the input files of `data` (Gaia bulk XP files, HATS partitions or builder shards)."""
    from dataset_builder.bulk import BULK_SUFFIX, XP_BULK_PREFIX, hats_partitions

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder")
    bulk = sorted(root.glob(f"{XP_BULK_PREFIX}*{BULK_SUFFIX}"))
    if bulk:
        return "bulk", root, bulk
    if next(root.glob("**/Norder=*/Dir=*/Npix=*.parquet"), None) is not None:
        return "hats", root, hats_partitions(root)
    return "shards", root, input_shards(root, split)


def output_path(out: Path, kind: str, root: Path, path: Path) -> Path:
    """Where the predictions of input file `path` go: same partitioning, a ``.parquet`` name."""
    if kind == "hats":
        return out / path.relative_to(root)
    name = path.name.removesuffix(".csv.gz") if kind == "bulk" else path.stem
    return out / f"{name}.parquet"


def _observation_chunks(
    kind: str, path: Path, rows_per_chunk: int, gaia_source_dir: str | None
) -> Iterator[dict[str, np.ndarray]]:
    """The stars of one input file, chunk by chunk, as {column: array} with `source_id` and observations."""
    from dataset_builder import bulk

    if kind == "bulk":
        yield from bulk.iter_bulk_inputs(path, gaia_source_dir, rows_per_chunk)
    elif kind == "hats":
        yield from bulk.iter_hats_inputs(path, rows_per_chunk)
    else:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows_per_chunk):
            yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}


def _tokenised(tokenizer: Any, chunk: dict[str, np.ndarray], inputs: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Tokenise one chunk (padded to the context length, so that chunks stack), in compact dtypes."""
    names = list(inputs) if inputs else [name for name in tokenizer.observation_names if name in chunk]
    missing = [name for name in names if name not in chunk]
    if missing:
        raise KeyError(f"--inputs {missing} are not columns of the input (it has {list(chunk)[:8]}, ...).")
    columns = {name: chunk[name] for name in names}
    columns.update({name + ERROR_SUFFIX: chunk[name + ERROR_SUFFIX] for name in names if name + ERROR_SUFFIX in chunk})
    features = tokenizer(columns, truncation=True, padding="max_length")
    return {
        "input_ids": features["input_ids"].astype(np.int32),
        "input_values": features["input_values"],
        "attention_mask": features["attention_mask"].astype(bool),
    }


def read_and_tokenise(
    batch: dict[str, np.ndarray],
    kind: str,
    tokenizer: Any,
    inputs: Sequence[str] | None,
    rows_per_chunk: int,
    gaia_source_dir: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """
    Ray Data CPU task: for each input file of `batch` (`_file`, `path`), yield its stars chunk by chunk,
    tokenised and tagged with `_file`, `_row` (row in the file), `_file_rows` (the file's number of rows on
    the rows of its last chunk, -1 elsewhere: one chunk is read ahead to know which is last) and `_read_node`
    (the Ray node that read it).
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    for file_index, path in zip(batch[FILE_COLUMN], batch["path"]):
        chunks = _observation_chunks(kind, Path(path), rows_per_chunk, gaia_source_dir)
        pending, first_row = next(chunks, None), 0
        while pending is not None:
            upcoming = next(chunks, None)
            size = len(pending["source_id"])
            last = upcoming is None
            yield {
                FILE_COLUMN: np.full(size, file_index, dtype=np.int32),
                ROW_COLUMN: np.arange(first_row, first_row + size, dtype=np.int64),
                FILE_ROWS_COLUMN: np.full(size, first_row + size if last else -1, dtype=np.int64),
                "source_id": np.asarray(pending["source_id"], dtype=np.int64),
                READ_NODE_COLUMN: np.full(size, node),
                **_tokenised(tokenizer, pending, inputs),
            }
            pending, first_row = upcoming, first_row + size


class PredictActor:
    """Ray Data actor: an `AstroPredictor` (loaded once per actor) on tokenised chunks."""

    def __init__(
        self,
        model: str,
        request: Sequence[str],
        device: str,
        batch_size: int | None,
        dtype: str,
        num_threads: int | None,
    ):
        import ray
        import torch

        from .inference import AstroPredictor

        if num_threads:
            torch.set_num_threads(num_threads)
        self.request = list(request)
        self.predictor = AstroPredictor.from_pretrained(
            model, device=device, batch_size=batch_size, dtype=DTYPES[dtype]
        )
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["source_id"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stars without inputs: NaN rows, counted by the driver
            table = self.predictor.predict_tokenized(batch, self.request)
        out = {name: batch[name] for name in (FILE_COLUMN, ROW_COLUMN, FILE_ROWS_COLUMN, READ_NODE_COLUMN, "source_id")}
        out.update({name: table[name].to_numpy() for name in table.columns})
        out[NODE_COLUMN] = np.full(size, self.node)
        out[PID_COLUMN] = np.full(size, self.pid, dtype=np.int64)
        return out


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass
class CatalogueRun:
    """What a run did: files and stars written, speed, where the work ran, duplicates dropped."""

    kind: str
    files_total: int
    files_skipped: int
    files_written: int = 0
    stars: int = 0
    stars_without_inputs: int = 0
    seconds: float = 0.0
    stars_per_s: float = 0.0
    duplicate_rows_dropped: int = 0
    stars_per_node: dict[str, int] = field(default_factory=dict)
    stars_read_per_node: dict[str, int] = field(default_factory=dict)
    stars_per_actor: dict[str, int] = field(default_factory=dict)
    driver_peak_rss_mb: float = 0.0


class _Collector:
    """Gathers result rows per input file; writes a file (temp name, rename) once all its rows are in."""

    def __init__(self, targets: list[Path], request: Sequence[str], summary: CatalogueRun, on_file: Callable | None):
        self.targets = targets
        self.value_columns = [c for name in request for c in (name, name + SIGMA_SUFFIX)]
        self.parts: dict[int, list[pa.Table]] = {}
        self.rows: Counter = Counter()
        self.totals: dict[int, int] = {}
        self.done: set[int] = set()
        self.summary = summary
        self.on_file = on_file
        self.nodes: Counter = Counter()
        self.read_nodes: Counter = Counter()
        self.actors: Counter = Counter()

    def add(self, table: pa.Table) -> int:
        """Take one result batch; returns its number of rows."""
        for column, counter in ((NODE_COLUMN, self.nodes), (READ_NODE_COLUMN, self.read_nodes)):
            nodes, counts = np.unique(table.column(column).to_numpy(zero_copy_only=False), return_counts=True)
            counter.update(dict(zip(nodes.tolist(), counts.tolist())))
        pids, counts = np.unique(table.column(PID_COLUMN).to_numpy(), return_counts=True)
        self.actors.update({str(pid): int(count) for pid, count in zip(pids, counts)})
        files = table.column(FILE_COLUMN).to_numpy()
        totals = table.column(FILE_ROWS_COLUMN).to_numpy()
        for file_index in np.unique(files):
            rows = files == file_index
            index = int(file_index)
            if index in self.done:  # a retried task delivered rows of a finished file again
                self.summary.duplicate_rows_dropped += int(rows.sum())
                continue
            self.parts.setdefault(index, []).append(table.filter(pa.array(rows)))
            self.rows[index] += int(rows.sum())
            known = totals[rows].max()
            if known >= 0:
                self.totals[index] = int(known)
            if index in self.totals and self.rows[index] >= self.totals[index]:
                self._finish(index)
        return table.num_rows

    def _finish(self, index: int) -> None:
        table = pa.concat_tables(self.parts.pop(index)).sort_by(ROW_COLUMN)
        rows = table.column(ROW_COLUMN).to_numpy()
        keep = np.ones(len(rows), dtype=bool)
        keep[1:] = rows[1:] != rows[:-1]
        if not keep.all():
            self.summary.duplicate_rows_dropped += int((~keep).sum())
            table, rows = table.filter(pa.array(keep)), rows[keep]
        if len(rows) != self.totals[index]:  # duplicates made it look complete: keep waiting for the missing rows
            self.parts[index], self.rows[index] = [table], len(rows)
            return
        self._write(index, table.select(["source_id", *self.value_columns]))

    def _write(self, index: int, table: pa.Table) -> None:
        target = self.targets[index]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            pq.write_table(table, temporary)
        self.done.add(index)
        self.summary.files_written += 1
        self.summary.stars += table.num_rows
        if self.value_columns and table.num_rows:
            self.summary.stars_without_inputs += int(np.isnan(table.column(self.value_columns[0]).to_numpy()).sum())
        if self.on_file is not None:
            self.on_file(target, table.num_rows)

    def close(self) -> None:
        """At the end of a successful stream: files that gave no row are empty; any other gap is an error."""
        incomplete = [self.targets[i] for i in self.parts]
        if incomplete:
            raise RuntimeError(f"Ray Data finished but {len(incomplete)} file(s) miss rows, e.g. {incomplete[0]}.")
        schema = pa.schema([("source_id", pa.int64()), *((name, pa.float32()) for name in self.value_columns)])
        for index in range(len(self.targets)):
            if index not in self.done:
                self._write(index, schema.empty_table())


# ---------------------------------------------------------------------------------------------------- driver
def start_ray(address: str | None = None, attempts: int = 3, **options: Any) -> None:
    """
    `ray.init` on `address` (an existing cluster) or, when None, a new local Ray on this machine; a local start
    is tried `attempts` times, since Ray gives its raylet a fixed 30 s to register, which an overloaded machine
    can miss.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address or "local", **options)
            return
        except Exception as error:  # ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if address is not None or attempt == attempts or "timed out during startup" not in str(error):
                raise


def check_cluster_fits(
    nodes: Sequence[dict[str, float]], num_actors: int, cpus_per_actor: float, num_gpus: float, cpus_per_read: float
) -> None:
    """
    Raise ValueError, saying what to change, when a cluster whose alive nodes have the resources `nodes`
    (``{"CPU": ..., "GPU": ...}`` each) cannot run the job: Ray would wait for resources that never come and the
    job would hang without a word. The actors (`cpus_per_actor` CPUs, `num_gpus` GPUs each) are placed as Ray
    spreads them, on the node with the most free CPUs that fits; a read task (`cpus_per_read` CPUs) must then
    still fit on some node, since the actors hold their resources for the whole run.
    """
    free = [[float(node.get("CPU", 0.0)), float(node.get("GPU", 0.0))] for node in nodes]
    total_cpus = sum(cpu for cpu, _ in free)
    for actor in range(num_actors):
        fits = [slot for slot in free if slot[0] >= cpus_per_actor and slot[1] >= num_gpus]
        if not fits:
            raise ValueError(
                f"The Ray cluster ({len(nodes)} node(s), {total_cpus:g} CPUs, {sum(g for _, g in free):g} GPUs left "
                f"after {actor} actor(s)) cannot place actor {actor + 1} of --num-actors {num_actors} with "
                f"--cpus-per-actor {cpus_per_actor:g} and --num-gpus {num_gpus:g}: use fewer actors or fewer "
                "resources per actor."
            )
        slot = max(fits, key=lambda slot: slot[0])
        slot[0] -= cpus_per_actor
        slot[1] -= num_gpus
    if max((cpu for cpu, _ in free), default=0.0) < cpus_per_read:
        raise ValueError(
            f"The Ray cluster ({len(nodes)} node(s), {total_cpus:g} CPUs) has no node left with the "
            f"--cpus-per-read {cpus_per_read:g} CPUs a read task needs once {num_actors} actor(s) of "
            f"--cpus-per-actor {cpus_per_actor:g} hold theirs, so no input would ever be read: use fewer actors, "
            "a smaller --cpus-per-actor or a smaller --cpus-per-read (e.g. 0.5 each on 1-CPU nodes)."
        )


def predict_catalogue_ray(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    request: Sequence[str],
    inputs: Sequence[str] | None = None,
    split: str | None = None,
    address: str | None = None,
    num_actors: int = 1,
    num_gpus: float = 0.0,
    cpus_per_actor: float = 1.0,
    cpus_per_read: float = 1.0,
    torch_threads: int | None = None,
    batch_size: int | None = None,
    rows_per_chunk: int = 16384,
    dtype: str = "float32",
    gaia_source_dir: str | os.PathLike | None = None,
    object_store_mb: int | None = None,
    progress: bool = True,
    on_file: Callable[[Path, int], None] | None = None,
    on_batch: Callable[[pa.Table], None] | None = None,
) -> CatalogueRun:
    """
    Predict every input file of `data` that has no finished prediction file in `out` yet, on Ray Data (see the
    module docstring). `on_file(path, rows)` is called after each prediction file is written, `on_batch(table)`
    with each result batch (tag columns `_file`, `_row`, `_read_node`, `_node`, `_pid` included) when it reaches
    the driver.
    Returns a `CatalogueRun` summary. A cluster too small for `num_actors` actors plus one read task raises
    ValueError (`check_cluster_fits`) instead of waiting forever.
    """
    import ray

    from .feature_extraction_astro import AstroFeatureExtractor

    start = time.perf_counter()
    if num_actors < 1 or rows_per_chunk < 1:
        raise ValueError(f"--num-actors and --rows-per-chunk must be >= 1, got {num_actors}, {rows_per_chunk}.")
    if cpus_per_read <= 0 or cpus_per_actor < 0 or num_gpus < 0:
        raise ValueError(
            f"--cpus-per-read must be > 0 and --cpus-per-actor, --num-gpus >= 0, got {cpus_per_read}, "
            f"{cpus_per_actor}, {num_gpus}."
        )
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    kind, root, files = list_inputs(data, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [path for path in files if not output_path(out, kind, root, path).exists()]
    summary = CatalogueRun(kind=kind, files_total=len(files), files_skipped=len(files) - len(todo))
    if not todo:
        return summary
    tokenizer = AstroFeatureExtractor.from_pretrained(str(model))
    tokenizer.encode_requests(request)  # an unknown request fails here, before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
        if address is None and object_store_mb:
            options["object_store_memory"] = int(object_store_mb) << 20
        start_ray(address, **options)
    try:
        alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        check_cluster_fits(alive, num_actors, cpus_per_actor, num_gpus, cpus_per_read)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = False
        items = [{FILE_COLUMN: i, "path": str(path)} for i, path in enumerate(todo)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            read_and_tokenise,
            batch_size=1,
            batch_format="numpy",
            num_cpus=cpus_per_read,
            # declared memory of a read task (a chunk in flight, one GaiaSource file's photometry); differing
            # resources also keep Ray Data from fusing these CPU tasks into the model actors
            memory=READ_TASK_MEMORY + rows_per_chunk * READ_MEMORY_PER_STAR,
            fn_kwargs=dict(
                kind=kind,
                tokenizer=tokenizer,
                inputs=list(inputs) if inputs else None,
                rows_per_chunk=rows_per_chunk,
                gaia_source_dir=None if gaia_source_dir is None else str(gaia_source_dir),
            ),
        )
        dataset = dataset.map_batches(
            PredictActor,
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),  # Ray Data restarts dead actors, retries tasks
            num_cpus=cpus_per_actor,
            num_gpus=num_gpus,
            fn_constructor_kwargs=dict(
                model=str(model),
                request=list(request),
                device="cuda" if num_gpus > 0 else "cpu",
                batch_size=batch_size,
                dtype=dtype,
                num_threads=torch_threads or (max(1, int(cpus_per_actor)) if num_gpus == 0 else None),
            ),
        )
        targets = [output_path(out, kind, root, path) for path in todo]
        collector = _Collector(targets, request, summary, on_file)
        known = [pq.ParquetFile(path).metadata.num_rows for path in todo] if kind != "bulk" else None
        sizes = [path.stat().st_size for path in todo]
        bar = tqdm(
            total=sum(known) if known else None,
            unit="star",
            unit_scale=True,
            smoothing=0.05,
            disable=not progress,
            desc=f"ray ({kind})",
        )

        def estimate_total(path: Path, rows: int) -> None:  # bulk files: total stars from the compressed sizes
            if bar.total is None and rows:
                bar.total = int(rows / sizes[targets.index(path)] * sum(sizes))
                bar.refresh()
            if on_file is not None:
                on_file(path, rows)

        if not known:
            collector.on_file = estimate_total
        with bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                rows = collector.add(batch)
                bar.update(rows)
                if on_batch is not None:
                    on_batch(batch)
            collector.close()
        summary.stars_per_node = dict(collector.nodes)
        summary.stars_read_per_node = dict(collector.read_nodes)
        summary.stars_per_actor = dict(collector.actors)
    finally:
        if started_ray:
            ray.shutdown()
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.stars_per_s = round(summary.stars / summary.seconds, 1) if summary.seconds else 0.0
    summary.driver_peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    return summary


def main(argv: Sequence[str] | None = None) -> CatalogueRun:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (model + tokenizer)")
    parser.add_argument("--data", required=True, help="folder of Gaia bulk files, a HATS catalogue or a dataset")
    parser.add_argument("--out", required=True, help="folder of the prediction files")
    parser.add_argument("--request", nargs="+", required=True, help="observations to predict, e.g. teff logg m_h")
    parser.add_argument("--inputs", nargs="+", help="observations given to the model (default: every one present)")
    parser.add_argument("--split", help="builder datasets: only the shards of this split")
    parser.add_argument("--address", help="an existing Ray cluster (default: start Ray on this machine)")
    parser.add_argument("--num-actors", type=int, default=1, help="model replicas (actors)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (0: CPU actors)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) per CPU actor")
    parser.add_argument("--cpus-per-read", type=float, default=1.0, help="CPUs per read-and-tokenise task")
    parser.add_argument("--torch-threads", type=int, help="torch threads per actor (default: its CPUs)")
    parser.add_argument("--batch-size", type=int, help="stars per forward pass per device (128 CPU, 1024 GPU)")
    parser.add_argument("--rows-per-chunk", type=int, default=16384, help="stars per Ray block (read, tokenise)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="auto: the faster of fp32 and bf16, measured here"
    )
    parser.add_argument("--gaia-source-dir", help="bulk input: folder of the GaiaSource_*.csv.gz files")
    parser.add_argument("--object-store-mb", type=int, help="local Ray: object store size [MiB]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    summary = predict_catalogue_ray(
        args.model,
        args.data,
        args.out,
        args.request,
        inputs=args.inputs,
        split=args.split,
        address=args.address,
        num_actors=args.num_actors,
        num_gpus=args.num_gpus,
        cpus_per_actor=args.cpus_per_actor,
        cpus_per_read=args.cpus_per_read,
        torch_threads=args.torch_threads,
        batch_size=args.batch_size,
        rows_per_chunk=args.rows_per_chunk,
        dtype=args.dtype,
        gaia_source_dir=args.gaia_source_dir,
        object_store_mb=args.object_store_mb,
        progress=not args.no_progress,
    )
    print(json.dumps(asdict(summary)))
    return summary


if __name__ == "__main__":
    main()
