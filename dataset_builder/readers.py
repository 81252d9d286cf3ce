"""Readers for the survey files the builder consumes, in the formats the archives deliver.

Every reader returns plain numpy/pandas data with NaN for missing values and raises
`DatasetBuildError` naming the file and the problem (unreadable or truncated file, missing
column, malformed array, duplicate source_id).

Formats are recognised by content first (gzip is detected by its magic bytes, then an ECSV header
``# %ECSV``, a FITS ``SIMPLE`` card, a VOTable or a parquet ``PAR1`` magic), so that the Gaia archive's
bulk files -- ECSV, gzipped, named ``XpContinuousMeanSpectrum_*.csv.gz`` -- read as ECSV; otherwise
by file extension (a trailing ``.gz`` is allowed):

- ``.csv``: read with pandas (only the needed columns; the delimiter -- ``,``, ``;``, tab or ``|`` -- is
  sniffed from the header line; ``null``/``NULL``/empty cells are missing; Gaia's bracketed array
  strings such as ``"(1.0, 2.0, ...)"`` or ``"[1.0, 2.0, ...]"`` are parsed here);
- ``.ecsv``, ``.fits``/``.fit``/``.fts``, ``.xml``/``.vot``/``.votable`` (binary or plain
  TABLEDATA): read with ``astropy.table.Table.read``;
- ``.parquet``: read with pandas (convenient for ``--extra`` truth tables).
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DatasetBuildError
from .schema import XP_LENGTH

GAIA_SOURCE_REQUIRED: tuple[str, ...] = (
    "source_id",
    "phot_g_mean_mag",
    "bp_rp",
    "parallax",
    "parallax_error",
    "ruwe",
    "phot_bp_rp_excess_factor",
    "nu_eff_used_in_astrometry",
    "pseudocolour",
    "ecl_lat",
    "astrometric_params_solved",
)
TWOMASS_COLUMNS: tuple[str, ...] = ("j_m", "j_msigcom", "h_m", "h_msigcom", "ks_m", "ks_msigcom")
GAIA_SOURCE_OPTIONAL: tuple[str, ...] = TWOMASS_COLUMNS + (
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
    "ebv",
    "ebv_err",
)
ALLSTAR_REQUIRED: tuple[str, ...] = (
    "GAIAEDR3_SOURCE_ID",
    "TEFF",
    "TEFF_ERR",
    "LOGG",
    "LOGG_ERR",
    "M_H",
    "M_H_ERR",
    "ASPCAPFLAG",
    "STARFLAG",
)
ALLSTAR_OPTIONAL: tuple[str, ...] = ("SNR", "J", "J_ERR", "H", "H_ERR", "K", "K_ERR")

TWOMASS_MISSING_THRESHOLD = 99.0
"""2MASS magnitudes/sigmas at or above this (the archive's 99.999 sentinel) are missing."""
APOGEE_MISSING_SENTINEL = -9999.0
"""APOGEE allStar values at or below this (older releases' -9999 sentinel) are missing."""

_CSV_SUFFIXES = {".csv"}
_ASTROPY_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".xml": "votable",
    ".vot": "votable",
    ".votable": "votable",
}
_PARQUET_SUFFIXES = {".parquet"}
_GZIP_MAGIC = b"\x1f\x8b"
_CSV_DELIMITERS = (",", ";", "\t", "|")


@dataclass(frozen=True)
class XPContinuous:
    """Gaia DR3 XP_CONTINUOUS mean-spectrum coefficients of one file, one row per source.

    Arrays are float64 of shape (n, 55), NaN where the band has no solution (a missing BP or RP
    solution is real in DR3). ``*_n_relevant_bases`` is int16, 0 where the band has no solution and
    55 where the file has no such column (e.g. the ``cholesky_solution`` schema).
    ``phot_g_mean_mag`` is filled only when the file carries that column.
    """

    path: Path
    source_id: np.ndarray
    bp_coefficients: np.ndarray
    bp_coefficient_errors: np.ndarray
    bp_n_relevant_bases: np.ndarray
    rp_coefficients: np.ndarray
    rp_coefficient_errors: np.ndarray
    rp_n_relevant_bases: np.ndarray
    phot_g_mean_mag: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.source_id)


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _head(path: Path, size: int = 65536) -> tuple[bytes, bool]:
    """The first `size` bytes of the file's content (decompressed when it is gzipped) and whether it is."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    with (gzip.open if gzipped else open)(path, "rb") as f:
        return f.read(size), gzipped


def _sniff_suffix(path: Path, head: bytes) -> str | None:
    """The format suffix the content shows, or None when only the extension can tell."""
    start = head.lstrip()
    if start.startswith(b"# %ECSV"):
        return ".ecsv"
    if head.startswith(b"SIMPLE  ="):
        return ".fits"
    if head.startswith(b"PAR1"):
        return ".parquet"
    if start.startswith(b"<?xml") or start.startswith(b"<VOTABLE"):
        return ".xml" if b"<VOTABLE" in head else None
    return None


def _csv_delimiter(head: bytes) -> str:
    """The delimiter of a CSV file: the candidate most frequent in its header line (comment lines skipped)."""
    for line in head.decode("utf-8", errors="replace").splitlines():
        if line.strip() and not line.startswith("#"):
            counts = {delimiter: line.count(delimiter) for delimiter in _CSV_DELIMITERS}
            best = max(counts, key=counts.get)
            return best if counts[best] else ","
    return ","


def _read_raw(path: Path, wanted: Sequence[str] | None) -> dict[str, Any]:
    """Read the columns in ``wanted`` that the file has (all columns if None); {name: column-like}."""
    if not path.is_file():
        raise DatasetBuildError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        head, gzipped = _head(path)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetBuildError(
            f"{path}: cannot be decompressed ({type(exc).__name__}: {exc}); the file may be truncated or "
            "damaged, download it again"
        ) from exc
    suffix = _sniff_suffix(path, head) or suffix
    try:
        if suffix in _CSV_SUFFIXES:
            delimiter = _csv_delimiter(head)
            compression = "gzip" if gzipped else None
            header = pd.read_csv(path, nrows=0, sep=delimiter, compression=compression).columns
            usecols = None if wanted is None else [c for c in wanted if c in header]
            frame = pd.read_csv(path, usecols=usecols, sep=delimiter, compression=compression)
            return {name: frame[name].to_numpy() for name in frame.columns}
        if suffix in _PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            header = pq.read_schema(path).names
            frame = pd.read_parquet(path, columns=None if wanted is None else [c for c in wanted if c in header])
            return {name: frame[name].to_numpy() for name in frame.columns}
        if suffix in _ASTROPY_FORMATS:
            from astropy.table import Table

            fmt = _ASTROPY_FORMATS[suffix]
            kwargs = {"memmap": True} if fmt == "fits" else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = Table.read(path, format=fmt, **kwargs)
            names = table.colnames if wanted is None else [c for c in wanted if c in table.colnames]
            return {name: table[name] for name in names}
    except Exception as exc:  # astropy/pandas raise many types for damaged files
        raise DatasetBuildError(
            f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc}); "
            "the file may be truncated or damaged, download it again"
        ) from exc
    raise DatasetBuildError(
        f"{path}: unsupported file extension {suffix!r}; use one of "
        f"{sorted(_CSV_SUFFIXES | set(_ASTROPY_FORMATS) | _PARQUET_SUFFIXES)} (optionally .gz)"
    )


def _require(path: Path, raw: dict[str, Any], required: Iterable[str]) -> None:
    missing = [name for name in required if name not in raw]
    if missing:
        raise DatasetBuildError(
            f"{path}: missing required column(s) {missing}; found {sorted(raw)}. "
            "Select these columns when querying the archive."
        )


def _float_column(column: Any) -> np.ndarray:
    """A numeric column as float64 with NaN for masked/missing entries."""
    if isinstance(column, np.ma.MaskedArray):
        return np.ma.filled(column.astype(np.float64), np.nan)
    return np.asarray(column, dtype=np.float64)


def _source_ids(path: Path, column: Any, name: str = "source_id") -> np.ndarray:
    mask = np.ma.getmaskarray(column) if isinstance(column, np.ma.MaskedArray) else None
    values = np.asarray(column)
    if mask is not None and mask.any() or not np.issubdtype(values.dtype, np.integer):
        raise DatasetBuildError(f"{path}: column {name} has missing or non-integer values; it must be int64")
    return values.astype(np.int64)


def _check_unique(path: Path, source_id: np.ndarray) -> None:
    unique, counts = np.unique(source_id, return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        shown = ", ".join(str(i) for i in duplicated[:10])
        raise DatasetBuildError(
            f"{path}: {len(duplicated)} duplicate source_id(s) ({shown}"
            f"{', ...' if len(duplicated) > 10 else ''}); "
            "each source must appear once — remove the repeated rows"
        )


def _is_missing_cell(cell: Any) -> bool:
    if cell is None or cell is np.ma.masked:
        return True
    if isinstance(cell, str):
        return cell.strip() == ""
    if isinstance(cell, (float, np.floating)):
        return bool(np.isnan(cell))
    if isinstance(cell, np.ndarray):
        return cell.size == 0 or bool(np.ma.getmaskarray(cell).all())
    return False


def _parse_array_string(text: str) -> np.ndarray:
    text = text.strip()
    if len(text) < 2 or text[0] not in "([" or text[-1] not in ")]":
        raise ValueError("expected a bracketed list such as '(1.0, 2.0, ...)'")
    return np.array(text[1:-1].split(","), dtype=np.float64)


def xp_array_column(path: Path, column: Any, name: str, source_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn an array-valued column into a (n, 55) float64 matrix; returns (matrix, has_solution)."""
    n = len(source_id)
    out = np.full((n, XP_LENGTH), np.nan)
    present = np.zeros(n, dtype=bool)
    for row in range(n):
        cell = column[row]
        if _is_missing_cell(cell):
            continue
        try:
            if isinstance(cell, str):
                values = _parse_array_string(cell)
            else:
                values = np.ma.filled(np.ma.asarray(cell, dtype=np.float64), np.nan).ravel()
        except (ValueError, TypeError) as exc:
            raise DatasetBuildError(
                f"{path}: data row {row + 1} (source_id {source_id[row]}), column {name}: malformed array ({exc})"
            ) from exc
        if values.shape != (XP_LENGTH,):
            raise DatasetBuildError(
                f"{path}: data row {row + 1} (source_id {source_id[row]}), column {name}: "
                f"expected {XP_LENGTH} values, found {values.size}"
            )
        out[row] = values
        present[row] = True
    return out, present


def read_xp_continuous(path: str | Path) -> XPContinuous:
    """Read one Gaia DR3 XP_CONTINUOUS file (CSV, ECSV, FITS or VOTable, as the archive delivers it).

    Raises `DatasetBuildError` for an unreadable file, a missing column, a malformed array cell
    (naming the row and column) or duplicate source_ids (naming them).
    """
    path = Path(path)
    bands = ("bp", "rp")
    wanted = ["source_id", "phot_g_mean_mag"] + [
        f"{band}_{field}" for band in bands for field in ("coefficients", "coefficient_errors", "n_relevant_bases")
    ]
    raw = _read_raw(path, wanted)
    _require(path, raw, ["source_id"] + [f"{b}_{f}" for b in bands for f in ("coefficients", "coefficient_errors")])
    source_id = _source_ids(path, raw["source_id"])
    _check_unique(path, source_id)
    fields: dict[str, np.ndarray] = {}
    for band in bands:
        name = f"{band}_coefficients"
        coefficients, has_solution = xp_array_column(path, raw[name], name, source_id)
        errors, has_errors = xp_array_column(
            path, raw[f"{band}_coefficient_errors"], f"{band}_coefficient_errors", source_id
        )
        if not np.array_equal(has_solution, has_errors):
            row = int(np.flatnonzero(has_solution != has_errors)[0])
            raise DatasetBuildError(
                f"{path}: data row {row + 1} (source_id {source_id[row]}): {band}_coefficients and "
                f"{band}_coefficient_errors disagree on whether the {band.upper()} solution exists"
            )
        if f"{band}_n_relevant_bases" in raw:
            relevant = np.nan_to_num(_float_column(raw[f"{band}_n_relevant_bases"]), nan=XP_LENGTH)
        else:
            relevant = np.full(len(source_id), XP_LENGTH, dtype=np.float64)
        relevant = np.where(has_solution, relevant, 0).astype(np.int16)
        fields[f"{band}_coefficients"] = coefficients
        fields[f"{band}_coefficient_errors"] = errors
        fields[f"{band}_n_relevant_bases"] = relevant
    g_mag = _float_column(raw["phot_g_mean_mag"]) if "phot_g_mean_mag" in raw else None
    return XPContinuous(path=path, source_id=source_id, phot_g_mean_mag=g_mag, **fields)


def _frame(path: Path, raw: dict[str, Any], id_column: str) -> pd.DataFrame:
    """Columns as a DataFrame: int64 ``source_id`` plus float64 columns (NaN = missing)."""
    source_id = _source_ids(path, raw[id_column], id_column)
    data = {"source_id": source_id}
    for name, column in raw.items():
        if name != id_column:
            data[name] = _float_column(column)
    return pd.DataFrame(data)


def read_gaia_source(path: str | Path) -> pd.DataFrame:
    """Read a gaia_source (+ 2MASS, optional ``ebv``) photometry table; one row per source_id.

    2MASS magnitudes and sigmas that are masked or >= 99 (the archive's 99.999) become NaN.
    Raises `DatasetBuildError` on a missing required column or duplicate source_ids.
    """
    path = Path(path)
    raw = _read_raw(path, GAIA_SOURCE_REQUIRED + GAIA_SOURCE_OPTIONAL)
    _require(path, raw, GAIA_SOURCE_REQUIRED)
    frame = _frame(path, raw, "source_id")
    _check_unique(path, frame["source_id"].to_numpy())
    for name in TWOMASS_COLUMNS:
        if name in frame:
            frame.loc[frame[name] >= TWOMASS_MISSING_THRESHOLD, name] = np.nan
    return frame


def read_allstar(path: str | Path) -> pd.DataFrame:
    """Read the APOGEE DR17 allStar columns the builder needs (all rows, duplicates included).

    Returns ``source_id`` (from GAIAEDR3_SOURCE_ID, identical to DR3 ids) and the APOGEE columns
    under their allStar names; -9999 sentinels become NaN, and J/H/K (with errors) above 50 mag
    become NaN. Rows without a Gaia id (<= 0) are kept here; the builder drops and counts them.
    """
    path = Path(path)
    raw = _read_raw(path, ALLSTAR_REQUIRED + ALLSTAR_OPTIONAL)
    _require(path, raw, ALLSTAR_REQUIRED)
    frame = _frame(path, raw, "GAIAEDR3_SOURCE_ID")
    for name in frame.columns.drop(["source_id", "ASPCAPFLAG", "STARFLAG"]):
        frame.loc[frame[name] <= APOGEE_MISSING_SENTINEL, name] = np.nan
    for band in ("J", "H", "K"):
        if band in frame:
            bad = ~(frame[band] < 50)
            frame.loc[bad, band] = np.nan
            if f"{band}_ERR" in frame:
                frame.loc[bad | ~(frame[f"{band}_ERR"] < 50), f"{band}_ERR"] = np.nan
    for flag in ("ASPCAPFLAG", "STARFLAG"):
        values = raw[flag]
        frame[flag] = np.ma.filled(np.ma.asarray(values).astype(np.int64), 0)
    return frame


def read_ebv(path: str | Path) -> pd.DataFrame:
    """Read an E(B-V) table: ``source_id``, ``ebv`` [mag] and optionally ``ebv_err``; unique source_ids."""
    path = Path(path)
    raw = _read_raw(path, ("source_id", "ebv", "ebv_err"))
    _require(path, raw, ("source_id", "ebv"))
    frame = _frame(path, raw, "source_id")
    _check_unique(path, frame["source_id"].to_numpy())
    return frame


def read_extra(path: str | Path) -> pd.DataFrame:
    """Read a pass-through table: ``source_id`` and every ``true_*`` column (as float32); unique ids."""
    path = Path(path)
    raw = _read_raw(path, None)
    _require(path, raw, ["source_id"])
    raw = {name: column for name, column in raw.items() if name == "source_id" or name.startswith("true_")}
    frame = _frame(path, raw, "source_id")
    _check_unique(path, frame["source_id"].to_numpy())
    return frame.astype({name: np.float32 for name in frame.columns if name != "source_id"})


def _packed_correlations(path: Path, column: Any, name: str, source_id: np.ndarray) -> np.ndarray:
    """An archive ``*_coefficient_correlations`` column -> (n, 1485) float64, NaN rows where it is empty."""
    from .xp_errors import N_CORRELATIONS

    out = np.full((len(source_id), N_CORRELATIONS), np.nan)
    for row in range(len(source_id)):
        cell = column[row]
        if _is_missing_cell(cell):
            continue
        try:
            values = (
                _parse_array_string(cell)
                if isinstance(cell, str)
                else np.ma.filled(np.ma.asarray(cell, dtype=np.float64), np.nan).ravel()
            )
        except (ValueError, TypeError) as exc:
            raise DatasetBuildError(
                f"{path}: data row {row + 1} (source_id {source_id[row]}), column {name}: malformed array ({exc})"
            ) from exc
        if values.size == XP_LENGTH * XP_LENGTH:  # a full matrix (GaiaXPy's own outputs)
            values = values.reshape(XP_LENGTH, XP_LENGTH)[np.tril_indices(XP_LENGTH, k=-1)]
        if values.shape != (N_CORRELATIONS,):
            raise DatasetBuildError(
                f"{path}: data row {row + 1} (source_id {source_id[row]}), column {name}: "
                f"expected {N_CORRELATIONS} packed correlations (the strict lower triangle of 55 x 55), "
                f"found {values.size}"
            )
        out[row] = values
    return out


def read_xp_correlations(path: str | Path) -> dict[str, np.ndarray]:
    """The archive-packed coefficient correlations of an XP_CONTINUOUS file (CSV, ECSV, FITS or VOTable).

    Returns ``{"source_id": (n,), "bp": (n, 1485), "rp": (n, 1485)}`` in the file's row order (that of
    `read_xp_continuous`), NaN rows where a band has no solution. The packing is the archive's (and
    GaiaXPy's): the strict lower triangle row by row, (1,0), (2,0), (2,1), ... Raises `DatasetBuildError`
    when a file has no correlation column or a cell is malformed.
    """
    path = Path(path)
    columns = [f"{band}_coefficient_correlations" for band in ("bp", "rp")]
    raw = _read_raw(path, ["source_id", *columns])
    _require(path, raw, ["source_id", *columns])
    source_id = _source_ids(path, raw["source_id"])
    out: dict[str, np.ndarray] = {"source_id": source_id}
    for band, column in zip(("bp", "rp"), columns):
        out[band] = _packed_correlations(path, raw[column], column, source_id)
    return out


def xp_covariance(errors: np.ndarray, packed_correlations: np.ndarray) -> np.ndarray:
    """Covariance (..., 55, 55) of XP coefficients from their errors (..., 55) and packed correlations (..., 1485).

    Units are those of ``errors`` squared, so G-normalised errors (divided by f_G) give the G-normalised
    covariance, and NaN errors beyond ``n_relevant_bases`` give NaN rows and columns (the truncation).
    Equals GaiaXPy's ``get_covariance_matrix(row) * standard_deviation**2`` (GaiaXPy keeps the covariance
    in units of the fit's standard deviation).
    """
    from .xp_errors import packed_to_matrix

    errors = np.asarray(errors, dtype=np.float64)
    return errors[..., :, None] * packed_to_matrix(packed_correlations) * errors[..., None, :]
