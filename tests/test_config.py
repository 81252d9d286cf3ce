import pytest

from configuration_astro import DEFAULT_OBSERVATION_NAMES, AstroConfig
from modeling_astro import AstroForObservationPrediction


def test_default_config_is_the_papers_model():
    config = AstroConfig()
    assert len(config.observation_names) == 118 and config.vocab_size == 119
    assert config.observation_names[:2] == ["bp0", "bp1"] and config.observation_names[-1] == "g_fakemag"
    assert (config.context_length, config.hidden_size) == (64, 128)
    assert config.encoder_attention_heads == [16, 8] and config.encoder_ffn_dims == [1024, 512]
    assert config.decoder_attention_heads == [16, 8, 4] and config.decoder_ffn_dims == [3096, 1548, 774]
    assert config.decoder_mlp_dims == [3096, 1548, 774, 387]


def test_default_config_counts_8_8_million_parameters():
    n_parameters = AstroForObservationPrediction(AstroConfig()).num_parameters()
    assert abs(n_parameters - 8.8e6) / 8.8e6 < 0.02, n_parameters


def test_small_preset_is_small():
    assert AstroForObservationPrediction(AstroConfig.small()).num_parameters() < 300_000


def test_presets_are_defined_once():
    from configuration_astro import PRESETS

    assert AstroConfig.preset("paper").to_dict() == AstroConfig().to_dict()
    assert AstroConfig.preset("small").to_dict() == AstroConfig.small().to_dict()
    sizes = {name: AstroForObservationPrediction(AstroConfig.preset(name)).num_parameters() for name in PRESETS}
    assert sizes["tiny"] < 30_000 < sizes["small"] < 300_000 < sizes["paper"]
    config = AstroConfig.preset("tiny", context_length=8, hidden_size=32)  # keyword arguments override the preset
    assert (config.context_length, config.hidden_size) == (8, 32)
    assert config.decoder_mlp_dims == PRESETS["tiny"]["decoder_mlp_dims"]
    with pytest.raises(ValueError, match=r"Unknown preset 'tinny': the presets are \['paper', 'small', 'tiny'\]"):
        AstroConfig.preset("tinny")


def test_config_round_trip(tmp_path):
    config = AstroConfig.small(observation_names=["a", "b"], decoder_dropout=0.0)
    config.save_pretrained(tmp_path)
    loaded = AstroConfig.from_pretrained(tmp_path)
    assert loaded.observation_names == ["a", "b"] and loaded.decoder_mlp_dims == config.decoder_mlp_dims
    assert loaded.decoder_dropout == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 10}, "multiple"),
        ({"encoder_attention_heads": [4], "encoder_ffn_dims": [8, 8]}, "same length"),
        ({"observation_names": ["a", "a"]}, "unique"),
        ({"decoder_mlp_dims": []}, "decoder_mlp_dims"),
    ],
)
def test_invalid_config_is_rejected(kwargs, message):
    with pytest.raises(Exception, match=message):
        AstroConfig(**kwargs)


def test_vocabulary_constant_matches_paper():
    assert len(DEFAULT_OBSERVATION_NAMES) == 118
    assert DEFAULT_OBSERVATION_NAMES[110:] == ("bprp", "jh", "jk", "teff", "logg", "m_h", "logebv", "g_fakemag")
