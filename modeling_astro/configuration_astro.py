"""Configuration of the Leung & Bovy (2024) transformer foundation model for stars."""

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .observations import DEFAULT_OBSERVATION_NAMES, DEFAULT_OBSERVATION_UNITS, XP_COEFFICIENTS_PER_BAND

__all__ = [
    "AstroConfig",
    "DEFAULT_OBSERVATION_NAMES",
    "DEFAULT_OBSERVATION_UNITS",
    "PRESETS",
    "XP_COEFFICIENTS_PER_BAND",
]

#: The named architectures ([`AstroConfig.preset`], `train.py --model_preset`), all with the paper's structure (two
#: encoder blocks, three decoder blocks, a four-layer output MLP): what differs from the paper's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # the paper's 8.8 M-parameter model: the defaults
    "small": {  # ~200k parameters: CPU demos, quick training
        "hidden_size": 64,
        "encoder_attention_heads": [4, 2],
        "encoder_ffn_dims": [128, 64],
        "decoder_attention_heads": [4, 2, 1],
        "decoder_ffn_dims": [192, 96, 48],
        "decoder_mlp_dims": [192, 96, 48, 24],
    },
    "tiny": {  # ~20k parameters: tests in seconds
        "hidden_size": 16,
        "encoder_attention_heads": [4, 2],
        "encoder_ffn_dims": [32, 32],
        "decoder_attention_heads": [4, 2, 1],
        "decoder_ffn_dims": [32, 32, 32],
        "decoder_mlp_dims": [32, 32, 16, 16],
    },
}


@strict
class AstroConfig(PreTrainedConfig):
    r"""
    Configuration of [`AstroModel`] and its heads: a set-of-tokens transformer over stellar observations
    (Leung & Bovy 2024, MNRAS 527, 1494). The defaults are the paper's 8.8 M-parameter model.

    A star is a set of (observation name, value) tokens. Values are embedded as
    `act(value * w_token + b_token)`, a requested observation as `w_token`; an encoder of post-LN
    self-attention blocks reads the star and a decoder of post-LN cross-attention blocks (no self-attention
    between requests) followed by an MLP returns the mean and log-variance of each request.

    Args:
        observation_names (`list[str]`):
            Names of the observations the model knows, in token order: token id `i + 1` is
            `observation_names[i]`; id 0 (`pad_token_id`) is padding.
        context_length (`int`, defaults to 64):
            Largest number of input observations per star.
        hidden_size (`int`, defaults to 128):
            Width of the embeddings and of every transformer block.
        encoder_attention_heads (`list[int]`, defaults to `[16, 8]`):
            Attention heads of each encoder block; the number of encoder blocks is its length.
        encoder_ffn_dims (`list[int]`, defaults to `[1024, 512]`):
            Feed-forward width of each encoder block.
        decoder_attention_heads (`list[int]`, defaults to `[16, 8, 4]`):
            Attention heads of each decoder (cross-attention) block.
        decoder_ffn_dims (`list[int]`, defaults to `[3096, 1548, 774]`):
            Feed-forward width of each decoder block.
        decoder_mlp_dims (`list[int]`, defaults to `[3096, 1548, 774, 387]`):
            Hidden widths of the MLP between the last decoder block and the mean / log-variance outputs.
        embedding_act (`str`, defaults to `"gelu"`):
            Activation of the value embedding.
        encoder_act (`str`, defaults to `"gelu"`):
            Activation of the encoder feed-forward layers.
        decoder_act (`str`, defaults to `"gelu"`):
            Activation of the decoder feed-forward layers and of the output MLP.
        encoder_dropout (`float`, defaults to 0.1):
            Dropout of the encoder attention weights and residual branches.
        decoder_dropout (`float`, defaults to 0.1):
            Dropout of the decoder attention weights, residual branches and output MLP.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the layer norms.
        attention_bias_kv (`bool`, defaults to `True`):
            Append a learned bias key and value to the keys and values of every attention layer, as
            `torch.nn.MultiheadAttention(add_bias_kv=True)` does in the original code.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of the bias key/value.

    Example:

    ```python
    >>> from configuration_astro import AstroConfig
    >>> from modeling_astro import AstroForObservationPrediction
    >>> config = AstroConfig()  # the paper's model
    >>> model = AstroForObservationPrediction(config)
    ```
    """

    model_type = "astro"

    observation_names: list[str] | tuple[str, ...] = DEFAULT_OBSERVATION_NAMES
    context_length: int = 64
    hidden_size: int = 128
    encoder_attention_heads: list[int] | tuple[int, ...] = (16, 8)
    encoder_ffn_dims: list[int] | tuple[int, ...] = (1024, 512)
    decoder_attention_heads: list[int] | tuple[int, ...] = (16, 8, 4)
    decoder_ffn_dims: list[int] | tuple[int, ...] = (3096, 1548, 774)
    decoder_mlp_dims: list[int] | tuple[int, ...] = (3096, 1548, 774, 387)
    embedding_act: str = "gelu"
    encoder_act: str = "gelu"
    decoder_act: str = "gelu"
    encoder_dropout: float | int = 0.1
    decoder_dropout: float | int = 0.1
    layer_norm_eps: float = 1e-5
    attention_bias_kv: bool = True
    initializer_range: float = 0.02
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        for name in (
            "observation_names",
            "encoder_attention_heads",
            "encoder_ffn_dims",
            "decoder_attention_heads",
            "decoder_ffn_dims",
            "decoder_mlp_dims",
        ):
            setattr(self, name, list(getattr(self, name)))
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "AstroConfig":
        """
        A config from a dict (as read from `config.json`); a `vocab_size` that disagrees with the
        `observation_names` (`vocab_size` is `len(observation_names) + 1`) is an error, not a silent resize.
        """
        vocab_size = config_dict.get("vocab_size")
        names = config_dict.get("observation_names")
        if vocab_size is not None and names is not None and vocab_size != len(names) + 1:
            raise ValueError(
                f"The config sets vocab_size {vocab_size} but lists {len(names)} observation_names (vocab_size is "
                f"len(observation_names) + 1 = {len(names) + 1}): remove `vocab_size` from config.json, or make "
                "`observation_names` match the checkpoint's embedding rows."
            )
        return super().from_dict(config_dict, **kwargs)

    @property
    def vocab_size(self) -> int:
        """
        Number of embedding rows: one per observation name plus the padding id 0.

        Setting it (as `resize_token_embeddings` does) keeps the first `vocab_size - 1` names, or appends the
        placeholder name `unnamed_<id>` for each new token id; `add_observations` grows the vocabulary with names.
        """
        return len(self.observation_names) + 1

    @vocab_size.setter
    def vocab_size(self, value: int):
        if value < 2:
            raise ValueError(f"`vocab_size` must be at least 2 (padding and one observation), got {value}.")
        names = list(self.observation_names[: value - 1])
        self.observation_names = names + [f"unnamed_{token_id}" for token_id in range(len(names) + 1, value)]

    @property
    def num_hidden_layers(self) -> int:
        """Number of encoder blocks (transformers' common name; the decoder's are `len(decoder_attention_heads)`)."""
        return len(self.encoder_attention_heads)

    @property
    def num_attention_heads(self) -> int:
        """
        Largest number of attention heads of any block (transformers' common name), so that
        `hidden_size // num_attention_heads` is the smallest head width; the per-block counts are
        `encoder_attention_heads` and `decoder_attention_heads`.
        """
        return max([*self.encoder_attention_heads, *self.decoder_attention_heads])

    def validate_architecture(self):
        """Part of `@strict`-powered validation: checks the block lists and the vocabulary."""
        if len(set(self.observation_names)) != len(self.observation_names):
            duplicated = sorted({n for n in self.observation_names if self.observation_names.count(n) > 1})
            raise ValueError(f"`observation_names` must be unique; duplicated: {duplicated}.")
        for heads, ffn, part in (
            (self.encoder_attention_heads, self.encoder_ffn_dims, "encoder"),
            (self.decoder_attention_heads, self.decoder_ffn_dims, "decoder"),
        ):
            if len(heads) != len(ffn) or not heads:
                raise ValueError(
                    f"`{part}_attention_heads` ({heads}) and `{part}_ffn_dims` ({ffn}) must be non-empty lists "
                    "of the same length: one entry per block."
                )
            for n_heads in heads:
                if n_heads < 1 or self.hidden_size % n_heads:
                    raise ValueError(
                        f"`hidden_size` ({self.hidden_size}) must be a multiple of every entry of "
                        f"`{part}_attention_heads` ({heads})."
                    )
        if not self.decoder_mlp_dims:
            raise ValueError("`decoder_mlp_dims` must list at least one hidden width.")

    @classmethod
    def preset(cls, name: str, **kwargs) -> "AstroConfig":
        """
        The configuration of a named architecture of `PRESETS` (`"paper"`, `"small"`, `"tiny"`); `kwargs` override
        any of its values (e.g. `observation_names=`, `encoder_dropout=`).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}: the presets are {list(PRESETS)} (configuration_astro.PRESETS).")
        return cls(**{**copy.deepcopy(PRESETS[name]), **kwargs})

    @classmethod
    def small(cls, **kwargs) -> "AstroConfig":
        """The `"small"` preset: ~200k parameters with the paper's structure, for CPU demos and quick training."""
        return cls.preset("small", **kwargs)

