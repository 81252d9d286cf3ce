"""ONNX export of an Astro model as two graphs, encoder and decoder + prediction head, checked against
PyTorch.

    python -m modeling_astro.onnx_export --model CHECKPOINT --out FOLDER [--opset 18] [--no-check]

`FOLDER/encoder.onnx`: `(input_ids int64, input_values float32, attention_mask int64)`, each `(batch, inputs)`
-> `encoder_states (batch, inputs, hidden)`. `FOLDER/decoder.onnx`: `(request_ids int64 (batch, requests),
encoder_states, attention_mask)` -> `mean, logvar (batch, requests)`, standardised as the model's outputs
(convert with the tokenizer's `inverse_transform`; the tokenizer is saved beside the graphs). Batch size,
number of inputs and number of requests are dynamic. Run the encoder once per star and the decoder for any set
of requests.
"""

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .feature_extraction_astro import AstroFeatureExtractor

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"


class AstroEncoderGraph(nn.Module):
    """The encoder of an `AstroForObservationPrediction` as a plain tensor function (for export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, input_values: torch.Tensor, attention_mask: torch.Tensor):
        return self.model.encode(input_ids, input_values, attention_mask)[0]


class AstroDecoderGraph(nn.Module):
    """The decoder and prediction head of an `AstroForObservationPrediction` as a plain tensor function."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, request_ids: torch.Tensor, encoder_states: torch.Tensor, attention_mask: torch.Tensor):
        return self.model.predict_from_encoding(request_ids, encoder_states, attention_mask)[:2]


def _example_inputs(config, batch: int = 3, length: int = 5, requests: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1:, length - 2 :] = 0
    input_ids = input_ids * attention_mask
    input_values = torch.randn(batch, length, generator=generator) * attention_mask
    request_ids = torch.randint(1, config.vocab_size, (batch, requests), generator=generator)
    return input_ids, input_values, attention_mask, request_ids


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, opset: int = 18) -> tuple[Path, Path]:
    """
    Export `model` (an `AstroForObservationPrediction`, put in eval mode, float32, on the CPU) to
    `out_dir/encoder.onnx` and `out_dir/decoder.onnx` with dynamic batch, input and request dimensions
    (written to a temporary folder, then moved into place).
    """
    model = model.eval().float().cpu()
    attention_implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # plain matmul/softmax attention exports to standard ONNX ops
    input_ids, input_values, attention_mask, request_ids = _example_inputs(model.config)
    with torch.no_grad():
        encoder_states = AstroEncoderGraph(model)(input_ids, input_values, attention_mask)
    batch, inputs, requests = (
        torch.export.Dim("batch"),
        torch.export.Dim("inputs"),
        torch.export.Dim("requests"),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out))
    try:
        torch.onnx.export(
            AstroEncoderGraph(model).eval(),
            (input_ids, input_values, attention_mask),
            staging / ENCODER_FILE,
            input_names=["input_ids", "input_values", "attention_mask"],
            output_names=["encoder_states"],
            dynamic_shapes=({0: batch, 1: inputs}, {0: batch, 1: inputs}, {0: batch, 1: inputs}),
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
        torch.onnx.export(
            AstroDecoderGraph(model).eval(),
            (request_ids, encoder_states, attention_mask),
            staging / DECODER_FILE,
            input_names=["request_ids", "encoder_states", "attention_mask"],
            output_names=["mean", "logvar"],
            dynamic_shapes=({0: batch, 1: requests}, {0: batch, 1: inputs}, {0: batch, 1: inputs}),
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
        for name in (ENCODER_FILE, DECODER_FILE):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        model.config._attn_implementation = attention_implementation
    return out / ENCODER_FILE, out / DECODER_FILE


def check_onnx(
    model: nn.Module, out_dir: str | os.PathLike, batch: int = 7, length: int = 9, requests: int = 5
) -> float:
    """
    Run the exported graphs with onnxruntime on random inputs of shapes other than the export's and return the
    largest absolute difference to PyTorch over encoder states, mean and logvar.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("Checking the export needs onnxruntime: `pip install onnxruntime`.") from None
    input_ids, input_values, attention_mask, request_ids = _example_inputs(
        model.config, batch, length, requests
    )
    with torch.no_grad():
        states = AstroEncoderGraph(model)(input_ids, input_values, attention_mask)
        mean, logvar = AstroDecoderGraph(model)(request_ids, states, attention_mask)
    encoder = onnxruntime.InferenceSession(
        str(Path(out_dir) / ENCODER_FILE), providers=["CPUExecutionProvider"]
    )
    decoder = onnxruntime.InferenceSession(
        str(Path(out_dir) / DECODER_FILE), providers=["CPUExecutionProvider"]
    )
    (onnx_states,) = encoder.run(
        None,
        {
            "input_ids": input_ids.numpy(),
            "input_values": input_values.numpy(),
            "attention_mask": attention_mask.numpy(),
        },
    )
    onnx_mean, onnx_logvar = decoder.run(
        None,
        {
            "request_ids": request_ids.numpy(),
            "encoder_states": onnx_states,
            "attention_mask": attention_mask.numpy(),
        },
    )
    real = attention_mask.bool().numpy()
    return float(
        max(
            np.abs(onnx_states - states.numpy())[real].max(),
            np.abs(onnx_mean - mean.numpy()).max(),
            np.abs(onnx_logvar - logvar.numpy()).max(),
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (model + tokenizer)")
    parser.add_argument(
        "--out", required=True, help="folder for encoder.onnx, decoder.onnx and the tokenizer"
    )
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch"
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest accepted difference to PyTorch"
    )
    args = parser.parse_args(argv)
    from transformers import AutoModelForPreTraining

    model = AutoModelForPreTraining.from_pretrained(args.model, trust_remote_code=True)
    export_onnx(model, args.out, args.opset)
    AstroFeatureExtractor.from_pretrained(args.model).save_pretrained(args.out)
    if not args.no_check:
        difference = check_onnx(model, args.out)
        print(f"largest |ONNX - PyTorch| difference: {difference:.3g}")
        if difference > args.tolerance:
            raise SystemExit(f"The ONNX graphs differ from PyTorch by {difference:.3g} > {args.tolerance}.")


if __name__ == "__main__":
    main()
