"""Helpers shared by the storage tests: settings with short retries, images made on the spot, boto3."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import boto3
from PIL import Image
from pydantic import SecretStr

from bananaline.config import Settings

ACCESS_KEY_ID = "AKIDBANANALINETEST01"
SECRET_ACCESS_KEY = "sEcReT-bananaline-test-9f3b2c7e1d"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "spool_dir": tmp_path / "spool",
        "store_url": f"file://{tmp_path / 'images'}",
        "store_upload_attempts": 2,
        "store_backoff_initial_s": 0.01,
        "store_backoff_max_s": 0.05,
        "store_op_timeout_s": 10.0,
        "s3_access_key_id": SecretStr(ACCESS_KEY_ID),
        "s3_secret_access_key": SecretStr(SECRET_ACCESS_KEY),
    }
    values.update(overrides)
    return Settings(**values)


def noise_png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A distinct small PNG per seed."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
