"""transformers' common model and configuration tests, vendored from the transformers 5.24.0 source distribution.

`test_modeling_common.py` (`ModelTesterMixin`) and `test_configuration_common.py` (`ConfigTester`) are verbatim
copies of the files of the same name in the `tests/` folder of `transformers-5.24.0.tar.gz` on PyPI (`pip download
--no-deps --no-binary :all: transformers==5.24.0`), Copyright The HuggingFace Inc. team, licensed under the Apache
License 2.0 (`LICENSE` beside this file); their licence headers are kept. The wheel does not ship `tests/`, hence the
copy. The sdist does not ship the three modules they import relatively either; `exporters/test_export.py`,
`generation/test_utils.py` and `utils/test_configuration_utils.py` here are this project's stand-ins (see each file):
so the `torch.export` tests of transformers' `ExportTesterMixin` are not part of this copy.

Used by `tests/test_transformers_common.py`; nothing here is collected by pytest on its own (see `conftest.py`).
To refresh for another transformers version, copy the two files again from that version's sdist.
"""
