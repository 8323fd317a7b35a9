"""How much of a sheet is read, and the errors for a sheet that cannot be read.

Every reader of a sheet enforces these while it reads (rows and cells are counted as they
stream, an XLSX is measured from its zip directory and its own XML before the spreadsheet
library sees it), so a hostile file is refused at the bound instead of after it has been
loaded. The defaults are what the batches API accepts; the CLI reads local files with
:data:`LOCAL_FILE_LIMITS`, which allows more rows.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Data rows per sheet (the header row comes on top): the batches API's own batch limit.
MAX_SHEET_ROWS = 20_000
#: Columns per sheet; a prompt sheet has a handful, a Bitable export a few dozen.
MAX_SHEET_COLUMNS = 200
#: Data rows x header columns, i.e. the cells a sheet becomes once short rows are padded.
MAX_SHEET_CELLS = 1_000_000
#: Characters per cell: the csv module's own field limit (Excel's is 32,767); room for a
#: data-URI reference of about 96 KB.
MAX_CELL_CHARS = 131_072
#: Characters per JSONL line (one row).
MAX_JSONL_LINE_CHARS = 1_048_576
#: Members of an XLSX zip (Excel writes about a dozen; one per embedded picture more).
MAX_ZIP_MEMBERS = 2_000
#: Uncompressed bytes of the XML parts of an XLSX, each and all together.
MAX_XLSX_XML_BYTES = 64 * 1024 * 1024
#: Uncompressed / compressed size of a zip member larger than :data:`RATIO_CHECK_FROM_BYTES`
#: (spreadsheet XML deflates 5-30x; zip bombs 1,000x and more).
MAX_ZIP_RATIO = 150.0
RATIO_CHECK_FROM_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SheetLimits:
    """The bounds one read enforces; see the module constants for why each value."""

    max_rows: int = MAX_SHEET_ROWS
    max_columns: int = MAX_SHEET_COLUMNS
    max_cells: int = MAX_SHEET_CELLS
    max_cell_chars: int = MAX_CELL_CHARS
    max_jsonl_line_chars: int = MAX_JSONL_LINE_CHARS
    max_zip_members: int = MAX_ZIP_MEMBERS
    max_xlsx_xml_bytes: int = MAX_XLSX_XML_BYTES
    max_zip_ratio: float = MAX_ZIP_RATIO


#: What an upload to the service may hold.
UPLOAD_LIMITS = SheetLimits()
#: A local file read by the CLI: the same shape bounds, more rows (the user's own machine).
LOCAL_FILE_LIMITS = SheetLimits(
    max_rows=1_000_000, max_cells=20_000_000, max_xlsx_xml_bytes=1024 * 1024 * 1024
)


class SheetError(ValueError):
    """The bytes are not a sheet that can be read; the message says why."""


class SheetTooLarge(SheetError):
    """The sheet is over a bound (rows, columns, cells, cell size, zip size or ratio); it was
    refused while being read, before it could take the memory it asks for."""
