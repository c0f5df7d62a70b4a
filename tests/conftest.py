"""Shared test fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (dense references need it); restores the default after."""
    with jax.enable_x64(True):
        yield
