"""Batch tests run against the session simulator over loopback, a SQLite file in the test's own
directory and a file:// store; references are small images made with Pillow (no internet)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from bananaline.config import Settings


@pytest.fixture
def fast_sim(sim):
    """The simulator with small flat images: the batch tests measure the line, not PNG encoding."""
    previous = sim.config.realistic
    sim.configure(realistic=False)
    yield sim
    sim.configure(realistic=previous)


def png_bytes(color: tuple[int, int, int] = (200, 180, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(color: tuple[int, int, int] = (200, 180, 40)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(color)).decode()


@pytest.fixture
def settings_for(tmp_path: Path):
    """Settings pointing at a simulator, with every path inside the test directory."""

    def make(sim, **overrides) -> Settings:
        values = dict(
            base_url=sim.base_url,
            db_url=f"sqlite:///{tmp_path / 'jobs.db'}",
            store_url=f"file://{tmp_path / 'store'}",
            spool_dir=tmp_path / "spool",
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
        )
        values.update(overrides)
        return Settings(**values)

    return make
