"""The paper's science tasks on one trained model, built on `AstroPredictor`.

- `labels`: spectra -> Teff, log g, [M/H], E(B-V), distance;
- `spectra`: labels -> XP coefficients -> sampled spectrum on Gaia's 336-1020 nm grid (GaiaXPy's sampling);
- `inpainting`: BP -> RP, RP -> BP, and filling missing coefficients;
- `loci`: Teff and colours over a (log g, [M/H]) grid;
- `extinction`: A(lambda)/E(B-V) from spectra generated at several E(B-V);
- `similarity`: per-star embeddings and top-k cosine search (FAISS through `datasets`: exact, HNSW or IVF-PQ);
  `contrastive`: InfoNCE fine-tuning of two views;
- `pipeline`: `AstroObservationPipeline`, registered as the transformers task "astro-observation-prediction".

These modules need the repository's `dataset_builder` (GaiaXPy forward model, extinction law) and are not
shipped inside checkpoint folders.
"""

from .contrastive import LABELS_VIEW, contrastive_finetune, info_nce_loss, pooled_embedding
from .extinction import (
    DEFAULT_EBV,
    DEFAULT_REFERENCE_STARS,
    ExtinctionCurve,
    extinction_curve,
    injected_law,
    max_relative_error,
    plot_extinction_curve,
)
from .inpainting import fill_missing_coefficients, inpaint_band
from .labels import (
    LABEL_REQUEST,
    SPECTRA_INPUTS,
    distance_from_fakemag,
    plot_label_comparison,
    predict_labels,
    select_inputs,
)
from .loci import LOCI_REQUEST, plot_loci, stellar_loci
from .pipeline import AstroObservationPipeline
from .similarity import (
    build_index,
    embed_stars,
    load_index,
    retrieval_accuracy,
    save_index,
    search_index,
    top_k_similar,
)
from .spectra import (
    BP_NAMES,
    LABEL_INPUTS,
    RP_NAMES,
    XP_NAMES,
    SampledSpectra,
    flux_scale_from_fakemag,
    gaia_sampling,
    generate_spectra,
    plot_spectra,
    sample_xp,
)

__all__ = [
    "AstroObservationPipeline",
    "BP_NAMES",
    "DEFAULT_EBV",
    "DEFAULT_REFERENCE_STARS",
    "LABELS_VIEW",
    "LABEL_INPUTS",
    "LABEL_REQUEST",
    "LOCI_REQUEST",
    "RP_NAMES",
    "SPECTRA_INPUTS",
    "XP_NAMES",
    "ExtinctionCurve",
    "SampledSpectra",
    "build_index",
    "contrastive_finetune",
    "distance_from_fakemag",
    "embed_stars",
    "extinction_curve",
    "fill_missing_coefficients",
    "flux_scale_from_fakemag",
    "gaia_sampling",
    "generate_spectra",
    "info_nce_loss",
    "load_index",
    "injected_law",
    "inpaint_band",
    "max_relative_error",
    "plot_extinction_curve",
    "plot_label_comparison",
    "plot_loci",
    "plot_spectra",
    "pooled_embedding",
    "predict_labels",
    "retrieval_accuracy",
    "sample_xp",
    "save_index",
    "search_index",
    "select_inputs",
    "stellar_loci",
    "top_k_similar",
]
