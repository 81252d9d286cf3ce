"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) run on the Astro models.

The mixins are the transformers 5.24.0 test files, vendored in `tests/third_party/transformers_common/` (see its
`__init__.py`).
The tester below adapts them to this model: a star is a set of (observation id, value) tokens plus the ids of the
requested observations, so the inputs are `input_ids`, `input_values`, `attention_mask` and `request_ids`.

Every test of the mixin that does not run is skipped by the mixin itself, with its reason (`pytest -rs`); on a CPU
machine with transformers 5.24 they are (69 of 179):

- 30 need hardware or libraries this suite does not install: a GPU or other accelerator (8), several (1), MPS (1),
  Flash Attention 2/3/4 (14), the `kernels` library (2), DeepSpeed (4).
- 1 is marked slow by transformers (`test_torch_compile_for_training`, run with RUN_SLOW=1).
- 38 check parts the model does not have (see the `AstroModel` docstring for why): rotary / absolute position
  embeddings and sliding windows (8), mixture-of-experts routing and grouped matmuls (5), a KV cache (2),
  `inputs_embeds` (2), language-modelling heads (2), composite models / sub-configs / a tensor-parallel plan (5),
  modules kept in float32 (6), checkpoint key conversions (4; `convert_original.py` converts the original
  checkpoint), the hook-based `capture_outputs` decorator (4; outputs are collected explicitly, PatchTST-style).

Not vendored, so not run: transformers' `torch.export` tests (`ExportTesterMixin`, not in the sdist).
"""

import unittest
import unittest.mock

import pytest
import torch
from third_party.transformers_common.test_configuration_common import ConfigTester
from third_party.transformers_common.test_modeling_common import ModelTesterMixin
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from configuration_astro import AstroConfig
from modeling_astro import AstroForObservationPrediction, AstroModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class AstroModelTester:
    """Builds a small configuration and a random batch of stars in the layout the mixin expects."""

    def __init__(
        self,
        parent: unittest.TestCase,
        batch_size: int = 3,
        seq_length: int = 7,
        num_requests: int = 5,
        num_observations: int = 30,
        hidden_size: int = 16,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        is_training: bool = True,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length  # input observations per star
        self.decoder_seq_length = num_requests  # requested observations per star
        self.key_length = seq_length + 1  # the learned bias key is appended to the keys of every attention layer
        self.num_observations = num_observations
        self.vocab_size = num_observations + 1
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.is_training = is_training
        # `hidden_states` (encoder) and `decoder_hidden_states` are both returned with `output_hidden_states=True`.
        self.num_hidden_states_types = 2

    def get_config(self) -> AstroConfig:
        # Heads halve from block to block as in the paper's model; the mixin checks the first block's count.
        heads = [self.num_attention_heads // 2**i for i in range(self.num_hidden_layers)]
        return AstroConfig(
            observation_names=[f"obs{i}" for i in range(self.num_observations)],
            context_length=16,
            hidden_size=self.hidden_size,
            encoder_attention_heads=heads,
            encoder_ffn_dims=[32] * self.num_hidden_layers,
            decoder_attention_heads=heads,
            decoder_ffn_dims=[32] * self.num_hidden_layers,
            decoder_mlp_dims=[32, 16],
        )

    def prepare_config_and_inputs(self) -> tuple[AstroConfig, dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.stack(
            [
                torch.randperm(self.num_observations, generator=generator)[: self.seq_length] + 1
                for _ in range(self.batch_size)
            ]
        )
        lengths = torch.randint(1, self.seq_length + 1, (self.batch_size,), generator=generator)
        lengths[0] = self.seq_length
        attention_mask = (torch.arange(self.seq_length)[None, :] < lengths[:, None]).long()
        inputs = {
            "input_ids": input_ids * attention_mask,
            "input_values": torch.randn(self.batch_size, self.seq_length, generator=generator) * attention_mask,
            "attention_mask": attention_mask,
            # Requests among the first 15 ids: `test_resize_tokens_embeddings` shrinks the vocabulary by 15 and
            # clamps `input_ids` (and seq2seq `decoder_input_ids`) only.
            "request_ids": torch.randint(
                1, self.vocab_size - 15, (self.batch_size, self.decoder_seq_length), generator=generator
            ),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[AstroConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs()


class AstroModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (AstroModel, AstroForObservationPrediction)
    # Inputs besides `input_ids` that the eager-vs-SDPA comparisons must pass on.
    additional_model_inputs = ["input_values", "request_ids"]
    # The mixin skips this check for models without a copyright year of 2023 or later in their config file.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = AstroModelTester(self)
        self.config_tester = ConfigTester(self, config_class=AstroConfig, hidden_size=16)
        # transformers tells base models from heads by the names in MODEL_MAPPING_NAMES (e.g. `test_training`
        # runs heads only); a remote-code model is registered with the Auto classes at run time, not there.
        patcher = unittest.mock.patch.dict(MODEL_MAPPING_NAMES, {"astro": "AstroModel"})
        patcher.start()
        self.addCleanup(patcher.stop)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is AstroForObservationPrediction:
            # Standardised true values of the requested observations, one per request.
            inputs_dict["labels"] = torch.randn(
                inputs_dict["request_ids"].shape, generator=torch.Generator().manual_seed(1)
            )
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()


# What the mixin does not look at: the second (bias) table, the observation names and the config's summaries.


def test_resize_token_embeddings_resizes_both_tables_and_names_new_ids():
    config, inputs = AstroModelTester(None).prepare_config_and_inputs()
    model = AstroForObservationPrediction(config).eval()
    config = model.config
    weight, bias = model.get_input_embeddings().weight.clone(), model.get_input_embeddings().bias.clone()
    embeddings = model.resize_token_embeddings(config.vocab_size + 3)
    assert embeddings.weight.shape == embeddings.bias.shape == (config.vocab_size, config.hidden_size) == (34, 16)
    assert torch.equal(embeddings.weight[:-3], weight) and torch.equal(embeddings.bias[:-3], bias)
    torch.testing.assert_close(embeddings.bias[-1], bias.mean(dim=0))
    assert config.observation_names[-3:] == ["unnamed_31", "unnamed_32", "unnamed_33"]
    inputs["input_ids"][0, 0] = 33
    assert torch.isfinite(model(**inputs).mean).all()
    model.resize_token_embeddings(8)
    assert model.get_input_embeddings().bias.shape[0] == config.vocab_size == 8
    assert config.observation_names == [f"obs{i}" for i in range(7)]
    with pytest.raises(ValueError, match="at least 2"):
        model.resize_token_embeddings(1)


def test_config_reads_as_a_transformers_config():
    config = AstroConfig()  # the paper's model: encoder heads [16, 8], decoder heads [16, 8, 4]
    assert (config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (2, 16, 119)
    assert "num_attention_heads" not in config.to_dict()  # derived, never saved
    model = AstroModel(AstroConfig.small(output_attentions=True, output_hidden_states=True, return_dict=False))
    _, inputs = AstroModelTester(None).prepare_config_and_inputs()
    outputs = model(**inputs)  # a tuple: last, encoder last, hidden states, decoder hidden states, attentions, cross
    assert isinstance(outputs, tuple) and len(outputs) == 6
    assert [len(outputs[i]) for i in range(2, 6)] == [3, 4, 2, 3]
