"""Catalogue-scale inference: a sharded parquet dataset through an Astro model, one prediction shard each.

    python -m modeling_astro.catalogue_inference --model CHECKPOINT --data DATASET --out PREDICTIONS \
        --request teff logg m_h [--split test] [--dtype bfloat16]
    accelerate launch -m modeling_astro.catalogue_inference ...   # several processes / GPUs / machines

Each input shard `DATASET/data/<name>.parquet` gives `PREDICTIONS/<name>.parquet` with the `source_id` column
and `<request>`, `<request>_sigma` per requested observation, in the input row order. Shards are read in
record batches, so memory stays bounded whatever the shard size. A shard is written to a temporary file
and renamed when complete: an interrupted run never leaves a half-written shard, and running the same command
again skips the finished shards. The output folder is locked while a command writes into it: the same command
started twice stops the second at once, naming the process that holds the folder. With several processes,
`accelerate.PartialState().split_between_processes` gives each its share of the shards.
"""

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from .feature_extraction_astro import ERROR_SUFFIX
from .inference import AstroPredictor
from .io_utils import DiskFullError, FolderInUseError, atomic_path, folder_lock, remove_temporaries

DTYPES = {"auto": "auto", "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""`--dtype` of the catalogue commands: `auto` (the default) is the faster of fp32 and bf16 here (`fast_path`)."""


def input_shards(data_dir: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The parquet shards of a dataset folder (its `data/` subfolder if present), optionally of one split."""
    root = Path(data_dir)
    folder = root / "data" if (root / "data").is_dir() else root
    shards = sorted(folder.glob(f"{split}-*.parquet" if split else "*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"No {'`' + split + '-*.parquet` ' if split else ''}parquet shard in {folder}: pass the folder "
            "written by the dataset builder (`python -m dataset_builder`)."
        )
    return shards


def _columns_to_read(
    schema: pa.Schema, predictor: AstroPredictor, inputs: Sequence[str] | None, keep_columns: Sequence[str]
) -> list[str]:
    names = (
        list(inputs) if inputs else [n for n in predictor.tokenizer.observation_names if n in schema.names]
    )
    missing = [name for name in [*names, *keep_columns] if name not in schema.names]
    if missing:
        raise KeyError(f"Columns {missing} are not in the input shards (they have {schema.names[:8]}, ...).")
    errors = [name + ERROR_SUFFIX for name in names if name + ERROR_SUFFIX in schema.names]
    return [*keep_columns, *names, *errors]


def predict_shard(
    predictor: AstroPredictor,
    shard: Path,
    target: Path,
    request: Sequence[str],
    inputs: Sequence[str] | None = None,
    keep_columns: Sequence[str] = ("source_id",),
    rows_per_chunk: int = 65536,
    progress: tqdm | None = None,
) -> int:
    """
    Predict one parquet shard into `target`, chunk by chunk, through a temporary file renamed at the end (so
    `target` exists only when complete). Returns the number of stars.
    """
    source = pq.ParquetFile(shard)
    columns = _columns_to_read(source.schema_arrow, predictor, inputs, keep_columns)
    num_stars = 0
    kept = f"the finished prediction shards in {target.parent}; run the same command again to continue"
    with atomic_path(target, kept=kept) as temporary:
        writer = None
        try:
            for record_batch in source.iter_batches(batch_size=rows_per_chunk, columns=columns):
                data = {name: record_batch.column(name).to_numpy(zero_copy_only=False) for name in columns}
                table = predictor.predict(data, request, progress=False, keep_columns=keep_columns)
                arrow_table = pa.Table.from_pandas(table, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(temporary, arrow_table.schema)
                writer.write_table(arrow_table)
                num_stars += len(table)
                if progress is not None:
                    progress.update(len(table))
            if writer is None:  # an empty shard still gets its (empty) prediction shard
                writer = pq.ParquetWriter(temporary, pa.schema([]))
        finally:
            if writer is not None:
                writer.close()
    return num_stars


def predict_catalogue(
    predictor: AstroPredictor,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    request: Sequence[str],
    split: str | None = None,
    inputs: Sequence[str] | None = None,
    keep_columns: Sequence[str] = ("source_id",),
    rows_per_chunk: int = 65536,
) -> list[Path]:
    """
    Predict every shard of a dataset folder that has no finished prediction shard in `out_dir` yet, this
    process's share of them when run under `accelerate launch`. Returns the prediction shards this process
    wrote.
    """
    state = PartialState()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with contextlib.ExitStack() as held:
        if state.is_main_process:  # one command per output folder: a second one stops here with a clear error
            held.enter_context(folder_lock(out, what="prediction folder"))
            remove_temporaries(out)  # left by a killed run
        todo = [shard for shard in input_shards(data_dir, split) if not (out / shard.name).exists()]
        state.wait_for_everyone()  # every process lists the same unfinished shards before any writes one
        with state.split_between_processes(todo) as mine:
            total = sum(pq.ParquetFile(shard).metadata.num_rows for shard in mine)
            with tqdm(
                total=total, unit="star", unit_scale=True, smoothing=0.05, desc=f"process {state.process_index}"
            ) as bar:
                for shard in mine:
                    predict_shard(
                        predictor, shard, out / shard.name, request, inputs, keep_columns, rows_per_chunk, bar
                    )
                    written.append(out / shard.name)
        state.wait_for_everyone()  # the lock is released when every process is done
    return written


def main(argv: Sequence[str] | None = None) -> None:
    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument("--engine", choices=["accelerate", "ray"], default="accelerate")
    chosen, argv = engine.parse_known_args(argv)
    if chosen.engine == "ray":  # Gaia bulk files, HATS, Ray clusters: modeling_astro.catalogue_ray (its options)
        from .catalogue_ray import main as ray_main

        ray_main(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[engine])
    parser.add_argument("--model", required=True, help="checkpoint folder (model + tokenizer)")
    parser.add_argument("--data", required=True, help="dataset folder written by the dataset builder")
    parser.add_argument("--out", required=True, help="folder of the prediction shards")
    parser.add_argument(
        "--request", nargs="+", required=True, help="observations to predict, e.g. teff logg m_h"
    )
    parser.add_argument("--split", help="only the shards of this split (train, validation, test)")
    parser.add_argument(
        "--inputs", nargs="+", help="observations given to the model (default: every one present)"
    )
    parser.add_argument(
        "--keep-columns", nargs="*", default=["source_id"], help="input columns copied to the output"
    )
    parser.add_argument(
        "--batch-size", type=int, help="stars per forward pass (default: 128 on CPU, 1024 on GPU)"
    )
    parser.add_argument("--rows-per-chunk", type=int, default=65536, help="rows read from a shard at a time")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="auto", help="auto: the faster of fp32 and bf16, measured here"
    )
    parser.add_argument("--device", help="default: this process's accelerator, else CPU")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (faster on long runs; compiles first)"
    )
    args = parser.parse_args(argv)
    # the first PartialState fixes the process group: on CPU-only runs it must be told, or each process of
    # `accelerate launch`/`torchrun` would believe it is alone and predict every shard
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = args.device or state.device
    predictor = AstroPredictor.from_pretrained(
        args.model, device=device, batch_size=args.batch_size, dtype=DTYPES[args.dtype], compile=args.compile
    )
    path = predictor.fast_path
    print(f"dtype {path['dtype']}: {path['reason']}{' (cached)' if path.get('cached') else ''}", file=sys.stderr)
    predict_catalogue(
        predictor,
        args.data,
        args.out,
        args.request,
        args.split,
        args.inputs,
        args.keep_columns,
        args.rows_per_chunk,
    )


if __name__ == "__main__":
    try:
        main()
    except (FolderInUseError, DiskFullError) as error:
        sys.exit(f"error: {error}")
