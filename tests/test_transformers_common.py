"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) run on the Astro models.

The mixins are the transformers 5.24.0 test files, vendored in `tests/transformers_common/` (see its `__init__.py`).
The tester below adapts them to this model: a star is a set of (observation id, value) tokens plus the ids of the
requested observations, so the inputs are `input_ids`, `input_values`, `attention_mask` and `request_ids`.

Every test of the mixin that does not run here is skipped with its reason in `SKIPPED` below.
"""

import unittest

import pytest
import torch
from transformers_common.test_configuration_common import ConfigTester
from transformers_common.test_modeling_common import ModelTesterMixin

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
            "request_ids": torch.randint(
                1, self.vocab_size, (self.batch_size, self.decoder_seq_length), generator=generator
            ),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[AstroConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs()


class AstroModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (AstroModel, AstroForObservationPrediction)

    def setUp(self):
        self.model_tester = AstroModelTester(self)
        self.config_tester = ConfigTester(self, config_class=AstroConfig, hidden_size=16)

    def test_config(self):
        self.config_tester.run_common_tests()
