"""The transformers pipeline of the science tasks: defined in `modeling_astro.pipeline_astro` (the file shipped in
every checkpoint, beside `modeling_astro.py`), re-exported here."""

from ..pipeline_astro import TASK, AstroObservationPipeline

__all__ = ["TASK", "AstroObservationPipeline"]
