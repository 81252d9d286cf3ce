"""Convert a checkpoint of the original StellarPerceptron code (Leung & Bovy 2024) to an Astro checkpoint folder.

The original format is a folder with ``config.json`` (``nn_config``, ``tokenizer_config``, ``norm_config``) and
``weights.pt`` (a torch checkpoint with ``model_state_dict``). Usage::

    python -m modeling_astro.convert_original --original DIR --output_dir DIR
"""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from .configuration_astro import AstroConfig
from .feature_extraction_astro import AstroFeatureExtractor
from .modeling_astro import AstroForObservationPrediction

# torch.nn.functional names of the original code -> transformers' ACT2FN names; None meant F.relu there.
_ACTIVATIONS = {
    None: "relu",
    "gelu": "gelu",
    "relu": "relu",
    "elu": "elu",
    "silu": "silu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "leaky_relu": "leaky_relu",
    "mish": "mish",
    "selu": "selu",
}

# Parameter names inside one original TransformerBlock -> ours (in_proj is split into q/k/v separately).
_BLOCK_PARTS = {
    "attention.out_proj.weight": "attention.out_proj.weight",
    "attention.out_proj.bias": "attention.out_proj.bias",
    "attention.bias_k": "attention.bias_k",
    "attention.bias_v": "attention.bias_v",
    "dense_1.weight": "fc1.weight",
    "dense_1.bias": "fc1.bias",
    "dense_2.weight": "fc2.weight",
    "dense_2.bias": "fc2.bias",
    "layernorm_1.weight": "attention_layer_norm.weight",
    "layernorm_1.bias": "attention_layer_norm.bias",
    "layernorm_2.weight": "final_layer_norm.weight",
    "layernorm_2.bias": "final_layer_norm.bias",
}
# The original decoder's output MLP -> our prediction head.
_HEAD_PARTS = {"decoder_out": "head.mean", "decoder_logvar_out": "head.logvar"}
_HEAD_PARTS.update({f"decoder_dense_{i + 3}": f"head.layers.{i}" for i in range(4)})
_BLOCK_PARAMETER = re.compile(r"torch_(encoder|decoder)\.\1_transformer_block_(\d+)\.(.+)")


def _activation(name: str | None) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"The original checkpoint uses activation {name!r}, which this converter does not map.")
    return _ACTIVATIONS[name]


def config_from_original(nn_config: dict, observation_names: list[str]) -> AstroConfig:
    """The `AstroConfig` of an original `nn_config`: heads and FFN widths halve per block, the MLP goes down to /8."""
    heads, ffn = nn_config["encoder_head_num"], nn_config["encoder_dense_num"]
    dec_heads, dec_ffn = nn_config["decoder_head_num"], nn_config["decoder_dense_num"]
    return AstroConfig(
        observation_names=observation_names,
        context_length=nn_config["context_length"],
        hidden_size=nn_config["embedding_dim"],
        encoder_attention_heads=[heads, heads // 2],
        encoder_ffn_dims=[ffn, ffn // 2],
        decoder_attention_heads=[dec_heads, dec_heads // 2, dec_heads // 4],
        decoder_ffn_dims=[dec_ffn, dec_ffn // 2, dec_ffn // 4],
        decoder_mlp_dims=[dec_ffn, dec_ffn // 2, dec_ffn // 4, dec_ffn // 8],
        embedding_act=_activation(nn_config.get("embedding_activation")),
        encoder_act=_activation(nn_config.get("encoder_activation")),
        decoder_act=_activation(nn_config.get("decoder_activation")),
        encoder_dropout=nn_config.get("encoder_dropout_rate", 0.1),
        decoder_dropout=nn_config.get("decoder_dropout_rate", 0.1),
    )


def original_name(name: str) -> str:
    """The original checkpoint's name of our parameter `name` (inverse of [`convert_state_dict`]'s renaming)."""
    if name.startswith("astro.embeddings."):
        return "embedding_layer." + ("embeddings" if name.endswith("weight") else "bias")
    block = re.fullmatch(r"astro\.(encoder|decoder)\.(\d+)\.(.+)", name)
    if block:
        part, index, parameter = block.groups()
        prefix = f"torch_{part}.{part}_transformer_block_{int(index) + 1}"
        projection = re.fullmatch(r"attention\.[qkv]_proj\.(weight|bias)", parameter)
        if projection:
            return f"{prefix}.attention.in_proj_{projection.group(1)}"
        original = {ours: theirs for theirs, ours in _BLOCK_PARTS.items()}.get(parameter, parameter)
        return f"{prefix}.{original}"
    layer, kind = name.rsplit(".", 1)
    original = {ours: theirs for theirs, ours in _HEAD_PARTS.items()}.get(layer, layer)
    return f"torch_decoder.{original}.{kind}"


class OriginalCheckpointError(ValueError):
    """The original checkpoint cannot be converted; the message names the file and the parameter."""


def convert_state_dict(
    original: dict[str, torch.Tensor], token_order: list[int], source: str = "the original checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename and split the original parameters; `token_order[i]` is the original token id of our token `i + 1`."""
    for name in ("embedding_layer.embeddings", "embedding_layer.bias"):
        if name not in original:
            raise OriginalCheckpointError(
                f"{source}: parameter {name!r} is missing (it has {len(original)} parameters"
                + (f", e.g. {sorted(original)[:3]}" if original else "")
                + "): the file is not a complete StellarPerceptron checkpoint."
            )
    rows = torch.tensor([0, *token_order])
    converted = {
        "astro.embeddings.weight": original["embedding_layer.embeddings"][rows],
        "astro.embeddings.bias": original["embedding_layer.bias"][rows],
    }
    for name, tensor in original.items():
        if name.startswith("embedding_layer."):
            continue
        block = _BLOCK_PARAMETER.fullmatch(name)
        if block:
            part, index, parameter = block.groups()
            prefix = f"astro.{part}.{int(index) - 1}"
            if parameter.startswith("attention.in_proj_"):
                kind = parameter.removeprefix("attention.in_proj_")
                for projection, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    converted[f"{prefix}.attention.{projection}.{kind}"] = chunk.clone()
            elif parameter in _BLOCK_PARTS:
                converted[f"{prefix}.{_BLOCK_PARTS[parameter]}"] = tensor
            else:
                raise OriginalCheckpointError(f"{source}: unexpected parameter {name!r}.")
            continue
        layer, kind = name.removeprefix("torch_decoder.").rsplit(".", 1) if "." in name else (name, "")
        if layer not in _HEAD_PARTS:
            raise OriginalCheckpointError(f"{source}: unexpected parameter {name!r}.")
        converted[f"{_HEAD_PARTS[layer]}.{kind}"] = tensor
    return converted


def _original_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The `model_state_dict` of an original `weights.pt` (or the file itself when it is a bare state dict),
    checked to hold only finite tensors."""
    if not weights.is_file():
        raise OriginalCheckpointError(f"{weights}: no such file; the original folder needs config.json and weights.pt.")
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refused by weights_only, truncated zip, ...
        raise OriginalCheckpointError(
            f"{weights}: cannot be read as a torch checkpoint with weights_only=True ({type(error).__name__}: "
            f"{error}); the file may be truncated or hold code, which is not loaded."
        ) from error
    if not isinstance(checkpoint, dict):
        raise OriginalCheckpointError(f"{weights}: holds a {type(checkpoint).__name__}, not a checkpoint dict.")
    state = checkpoint.get("model_state_dict", checkpoint)  # the original's save() format, or a bare state dict
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise OriginalCheckpointError(
            f"{weights}: neither a `model_state_dict` entry nor a bare state dict of tensors (keys: "
            f"{sorted(checkpoint)[:6]})."
        )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise OriginalCheckpointError(
                f"{weights}: parameter {name!r} holds {int((~torch.isfinite(tensor)).sum())} NaN/inf value(s): "
                "the checkpoint is broken (saved from a diverged run?); convert an earlier one."
            )
    return state


def convert_original_checkpoint(original_dir: str | Path, output_dir: str | Path) -> AstroForObservationPrediction:
    """Convert the original folder into `output_dir` (model, safetensors and tokenizer); returns the model."""
    original_dir = Path(original_dir)
    with open(original_dir / "config.json", encoding="utf-8") as f:
        original_config = json.load(f)
    vocab = original_config["tokenizer_config"]
    names, tokens = vocab["vocabs"], vocab.get("vocab_tokens") or list(range(1, len(vocab["vocabs"]) + 1))
    order = np.argsort(tokens, kind="stable")
    names = [names[i] for i in order]
    tokens = [int(tokens[i]) for i in order]
    norm = original_config["norm_config"]
    tokenizer = AstroFeatureExtractor(
        observation_names=names,
        medians=[norm["_input_mean"][t] for t in tokens],
        scales=[norm["_input_std"][t] for t in tokens],
        context_length=original_config["nn_config"]["context_length"],
    )
    config = config_from_original(original_config["nn_config"], names)
    weights = original_dir / "weights.pt"
    state = _original_state_dict(weights)
    model = AstroForObservationPrediction(config)
    converted = convert_state_dict(state, tokens, source=str(weights))
    expected = model.state_dict()
    missing = [name for name in expected if name not in converted]
    if missing:
        raise OriginalCheckpointError(
            f"{weights}: parameter {original_name(missing[0])!r} is missing ({len(missing)} of the model's "
            f"parameters have no counterpart in the file, first {missing[0]!r}): the checkpoint is incomplete or of "
            "another architecture than its config.json."
        )
    for name, tensor in converted.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise OriginalCheckpointError(
                f"{weights}: parameter {name!r} has shape {tuple(tensor.shape)} but config.json's nn_config gives "
                f"{tuple(expected[name].shape)}: the weights and the config do not belong together."
            )
    model.load_state_dict(converted, strict=True)
    model.eval()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True, help="folder with the original config.json and weights.pt")
    parser.add_argument("--output_dir", required=True, help="where to write the Astro checkpoint folder")
    args = parser.parse_args()
    model = convert_original_checkpoint(args.original, args.output_dir)
    print(f"Wrote {args.output_dir} ({model.num_parameters():,} parameters).")


if __name__ == "__main__":
    main()
