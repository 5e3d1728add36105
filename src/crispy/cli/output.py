"""Printing CRI answers as JSON, YAML or a table."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
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


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True).print(table)
