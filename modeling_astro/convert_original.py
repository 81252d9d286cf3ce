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
from .feature_extraction_astro import AstroTokenizer
from .modeling_astro import AstroForObservationPrediction

# torch.nn.functional names of the original code -> transformers' ACT2FN names; None meant F.relu there.
_ACTIVATIONS = {None: "relu", "gelu": "gelu", "relu": "relu", "elu": "elu", "silu": "silu", "tanh": "tanh",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu", "mish": "mish", "selu": "selu"}

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


def convert_state_dict(original: dict[str, torch.Tensor], token_order: list[int]) -> dict[str, torch.Tensor]:
    """Rename and split the original parameters; `token_order[i]` is the original token id of our token `i + 1`."""
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
                raise ValueError(f"Unexpected parameter {name!r} in the original checkpoint.")
            continue
        layer, kind = name.removeprefix("torch_decoder.").rsplit(".", 1)
        if layer not in _HEAD_PARTS:
            raise ValueError(f"Unexpected parameter {name!r} in the original checkpoint.")
        converted[f"{_HEAD_PARTS[layer]}.{kind}"] = tensor
    return converted


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
    tokenizer = AstroTokenizer(
        observation_names=names,
        medians=[norm["_input_mean"][t] for t in tokens],
        scales=[norm["_input_std"][t] for t in tokens],
        context_length=original_config["nn_config"]["context_length"],
    )
    config = config_from_original(original_config["nn_config"], names)
    checkpoint = torch.load(original_dir / "weights.pt", map_location="cpu", weights_only=True)
    model = AstroForObservationPrediction(config)
    model.load_state_dict(convert_state_dict(checkpoint["model_state_dict"], tokens), strict=True)
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
