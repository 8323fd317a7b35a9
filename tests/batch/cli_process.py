"""``bananaline batch run`` / ``bananaline worker`` as real processes against the simulator in this
process, and what the tests read back from the job store afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from bananaline.batch.models import JobRecord
from bananaline.db.base import make_engine


def start_bananaline(
    tmp_path: Path,
    sim: Any,
    *args: str,
    db_url: str,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    **env: str,
) -> subprocess.Popen[bytes]:
    """``bananaline ARGS --db DB_URL --store file://TMP/store --base-url SIM`` started in ``tmp_path``,
    spooling under it, with a short upstream backoff; ``env`` adds ``BANANALINE_<NAME>`` variables."""
    environment = {
        **os.environ,
        "BANANALINE_BACKOFF_INITIAL_S": "0.01",
        "BANANALINE_SPOOL_DIR": str(tmp_path / "spool"),
        **{f"BANANALINE_{name.upper()}": value for name, value in env.items()},
    }
    command = [
        sys.executable,
        "-c",
        "from bananaline.cli import app; app()",
        *args,
        "--db",
        db_url,
        "--store",
        f"file://{tmp_path / 'store'}",
        "--base-url",
        sim.base_url,
    ]
    return subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=stdout, stderr=stderr)


def job_counts(db_url: str, **where: str) -> dict[str, int]:
    """``{status: jobs}`` in the job store, optionally of the jobs matching ``where`` (column=value)."""
    engine = make_engine(db_url)
    try:
        stmt = select(JobRecord.status, func.count()).group_by(JobRecord.status)
        for column, value in where.items():
            stmt = stmt.where(getattr(JobRecord, column) == value)
        with engine.connect() as conn:
            return dict(conn.execute(stmt).all())
    finally:
        engine.dispose()
