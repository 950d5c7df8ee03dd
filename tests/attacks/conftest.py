"""Fixtures for the attack tests."""

from __future__ import annotations

import pytest
import torch
from attack_cases import phantom


@pytest.fixture
def image() -> torch.Tensor:
    return phantom(3)
