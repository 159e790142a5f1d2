"""Shared fixtures."""
import pytest

from support import tiny_vit


@pytest.fixture
def make_vit():
    """Factory of tiny randomly initialised timm ViTs (8x8 token grid)."""
    return tiny_vit
