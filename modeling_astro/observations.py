"""Facts about the observations, defined once: names, column suffixes, the paper's task input sets and prompts.

A leaf module: it imports nothing, and everything that names an observation, an error column or a task's inputs
takes it from here (the tokenizer, the collator, the predictor, the evaluation, the tasks, train.py, the dataset
builder and the benchmarks). A saved checkpoint carries it beside the configuration, which imports it.
"""

XP_COEFFICIENTS_PER_BAND = 55
"""Gaia DR3 XP basis coefficients per band (BP and RP)."""
BP_NAMES: tuple[str, ...] = tuple(f"bp{i}" for i in range(XP_COEFFICIENTS_PER_BAND))
RP_NAMES: tuple[str, ...] = tuple(f"rp{i}" for i in range(XP_COEFFICIENTS_PER_BAND))
XP_NAMES: tuple[str, ...] = BP_NAMES + RP_NAMES
"""The 110 XP coefficients, BP first; each divided by the G-band flux f_G (see `G_FLUX_ZERO_POINT`)."""
COLOURS: tuple[str, ...] = ("bprp", "jh", "jk")
"""Gaia BP-RP and 2MASS J-H, J-K colours [mag]."""
LABELS: tuple[str, ...] = ("teff", "logg", "m_h")
"""The APOGEE labels the paper evaluates: Teff [K], log g [log cm s^-2], [M/H] [dex]."""
EVALUATION_LABELS = LABELS
EXTINCTION = "logebv"
"""Natural log of E(B-V) [mag]."""

#: The 118 observation names of the paper's model, in token order (token id = position + 1; 0 is padding).
DEFAULT_OBSERVATION_NAMES: tuple[str, ...] = (*XP_NAMES, *COLOURS, *LABELS, EXTINCTION, "g_fakemag")
#: Physical unit of each default observation, as an astropy unit string ("" = dimensionless): the tokenizer
#: converts table columns that carry a unit (an astropy `Table`/`QTable`) to these. XP coefficients are divided by
#: the G-band flux (dimensionless); `g_fakemag` is parallax [mas] * 10**(0.2 G); `logebv` (the natural log of
#: E(B-V) in mag) has no astropy unit: a column of it must not carry one.
DEFAULT_OBSERVATION_UNITS: dict[str, str | None] = {
    **{name: "" for name in XP_NAMES},
    "bprp": "mag",
    "jh": "mag",
    "jk": "mag",
    "teff": "K",
    "logg": "dex(cm / s2)",
    "m_h": "dex",
    "logebv": None,
    "g_fakemag": "mas",
}

ERROR_SUFFIX = "_err"
"""Suffix of an input column holding the 1-sigma uncertainty of the observation it extends (`teff_err`)."""
#: Other suffixes read as 1-sigma error columns (the Gaia archive's `parallax_error` convention); a column may
#: have one error column only.
ERROR_SUFFIX_ALIASES: tuple[str, ...] = ("_error",)
SIGMA_SUFFIX = "_sigma"
"""Suffix of a predicted column holding the model's 1-sigma uncertainty (`teff_sigma`)."""

G_FLUX_ZERO_POINT = 25.6873668671
"""Gaia DR3 G-band zero point [mag]: f_G = 10**((G_FLUX_ZERO_POINT - G) / 2.5) in e-/s."""

EVALUATION_INPUTS: tuple[str, ...] = (*BP_NAMES[:30], *RP_NAMES[:30], *COLOURS)
"""The paper's spectra -> labels inputs: BP/RP coefficients 0-29 (/ f_G) and the three colours."""
LABEL_PROMPT: tuple[str, ...] = (*LABELS, EXTINCTION)
"""The inputs of labels -> spectra (and of the contrastive label view): the labels and the extinction."""
LOCI_PROMPT: tuple[str, ...] = ("logg", "m_h", EXTINCTION)
"""The inputs of the stellar loci: Teff and colours predicted from log g, [M/H] and the extinction."""
LABEL_REQUEST: tuple[str, ...] = (*LABELS, EXTINCTION, "g_fakemag")
"""What the spectra -> labels task asks for."""

#: The named prompts of training (`train.py --prompts '{"name": fraction, ...}'`): the input set a share of the
#: stars is shown, all present observations of it unblanked, with targets among the star's other observations, so
#: that the model also trains on the inputs a task will give it.
PROMPTS: dict[str, tuple[str, ...]] = {
    "evaluation": EVALUATION_INPUTS,
    "labels": LABEL_PROMPT,
    "loci": LOCI_PROMPT,
}
#: What each prompt of `PROMPTS` shows, for help texts and model cards.
PROMPT_DESCRIPTIONS: dict[str, str] = {
    "evaluation": "the evaluation's inputs, XP 0-29 and the colours",
    "labels": "the labels and extinction, the inputs of labels -> spectra",
    "loci": "log g, [M/H] and extinction, the inputs of the stellar loci",
}
