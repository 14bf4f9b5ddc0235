"""Mixture files: several sources, each with its fields, chat format and weight, in one YAML or JSON file.

    sources:
      - path: data/gsm8k/*.parquet
        weight: 0.5                  # or epochs: 3 (an integer weight); default 1
        fields: {query: question, response: answer}
      - path: s3://bucket/chats.jsonl.zst
        format: sharegpt             # chat format of this source (openai, sharegpt, auto)

Relative paths are relative to the mixture file. Weights multiply each source's examples in the plan stage (see planner.mixture_rows), so changing a
weight re-plans and re-writes but never re-tokenizes. The report gives, per source, the share of
loss tokens the weights ask for beside the share achieved.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from packer.core.config import InputSpec
from packer.core.errors import ConfigError
from packer.core.storage import is_url

KEYS = {"path", "weight", "epochs", "fields", "format", "chat_format"}
FIELDS = ("query", "response", "messages", "text", "tools")


def read_mixture(path: str | Path) -> list[InputSpec]:
    """The sources of a mixture file (.yaml, .yml or .json), each checked; an error names the entry."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the mixture file ({e.strerror})") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{p}: reading YAML needs PyYAML: pip install pyyaml, or write the mixture as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    entries = data.get("sources") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"sources"}:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(set(data) - {'sources'}))}; the file holds 'sources'")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{p}: needs a non-empty list 'sources' of {{path, weight, fields, format}}")
    specs = [_spec(e, f"{p}: sources[{i}]") for i, e in enumerate(entries)]
    # Relative local paths are relative to the mixture file, so it works from any working directory.
    return [replace(s, path=str(p.parent / s.path)) if not is_url(s.path) and not Path(s.path).is_absolute() else s
            for s in specs]


def _spec(entry: object, where: str) -> InputSpec:
    if isinstance(entry, str):
        return InputSpec.parse(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with 'path', got {type(entry).__name__}")
    unknown = set(entry) - KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; keys: {', '.join(sorted(KEYS))}")
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise ConfigError(f"{where}: names no source (a 'path' is required)")
    if "weight" in entry and "epochs" in entry:
        raise ConfigError(f"{where}: give weight or epochs, not both")
    weight = entry.get("weight", 1.0)
    if "epochs" in entry:
        weight = entry["epochs"]
        if not isinstance(weight, int) or isinstance(weight, bool):
            raise ConfigError(f"{where}: epochs {weight!r} must be an integer")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ConfigError(f"{where}: weight {weight!r} must be a finite number >= 0")
    fields = entry.get("fields") or {}
    if not isinstance(fields, dict) or set(fields) - set(FIELDS) or \
            not all(isinstance(v, str) for v in fields.values()):
        raise ConfigError(f"{where}: 'fields' maps {', '.join(FIELDS)} to column names")
    fmt = entry.get("format", entry.get("chat_format"))
    return InputSpec(entry["path"], chat_format=fmt, weight=float(weight),
                     **{f"{k}_field": v for k, v in fields.items()})
