"""PyTorch implementation of the Leung & Bovy (2024) transformer foundation model for stars."""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput

from .configuration_astro import AstroConfig


@dataclass
class AstroModelOutput(ModelOutput):
    r"""
    Output of [`AstroModel`]. The names are transformers': `hidden_states` / `attentions` are the encoder's (its
    self-attention over the input observations, as in encoder models), `decoder_hidden_states` / `cross_attentions`
    the decoder's (the requests' cross-attention to the encoder states, as in encoder-decoder models).

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_requests, hidden_size)`, *optional*):
            Decoder states of the requested observations (`None` when no request was given).
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_inputs, hidden_size)`):
            Encoder states of the input observations (the star's "perception"); padding positions are
            meaningless and are marked by `attention_mask`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The value embeddings of the inputs and the output of each encoder block, each of shape
            `(batch_size, num_inputs, hidden_size)`; the last one is `encoder_last_hidden_state`.
        decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The embeddings of the requests and the output of each decoder block, each of shape
            `(batch_size, num_requests, hidden_size)` (`None` when no request was given).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of each encoder block, shape `(batch_size, num_heads, num_inputs, num_inputs + 1)`
            (the last key is the learned bias key). Also readable as `encoder_attentions`, its earlier name.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of each decoder block, shape `(batch_size, num_heads, num_requests, num_inputs + 1)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def encoder_attentions(self) -> tuple[torch.FloatTensor, ...] | None:
        """The encoder's attention weights, `attentions` (the name these outputs had before)."""
        return self.attentions


@dataclass
class AstroObservationPredictionOutput(ModelOutput):
    r"""
    Output of [`AstroForObservationPrediction`]: a Gaussian prediction of each requested observation, in the
    standardised units of the tokenizer (use `AstroFeatureExtractor.inverse_transform` for physical units).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Gaussian negative log-likelihood with variance `exp(logvar) + label_errors**2`, averaged over the
            valid targets (or summed and divided by `num_items_in_batch` when the trainer passes it).
        mean (`torch.FloatTensor` of shape `(batch_size, num_requests)`):
            Predicted mean of each requested observation.
        logvar (`torch.FloatTensor` of shape `(batch_size, num_requests)`):
            Predicted natural log of the model variance of each requested observation.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_inputs, hidden_size)`):
            Encoder states of the input observations.
        hidden_states, decoder_hidden_states, attentions, cross_attentions (*optional*):
            See [`AstroModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None

    encoder_attentions = AstroModelOutput.encoder_attentions


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    elif attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class AstroValueEmbedding(nn.Embedding):
    """
    `act(value * w_token + b_token)` for input values and `w_token` alone for requested observations.

    An `nn.Embedding` whose `weight` is the table of token vectors `w_token`, with a second table `bias` of the
    same shape (`b_token`): generic tools that read, freeze or resize "the input embeddings" find both here.
    """

    def __init__(self, config: AstroConfig):
        # `_weight` skips nn.Embedding's own random initialisation: `_init_weights` sets both tables.
        super().__init__(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size)
        )
        self.bias = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        self.act = ACT2FN[config.embedding_act]

    def forward(self, token_ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        token_vectors = F.embedding(token_ids, self.weight)
        if values is None:
            return token_vectors
        values = values.unsqueeze(-1).to(token_vectors.dtype)
        return self.act(token_vectors * values + F.embedding(token_ids, self.bias))

    @torch.no_grad()
    def resize(self, num_embeddings: int, mean_resizing: bool = True) -> None:
        """
        Keep the first `num_embeddings` rows of both tables, or append new rows: each table's mean row with
        `mean_resizing` (transformers' `resize_token_embeddings` default), Xavier-uniform rows otherwise.
        """
        added = num_embeddings - self.num_embeddings
        for name in ("weight", "bias"):
            table = getattr(self, name)
            if added <= 0:
                rows = table[:num_embeddings].clone()
            else:
                new_rows = torch.empty(added, table.shape[1], dtype=table.dtype)
                if mean_resizing:
                    new_rows.copy_(table.float().mean(dim=0).expand(added, -1))
                else:
                    init.xavier_uniform_(new_rows)
                rows = torch.cat([table, new_rows.to(table.device)])
            setattr(self, name, nn.Parameter(rows, requires_grad=table.requires_grad))
        self.num_embeddings = num_embeddings


class AstroAttention(nn.Module):
    """Multi-head attention with an optional learned bias key/value appended to the keys and values."""

    def __init__(self, config: AstroConfig, num_heads: int, dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if config.attention_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, config.hidden_size))
            self.bias_v = nn.Parameter(torch.empty(1, 1, config.hidden_size))

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = states.shape
        return states.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor,
        key_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`key_mask`: boolean `(batch, 1, 1, num_keys)`, True where a key may be attended (see `key_mask`)."""
        batch_size, query_length, _ = hidden_states.shape
        query = self._split_heads(self.q_proj(hidden_states))
        key_states = self.k_proj(key_value_states)
        value_states = self.v_proj(key_value_states)
        if self.config.attention_bias_kv:
            key_states = torch.cat([key_states, self.bias_k.expand(batch_size, 1, -1).to(key_states.dtype)], dim=1)
            value_states = torch.cat(
                [value_states, self.bias_v.expand(batch_size, 1, -1).to(value_states.dtype)], dim=1
            )

        attention_interface: Callable = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            self._split_heads(key_states),
            self._split_heads(value_states),
            key_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        attn_output = self.out_proj(attn_output.reshape(batch_size, query_length, -1))
        return attn_output, attn_weights if output_attentions else None


class AstroBlock(GradientCheckpointingLayer):
    """
    Post-LN transformer block: attention of queries over keys/values, then a feed-forward layer. Recomputed in the
    backward pass after `model.gradient_checkpointing_enable()`.
    """

    def __init__(self, config: AstroConfig, num_heads: int, ffn_dim: int, dropout: float, act: str):
        super().__init__()
        self.attention = AstroAttention(config, num_heads, dropout)
        self.attention_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.hidden_size)
        self.act = ACT2FN[act]
        self.dropout = nn.Dropout(dropout)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor,
        key_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attention(hidden_states, key_value_states, key_mask, output_attentions)
        hidden_states = self.attention_layer_norm(hidden_states + self.dropout(attn_output))
        ffn_output = self.fc2(self.act(self.fc1(hidden_states)))
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(ffn_output))
        return hidden_states, attn_weights


class AstroPreTrainedModel(PreTrainedModel):
    """Base class of the Astro models: weight initialisation and the transformers plumbing."""

    config_class = AstroConfig
    base_model_prefix = "astro"
    main_input_name = "input_ids"
    _supports_sdpa = True
    supports_gradient_checkpointing = True
    _supports_attention_backend = True
    _no_split_modules = ["AstroBlock"]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs
    ) -> "AstroPreTrainedModel":
        """
        Load as transformers does, then check what transformers does not: a config inconsistent with itself
        (`AstroConfig.from_dict`) or a truncated/corrupt weights file is an error naming the file, and so are
        weights holding NaN or inf (a diverged run saved), naming the parameter.
        """
        source = str(pretrained_model_name_or_path)
        weights = source
        for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME):
            if os.path.isfile(os.path.join(source, name)):
                weights = os.path.join(source, name)
                break
        from safetensors import SafetensorError

        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"{weights}: the weights file is truncated or corrupt ({error}); download or save the checkpoint again."
            ) from error
        except RuntimeError as error:
            if "mismatched" not in str(error):
                raise
            raise ValueError(
                f"{weights}: the weights' shapes do not match the config.json beside them (observation_names, "
                "hidden sizes or layer widths edited?); the load report above lists the parameters. Save the model "
                "and its config together."
            ) from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) with output_loading_info
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ValueError(
                    f"{weights}: parameter {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}: the checkpoint "
                    "is broken (saved from a diverged run?); load an earlier checkpoint."
                )
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        Save as transformers does, with an `auto_map` that also names the bare model and the prediction head, and
        the pipeline (`custom_pipelines`: ``transformers.pipeline(model=<folder or repo id>, trust_remote_code=True)``).
        """
        # A relative import of this file: transformers copies pipeline_astro.py (and its own relative imports)
        # beside modeling_astro.py into every saved folder, and fetches it with this file from a repo.
        from .pipeline_astro import custom_pipelines

        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_astro.AstroConfig",
            "AutoModel": "modeling_astro.AstroModel",
            "AutoModelForPreTraining": "modeling_astro.AstroForObservationPrediction",
        }
        self.config.custom_pipelines = custom_pipelines()
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, AstroValueEmbedding):
            init.xavier_uniform_(module.weight)
            init.xavier_uniform_(module.bias)
            module.weight[self.config.pad_token_id].zero_()
            module.bias[self.config.pad_token_id].zero_()
        elif isinstance(module, AstroAttention):
            for projection in (module.q_proj, module.k_proj, module.v_proj):
                init.xavier_uniform_(projection.weight)
                init.zeros_(projection.bias)
            init.zeros_(module.out_proj.bias)
            if self.config.attention_bias_kv:
                init.normal_(module.bias_k, std=self.config.initializer_range)
                init.normal_(module.bias_v, std=self.config.initializer_range)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            bound = module.in_features**-0.5
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the value embedding, `config.vocab_size` (set by `resize_token_embeddings`)."""
        return self.config.vocab_size

    def get_input_embeddings(self) -> AstroValueEmbedding:
        """The value embedding (an `nn.Embedding`: token vectors in `weight`, token biases in `bias`)."""
        return self.base_model.embeddings

    def set_input_embeddings(self, value: nn.Module):
        """Replace the value embedding; `value` is called as `value(token_ids)` and `value(token_ids, values)`."""
        self.base_model.embeddings = value

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> AstroValueEmbedding:
        """
        Resize the vocabulary to `new_num_tokens` ids (padding included), as transformers models do: rows are
        dropped from the end or appended (each table's mean row with `mean_resizing`, else Xavier-uniform rows),
        and `config.vocab_size` follows: `config.observation_names` loses its last names or gains placeholder names
        (see [`AstroConfig.vocab_size`]). To add named observations, use `add_observations` instead.
        """
        embeddings = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        new_num_tokens = embeddings.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):
                raise ValueError(  # transformers' own message, word for word
                    f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is not and "
                    "integer. Please make sure to pass an integer"
                )
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens < 2:
            raise ValueError(
                f"`new_num_tokens` must be at least 2 (padding and one observation), got {new_num_tokens}."
            )
        embeddings.resize(new_num_tokens, mean_resizing=mean_resizing)
        self.config.vocab_size = new_num_tokens
        return embeddings

    def add_observations(self, names: list[str]) -> list[int]:
        """
        Append new observation names (e.g. a label from another survey) to the vocabulary: the value embedding
        grows by one row per name (new rows initialised as at construction), every existing weight is kept.
        Returns the new token ids; add the same names to the tokenizer with `AstroFeatureExtractor.add_observations`.
        """
        duplicates = [name for name in names if name in self.config.observation_names]
        if duplicates or len(set(names)) != len(names):
            raise ValueError(f"Observation names already in the vocabulary or repeated: {duplicates or names}.")
        embeddings = self.get_input_embeddings()
        first_new = embeddings.num_embeddings
        embeddings.resize(first_new + len(names), mean_resizing=False)
        self.config.observation_names = [*self.config.observation_names, *names]
        return list(range(first_new, first_new + len(names)))

    def _validate_inputs(
        self,
        input_ids: torch.Tensor,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor,
        request_ids: torch.Tensor | None,
    ) -> None:
        """Clear errors for malformed inputs, before they turn into NaNs or index errors deep inside torch."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch_size, num_inputs), got {tuple(input_ids.shape)}.")
        if input_values.shape != input_ids.shape or attention_mask.shape != input_ids.shape:
            raise ValueError(
                "`input_ids`, `input_values` and `attention_mask` must have the same shape; got "
                f"{tuple(input_ids.shape)}, {tuple(input_values.shape)} and {tuple(attention_mask.shape)}."
            )
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"{input_ids.shape[1]} input observations per star exceed the model's context length "
                f"({self.config.context_length}); select at most {self.config.context_length} observations per star."
            )
        if input_ids.device.type == "meta":  # shapes only: a meta tensor has no values to check
            return
        vocab_size = self.config.vocab_size
        for name, ids in (("input_ids", input_ids), ("request_ids", request_ids)):
            if ids is not None and ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(
                    f"`{name}` holds ids outside [0, {vocab_size - 1}] (min {int(ids.min())}, max {int(ids.max())}): "
                    "encode the observations with the tokenizer saved with this model."
                )
        if request_ids is not None and (request_ids.dim() != 2 or request_ids.shape[0] != input_ids.shape[0]):
            raise ValueError(
                f"`request_ids` must have shape (batch_size={input_ids.shape[0]}, num_requests), "
                f"got {tuple(request_ids.shape)}."
            )
        empty_stars = (~attention_mask.bool()).all(dim=1)
        if empty_stars.any():
            raise ValueError(
                f"Star(s) at batch index {empty_stars.nonzero().flatten().tolist()} have no observation (all "
                "padding); the model needs at least one input per star. Drop those rows first."
            )
        if not torch.isfinite(input_values[attention_mask.bool()]).all():
            raise ValueError(
                "`input_values` holds NaN or inf at non-padding positions; encode the data with the tokenizer, "
                "which turns missing values into padding."
            )


class AstroModel(AstroPreTrainedModel):
    r"""
    The bare Astro transformer: value embedding, self-attention encoder over the input observations and
    cross-attention decoder from the requested observations to the encoder states. It returns decoder states
    (and the encoder states, e.g. to pool per-star embeddings); use [`AstroForObservationPrediction`] for
    predictions.

    transformers' conventions that it follows: `output_attentions`, `output_hidden_states` and `return_dict` default
    to the config's; `hidden_states` / `attentions` are the encoder's and `decoder_hidden_states` /
    `cross_attentions` the decoder's; `get_input_embeddings` / `set_input_embeddings` / `resize_token_embeddings`
    work on the value embedding (an `nn.Embedding` with a second, bias, table); `config.num_hidden_layers`,
    `config.num_attention_heads` and `config.vocab_size` are readable as in any transformers config; gradient
    checkpointing and the attention backends of `AttentionInterface`. Those that do not apply to a model from a
    set of observations to a set of requests, and why:

    - `inputs_embeds`: an input's embedding depends on its value (`act(value * w_token + b_token)`) and the ids are
      needed anyway (padding mask, input checks); pass `input_ids` and `input_values`.
    - `config.is_encoder_decoder` stays `False`: in transformers it means sequence-to-sequence generation
      (`decoder_input_ids`, a decoder self-attention cache, `generate`, `decoder_attentions`) and makes
      `get_text_config(decoder=True)` rename the `encoder_*`/`decoder_*` settings. Here requests do not attend to
      each other (so a prediction never depends on which other observations are requested), nothing is generated
      and there is no cache.
    - Position embeddings (absolute, RoPE, sliding windows): a star is a set, the order of its tokens carries
      nothing.
    - Output embeddings, tied weights, language-modelling losses: the head predicts a Gaussian (mean, log-variance)
      per request, not logits over a vocabulary.
    - One `num_attention_heads` per model: the head count varies from block to block
      (`encoder_attention_heads`, `decoder_attention_heads`); the config's `num_attention_heads` is the largest.
    """

    def __init__(self, config: AstroConfig):
        super().__init__(config)
        self.embeddings = AstroValueEmbedding(config)
        self.encoder = nn.ModuleList(
            AstroBlock(config, heads, ffn, config.encoder_dropout, config.encoder_act)
            for heads, ffn in zip(config.encoder_attention_heads, config.encoder_ffn_dims)
        )
        self.decoder = nn.ModuleList(
            AstroBlock(config, heads, ffn, config.decoder_dropout, config.decoder_act)
            for heads, ffn in zip(config.decoder_attention_heads, config.decoder_ffn_dims)
        )
        self.post_init()

    def key_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """
        Boolean `(batch, 1, 1, num_inputs [+ 1])` mask of the keys every attention layer may attend: the real
        observations, plus the learned bias key (always attendable) when the config has one. Built once per pass.
        """
        mask = attention_mask.bool()
        if self.config.attention_bias_kv:
            mask = F.pad(mask, (0, 1), value=True)
        return mask[:, None, None, :]

    def _run_blocks(
        self,
        blocks: nn.ModuleList,
        hidden_states: torch.Tensor,
        key_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """
        Run `blocks`: self-attention when `encoder_hidden_states` is None, else cross-attention to it. Returns the
        final states, the states entering each block plus the final ones (with `output_hidden_states`) and each
        block's attention weights (with `output_attentions`).
        """
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in blocks:
            keys = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            hidden_states, weights = block(hidden_states, keys, key_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions

    def encode(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Encoder states `(batch, num_inputs, hidden)` of the input observations, and attention weights."""
        states, _, attentions = self._run_blocks(
            self.encoder,
            self.embeddings(input_ids, input_values),
            self.key_mask(attention_mask),
            output_attentions=output_attentions,
        )
        return states, attentions or ()

    def decode(
        self,
        request_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Decoder states `(batch, num_requests, hidden)`: every request attends to the encoder states only."""
        states, _, attentions = self._run_blocks(
            self.decoder,
            self.embeddings(request_ids),
            self.key_mask(attention_mask),
            encoder_hidden_states=encoder_hidden_states,
            output_attentions=output_attentions,
        )
        return states, attentions or ()

    def forward(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        request_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        encoder_outputs: torch.Tensor | None = None,
        **kwargs,
    ) -> AstroModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, num_inputs)`):
                Token ids of the input observations (0 = padding), from [`AstroFeatureExtractor`].
            input_values (`torch.FloatTensor` of shape `(batch_size, num_inputs)`):
                Standardised values of the input observations (0 at padding).
            attention_mask (`torch.Tensor` of shape `(batch_size, num_inputs)`, *optional*):
                1 for real observations, 0 for padding. Defaults to `input_ids != 0`.
            request_ids (`torch.LongTensor` of shape `(batch_size, num_requests)`, *optional*):
                Token ids of the requested observations, all decoded in one pass. Without it only the encoder runs.
            output_attentions (`bool`, *optional*, defaults to `config.output_attentions`):
                Also return the attention weights of every block (computed with the eager attention).
            output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
                Also return the states entering every block and the final ones.
            return_dict (`bool`, *optional*, defaults to `config.return_dict`):
                Return an [`AstroModelOutput`] rather than a plain tuple of its non-`None` fields.
            encoder_outputs (`torch.Tensor` of shape `(batch_size, num_inputs, hidden_size)`, *optional*):
                Encoder states of these inputs computed before ([`encode`], or `encoder_last_hidden_state` of an
                earlier call): the encoder is not run again, e.g. to decode new requests of the same stars.
        """
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if attention_mask is None:
            attention_mask = input_ids != config.pad_token_id
        self._validate_inputs(input_ids, input_values, attention_mask, request_ids)
        key_mask = self.key_mask(attention_mask)
        if encoder_outputs is None:
            encoder_states, hidden_states, attentions = self._run_blocks(
                self.encoder,
                self.embeddings(input_ids, input_values),
                key_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        else:
            expected = (*input_ids.shape, self.config.hidden_size)
            if tuple(encoder_outputs.shape) != expected:
                raise ValueError(
                    f"`encoder_outputs` must have shape {expected} (the encoder states of these inputs), got "
                    f"{tuple(encoder_outputs.shape)}."
                )
            encoder_states, hidden_states, attentions = encoder_outputs, None, None
        decoder_states = decoder_hidden_states = cross_attentions = None
        if request_ids is not None:
            decoder_states, decoder_hidden_states, cross_attentions = self._run_blocks(
                self.decoder,
                self.embeddings(request_ids),
                key_mask,
                encoder_hidden_states=encoder_states,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        output = AstroModelOutput(
            last_hidden_state=decoder_states,
            encoder_last_hidden_state=encoder_states,
            hidden_states=hidden_states,
            decoder_hidden_states=decoder_hidden_states,
            attentions=attentions,
            cross_attentions=cross_attentions,
        )
        return output if return_dict else output.to_tuple()


class AstroPredictionHead(nn.Module):
    """MLP from decoder states to the mean and log-variance of each requested observation."""

    def __init__(self, config: AstroConfig):
        super().__init__()
        widths = [config.hidden_size, *config.decoder_mlp_dims]
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:]))
        self.act = ACT2FN[config.decoder_act]
        self.dropout = nn.Dropout(config.decoder_dropout)
        self.mean = nn.Linear(widths[-1], 1)
        self.logvar = nn.Linear(widths[-1], 1)

    def forward(self, decoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states = decoder_states
        for layer in self.layers:
            hidden_states = self.dropout(self.act(layer(hidden_states)))
        return self.mean(hidden_states).squeeze(-1), self.logvar(hidden_states).squeeze(-1)


class AstroForObservationPrediction(AstroPreTrainedModel):
    r"""
    The Astro transformer with its Gaussian prediction head: for each star, the mean and log-variance of every
    requested observation given any set of input observations, trained with a Gaussian negative log-likelihood
    whose variance is `exp(logvar) + sigma_obs**2`.

    Example:

    ```python
    >>> import numpy as np
    >>> from modeling_astro import AstroForObservationPrediction, AstroFeatureExtractor
    >>> model = AstroForObservationPrediction.from_pretrained("path/to/checkpoint")
    >>> tokenizer = AstroFeatureExtractor.from_pretrained("path/to/checkpoint")
    >>> inputs = tokenizer({"bprp": np.array([0.9]), "jh": np.array([0.4])}, return_tensors="pt")
    >>> requests = tokenizer.encode_requests(["teff", "logg"], batch_size=1)
    >>> out = model(**inputs, request_ids=requests)
    >>> teff_logg, sigma = tokenizer.inverse_transform(out.mean, out.logvar, requests)
    ```
    """

    def __init__(self, config: AstroConfig):
        super().__init__(config)
        self.astro = AstroModel(config)
        self.head = AstroPredictionHead(config)
        self.post_init()

    # The public steps of `forward`, for callers that run them separately (the predictor decodes many requests
    # against one encoding, the ONNX export writes two graphs, contrastive fine-tuning trains the encoder only).
    def get_encoder(self) -> AstroModel:
        """The base model, whose [`AstroModel.encode`] gives the encoder states (transformers' convention)."""
        return self.astro

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters the encoder states depend on: the value embedding and the encoder blocks."""
        return [*self.astro.embeddings.parameters(), *self.astro.encoder.parameters()]

    def encode(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Encoder states `(batch, num_inputs, hidden)` of the input observations (inputs validated), and the
        encoder's attention weights when `output_attentions`."""
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        self._validate_inputs(input_ids, input_values, attention_mask, None)
        return self.astro.encode(input_ids, input_values, attention_mask, output_attentions)

    def predict_from_encoding(
        self,
        request_ids: torch.LongTensor,
        encoder_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Mean and log-variance `(batch, num_requests)` of the requested observations given the encoder states of
        [`encode`] (all requests in one decoder pass), and the cross-attention weights when `output_attentions`."""
        decoder_states, cross_attentions = self.astro.decode(
            request_ids, encoder_states, attention_mask, output_attentions
        )
        mean, logvar = self.head(decoder_states)
        return mean, logvar, cross_attentions

    def pooled_embedding(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        pooling: str = "mean",
    ) -> torch.Tensor:
        """Per-star embeddings `(batch, hidden)`: encoder states pooled (`"mean"` or `"max"`) over the star's
        observations; differentiable."""
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        states, _ = self.encode(input_ids, input_values, attention_mask)
        return pool_states(states, attention_mask, pooling)

    def forward(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        request_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.FloatTensor | None = None,
        label_errors: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        **kwargs,
    ) -> AstroObservationPredictionOutput | tuple:
        r"""
        Args:
            input_ids, input_values, attention_mask, request_ids, output_attentions, output_hidden_states, return_dict,
            encoder_outputs:
                See [`AstroModel.forward`]. A request id of 0 is padding: its prediction is ignored by the loss.
            labels (`torch.FloatTensor` of shape `(batch_size, num_requests)`, *optional*):
                Standardised true values of the requested observations; NaN marks a target to ignore.
            label_errors (`torch.FloatTensor` of shape `(batch_size, num_requests)`, *optional*):
                Standardised 1-sigma errors of `labels`, added in quadrature to the predicted variance.
            num_items_in_batch (`int`, *optional*):
                Number of valid targets in the whole accumulated batch (passed by `Trainer`): the loss is then the
                sum over this batch divided by it, which keeps gradient accumulation exact.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.astro(
            input_ids,
            input_values,
            attention_mask=attention_mask,
            request_ids=request_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            encoder_outputs=encoder_outputs,
        )
        mean, logvar = self.head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = gaussian_nll(mean, logvar, labels, request_ids, label_errors, num_items_in_batch)
        output = AstroObservationPredictionOutput(
            loss=loss,
            mean=mean,
            logvar=logvar,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            hidden_states=outputs.hidden_states,
            decoder_hidden_states=outputs.decoder_hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
        )
        return output if return_dict else output.to_tuple()


def pool_states(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Per-star embeddings `(batch, hidden)`: encoder states `(batch, inputs, hidden)` pooled over real observations."""
    if pooling not in ("mean", "max"):
        raise ValueError(f"`pooling` must be 'mean' or 'max', got {pooling!r}.")
    mask = attention_mask.bool().unsqueeze(-1)
    if pooling == "mean":
        return (states * mask).sum(dim=1) / mask.sum(dim=1)
    return states.masked_fill(~mask, -math.inf).amax(dim=1)


def gaussian_nll(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    labels: torch.Tensor,
    request_ids: torch.Tensor,
    label_errors: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Gaussian NLL with variance `exp(logvar) + label_errors**2` over valid targets (request id != 0, finite label)."""
    if labels.shape != mean.shape:
        raise ValueError(f"`labels` must have shape {tuple(mean.shape)} (batch, requests), got {tuple(labels.shape)}.")
    valid = (request_ids != 0) & torch.isfinite(labels)
    variance = torch.exp(logvar.float())
    if label_errors is not None:
        if label_errors.shape != labels.shape:
            raise ValueError(
                f"`label_errors` must have the shape of `labels` {tuple(labels.shape)}, "
                f"got {tuple(label_errors.shape)}."
            )
        variance = variance + torch.nan_to_num(label_errors.float()).square()
    per_target = F.gaussian_nll_loss(
        mean.float(), torch.where(valid, labels, mean.detach()).float(), variance, reduction="none"
    )
    total = (per_target * valid).sum()
    if num_items_in_batch is not None:
        return total / num_items_in_batch
    return total / valid.sum().clamp(min=1)


__all__ = [
    "AstroForObservationPrediction",
    "AstroModel",
    "AstroModelOutput",
    "AstroObservationPredictionOutput",
    "AstroPreTrainedModel",
    "gaussian_nll",
]
