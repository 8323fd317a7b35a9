"""The batch production line: a sheet of prompts in, a sheet of images out, resumable, per-caller.

See :class:`~bananaline.batch.engine.BatchEngine` for the library API and ``bananaline batch``
for the command line.
"""

from ..admission import CallerLimits
from .columns import ColumnConfig
from .engine import BatchEngine, BatchInputError, BatchNotFound
from .keys import CallerKey, KeyRing
from .progress import ProgressSnapshot
from .report import BatchSummary
from .results import BatchInfo, BatchStatus, RowResult
from .sheets import Table, read_table, read_table_bytes, write_table

__all__ = [
    "BatchEngine",
    "BatchInfo",
    "BatchInputError",
    "BatchNotFound",
    "BatchStatus",
    "BatchSummary",
    "CallerKey",
    "CallerLimits",
    "ColumnConfig",
    "KeyRing",
    "ProgressSnapshot",
    "RowResult",
    "Table",
    "read_table",
    "read_table_bytes",
    "write_table",
]
