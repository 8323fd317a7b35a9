"""On a terminal, ``batch run`` shows a live bar: done/failed/in-flight, rate, ETA and money."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys


def test_progress_bar_on_a_real_terminal(sim, tmp_path):
    sheet = tmp_path / "rows.csv"
    sheet.write_text(
        "prompt\n" + "".join(f"tty row {i}\n" for i in range(6)) + "refused [sim fault=finish_SAFETY]\n",
        encoding="utf-8",
    )
    primary, secondary = pty.openpty()
    env = {
        **os.environ,
        "BANANALINE_BASE_URL": sim.base_url,
        "BANANALINE_API_KEY": "tty-key-123456",
        "COLUMNS": "160",
        "TERM": "xterm",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bananaline", "batch", "run", str(sheet), "--concurrency", "2"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        cwd=tmp_path,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(timeout=120) == 1  # one row failed
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "7/7" in screen
    assert "✓6" in screen and "✗1" in screen
    assert re.search(r"\$0\.8\d\d", screen), screen[-2000:]  # 6 x $0.134 spent
    assert "tty-key-123456" not in screen
