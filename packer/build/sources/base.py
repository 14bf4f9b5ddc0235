"""What every input source yields: chunks (the unit of work) and records (a dict, or why it is not one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packer.core.errors import InputError


@dataclass(frozen=True)
class Columns:
    """The fields a run reads: `required` must exist in a table's schema (checked before any work),
    `optional` are read when present (a chat's `tools`), `any_of` needs one of its names (a chat's
    messages under `messages` or ShareGPT's `conversations`)."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    def select(self, names: list[str]) -> list[str]:
        """The columns to read from a table with these column names (checked by check())."""
        return [n for n in dict.fromkeys(self.required + self.any_of + self.optional) if n in names]


@dataclass(frozen=True)
class Chunk:
    """A bounded run of consecutive records of one input file: what one map task tokenizes.

    Chunks are cut by the driver from metadata (JSON Lines: by reading the lines; Parquet: one row
    group; Arrow: record batches), so the same inputs always give the same chunks, whatever runs them.
    """

    file_index: int
    """Position of the file among all input files (globs expanded)."""
    path: str
    first_record: int
    """Record number of the chunk's first record among all records of all inputs, 0-based."""
    records: int
    payload: Any = field(default=None, compare=False)
    """The source's own description: JSON Lines, (lines, line numbers); tables, which part to read."""
    index: int = -1
    """0-based number of this chunk over the whole run (names its output file); set by sources.scan."""


@dataclass(frozen=True)
class Record:
    """One record: `where` and `line` place it in errors; `position` is stored as its lineage
    (JSON Lines: the 1-based line; tables: the 0-based row of the file)."""

    where: str
    line: int | None
    position: int
    value: dict | InputError
