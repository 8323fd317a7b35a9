"""Storage fixtures: a real S3-compatible server (moto) on loopback and a fresh bucket per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from storage_support import make_settings, s3_client

from bananaline.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"bananas-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name
