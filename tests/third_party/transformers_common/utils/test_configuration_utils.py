"""Stand-in for transformers' `tests/utils/test_configuration_utils.py`, which the 5.24.0 sdist does not ship.

`ConfigTester.check_config_arguments_init` passes `config_common_kwargs` to the configuration class and checks that
each is set as given. This dict lists the common attributes that `transformers.PreTrainedConfig` 5.24 declares,
each with a non-default value.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
