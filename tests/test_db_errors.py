"""The database URL at the edges: a driver that is not installed is a one-line fix on stderr and
exit 2 from every command taking ``--db``; a new SQLite file is owner-only (issue 8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bananaline.db import make_engine
from bananaline.db.base import DatabaseUrlError

#: Imported first by the child interpreter (``sitecustomize``): psycopg cannot be imported, as on a
#: machine where bananaline was installed without the ``postgres`` extra.
_BLOCK_PSYCOPG = """
import sys


class _NoPsycopg:
    def find_spec(self, name, path=None, target=None):
        if name == "psycopg" or name.startswith(("psycopg.", "psycopg_")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoPsycopg())
"""

PG_URL = "postgresql+psycopg://banana:pw-not-shown@127.0.0.1:5/bananaline"


@pytest.fixture
def without_psycopg(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "no-psycopg"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK_PSYCOPG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANANALINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.parametrize(
    ("command", "url"),
    [
        (["batch", "status"], PG_URL),
        (["batch", "retry-failed", "b_x"], PG_URL),
        (["batch", "export", "b_x", "--out", "x.csv"], PG_URL),
        (["batch", "submit", "in.csv"], PG_URL),
        (["worker", "--exit-when-idle"], PG_URL),
        (["serve", "--port", "9"], PG_URL),
        (["callers", "list"], PG_URL),
        (["callers", "add", "someone"], PG_URL),
        (["usage"], PG_URL),
        (["usage"], "postgresql://banana:pw-not-shown@127.0.0.1:5/bananaline"),  # normalised to psycopg
    ],
    ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else value.split(":")[0],
)
def test_a_missing_postgres_driver_says_what_to_install(
    command: list[str], url: str, without_psycopg: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "in.csv").write_text("prompt\na banana\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "bananaline", *command, "--db", url],
        cwd=tmp_path,
        env=without_psycopg,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    stderr = " ".join(done.stderr.split())  # rich wraps long lines
    assert "pip install 'bananaline[postgres]'" in stderr
    assert "psycopg" in stderr and "Traceback" not in done.stderr
    assert "pw-not-shown" not in done.stderr + done.stdout


def test_the_blocker_really_blocks(without_psycopg: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import psycopg"], env=without_psycopg, capture_output=True, text=True
    )
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr


def test_an_unknown_dialect_is_a_typed_error() -> None:
    with pytest.raises(DatabaseUrlError, match="nosuchdb"):
        make_engine("nosuchdb://x/y")


def test_a_new_sqlite_file_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        database = tmp_path / "sub" / "new.db"
        engine = make_engine(f"sqlite:///{database}")
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
            connection.commit()
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                assert path.exists(), path
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, (path, oct(os.stat(path).st_mode))
        engine.dispose()
    finally:
        os.umask(previous)


def test_an_existing_sqlite_file_keeps_its_mode(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    database.touch(mode=0o640)
    os.chmod(database, 0o640)
    make_engine(f"sqlite:///{database}").dispose()
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o640
