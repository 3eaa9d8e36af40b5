"""What a translation says of each key of a Qlib workflow YAML (an Entry: honoured, changed, or not honoured with
the reason), and the Reader that walks the document and marks each key it reads, so that none is dropped in silence."""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qpipe.evaluation.backtest import close_match
from qpipe.models.config import ConfigError

Status = Literal["honoured", "changed", "not honoured"]


@dataclass(frozen=True)
class Entry:
    key: str  # the dotted path in the YAML
    value: Any
    status: Status
    meaning: str  # what qpipe does with it, or why it cannot


def short(value: Any, limit: int = 60) -> str:
    if isinstance(value, list | tuple) and all(isinstance(v, dt.date) for v in value):
        value = "[" + ", ".join(v.isoformat() for v in value) + "]"
    text = str(value.isoformat() if isinstance(value, dt.date) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def date(value: Any, key: str, path: Path) -> dt.date:
    try:
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{path}: {key} = {value!r} is not a date (YYYY-MM-DD)") from None


class Reader:
    """Walks the document; each key read is marked, so every key not read is reported as unknown."""

    def __init__(self, path: Path, document: dict) -> None:
        self.path, self.document, self.entries, self.read = path, document, [], set()

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        node = self.document
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    near = close_match(part, map(str, node)) if isinstance(node, dict) else ""
                    raise ConfigError(f"{self.path}: missing {key}{near or ' (not a Qlib workflow YAML?)'}")
                return default
            node = node[part]
        self.read.add(key)
        return node

    def say(self, key: str, status: Status, meaning: str, value: Any = None) -> None:
        read = self.get(key)
        self.entries.append(Entry(key, read if value is None else value, status, meaning))

    def unread(self, node: Any = None, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` that nothing read (a key read reads all below it)."""
        node = self.document if node is None else node
        if prefix in self.read:
            return []
        if not isinstance(node, dict):
            return [prefix]
        return [k for key, value in node.items() for k in self.unread(value, f"{prefix}.{key}" if prefix else key)]
