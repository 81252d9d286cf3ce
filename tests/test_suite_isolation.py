"""The suite's own isolation: a test that changes torch's thread count does not change it for the next test."""

import torch

_seen: dict[str, int] = {}


def test_a_test_may_change_the_thread_count():
    _seen["before"] = torch.get_num_threads()
    torch.set_num_threads(1 if _seen["before"] != 1 else 2)
    assert torch.get_num_threads() != _seen["before"]


def test_the_next_test_sees_the_suites_thread_count():
    assert "before" in _seen, "run with the test above (same module, in order)"
    assert torch.get_num_threads() == _seen["before"]
