"""Stand-in for transformers' `tests/generation/test_utils.py`, which the 5.24.0 sdist does not ship.

`ModelTesterMixin` only uses `GenerationTesterMixin` in an `issubclass` check (a model that can `generate` must
derive from it). The Astro models cannot generate, so the empty class is all that check needs.
"""


class GenerationTesterMixin:
    """Empty: the Astro models do not generate."""
