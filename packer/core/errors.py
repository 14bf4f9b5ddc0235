"""Exceptions that say what went wrong, where, and what to do about it."""

from __future__ import annotations


REBUILD_HINT = "the run folder is damaged or was edited; re-run `packer pack --rehash` to rebuild it"


class PackerError(Exception):
    """Base class of every error Packer raises on purpose."""


class InputError(PackerError):
    """A record in an input file is unusable.

    The message reads ``path:line: field 'x' ...; hint`` so that editors and terminals can jump to it.
    """

    def __init__(self, path: str, line: int | None, field: str | None, message: str, hint: str = ""):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = f"{path}:{line}" if line is not None else str(path)
        what = f"field '{field}' {message}" if field else message
        text = f"{where}: {what}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)
        self._init = (path, line, field, message, hint)

    def __reduce__(self):  # keeps the fields when the error crosses a process boundary
        return (type(self), self._init)


class FormatError(PackerError):
    """An on-disk artifact (shard, manifest, stage folder) is missing, damaged or of another version."""

    def __init__(self, path: str, message: str = "", hint: str = ""):
        self.path = path
        # One argument: a message already formed (torch's DataLoader re-raises a worker's error this way).
        text = f"{path}: {message}" if message else str(path)
        if hint:
            text += f" (HINT: {hint})"
        super().__init__(text)
        self._init = (path, message, hint)

    def __reduce__(self):
        return (type(self), self._init)


class ConfigError(PackerError):
    """Options that conflict or name something that does not exist."""
