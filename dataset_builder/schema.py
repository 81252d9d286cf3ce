"""The dataset's column layout: the 118 observation names and the `datasets.Features` of a row."""

from __future__ import annotations

import datasets

from modeling_astro.observations import DEFAULT_OBSERVATION_NAMES, G_FLUX_ZERO_POINT, XP_COEFFICIENTS_PER_BAND

XP_LENGTH = XP_COEFFICIENTS_PER_BAND
"""Number of Gaia DR3 XP basis coefficients per band."""

OBSERVATION_NAMES: tuple[str, ...] = DEFAULT_OBSERVATION_NAMES
"""The observation vocabulary, in token order (token id = position + 1; 0 is padding): the model's own."""
XP_NAMES: tuple[str, ...] = OBSERVATION_NAMES[: 2 * XP_LENGTH]

SPLITS: tuple[str, ...] = ("train", "validation", "test")

COLUMN_DESCRIPTIONS: dict[str, str] = {
    "source_id": "Gaia DR3 source_id (int64)",
    "bp*/rp*": f"Gaia XP coefficient / f_G, f_G = 10**(({G_FLUX_ZERO_POINT} - G)/2.5); NaN beyond n_relevant_bases",
    "bprp": "Gaia BP - RP colour [mag]",
    "jh": "2MASS J - H colour [mag]",
    "jk": "2MASS J - Ks colour [mag]",
    "teff": "APOGEE DR17 effective temperature [K]",
    "logg": "APOGEE DR17 surface gravity log10(g / cm s^-2) [dex]",
    "m_h": "APOGEE DR17 metallicity [M/H] [dex]",
    "logebv": "natural log of E(B-V) [ln mag]",
    "g_fakemag": "parallax [mas] (Lindegren zero-point corrected) * 10**(0.2 G)",
    "<name>_err": "1-sigma uncertainty of <name>, same units (NaN = unknown)",
    "true_*": "pass-through truth columns from --extra tables (float32)",
}


def dataset_features(true_columns: tuple[str, ...] = ()) -> datasets.Features:
    """Return the explicit `datasets.Features` of a row: int64 source_id, float32 values, errors, truths."""
    features = {"source_id": datasets.Value("int64")}
    for name in OBSERVATION_NAMES:
        features[name] = datasets.Value("float32")
        features[f"{name}_err"] = datasets.Value("float32")
    for name in true_columns:
        features[name] = datasets.Value("float32")
    return datasets.Features(features)
