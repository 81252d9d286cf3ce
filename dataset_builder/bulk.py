"""Gaia DR3 bulk files and HATS catalogues, streamed: readers for catalogue-scale inference, writers of samples.

The Gaia archive serves DR3 as bulk files split by HEALPix level-8 ranges, the same ranges for every table:
``XpContinuousMeanSpectrum_NNNNNN-NNNNNN.csv.gz`` (the XP coefficients) and ``GaiaSource_NNNNNN-NNNNNN.csv.gz``
(photometry, astrometry). Each starts with ECSV header lines (``# ...``, the YAML column descriptions), then a
CSV header and one row per source; array columns are bracketed strings (``"[1.0, 2.0, ...]"``) and a missing
value is the word ``null`` (a whole band without a solution: ``null`` for its coefficients).
LSDB serves the same tables as HATS catalogues: parquet partitioned by HEALPix, ``Norder=K/Dir=D/Npix=N.parquet``
(array columns as parquet lists).

Readers here stream one file at a time in chunks of rows (memory bounded by a chunk, plus the few photometry
columns of one GaiaSource file), join XP and photometry by ``source_id`` and compute the model's inputs with the
builder's own preprocessing (`features`: coefficients divided by the G-band flux, masked beyond the relevant bases;
BP-RP and its error; ``g_fakemag``). The paper's training cuts are not applied: every star gets its inputs (stars
with fewer inputs get predictions from what they have).

Writers turn simulated (or any) stars into small bulk-format and HATS-layout samples, for tests and benchmarks;
a star's sky position is drawn inside the HEALPix level-12 pixel that its Gaia ``source_id`` encodes
(``source_id >> 35``), so the HATS partitioning is the real one.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modeling_astro.io_utils import atomic_path

from . import features as F
from .errors import DatasetBuildError
from .readers import XPContinuous, xp_array_column
from .schema import XP_LENGTH

XP_BULK_PREFIX = "XpContinuousMeanSpectrum_"
GAIA_SOURCE_BULK_PREFIX = "GaiaSource_"
BULK_SUFFIX = ".csv.gz"
_RANGE = re.compile(r"_(\d{6}-\d{6})\.csv\.gz$")
NULL = "null"
"""How the bulk files write a missing value."""
SOURCE_ID_PIXEL_SHIFT = 35
"""``source_id >> 35`` is the source's HEALPix level-12 nested pixel (Gaia DR3 documentation, source_id)."""
SOURCE_ID_ORDER = 12
BULK_FILE_ORDER = 8
"""Bulk file names are ranges of HEALPix level-8 pixels."""

XP_FIELDS = ("coefficients", "coefficient_errors", "n_relevant_bases")
XP_COLUMNS: tuple[str, ...] = ("source_id",) + tuple(f"{b}_{f}" for b in ("bp", "rp") for f in XP_FIELDS)
PHOTOMETRY_COLUMNS: tuple[str, ...] = (
    "source_id",
    "ra",
    "dec",
    "phot_g_mean_mag",
    "bp_rp",
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
    "parallax",
    "parallax_error",
    "ruwe",
    "nu_eff_used_in_astrometry",
    "pseudocolour",
    "ecl_lat",
    "astrometric_params_solved",
)
"""GaiaSource columns the model inputs need (G for the flux normalisation, BP-RP, parallax for g_fakemag)."""
PHOTOMETRY_REQUIRED = ("source_id", "phot_g_mean_mag", "bp_rp", "parallax", "parallax_error")


# ---------------------------------------------------------------------------------------------------- reading
def bulk_range(path: str | os.PathLike) -> str:
    """The ``NNNNNN-NNNNNN`` HEALPix level-8 range of a bulk file name."""
    match = _RANGE.search(Path(path).name)
    if match is None:
        raise DatasetBuildError(
            f"{path}: not a Gaia bulk file name (expected <Table>_NNNNNN-NNNNNN.csv.gz, e.g. "
            f"{XP_BULK_PREFIX}000000-003111.csv.gz)"
        )
    return match.group(1)


def paired_gaia_source(xp_path: str | os.PathLike, gaia_source_dir: str | os.PathLike | None = None) -> Path:
    """The ``GaiaSource_<range>.csv.gz`` file of an XP bulk file (same range; its folder by default)."""
    xp_path = Path(xp_path)
    folder = Path(gaia_source_dir) if gaia_source_dir is not None else xp_path.parent
    path = folder / f"{GAIA_SOURCE_BULK_PREFIX}{bulk_range(xp_path)}{BULK_SUFFIX}"
    if not path.is_file():
        raise DatasetBuildError(
            f"{xp_path}: its photometry file {path} is missing; download GaiaSource_{bulk_range(xp_path)}"
            f"{BULK_SUFFIX} from the same bulk release (or pass the folder holding it)"
        )
    return path


def ecsv_header_lines(path: str | os.PathLike) -> int:
    """Number of leading ``#`` lines (the ECSV header) of a (gzipped) text file."""
    count = 0
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if not line.startswith("#"):
                    break
                count += 1
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetBuildError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); download it again") from exc
    return count


def iter_bulk_csv(
    path: str | os.PathLike, columns: Sequence[str], rows_per_chunk: int = 16384, required: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """
    Stream the `columns` (those the file has) of a bulk ``.csv(.gz)`` file, `rows_per_chunk` rows at a time;
    ``null`` is NaN, array columns stay strings. Raises `DatasetBuildError` naming the file for a missing
    `required` column or a damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetBuildError(f"{path}: no such file")
    skip = ecsv_header_lines(path)
    options = dict(skiprows=skip, na_values=[NULL], keep_default_na=False, dtype={"source_id": np.int64})
    try:
        header = pd.read_csv(path, nrows=0, skiprows=skip).columns
        missing = [name for name in required if name not in header]
        if missing:
            raise DatasetBuildError(
                f"{path}: missing required column(s) {missing}; found {list(header)[:12]}... "
                "(is this the right bulk table?)"
            )
        usecols = [name for name in columns if name in header]
        with pd.read_csv(path, usecols=usecols, chunksize=rows_per_chunk, **options) as reader:
            yield from reader
    except DatasetBuildError:
        raise
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetBuildError(
            f"{path}: cannot be parsed as a Gaia bulk CSV ({type(exc).__name__}: {exc}); the file may be "
            "truncated or damaged, download it again"
        ) from exc


def parse_array_column(
    path: Path, cells: np.ndarray, name: str, source_id: np.ndarray, first_row: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """
    Bracketed array strings (NaN/None for ``null``) -> ``(n, 55)`` float64 matrix and a bool "present" per
    row. Vectorised: every present cell is parsed in one pass; a malformed cell is reported by the builder's
    reader (`readers.xp_array_column`) with its row and source_id.
    """
    present = np.array([isinstance(cell, str) for cell in cells], dtype=bool)
    out = np.full((len(cells), XP_LENGTH), np.nan)
    if present.any():
        texts = cells[present]
        try:
            if not all(text[:1] in "([" and text[-1:] in ")]" for text in texts):
                raise ValueError("unbracketed")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # text that stops early: caught by the size
                values = np.fromstring(",".join(text[1:-1] for text in texts), sep=",")
            if values.size != len(texts) * XP_LENGTH:
                raise ValueError("wrong length")
        except ValueError:
            try:
                xp_array_column(path, cells, name, source_id)  # raises, naming the row
            except DatasetBuildError as exc:
                message = str(exc)
                match = re.search(r"data row (\d+)", message)
                if match:  # row within the chunk -> row within the file
                    message = message.replace(match.group(0), f"data row {int(match.group(1)) + first_row}")
                raise DatasetBuildError(message) from exc
            raise DatasetBuildError(f"{path}: column {name}: malformed array cells") from None
        out[present] = values.reshape(len(texts), XP_LENGTH)
    return out, present


def _xp_from_frame(path: Path, frame: pd.DataFrame, first_row: int) -> XPContinuous:
    """One chunk of an XP bulk file (array columns as strings) as an `XPContinuous`."""
    source_id = frame["source_id"].to_numpy(np.int64)
    fields: dict[str, np.ndarray] = {}
    for band in ("bp", "rp"):
        values, present = parse_array_column(
            path, frame[f"{band}_coefficients"].to_numpy(object), f"{band}_coefficients", source_id, first_row
        )
        errors, has_errors = parse_array_column(
            path,
            frame[f"{band}_coefficient_errors"].to_numpy(object),
            f"{band}_coefficient_errors",
            source_id,
            first_row,
        )
        if not np.array_equal(present, has_errors):
            row = int(np.flatnonzero(present != has_errors)[0])
            raise DatasetBuildError(
                f"{path}: data row {first_row + row + 1} (source_id {source_id[row]}): {band}_coefficients and "
                f"{band}_coefficient_errors disagree on whether the {band.upper()} solution exists"
            )
        relevant = frame.get(f"{band}_n_relevant_bases")
        relevant = np.full(len(frame), XP_LENGTH) if relevant is None else relevant.fillna(XP_LENGTH).to_numpy()
        fields[f"{band}_coefficients"] = values
        fields[f"{band}_coefficient_errors"] = errors
        fields[f"{band}_n_relevant_bases"] = np.where(present, relevant, 0).astype(np.int16)
    return XPContinuous(path=path, source_id=source_id, **fields)


def iter_bulk_xp(path: str | os.PathLike, rows_per_chunk: int = 16384) -> Iterator[XPContinuous]:
    """Stream an ``XpContinuousMeanSpectrum_*.csv.gz`` bulk file as `XPContinuous` chunks of `rows_per_chunk` rows."""
    path = Path(path)
    required = [name for name in XP_COLUMNS if not name.endswith("n_relevant_bases")]
    first_row = 0
    for frame in iter_bulk_csv(path, XP_COLUMNS, rows_per_chunk, required):
        yield _xp_from_frame(path, frame, first_row)
        first_row += len(frame)


def read_bulk_photometry(path: str | os.PathLike, rows_per_chunk: int = 262144) -> pd.DataFrame:
    """
    The photometry columns of a ``GaiaSource_*.csv.gz`` bulk file (`PHOTOMETRY_COLUMNS`, NaN for absent
    optional ones), indexed by ``source_id``; read in chunks, so memory is the few columns kept.
    """
    path = Path(path)
    parts = [
        frame.astype({name: np.float64 for name in frame.columns if name != "source_id"})
        for frame in iter_bulk_csv(path, PHOTOMETRY_COLUMNS, rows_per_chunk, PHOTOMETRY_REQUIRED)
    ]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(PHOTOMETRY_COLUMNS))
    for name in PHOTOMETRY_COLUMNS:
        if name not in frame:
            frame[name] = np.nan
    if frame["source_id"].duplicated().any():
        duplicated = frame["source_id"][frame["source_id"].duplicated()].iloc[:5].tolist()
        raise DatasetBuildError(f"{path}: duplicate source_id(s) {duplicated}; each source must appear once")
    return frame.set_index("source_id")


def model_inputs(xp: XPContinuous, photometry: pd.DataFrame) -> dict[str, np.ndarray]:
    """
    The model's observations of the stars of `xp`, joined with their `photometry` rows (indexed by
    ``source_id``), with the builder's preprocessing: ``source_id`` (int64), ``bp0..bp54``, ``rp0..rp54``
    (coefficients / f_G, NaN beyond the relevant bases or without a solution), ``bprp``, ``g_fakemag`` and their
    ``_err`` columns (float32, NaN = missing). Raises `DatasetBuildError` for XP stars without a photometry row.
    """
    matched = photometry.reindex(xp.source_id)
    unmatched = ~np.isin(xp.source_id, photometry.index.to_numpy())
    if unmatched.any():
        raise DatasetBuildError(
            f"{xp.path}: {int(unmatched.sum())} source_id(s) (e.g. {xp.source_id[unmatched][0]}) have no row in "
            "the photometry (GaiaSource) file; pair each XP file with the GaiaSource file of the same range"
        )
    g_mag = matched["phot_g_mean_mag"].to_numpy(np.float64)
    columns: dict[str, np.ndarray] = {"source_id": xp.source_id}
    for band in ("bp", "rp"):
        values, errors = F.normalised_xp(
            getattr(xp, f"{band}_coefficients"),
            getattr(xp, f"{band}_coefficient_errors"),
            getattr(xp, f"{band}_n_relevant_bases"),
            g_mag,
        )
        for i in range(XP_LENGTH):
            columns[f"{band}{i}"] = values[:, i].astype(np.float32)
            columns[f"{band}{i}_err"] = errors[:, i].astype(np.float32)
    colours = F.colour_features(matched)
    columns["bprp"] = colours["bprp"].astype(np.float32)
    columns["bprp_err"] = colours["bprp_err"].astype(np.float32)
    fakemag, fakemag_err = F.g_fakemag(matched)  # NaN where an input (or the zero-point) is missing
    columns["g_fakemag"] = np.asarray(fakemag, dtype=np.float32)
    columns["g_fakemag_err"] = np.asarray(fakemag_err, dtype=np.float32)
    return columns


def iter_bulk_inputs(
    xp_path: str | os.PathLike, gaia_source_dir: str | os.PathLike | None = None, rows_per_chunk: int = 16384
) -> Iterator[dict[str, np.ndarray]]:
    """Model inputs (`model_inputs`) of one XP bulk file joined with its GaiaSource file, chunk by chunk."""
    photometry = read_bulk_photometry(paired_gaia_source(xp_path, gaia_source_dir))
    for xp in iter_bulk_xp(xp_path, rows_per_chunk):
        yield model_inputs(xp, photometry)


def _list_matrix(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A parquet list<float> column of 55-value lists (null = no solution) -> (n, 55) float64, present."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full((len(column), XP_LENGTH), np.nan)
    if present.any():
        values = column.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        if values.size != present.sum() * XP_LENGTH:
            raise DatasetBuildError(f"XP list column: expected {XP_LENGTH} values per present row")
        out[present] = values.reshape(-1, XP_LENGTH)
    return out, present


def iter_hats_inputs(path: str | os.PathLike, rows_per_chunk: int = 16384) -> Iterator[dict[str, np.ndarray]]:
    """Model inputs (`model_inputs`) of one HATS partition holding the joined XP and GaiaSource columns."""
    path = Path(path)
    source = pq.ParquetFile(path)
    names = source.schema_arrow.names
    missing = [name for name in (*XP_COLUMNS, *PHOTOMETRY_REQUIRED) if name not in names]
    missing = [name for name in missing if not name.endswith("n_relevant_bases")]
    if missing:
        raise DatasetBuildError(
            f"{path}: HATS partition lacks column(s) {missing}; it must join the XP continuous table and "
            "GaiaSource (e.g. with lsdb's crossmatch/join on source_id)"
        )
    wanted = [name for name in dict.fromkeys((*XP_COLUMNS, *PHOTOMETRY_COLUMNS)) if name in names]
    for batch in source.iter_batches(batch_size=rows_per_chunk, columns=wanted):
        source_id = batch.column("source_id").to_numpy().astype(np.int64)
        fields: dict[str, np.ndarray] = {}
        for band in ("bp", "rp"):
            values, present = _list_matrix(batch.column(f"{band}_coefficients"))
            errors, _ = _list_matrix(batch.column(f"{band}_coefficient_errors"))
            if f"{band}_n_relevant_bases" in wanted:
                relevant = batch.column(f"{band}_n_relevant_bases").to_numpy(zero_copy_only=False)
                relevant = np.nan_to_num(relevant.astype(np.float64), nan=XP_LENGTH)
            else:
                relevant = np.full(len(source_id), XP_LENGTH)
            fields[f"{band}_coefficients"] = values
            fields[f"{band}_coefficient_errors"] = errors
            fields[f"{band}_n_relevant_bases"] = np.where(present, relevant, 0).astype(np.int16)
        xp = XPContinuous(path=path, source_id=source_id, **fields)
        photometry = pd.DataFrame(
            {
                name: batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                for name in PHOTOMETRY_COLUMNS
                if name in wanted and name != "source_id"
            },
            index=pd.Index(source_id, name="source_id"),
        )
        for name in PHOTOMETRY_COLUMNS[1:]:
            if name not in photometry:
                photometry[name] = np.nan
        yield model_inputs(xp, photometry)


def hats_partitions(root: str | os.PathLike) -> list[Path]:
    """The ``Norder=*/Dir=*/Npix=*.parquet`` partitions of a HATS catalogue folder, sorted by (order, pixel)."""
    root = Path(root)
    files = list(root.glob("**/Norder=*/Dir=*/Npix=*.parquet"))
    if not files:
        raise DatasetBuildError(f"{root}: no Norder=*/Dir=*/Npix=*.parquet partition; is it a HATS catalogue?")

    def key(path: Path) -> tuple[int, int]:
        return int(path.parent.parent.name.split("=")[1]), int(path.stem.split("=")[1])

    return sorted(files, key=key)


# ---------------------------------------------------------------------------------------------------- writing
def sky_positions(source_id: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec [deg]: the centre of a random level-29 sub-pixel of each source_id's level-12 pixel (uniform in it)."""
    import cdshealpix

    rng = np.random.default_rng(seed)
    pixel = np.asarray(source_id, dtype=np.int64) >> SOURCE_ID_PIXEL_SHIFT
    depth = 29 - SOURCE_ID_ORDER
    sub_pixel = (pixel << (2 * depth)) + rng.integers(0, 4**depth, len(pixel))
    lon, lat = cdshealpix.nested.healpix_to_lonlat(sub_pixel.astype(np.uint64), 29)
    return lon.wrap_at("360d").deg, lat.deg


def _array_strings(matrix: np.ndarray, present: np.ndarray, fmt: str = "%.8g") -> np.ndarray:
    """Rows of a matrix as ``"[v0, v1, ...]"`` strings (None where not `present`), as the bulk files write them."""
    out = np.full(len(matrix), None, dtype=object)
    if present.any():
        text = io.StringIO()
        np.savetxt(text, matrix[present], fmt=fmt, delimiter=", ")
        out[present] = ["[" + line + "]" for line in text.getvalue().splitlines()]
    return out


def _write_bulk_csv(path: Path, frame: pd.DataFrame, description: str) -> None:
    """A gzipped Gaia-bulk CSV: ECSV-style ``#`` header lines, then CSV with ``null``; temp name, then rename."""
    header = ["# %ECSV 1.0", "# ---", "# delimiter: ','", "# datatype:"]
    for name, dtype in frame.dtypes.items():
        kind = "string" if dtype is np.dtype(object) else str(dtype)
        header.append(f"# - {{name: {name}, datatype: {kind}}}")
    header += ["# meta: !!omap", f"# - {{description: '{description}'}}", "# schema: astropy-2.0"]
    with atomic_path(path) as temporary:
        with gzip.open(temporary, "wt", encoding="utf-8", compresslevel=1, newline="") as handle:
            handle.write("\n".join(header) + "\n")
            frame.to_csv(handle, index=False, na_rep=NULL, float_format="%.9g", quoting=csv.QUOTE_MINIMAL)


def write_bulk_sample(
    xp: XPContinuous, photometry: pd.DataFrame, out_dir: str | os.PathLike, rows_per_file: int = 5000
) -> list[Path]:
    """
    Write stars as Gaia DR3 bulk files: pairs ``XpContinuousMeanSpectrum_<range>.csv.gz`` and
    ``GaiaSource_<range>.csv.gz``, stars sorted by ``source_id`` and cut into files of about `rows_per_file`
    stars at level-8 pixel boundaries (the archive's ranges). `photometry` is indexed by ``source_id`` and
    holds `PHOTOMETRY_COLUMNS` (``ra``/``dec`` are drawn with `sky_positions` where absent). Returns the XP files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = np.argsort(xp.source_id, kind="stable")
    source_id = xp.source_id[order]
    if len(np.unique(source_id)) != len(source_id):
        raise ValueError("write_bulk_sample: source_ids must be unique")
    photometry = photometry.reindex(source_id)
    if photometry["phot_g_mean_mag"].isna().all():
        raise ValueError("write_bulk_sample: `photometry` has no row for these source_ids")
    if "ra" not in photometry or photometry["ra"].isna().all():
        photometry["ra"], photometry["dec"] = sky_positions(source_id)
    level8 = source_id >> (SOURCE_ID_PIXEL_SHIFT + 2 * (SOURCE_ID_ORDER - BULK_FILE_ORDER))
    cuts = [0]
    for start in range(rows_per_file, len(source_id), rows_per_file):
        boundary = int(np.searchsorted(level8, level8[start], side="left"))
        if boundary > cuts[-1]:
            cuts.append(boundary)
    cuts.append(len(source_id))
    written = []
    for first, stop in zip(cuts[:-1], cuts[1:]):
        low = int(level8[first]) if first > 0 else 0
        high = int(level8[stop]) - 1 if stop < len(source_id) else 12 * 4**BULK_FILE_ORDER - 1
        name = f"{low:06d}-{high:06d}"
        rows = order[first:stop]
        xp_frame = {"solution_id": np.full(stop - first, 375316653866487564, dtype=np.int64)}
        xp_frame["source_id"] = source_id[first:stop]
        for band in ("bp", "rp"):
            relevant = getattr(xp, f"{band}_n_relevant_bases")[rows]
            present = relevant > 0
            xp_frame[f"{band}_basis_function_id"] = np.where(present, 56 if band == "bp" else 57, -1)
            xp_frame[f"{band}_coefficients"] = _array_strings(getattr(xp, f"{band}_coefficients")[rows], present)
            xp_frame[f"{band}_coefficient_errors"] = _array_strings(
                getattr(xp, f"{band}_coefficient_errors")[rows], present
            )
            xp_frame[f"{band}_n_relevant_bases"] = pd.array(np.where(present, relevant, 0), dtype="Int16")
            xp_frame[f"{band}_n_relevant_bases"][~present] = pd.NA
        xp_path = out / f"{XP_BULK_PREFIX}{name}{BULK_SUFFIX}"
        _write_bulk_csv(xp_path, pd.DataFrame(xp_frame), "Gaia DR3 XP continuous mean spectra (simulated sample)")
        gaia = photometry.iloc[first:stop].reset_index()
        gaia = gaia[[name for name in PHOTOMETRY_COLUMNS if name in gaia]]
        _write_bulk_csv(
            out / f"{GAIA_SOURCE_BULK_PREFIX}{name}{BULK_SUFFIX}", gaia, "Gaia DR3 gaia_source (simulated sample)"
        )
        written.append(xp_path)
    return written


def write_hats_sample(
    xp_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    order: int = 2,
    catalog_name: str = "gaia_dr3_xp_sample",
    rows_per_chunk: int = 16384,
) -> Path:
    """
    Copy XP bulk files (joined with their GaiaSource files, values as read) into a HATS catalogue at one HEALPix
    `order`: ``dataset/Norder=<order>/Dir=<d>/Npix=<n>.parquet`` partitions (array columns as lists, rows
    sorted by the ``_healpix_29`` index from each star's RA/Dec), ``partition_info.csv``, ``properties`` and the
    parquet ``_metadata``. Checked with `hats.io.validation.is_valid_catalog`; returns the catalogue folder.
    """
    import cdshealpix
    import hats
    from astropy.coordinates import Latitude, Longitude
    from hats.catalog import CatalogType, PartitionInfo, TableProperties
    from hats.io.validation import is_valid_catalog

    parts: dict[int, list[pa.Table]] = {}
    for xp_path in xp_files:
        photometry = read_bulk_photometry(paired_gaia_source(xp_path))
        for frame in iter_bulk_csv(xp_path, XP_COLUMNS, rows_per_chunk):
            chunk = _xp_from_frame(Path(xp_path), frame, 0)
            matched = photometry.reindex(chunk.source_id)
            healpix_29 = cdshealpix.nested.lonlat_to_healpix(
                Longitude(matched["ra"].to_numpy(), unit="deg"), Latitude(matched["dec"].to_numpy(), unit="deg"), 29
            ).astype(np.int64)
            columns = {"_healpix_29": pa.array(healpix_29), "source_id": pa.array(chunk.source_id)}
            for name in PHOTOMETRY_COLUMNS[1:]:
                columns[name] = pa.array(matched[name].to_numpy())
            for band in ("bp", "rp"):
                present = getattr(chunk, f"{band}_n_relevant_bases") > 0
                for field in ("coefficients", "coefficient_errors"):
                    matrix = getattr(chunk, f"{band}_{field}")
                    flat = pa.array(matrix.ravel())
                    offsets = pa.array(np.arange(0, matrix.size + 1, XP_LENGTH, dtype=np.int32))
                    lists = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~present))
                    columns[f"{band}_{field}"] = lists
                columns[f"{band}_n_relevant_bases"] = pa.array(
                    getattr(chunk, f"{band}_n_relevant_bases"), mask=~present
                )
            table = pa.table(columns)
            pixel = healpix_29 >> (2 * (29 - order))
            for value in np.unique(pixel):
                parts.setdefault(int(value), []).append(table.filter(pa.array(pixel == value)))
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder for the HATS catalogue")
    root.mkdir(parents=True, exist_ok=True)
    pixels = []
    total = 0
    for value, tables in sorted(parts.items()):
        table = pa.concat_tables(tables).sort_by("_healpix_29")
        pixel = hats.HealpixPixel(order, value)
        path = hats.io.paths.pixel_catalog_file(root, pixel)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            pq.write_table(table, temporary)
        pixels.append(pixel)
        total += table.num_rows
    PartitionInfo.from_healpix(pixels).write_to_file(root / "partition_info.csv")
    hats.io.write_parquet_metadata(root)
    TableProperties(
        catalog_name=catalog_name,
        catalog_type=CatalogType.OBJECT,
        total_rows=total,
        ra_column="ra",
        dec_column="dec",
        healpix_column="_healpix_29",
        healpix_order=29,
    ).to_properties_file(root)
    if not is_valid_catalog(root):
        raise DatasetBuildError(f"{root}: the HATS catalogue written is not valid (hats.is_valid_catalog)")
    return root


def simulated_bulk_sample(
    out_dir: str | os.PathLike, n_stars: int, seed: int = 0, rows_per_file: int = 5000, simulated_stars: int = 5000
) -> list[Path]:
    """
    A bulk-format sample of `n_stars` simulated stars: `simulated_stars` stars of the simulated survey
    (`simulate.simulate_survey`), tiled with new unique ``source_id`` s (each copy stays in its star's level-12
    pixel) when more are asked for. Returns the XP bulk files (each beside its GaiaSource file).
    """
    import tempfile

    from .readers import read_gaia_source, read_xp_continuous
    from .simulate import simulate_survey

    with tempfile.TemporaryDirectory() as scratch:
        files = simulate_survey(Path(scratch) / "raw", n_stars=min(n_stars, simulated_stars), seed=seed, progress=False)
        parts = [read_xp_continuous(path) for path in files.xp_files]
        photometry = read_gaia_source(files.gaia_source).set_index("source_id")
    fields = {
        name: np.concatenate([getattr(part, name) for part in parts])
        for name in ("source_id", *(f"{b}_{f}" for b in ("bp", "rp") for f in XP_FIELDS))
    }
    base = len(fields["source_id"])
    copies = -(-n_stars // base)
    rows = np.arange(n_stars) % base
    copy = np.arange(n_stars) // base
    source_id = fields["source_id"][rows] + copy.astype(np.int64)  # +k keeps the star in its pixel (ids are sparse)
    if len(np.unique(source_id)) != n_stars:
        raise ValueError(f"tiling {base} stars {copies} times gave repeated source_ids; simulate more stars")
    xp = XPContinuous(
        path=Path(out_dir),
        source_id=source_id,
        **{name: values[rows] for name, values in fields.items() if name != "source_id"},
    )
    photometry = photometry.reindex(fields["source_id"][rows])
    photometry.index = pd.Index(source_id, name="source_id")
    for name in PHOTOMETRY_COLUMNS[1:]:
        if name not in photometry:
            photometry[name] = np.nan
    photometry["ra"], photometry["dec"] = sky_positions(source_id, seed)
    return write_bulk_sample(xp, photometry, out_dir, rows_per_file)
