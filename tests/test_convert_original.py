"""The converter against the original code's own outputs, and against a re-implementation of its architecture."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SHARED_DATA
from modeling_astro import AstroFeatureExtractor, AstroForObservationPrediction
from modeling_astro.convert_original import convert_original_checkpoint

ORIGINAL = SHARED_DATA / "original_checkpoint" / "tiny_random"


def _predict(model, tokenizer, input_names, input_values, request):
    values = np.array([[np.nan if x is None else x for x in row] for row in input_values], dtype=float)
    batch = tokenizer({n: values[:, i] for i, n in enumerate(input_names)}, observation_names=input_names,
                      return_tensors="pt")
    request_ids = tokenizer.encode_requests(request, batch_size=len(values))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["input_values"], request_ids, attention_mask=batch["attention_mask"])
    mean, sigma = tokenizer.inverse_transform(out.mean.double(), out.logvar.double(), request_ids)
    scale = tokenizer.inverse_transform(torch.zeros(1), torch.zeros(1), request_ids)[1]
    return mean.numpy(), sigma.numpy(), scale.numpy()


@pytest.mark.skipif(not ORIGINAL.exists(), reason="shared/ original checkpoint not present")
@pytest.mark.parametrize("case", ["case_xp_to_labels", "case_labels_to_xp"])
def test_converted_checkpoint_reproduces_original_outputs(tmp_path, case):
    model = convert_original_checkpoint(ORIGINAL, tmp_path)
    tokenizer = AstroFeatureExtractor.from_pretrained(tmp_path)
    vectors = json.loads((ORIGINAL / "test_vectors.json").read_text())[case]
    mean, sigma, scale = _predict(model, tokenizer, vectors["input_names"], vectors["input_values"], vectors["request"])
    # 1e-4 relative, where "relative" for a prediction that cancels to ~0 in physical units also admits 1e-4 of
    # its token's scale: the float32 resolution of the original's own arithmetic.
    error = np.abs(mean - np.array(vectors["mean"]))
    assert np.all(error <= 1e-4 * (np.abs(vectors["mean"]) + scale)), error.max()
    np.testing.assert_allclose(sigma, vectors["sigma"], rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# A compact re-implementation of the original StellarPerceptron network (torch MultiheadAttention with
# add_bias_kv, post-LN blocks, heads and FFN halving per block, MLP down to /8) with its parameter names, to write
# original-format checkpoints of configurations other than the shipped one.


class _OriginalBlock(nn.Module):
    def __init__(self, heads, dense, dim, act):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True, add_bias_kv=True)
        self.dense_1, self.dense_2 = nn.Linear(dim, dense), nn.Linear(dense, dim)
        self.layernorm_1, self.layernorm_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.act = act

    def forward(self, query, kv, mask):
        h = self.layernorm_1(query + self.attention(query, kv, kv, key_padding_mask=mask, need_weights=False)[0])
        return self.layernorm_2(h + self.dense_2(self.act(self.dense_1(h))))


class _OriginalNetwork(nn.Module):
    def __init__(self, n_embeddings, dim, enc_heads, enc_dense, dec_heads, dec_dense, act):
        super().__init__()
        self.embedding_layer = nn.Module()
        self.embedding_layer.embeddings = nn.Parameter(torch.randn(n_embeddings, dim) * 0.3)
        self.embedding_layer.bias = nn.Parameter(torch.randn(n_embeddings, dim) * 0.3)
        with torch.no_grad():
            self.embedding_layer.embeddings[0] = 0
            self.embedding_layer.bias[0] = 0
        self.torch_encoder, self.torch_decoder = nn.Module(), nn.Module()
        for i in (1, 2):
            block = _OriginalBlock(enc_heads // 2 ** (i - 1), enc_dense // 2 ** (i - 1), dim, act)
            setattr(self.torch_encoder, f"encoder_transformer_block_{i}", block)
        for i in (1, 2, 3):
            block = _OriginalBlock(dec_heads // 2 ** (i - 1), dec_dense // 2 ** (i - 1), dim, act)
            setattr(self.torch_decoder, f"decoder_transformer_block_{i}", block)
        widths = [dim, dec_dense, dec_dense // 2, dec_dense // 4, dec_dense // 8]
        for i in range(4):
            setattr(self.torch_decoder, f"decoder_dense_{i + 3}", nn.Linear(widths[i], widths[i + 1]))
        self.torch_decoder.decoder_out = nn.Linear(widths[-1], 1)
        self.torch_decoder.decoder_logvar_out = nn.Linear(widths[-1], 1)
        for block in self.modules():
            if isinstance(block, nn.MultiheadAttention):
                nn.init.normal_(block.bias_k, std=0.5)
                nn.init.normal_(block.bias_v, std=0.5)
                nn.init.normal_(block.in_proj_bias, std=0.1)
        self.act = act

    def forward(self, values, tokens, requests):
        emb = self.embedding_layer
        x = self.act(emb.embeddings[tokens] * values[..., None] + emb.bias[tokens])
        mask = tokens == 0
        for i in (1, 2):
            x = getattr(self.torch_encoder, f"encoder_transformer_block_{i}")(x, x, mask)
        q = emb.embeddings[requests]
        for i in (1, 2, 3):
            q = getattr(self.torch_decoder, f"decoder_transformer_block_{i}")(q, x, mask)
        for i in range(4):
            q = self.act(getattr(self.torch_decoder, f"decoder_dense_{i + 3}")(q))
        return self.torch_decoder.decoder_out(q)[..., 0], self.torch_decoder.decoder_logvar_out(q)[..., 0]


def test_converter_handles_other_configurations(tmp_path):
    """Another width, head count, activation and a non-contiguous custom token numbering."""
    torch.manual_seed(0)
    names = ["teff", "logg", "m_h", "bprp", "jh"]
    tokens = [7, 2, 5, 1, 3]  # custom vocab_tokens, as the original allows
    network = _OriginalNetwork(8, 24, enc_heads=4, enc_dense=40, dec_heads=4, dec_dense=64, act=torch.relu).eval()
    original = tmp_path / "original"
    original.mkdir()
    mean, std = np.zeros(8), np.ones(8)
    mean[tokens], std[tokens] = [4800.0, 2.5, -0.2, 1.1, 0.5], [500.0, 1.0, 0.3, 0.3, 0.1]
    nn_config = dict(context_length=8, embedding_dim=24, embedding_activation=None, encoder_head_num=4,
                     encoder_dense_num=40, encoder_dropout_rate=0.1, encoder_activation="relu", decoder_head_num=4,
                     decoder_dense_num=64, decoder_dropout_rate=0.1, decoder_activation=None)
    (original / "config.json").write_text(json.dumps({
        "nn_config": nn_config,
        "tokenizer_config": {"vocabs": names, "vocab_tokens": tokens},
        "norm_config": {"_input_mean": mean.tolist(), "_input_std": std.tolist(),
                        "_input_standardized": (std != 1).tolist()},
    }))
    torch.save({"model_state_dict": network.state_dict(), "epoch": 0}, original / "weights.pt")

    converted = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "modeling_astro.convert_original", "--original", str(original),
                    "--output_dir", str(converted)], check=True, cwd=Path(__file__).resolve().parents[1])
    model = AstroForObservationPrediction.from_pretrained(converted).eval()
    tokenizer = AstroFeatureExtractor.from_pretrained(converted)
    assert model.config.decoder_attention_heads == [4, 2, 1] and model.config.encoder_act == "relu"

    physical = {"teff": np.array([4500.0, 5200.0, np.nan]), "logg": np.array([2.1, np.nan, 4.4]),
                "bprp": np.array([1.3, 0.9, 0.8])}
    ours_mean, ours_sigma, _ = _predict(model, tokenizer, list(physical), np.stack(list(physical.values()), 1),
                                        ["m_h", "jh", "teff"])
    # the same stars through the original network, in its token numbering and standardisation
    original_tokens = torch.tensor([[7, 2, 1], [7, 0, 1], [0, 2, 1]])
    raw = np.stack(list(physical.values()), 1)
    standardised = np.nan_to_num((raw - mean[original_tokens.numpy()]) / std[original_tokens.numpy()])
    with torch.no_grad():
        out_mean, out_logvar = network(torch.tensor(standardised, dtype=torch.float32), original_tokens,
                                       torch.tensor([[5, 3, 7]] * 3))
    request_tokens = np.array([5, 3, 7])
    np.testing.assert_allclose(ours_mean, out_mean.numpy() * std[request_tokens] + mean[request_tokens], rtol=1e-4)
    np.testing.assert_allclose(ours_sigma, np.exp(0.5 * out_logvar.numpy()) * std[request_tokens], rtol=1e-4)
