"""Resource usage commands, as crictl has them: stats (containers) and statsp (pods).

Plain CRI RuntimeService calls (ListContainerStats / ContainerStats, ListPodSandboxStats /
PodSandboxStats), so they work against any runtime. IDs may be given as unique prefixes:
they are resolved against ListContainers / ListPodSandbox before any stats call.

CPU % is the runtime's usage_nano_cores / 1e7 where it gives one; where it does not (crispy
gives none for its first sample of a container), it is the growth of
usage_core_nano_seconds between two samples `--seconds` apart, as crictl computes it. A
runtime's figure is the rate since its previous sample, so when a first sample lacks one
or says 0 (containerd's first sample says 0) a second is taken `--seconds` later and its
figures are shown.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from crispy.api import pb
from crispy.cli import images, output, pods
from crispy.cli.client import CriClient
from crispy.cli.lookups import (
    IDLookupError,
    list_containers,
    list_pods,
    resolve_container,
    resolve_pod,
)

TRUNCATED_ID = pods.TRUNCATED_ID
NONE = "-"
CONTAINER_COLUMNS = ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
POD_COLUMNS = ["POD", "NAME", "CPU %", "MEM", "NET RX", "NET TX"]


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not a number of seconds") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than 0")
    return n


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--label",
        action="append",
        type=pods._label,
        default=[],
        metavar="KEY=VALUE",
        help=f"only {what} with this label (repeatable)",
    )
    p.add_argument("-o", "--output", choices=output.FORMATS, default="table")
    p.add_argument(
        "-w", "--watch", action="store_true", help="keep showing fresh figures until Ctrl-C"
    )
    p.add_argument(
        "-s",
        "--seconds",
        type=_seconds,
        default=1.0,
        metavar="N",
        help="seconds between samples, and between refreshes with --watch (default 1)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="show containers' resource usage: CPU, memory, writable layer")
    p.add_argument(
        "-a", "--all", action="store_true", help="show every container, not only running"
    )
    p.add_argument(
        "--id", default="", metavar="PREFIX", help="only this container (ID or unique prefix)"
    )
    p.add_argument(
        "-p", "--pod", default="", metavar="POD-ID", help="only the containers of this pod"
    )
    _common(p, "containers")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("statsp", help="show pods' resource usage: CPU, memory, network")
    p.add_argument("--id", default="", metavar="PREFIX", help="only this pod (ID or unique prefix)")
    _common(p, "pods")
    p.set_defaults(func=cmd_statsp)


# -- formatting ------------------------------------------------------------------------------


def human_size(size: float) -> str:
    """Decimal units with 4 significant digits, as crictl's units.HumanSize: `12.35MB`."""
    i = 0
    units = images.DECIMAL_UNITS
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{units[i]}"


def _u64(msg: Any, name: str) -> int | None:
    """A UInt64Value field's value, None when the runtime left it out."""
    return int(getattr(msg, name).value) if msg.HasField(name) else None


def _size(msg: Any, name: str) -> str:
    value = _u64(msg, name)
    return NONE if value is None else human_size(value)


def _count(msg: Any, name: str) -> str:
    value = _u64(msg, name)
    return NONE if value is None else str(value)


def cpu_percent(new: pb.CpuUsage, old: pb.CpuUsage | None, wall_ns: int) -> float | None:
    """The runtime's usage_nano_cores as a percentage of one core; else the rate of
    usage_core_nano_seconds since `old` (over the samples' timestamps, or `wall_ns` when
    the runtime gives none). None when neither is there."""
    nano_cores = _u64(new, "usage_nano_cores")
    if nano_cores is not None:
        return nano_cores / 1e7
    now = _u64(new, "usage_core_nano_seconds")
    before = None if old is None else _u64(old, "usage_core_nano_seconds")
    if now is None or before is None or now < before:  # < : a restarted container
        return None
    assert old is not None
    span = new.timestamp - old.timestamp if new.timestamp and old.timestamp else wall_ns
    if span <= 0:
        return None
    return (now - before) / span * 100


def needs_rate(cpu: pb.CpuUsage) -> bool:
    """Whether a second sample is needed for this one's CPU %: the runtime gave no
    usage_nano_cores, or 0, which containerd gives for its first sample of a container
    (and which an idle one can't be told apart from)."""
    if not cpu.HasField("usage_core_nano_seconds"):
        return False  # not running: no second sample tells more
    return not cpu.HasField("usage_nano_cores") or cpu.usage_nano_cores.value == 0


def interfaces(net: pb.NetworkUsage) -> list[pb.NetworkInterfaceUsage]:
    """Every interface once: the default one may be listed among the others too."""
    seen: dict[str, pb.NetworkInterfaceUsage] = {}
    for iface in [
        *net.interfaces,
        *([net.default_interface] if net.HasField("default_interface") else []),
    ]:
        seen.setdefault(iface.name, iface)
    return list(seen.values())


def net_total(net: pb.NetworkUsage, name: str) -> str:
    values = [_u64(i, name) for i in interfaces(net)]
    known = [v for v in values if v is not None]
    return human_size(sum(known)) if known else NONE


# -- samples ---------------------------------------------------------------------------------


@dataclass
class Entry:
    """One container's or pod's figures from one sample."""

    id: str
    name: str
    cpu: pb.CpuUsage
    cells: list[str]  # the columns after CPU %


@dataclass
class Sample:
    at_ns: int  # when it was taken, by the local clock
    entries: list[Entry]
    document: dict[str, Any] = field(default_factory=dict)  # for -o json|yaml


def rows(new: Sample, old: Sample | None) -> list[list[str]]:
    before = {e.id: e.cpu for e in old.entries} if old else {}
    wall = new.at_ns - old.at_ns if old else 0
    out = []
    for e in new.entries:
        pct = cpu_percent(e.cpu, before.get(e.id), wall)
        cpu = NONE if pct is None else f"{pct:.2f}"
        out.append([e.id[:TRUNCATED_ID], e.name, cpu, *e.cells])
    return out


Fetch = Callable[[], Sample]


def container_fetcher(
    client: CriClient, cid: str, pod_id: str, labels: dict[str, str], all_states: bool
) -> Fetch:
    """A container sample: with `cid`, ContainerStats; else ListContainerStats, kept to
    what ListContainers shows for the filters (running only, unless `all_states` or `cid`)."""

    def fetch() -> Sample:
        state = None if all_states or cid else pb.CONTAINER_RUNNING
        listed = {c.id: c for c in list_containers(client, state, pod_id, labels)}
        if cid:
            found = []
            if cid in listed:
                req = pb.ContainerStatsRequest(container_id=cid)
                found = [client.runtime.ContainerStats(req, timeout=client.timeout).stats]
        else:
            flt = pb.ContainerStatsFilter(pod_sandbox_id=pod_id, label_selector=labels)
            resp = client.runtime.ListContainerStats(
                pb.ListContainerStatsRequest(filter=flt), timeout=client.timeout
            )
            found = [s for s in resp.stats if s.attributes.id in listed]
        at = time.time_ns()
        found.sort(key=lambda s: s.attributes.id)
        entries = [
            Entry(
                s.attributes.id,
                s.attributes.metadata.name or listed[s.attributes.id].metadata.name,
                s.cpu,
                [
                    _size(s.memory, "working_set_bytes"),
                    _size(s.writable_layer, "used_bytes"),
                    _count(s.writable_layer, "inodes_used"),
                ],
            )
            for s in found
        ]
        return Sample(at, entries, {"stats": [pods.to_dict(s) for s in found]})

    return fetch


def pod_fetcher(client: CriClient, pod_id: str, labels: dict[str, str]) -> Fetch:
    """A pod sample: with `pod_id`, PodSandboxStats; else ListPodSandboxStats, kept to the
    pods ListPodSandbox shows for the labels."""

    def fetch() -> Sample:
        listed = {p.id: p for p in list_pods(client, labels=labels)}
        if pod_id:
            found = []
            if pod_id in listed:
                req = pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)
                found = [client.runtime.PodSandboxStats(req, timeout=client.timeout).stats]
        else:
            flt = pb.PodSandboxStatsFilter(label_selector=labels)
            resp = client.runtime.ListPodSandboxStats(
                pb.ListPodSandboxStatsRequest(filter=flt), timeout=client.timeout
            )
            found = [s for s in resp.stats if s.attributes.id in listed]
        at = time.time_ns()
        found.sort(key=lambda s: s.attributes.id)
        entries = []
        for s in found:
            linux = s.linux
            name = s.attributes.metadata.name or listed[s.attributes.id].metadata.name
            cells = [
                _size(linux.memory, "working_set_bytes"),
                net_total(linux.network, "rx_bytes"),
                net_total(linux.network, "tx_bytes"),
            ]
            entries.append(Entry(s.attributes.id, name, linux.cpu, cells))
        return Sample(at, entries, {"stats": [pods.to_dict(s) for s in found]})

    return fetch


# -- showing ---------------------------------------------------------------------------------


def make_table(columns: Sequence[str], body: Sequence[Sequence[str]]) -> Table:
    """output.print_table's style, as an object rich.Live can redraw."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in body:
        table.add_row(*row)
    return table


def show(fetch: Fetch, columns: Sequence[str], args: argparse.Namespace) -> int:
    """One table (or document), or with --watch one every --seconds until Ctrl-C."""
    try:
        return _show(fetch, columns, args)
    except KeyboardInterrupt:
        if args.watch:
            return 0
        raise


def _show(fetch: Fetch, columns: Sequence[str], args: argparse.Namespace) -> int:
    cur = fetch()
    if args.output != "table":
        while True:
            output.print_data(cur.document, args.output)
            sys.stdout.flush()
            if not args.watch:
                return 0
            time.sleep(args.seconds)
            cur = fetch()
    old: Sample | None = None
    if any(needs_rate(e.cpu) for e in cur.entries):
        time.sleep(args.seconds)
        old, cur = cur, fetch()
    if not args.watch:
        output.print_table(columns, rows(cur, old))
        return 0
    console = Console(soft_wrap=True)
    if console.is_terminal:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(make_table(columns, rows(cur, old)), refresh=True)
                time.sleep(args.seconds)
                old, cur = cur, fetch()
    while True:
        output.print_table(columns, rows(cur, old))
        print(flush=True)
        time.sleep(args.seconds)
        old, cur = cur, fetch()


# -- commands --------------------------------------------------------------------------------


def cmd_stats(client: CriClient, args: argparse.Namespace) -> int:
    labels = dict(args.label)
    try:
        cid = resolve_container(client, args.id) if args.id else ""
        pod_id = resolve_pod(client, args.pod) if args.pod else ""
    except IDLookupError as e:
        print(f"crispy stats: {e}", file=sys.stderr)
        return 1
    fetch = container_fetcher(client, cid, pod_id, labels, args.all)
    return show(fetch, CONTAINER_COLUMNS, args)


def cmd_statsp(client: CriClient, args: argparse.Namespace) -> int:
    try:
        pod_id = resolve_pod(client, args.id) if args.id else ""
    except IDLookupError as e:
        print(f"crispy statsp: {e}", file=sys.stderr)
        return 1
    return show(pod_fetcher(client, pod_id, dict(args.label)), POD_COLUMNS, args)
