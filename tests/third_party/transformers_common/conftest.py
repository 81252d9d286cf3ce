"""The vendored transformers test files hold mixins, not tests: they run through `tests/test_transformers_common.py`."""

collect_ignore_glob = ["*.py"]
