"""Fixtures shared by the tests; the helpers live in ``_helpers.py``."""

import pytest

import fastnn


@pytest.fixture(autouse=True)
def _restore_global_backend():
    """Tests that switch the global backend must not leak it."""
    before = fastnn.get_backend()
    yield
    fastnn.set_backend(before)
