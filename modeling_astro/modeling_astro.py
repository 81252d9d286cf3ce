"""PyTorch implementation of the Leung & Bovy (2024) transformer foundation model for stars."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_astro import AstroConfig


@dataclass
class AstroModelOutput(ModelOutput):
    r"""
    Output of [`AstroModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_requests, hidden_size)`, *optional*):
            Decoder states of the requested observations (`None` when no request was given).
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_inputs, hidden_size)`):
            Encoder states of the input observations (the star's "perception"); padding positions are
            meaningless and are marked by `attention_mask`.
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of each encoder block, shape `(batch_size, num_heads, num_inputs, num_inputs + 1)`
            (the last key is the learned bias key).
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Attention weights of each decoder block, shape `(batch_size, num_heads, num_requests, num_inputs + 1)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AstroObservationPredictionOutput(ModelOutput):
    r"""
    Output of [`AstroForObservationPrediction`]: a Gaussian prediction of each requested observation, in the
    standardised units of the tokenizer (use `AstroTokenizer.inverse_transform` for physical units).

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
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
            See [`AstroModelOutput`].
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
            See [`AstroModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


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


class AstroValueEmbedding(nn.Module):
    """`act(value * w_token + b_token)` for input values and `w_token` alone for requested observations."""

    def __init__(self, config: AstroConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        self.bias = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        self.act = ACT2FN[config.embedding_act]

    def forward(self, token_ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        token_vectors = F.embedding(token_ids, self.weight)
        if values is None:
            return token_vectors
        values = values.unsqueeze(-1).to(token_vectors.dtype)
        return self.act(token_vectors * values + F.embedding(token_ids, self.bias))


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


class AstroBlock(nn.Module):
    """Post-LN transformer block: attention of queries over keys/values, then a feed-forward layer."""

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
    _supports_attention_backend = True
    _no_split_modules = ["AstroBlock"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, with an `auto_map` that also names the bare model and the prediction head."""
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_astro.AstroConfig",
            "AutoModel": "modeling_astro.AstroModel",
            "AutoModelForPreTraining": "modeling_astro.AstroForObservationPrediction",
        }
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

    def add_observations(self, names: list[str]) -> list[int]:
        """
        Append new observation names (e.g. a label from another survey) to the vocabulary: the value embedding
        grows by one row per name (new rows initialised as at construction), every existing weight is kept.
        Returns the new token ids; add the same names to the tokenizer with `AstroTokenizer.add_observations`.
        """
        duplicates = [name for name in names if name in self.config.observation_names]
        if duplicates or len(set(names)) != len(names):
            raise ValueError(f"Observation names already in the vocabulary or repeated: {duplicates or names}.")
        embeddings = self.get_input_embeddings()
        first_new = embeddings.weight.shape[0]
        new_rows = torch.empty(len(names), embeddings.weight.shape[1], dtype=embeddings.weight.dtype)
        with torch.no_grad():
            for attribute in ("weight", "bias"):
                init.xavier_uniform_(new_rows)
                grown = torch.cat([getattr(embeddings, attribute), new_rows.to(embeddings.weight.device)])
                setattr(embeddings, attribute, nn.Parameter(grown))
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

    def get_input_embeddings(self) -> AstroValueEmbedding:
        return self.embeddings

    def key_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """
        Boolean `(batch, 1, 1, num_inputs [+ 1])` mask of the keys every attention layer may attend: the real
        observations, plus the learned bias key (always attendable) when the config has one. Built once per pass.
        """
        mask = attention_mask.bool()
        if self.config.attention_bias_kv:
            mask = F.pad(mask, (0, 1), value=True)
        return mask[:, None, None, :]

    def encode(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Encoder states `(batch, num_inputs, hidden)` of the input observations, and attention weights."""
        hidden_states = self.embeddings(input_ids, input_values)
        mask = self.key_mask(attention_mask)
        attentions = ()
        for block in self.encoder:
            hidden_states, weights = block(hidden_states, hidden_states, mask, output_attentions)
            attentions += (weights,)
        return hidden_states, attentions

    def decode(
        self,
        request_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Decoder states `(batch, num_requests, hidden)`: every request attends to the encoder states only."""
        hidden_states = self.embeddings(request_ids)
        mask = self.key_mask(attention_mask)
        attentions = ()
        for block in self.decoder:
            hidden_states, weights = block(hidden_states, encoder_hidden_states, mask, output_attentions)
            attentions += (weights,)
        return hidden_states, attentions

    def forward(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        request_ids: torch.LongTensor | None = None,
        output_attentions: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AstroModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, num_inputs)`):
                Token ids of the input observations (0 = padding), from [`AstroTokenizer`].
            input_values (`torch.FloatTensor` of shape `(batch_size, num_inputs)`):
                Standardised values of the input observations (0 at padding).
            attention_mask (`torch.Tensor` of shape `(batch_size, num_inputs)`, *optional*):
                1 for real observations, 0 for padding. Defaults to `input_ids != 0`.
            request_ids (`torch.LongTensor` of shape `(batch_size, num_requests)`, *optional*):
                Token ids of the requested observations, all decoded in one pass. Without it only the encoder runs.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        self._validate_inputs(input_ids, input_values, attention_mask, request_ids)
        encoder_states, encoder_attentions = self.encode(input_ids, input_values, attention_mask, output_attentions)
        decoder_states, cross_attentions = None, ()
        if request_ids is not None:
            decoder_states, cross_attentions = self.decode(
                request_ids, encoder_states, attention_mask, output_attentions
            )
        output = AstroModelOutput(
            last_hidden_state=decoder_states,
            encoder_last_hidden_state=encoder_states,
            encoder_attentions=encoder_attentions if output_attentions else None,
            cross_attentions=cross_attentions if output_attentions else None,
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
    >>> from modeling_astro import AstroForObservationPrediction, AstroTokenizer
    >>> model = AstroForObservationPrediction.from_pretrained("path/to/checkpoint")
    >>> tokenizer = AstroTokenizer.from_pretrained("path/to/checkpoint")
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

    def get_input_embeddings(self) -> AstroValueEmbedding:
        return self.astro.embeddings

    def forward(
        self,
        input_ids: torch.LongTensor,
        input_values: torch.FloatTensor,
        request_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.FloatTensor | None = None,
        label_errors: torch.FloatTensor | None = None,
        output_attentions: bool = False,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> AstroObservationPredictionOutput | tuple:
        r"""
        Args:
            input_ids, input_values, attention_mask, request_ids:
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
            return_dict=True,
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
            encoder_attentions=outputs.encoder_attentions,
            cross_attentions=outputs.cross_attentions,
        )
        return output if return_dict else output.to_tuple()


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
