"""Stand-in for transformers' `tests/exporters/test_export.py`, which the 5.24.0 sdist does not ship.

`ModelTesterMixin` derives from `ExportTesterMixin`; this empty base keeps its import working. transformers' own
`torch.export` tests are therefore not run (the ONNX export of this project is tested in `tests/test_onnx_export.py`).
"""


class ExportTesterMixin:
    """Empty: no `torch.export` tests in this copy."""
