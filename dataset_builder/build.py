"""Build the dataset folder: read, join on Gaia source_id, cut, deduplicate, split, write shards + card.

Pipeline (memory stays bounded by one compact float32 copy of one split's XP block plus a shard):

1. Main process: read the small tables (gaia_source photometry, allStar, E(B-V), extras).
   APOGEE duplicates (same GAIAEDR3_SOURCE_ID) keep one row: unflagged labels first, then the
   highest SNR, then the first in file order.
2. Worker processes (``num_proc``), one task per XP file: parse, check duplicates, apply the
   paper's XP quality cuts with the photometry, divide by f_G, mask irrelevant bases, and write the
   surviving rows as float32 parquet parts per split into the build's temp folder.
3. Main process: the stars are (XP stars passing the cuts) + (APOGEE stars with usable labels);
   XP stars failing a cut keep their other data if they have labels (as in the paper). Each split
   is sorted by source_id and streamed to ``data/<split>-NNNNN-of-NNNNN.parquet``.
4. The dataset card is written and the temp folder renamed onto ``out_dir``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from modeling_astro.io_utils import folder_lock, replace_folder
from modeling_astro.observations import ERROR_SUFFIX

from . import features as F
from .card import render_card
from .errors import DatasetBuildError
from .readers import read_allstar, read_ebv, read_extra, read_gaia_source, read_xp_continuous
from .schema import SPLITS, XP_LENGTH, XP_NAMES, dataset_features
from .splits import assign_split, check_fractions

XP_CUT_INPUTS = ("phot_g_mean_mag", "bp_rp", "ruwe", "phot_bp_rp_excess_factor")
CUT_NO_PHOTOMETRY = "XP star without gaia_source row"
CUT_NO_XP_NO_LABELS = "no XP after cuts and no usable APOGEE labels"
CUT_APOGEE_NO_GAIA_ID = "APOGEE row without GAIAEDR3_SOURCE_ID"
CUT_APOGEE_DUPLICATE = "APOGEE duplicate GAIAEDR3_SOURCE_ID (kept best row)"


@dataclass
class BuildSummary:
    """What a build produced: rows per split, rows removed per cut, inputs, speed."""

    out_dir: Path
    rows_per_split: dict[str, int]
    removed_per_cut: dict[str, int]
    input_rows: dict[str, int]
    shards_per_split: dict[str, int]
    elapsed_s: float
    rows_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.rows_per_s = sum(self.rows_per_split.values()) / max(self.elapsed_s, 1e-9)

    def table(self) -> str:
        """A plain-text summary table for the CLI."""
        lines = [f"dataset: {self.out_dir}", f"{'input':<55}{'rows':>12}"]
        lines += [f"{name:<55}{count:>12,}" for name, count in self.input_rows.items()]
        lines += [f"{'cut (rows removed)':<55}{'rows':>12}"]
        lines += [f"{name:<55}{count:>12,}" for name, count in self.removed_per_cut.items()]
        lines += [f"{'split':<55}{'rows':>12}"]
        lines += [f"{name:<55}{count:>12,}" for name, count in self.rows_per_split.items()]
        lines.append(f"elapsed {self.elapsed_s:.1f} s, {self.rows_per_s:,.0f} rows/s")
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _deduplicate_apogee(allstar: pd.DataFrame, removed: dict[str, int]) -> pd.DataFrame:
    """One row per Gaia id: usable (unflagged) labels first, then highest SNR, then file order."""
    with_id = allstar[allstar["source_id"] > 0]
    removed[CUT_APOGEE_NO_GAIA_ID] = len(allstar) - len(with_id)
    ranked = with_id.assign(
        _usable=F.apogee_labels_usable(with_id),
        _snr=with_id["SNR"] if "SNR" in with_id else 0.0,
        _row=np.arange(len(with_id)),
    ).sort_values(
        ["source_id", "_usable", "_snr", "_row"],
        ascending=[True, False, False, True],
        na_position="last",
        kind="stable",
    )
    best = ranked.drop_duplicates("source_id", keep="first").drop(columns=["_usable", "_snr", "_row"])
    removed[CUT_APOGEE_DUPLICATE] = len(with_id) - len(best)
    return best.set_index("source_id")


def _merge_extras(paths: Sequence[Path]) -> pd.DataFrame | None:
    merged = None
    for path in paths:
        table = read_extra(path).set_index("source_id")
        if merged is not None:
            clash = merged.columns.intersection(table.columns)
            if len(clash):
                raise DatasetBuildError(
                    f"{path}: columns {list(clash)} already come from another --extra table"
                )
            merged = merged.join(table, how="outer")
        else:
            merged = table
    return merged


_WORKER_PHOTOMETRY: pd.DataFrame | None = None


def _init_worker(photometry: pd.DataFrame) -> None:
    global _WORKER_PHOTOMETRY
    _WORKER_PHOTOMETRY = photometry
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _process_xp_file(
    index: int, path: Path, parts_dir: Path, split_fractions: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, dict[str, int], str]:
    """Worker task: one XP file -> float32 parquet parts per split of the rows passing the cuts.

    Returns (all source_ids in the file, kept source_ids, rows removed per cut, sha256 of the file).
    """
    photometry = _WORKER_PHOTOMETRY
    xp = read_xp_continuous(path)
    removed: dict[str, int] = {}
    matched = photometry.reindex(xp.source_id)
    keep = np.array(matched["phot_g_mean_mag"].notna())
    removed[CUT_NO_PHOTOMETRY] = int((~keep).sum())
    complete = (xp.bp_n_relevant_bases > 0) & (xp.rp_n_relevant_bases > 0)
    for name, passes in F.xp_quality_cuts(matched, complete).items():
        removed[name] = int((keep & ~passes).sum())
        keep &= passes
    g_mag = matched["phot_g_mean_mag"].to_numpy()[keep]
    columns: dict[str, np.ndarray] = {"source_id": xp.source_id[keep]}
    for band in ("bp", "rp"):
        values, errors = F.normalised_xp(
            getattr(xp, f"{band}_coefficients")[keep],
            getattr(xp, f"{band}_coefficient_errors")[keep],
            getattr(xp, f"{band}_n_relevant_bases")[keep],
            g_mag,
        )
        for i in range(XP_LENGTH):
            columns[f"{band}{i}"] = values[:, i].astype(np.float32)
            columns[f"{band}{i}_err"] = errors[:, i].astype(np.float32)
    part = pa.table(columns)
    split = assign_split(columns["source_id"], split_fractions)
    for split_index, split_name in enumerate(SPLITS):
        rows = np.flatnonzero(split == split_index)
        if len(rows):
            pq.write_table(part.take(rows), parts_dir / f"{split_name}-{index:05d}.parquet")
    return xp.source_id, columns["source_id"], removed, _sha256(path)


def _check_cross_file_duplicates(paths: Sequence[Path], ids_per_file: list[np.ndarray]) -> None:
    all_ids = np.concatenate(ids_per_file) if ids_per_file else np.empty(0, np.int64)
    file_of = np.repeat(np.arange(len(ids_per_file)), [len(ids) for ids in ids_per_file])
    order = np.argsort(all_ids, kind="stable")
    repeated = np.flatnonzero(all_ids[order][1:] == all_ids[order][:-1])
    if len(repeated):
        first = order[repeated[0]]
        second = order[repeated[0] + 1]
        raise DatasetBuildError(
            f"{paths[file_of[second]]}: {len(repeated)} source_id(s) also appear in another XP file, "
            f"e.g. {all_ids[first]} (also in {paths[file_of[first]]}); give each XP chunk once"
        )


def _run_xp_stage(
    paths: Sequence[Path], photometry: pd.DataFrame, parts_dir: Path, split_fractions, num_proc: int
) -> tuple[list[np.ndarray], np.ndarray, dict[str, int], list[str]]:
    results: list = [None] * len(paths)
    progress = tqdm(total=len(paths), desc="XP files", unit="file")
    if num_proc <= 1:
        _init_worker(photometry)
        for i, path in enumerate(paths):
            results[i] = _process_xp_file(i, path, parts_dir, split_fractions)
            progress.update()
    else:
        with ProcessPoolExecutor(num_proc, initializer=_init_worker, initargs=(photometry,)) as pool:
            futures = {
                pool.submit(_process_xp_file, i, p, parts_dir, split_fractions): i
                for i, p in enumerate(paths)
            }
            for future in futures:
                results[futures[future]] = future.result()
                progress.update()
    progress.close()
    removed: dict[str, int] = {}
    for _, _, file_removed, _ in results:
        for name, count in file_removed.items():
            removed[name] = removed.get(name, 0) + count
    kept = np.concatenate([r[1] for r in results]) if results else np.empty(0, np.int64)
    return [r[0] for r in results], kept, removed, [r[3] for r in results]


def _shard_columns(
    shard_ids: np.ndarray,
    xp_block: pa.Table | None,
    photometry: pd.DataFrame,
    apogee: pd.DataFrame,
    ebv: pd.DataFrame | None,
    extras: pd.DataFrame | None,
    true_columns: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """All output columns (float64/float32 arrays, int64 source_id) for the stars of one shard."""
    n = len(shard_ids)
    joined = photometry.reindex(shard_ids).join(apogee.reindex(shard_ids))
    columns: dict[str, np.ndarray] = {"source_id": shard_ids}
    nan = np.full(n, np.nan, dtype=np.float32)
    for name in XP_NAMES:
        columns[name], columns[f"{name}{ERROR_SUFFIX}"] = nan, nan
    if xp_block is not None and xp_block.num_rows:
        position = np.searchsorted(shard_ids, xp_block["source_id"].to_numpy())
        for name in XP_NAMES:
            for column in (name, f"{name}{ERROR_SUFFIX}"):
                values = np.full(n, np.nan, dtype=np.float32)
                values[position] = xp_block[column].to_numpy()
                columns[column] = values
    columns.update(F.colour_features(joined))
    columns.update(F.apogee_labels(joined))
    ebv_source = joined if ebv is None else ebv.reindex(shard_ids)
    ebv_values = ebv_source["ebv"].to_numpy() if "ebv" in ebv_source else np.full(n, np.nan)
    ebv_errors = ebv_source["ebv_err"].to_numpy() if "ebv_err" in ebv_source else np.full(n, np.nan)
    columns["logebv"], columns["logebv_err"] = F.log_ebv(ebv_values, ebv_errors)
    columns["g_fakemag"], columns["g_fakemag_err"] = F.g_fakemag(joined)
    if true_columns:
        truth = extras.reindex(shard_ids)
        for name in true_columns:
            columns[name] = truth[name].to_numpy(dtype=np.float32)
    return columns


def _write_split(
    split_name: str,
    ids: np.ndarray,
    parts: list[Path],
    data_dir: Path,
    rows_per_shard: int,
    schema: pa.Schema,
    tables: tuple,
    progress: tqdm,
) -> int:
    """Write one split (ids sorted) as shards; returns the number of shards."""
    xp_table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
    if xp_table is not None:
        xp_ids = xp_table["source_id"].to_numpy()
        xp_order = np.argsort(xp_ids)
        xp_sorted = xp_ids[xp_order]
    n_shards = max(1, -(-len(ids) // rows_per_shard)) if len(ids) else 0
    for shard in range(n_shards):
        shard_ids = ids[shard * rows_per_shard : (shard + 1) * rows_per_shard]
        xp_block = None
        if xp_table is not None:
            lo = np.searchsorted(xp_sorted, shard_ids[0], side="left")
            hi = np.searchsorted(xp_sorted, shard_ids[-1], side="right")
            xp_block = xp_table.take(xp_order[lo:hi])
        columns = _shard_columns(shard_ids, xp_block, *tables)
        arrays = [pa.array(np.asarray(columns[f.name]), type=f.type) for f in schema]
        target = data_dir / f"{split_name}-{shard:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), target, compression="zstd")
        progress.update(len(shard_ids))
    return n_shards


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise DatasetBuildError(f"{out_dir}: output folder already exists; pass overwrite=True (--overwrite)")


def build_dataset(
    gaia_xp: Sequence[str | Path],
    gaia_source: str | Path,
    allstar: str | Path | None,
    out_dir: str | Path,
    extra: Sequence[str | Path] = (),
    ebv: str | Path | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    rows_per_shard: int = 50_000,
    num_proc: int = 2,
    overwrite: bool = False,
) -> BuildSummary:
    """Build the dataset folder (parquet shards + dataset card) from survey files.

    Args:
        gaia_xp: Gaia DR3 XP_CONTINUOUS files (chunks), any supported format.
        gaia_source: gaia_source photometry table (+ 2MASS j_m..., optional ``ebv``).
        allstar: APOGEE DR17 allStar FITS, or None for an XP-only dataset.
        out_dir: output folder; built in a temp folder beside it and renamed at the end.
        extra: tables joined on source_id whose ``true_*`` columns pass through unchanged.
        ebv: table of source_id + ebv (+ ebv_err); overrides an ``ebv`` column of gaia_source.
        split_fractions: train/validation/test fractions, assigned by a hash of source_id.
        rows_per_shard: maximum rows per parquet shard.
        num_proc: worker processes for the XP files (1 = in this process).
        overwrite: replace an existing ``out_dir`` (atomically swapped in at the end).

    Raises:
        DatasetBuildError: an input is unreadable, lacks a column, has malformed arrays or duplicate
            source_ids, or ``out_dir`` exists without ``overwrite``. ``out_dir`` is then untouched.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    xp_paths = [Path(p) for p in gaia_xp]
    extra_paths = [Path(p) for p in extra]
    check_fractions(split_fractions)
    if rows_per_shard < 1:
        raise DatasetBuildError(f"rows_per_shard={rows_per_shard}: must be at least 1")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Under the folder's lock (a second build into it stops at once), after repairing an interrupted swap; the
    # new folder is built beside `out_dir` and swapped in whole: an interruption leaves the old or the new.
    with folder_lock(out_dir, what="dataset folder"):
        _prepare_out_dir(out_dir, overwrite)
        with replace_folder(out_dir) as tmp_dir:
            parts_dir = tmp_dir / "parts"
            parts_dir.mkdir(parents=True)
            removed: dict[str, int] = {}
            photometry = read_gaia_source(gaia_source).set_index("source_id")
            apogee_raw = read_allstar(allstar) if allstar is not None else None
            apogee = (
                _deduplicate_apogee(apogee_raw, removed)
                if apogee_raw is not None
                else pd.DataFrame(
                    {"ASPCAPFLAG": [], "STARFLAG": []}, index=pd.Index([], dtype=np.int64, name="source_id")
                )
            )
            ebv_table = read_ebv(ebv).set_index("source_id") if ebv is not None else None
            extras = _merge_extras(extra_paths)
            true_columns = tuple(extras.columns) if extras is not None else ()

            cut_inputs = photometry[list(XP_CUT_INPUTS)]
            ids_per_file, xp_kept, xp_removed, xp_sha = _run_xp_stage(
                xp_paths, cut_inputs, parts_dir, split_fractions, num_proc
            )
            _check_cross_file_duplicates(xp_paths, ids_per_file)
            removed = {**xp_removed, **removed}

            labelled = apogee.index.to_numpy()[F.apogee_labels_usable(apogee)]
            candidates = np.union1d(np.concatenate(ids_per_file) if ids_per_file else [], apogee.index.to_numpy())
            stars = np.union1d(xp_kept, labelled).astype(np.int64)
            removed[CUT_NO_XP_NO_LABELS] = len(candidates) - len(stars)

            features = dataset_features(true_columns)
            schema = features.arrow_schema
            data_dir = tmp_dir / "data"
            data_dir.mkdir()
            split_of = assign_split(stars, split_fractions)
            rows_per_split, shards_per_split = {}, {}
            tables = (photometry, apogee, ebv_table, extras, true_columns)
            with tqdm(total=len(stars), desc="writing shards", unit="star") as progress:
                for split_index, split_name in enumerate(SPLITS):
                    ids = stars[split_of == split_index]
                    parts = sorted(parts_dir.glob(f"{split_name}-*.parquet"))
                    shards_per_split[split_name] = _write_split(
                        split_name, ids, parts, data_dir, rows_per_shard, schema, tables, progress
                    )
                    rows_per_split[split_name] = len(ids)
            shutil.rmtree(parts_dir)

            input_rows = {
                "gaia_xp (all files)": int(sum(len(ids) for ids in ids_per_file)),
                "gaia_source": len(photometry),
            }
            if apogee_raw is not None:
                input_rows["allstar"] = len(apogee_raw)
            inputs = [(p, sha) for p, sha in zip(xp_paths, xp_sha)] + [
                (Path(p), _sha256(Path(p))) for p in (gaia_source, allstar, ebv, *extra_paths) if p is not None
            ]
            card = render_card(
                features=features,
                rows_per_split=rows_per_split,
                bytes_per_split={
                    split: sum(f.stat().st_size for f in data_dir.glob(f"{split}-*.parquet")) for split in SPLITS
                },
                removed_per_cut=removed,
                input_rows=input_rows,
                inputs=[(path.name, sha) for path, sha in inputs],
                split_fractions=split_fractions,
            )
            (tmp_dir / "README.md").write_text(card, encoding="utf-8")
    return BuildSummary(
        out_dir=out_dir,
        rows_per_split=rows_per_split,
        removed_per_cut=removed,
        input_rows=input_rows,
        shards_per_split=shards_per_split,
        elapsed_s=time.perf_counter() - start,
    )
