"""The generated dataset card (README.md): YAML header for `datasets` plus provenance in prose."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import yaml

from .features import (
    EBV_MAX,
    FAKEMAG_MAX_PARALLAX_ERROR,
    LOGEBV_FLOOR,
    RUWE_MAX,
)
from .schema import COLUMN_DESCRIPTIONS, SPLITS


def _yaml_header(
    features: datasets.Features, rows_per_split: dict[str, int], bytes_per_split: dict[str, int]
) -> str:
    present = [split for split in SPLITS if rows_per_split.get(split, 0) > 0]
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in present],
            }
        ],
        "dataset_info": {
            "features": [{"name": name, "dtype": feature.dtype} for name, feature in features.items()],
            "splits": [
                {"name": split, "num_bytes": bytes_per_split[split], "num_examples": rows_per_split[split]}
                for split in present
            ],
            # `datasets` caches a local folder under its name + a hash of this header (not of the
            # files); counts and sizes here make a stale cache after a rebuild less likely, not impossible
            "download_size": sum(bytes_per_split.values()),
            "dataset_size": sum(bytes_per_split.values()),
        },
    }
    return yaml.safe_dump(header, sort_keys=False)


def render_card(
    features: datasets.Features,
    rows_per_split: dict[str, int],
    bytes_per_split: dict[str, int],
    removed_per_cut: dict[str, int],
    input_rows: dict[str, int],
    inputs: Sequence[tuple[str, str]],
    split_fractions: tuple[float, float, float],
) -> str:
    """Markdown dataset card with no wall-clock content, so identical inputs give an identical card.

    ``bytes_per_split`` is the total size of each split's parquet files (YAML ``num_bytes``).
    """
    lines = ["---", _yaml_header(features, rows_per_split, bytes_per_split).rstrip(), "---", ""]
    lines += [
        "# Gaia XP x 2MASS x APOGEE DR17 dataset for the Leung & Bovy (2024) stellar foundation model",
        "",
        "Built by `python -m dataset_builder build` following the paper's preprocessing.",
        "",
        "## Inputs",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| `{name}` | `{sha}` |" for name, sha in inputs],
        "",
        "| input | rows |",
        "|---|---:|",
        *[f"| {name} | {count} |" for name, count in input_rows.items()],
        "",
        "## Cuts and rows removed",
        "",
        "XP quality cuts are applied to the XP part only (a star failing them loses its XP"
        " coefficients but is kept if it has usable APOGEE labels, as in the paper). Counts are"
        " sequential: each row is counted at the first cut it fails.",
        "",
        "| cut | rows removed |",
        "|---|---:|",
        *[f"| {name} | {count} |" for name, count in removed_per_cut.items()],
        "",
        "## Splits",
        "",
        f"Deterministic by blake2b hash of the int64 source_id (fractions {tuple(split_fractions)});"
        " adding stars never moves existing stars. Rows are sorted by source_id within a split."
        " A split with no rows has no files and is left out of `configs`.",
        "",
        "| split | rows |",
        "|---|---:|",
        *[f"| {split} | {rows_per_split.get(split, 0)} |" for split in SPLITS],
        "",
        "## Columns",
        "",
        "All values float32 with NaN for missing, except `source_id` (int64).",
        "",
        *[f"- `{name}`: {text}" for name, text in COLUMN_DESCRIPTIONS.items()],
        "",
        "## Preprocessing",
        "",
        "- XP: coefficients and errors divided by f_G; coefficients with index >= `n_relevant_bases`"
        " set to NaN, coefficients 52-54 take the relevancy of coefficient 51 (as in the paper).",
        "- teff/logg/m_h: NaN when ASPCAPFLAG bit 19 (M_H_BAD) or 23 (STAR_BAD) is set or STARFLAG != 0."
        " APOGEE duplicates: the unflagged row, then the highest SNR, then the first row is kept.",
        f"- logebv: ln E(B-V); E <= 0 -> {LOGEBV_FLOOR:g}; E > {EBV_MAX:g} -> NaN; error = ebv_err / E"
        " when an ebv_err column is given, else NaN.",
        f"- g_fakemag: (parallax - Lindegren zero-point) * 10**(0.2 G); NaN if parallax_error >"
        f" {FAKEMAG_MAX_PARALLAX_ERROR} mas or RUWE >= {RUWE_MAX}, for 2-p solutions, and for 5-p"
        " solutions with nu_eff_used_in_astrometry outside 1.1-1.9 (G and pseudocolour beyond the"
        " zero-point's range use its plateau values).",
        "- bprp_err from phot_{bp,rp}_mean_flux_over_error when given; 2MASS from the Gaia archive's"
        " j_m/h_m/ks_m (99.999 = missing), else APOGEE's J/H/K.",
        "",
    ]
    return "\n".join(lines)
