"""Printing CRI answers as JSON, YAML or a table."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

FORMATS = ("json", "yaml", "table")


def to_dict(message: Message) -> dict[str, Any]:
    """camelCase keys, as crictl prints protobuf messages."""
    return MessageToDict(message, preserving_proto_field_name=False)


def print_data(data: Any, fmt: str) -> None:
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    """`Key:  value` lines, as `crictl version` prints."""
    for key, value in pairs:
        sys.stdout.write(f"{key}:  {value}\n")


# Width for tables written to a pipe: scripts cut names and full IDs out of them,
# so cells are never folded there.
UNWRAPPED = 100_000


def print_inspected(
    found: Sequence[Any],
    pairs: Callable[[Any], Sequence[tuple[str, str]]],
    document: Callable[[Any], Any],
    fmt: str,
    one: bool,
) -> None:
    """inspect/inspectp answers: as pairs in a table (a blank line between), else as one
    document each (a single one unwrapped when `one` was asked for)."""
    if fmt == "table":
        for i, item in enumerate(found):
            if i:
                print()
            print_pairs(pairs(item))
    elif found:
        docs = [document(item) for item in found]
        print_data(docs[0] if one else docs, fmt)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console = Console(soft_wrap=True, width=UNWRAPPED)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def decode_info(info: Mapping[str, str]) -> dict[str, Any]:
    """A CRI verbose `info` map with each JSON value decoded, as crictl prints it."""
    out: dict[str, Any] = {}
    for key, value in sorted(info.items()):
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
