"""The planner's CSV inputs: the application mapping and the dependency files.

Dependency files come in two shapes, told apart by their header:

- Azure Migrate's dependency export as it comes (``Time slot, Source server name, Source IP,
  Source application, Source process, Destination server name, Destination IP, Destination
  application, Destination process, Destination port``); servers matched by name (also the
  short name of an FQDN), else by IP against the inventory;
- a plain ``source,destination,port[,kind]`` CSV (header optional), names or IPs.

Rows naming servers the inventory does not have are counted and listed, never fatal.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator

from cutover.inventory import Inventory
from cutover.plan.model import Dependency, DependencyRead, Mapping, UnknownServer

AZURE_COLUMNS = (
    "Source server name",
    "Source IP",
    "Destination server name",
    "Destination IP",
    "Destination process",
    "Destination port",
)


def _open_csv(path: str) -> Iterator[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield from csv.reader(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a CSV file ({exc})") from None


def read_mapping(path: str) -> dict[str, Mapping]:
    """`vm,application[,owner,criticality,environment]` (header optional), by VM name."""
    out: dict[str, Mapping] = {}
    for n, row in enumerate(_open_csv(path), 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if n == 1 and [c.lower() for c in cells[:2]] == ["vm", "application"]:
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(
                f"{path}: line {n}: expected vm,application[,owner,criticality,environment]"
            )
        cells += [""] * (5 - len(cells))
        out[cells[0]] = Mapping(
            vm=cells[0],
            application=cells[1],
            owner=cells[2] or None,
            criticality=cells[3].lower() or None,
            environment=cells[4].lower() or None,
        )
    return out


class _Resolver:
    """Server names and IPs -> VM morefs (names case-insensitive, FQDNs by short name too)."""

    def __init__(self, inventory: Inventory) -> None:
        self.names: dict[str, str] = {}
        self.ips: dict[str, str] = {}
        for vm in sorted(inventory.vms, key=lambda v: v.moref):
            if vm.template:
                continue
            for key in (vm.name, vm.guestHostname or ""):
                key = key.lower()
                if key:
                    self.names.setdefault(key, vm.moref)
                    self.names.setdefault(key.split(".")[0], vm.moref)
            for ip in vm.ipAddresses:
                self.ips.setdefault(ip, vm.moref)

    def __call__(self, name: str, ip: str = "") -> str | None:
        key = name.strip().lower()
        found = self.names.get(key) or self.names.get(key.split(".")[0]) if key else None
        if found is None and ip.strip():
            found = self.ips.get(ip.strip())
        if found is None and key:
            found = self.ips.get(key)  # plain CSVs may name servers by IP
        return found


def _port(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def read_dependencies(paths: Iterable[str], inventory: Inventory) -> DependencyRead:
    """Every dependency file, resolved against the inventory."""
    resolve = _Resolver(inventory)
    read = DependencyRead()
    unknown: Counter[tuple[str, str]] = Counter()
    for path in paths:
        read.files.append(path)
        rows = _open_csv(path)
        header = next(rows, None)
        if header is None:
            continue
        head = [h.strip() for h in header]
        if "Source server name" in head:
            missing = [c for c in AZURE_COLUMNS if c not in head]
            if missing:
                raise ValueError(
                    f"{path}: an Azure Migrate dependency export without column {missing[0]!r}"
                )
            at = {c: head.index(c) for c in AZURE_COLUMNS}

            def cell(row: list[str], col: str, at: dict[str, int] = at) -> str:
                i = at[col]
                return row[i].strip() if i < len(row) else ""

            for row in rows:
                if not any(c.strip() for c in row):
                    continue
                read.rows += 1
                sn, dn = cell(row, "Source server name"), cell(row, "Destination server name")
                src = resolve(sn, cell(row, "Source IP"))
                dst = resolve(dn, cell(row, "Destination IP"))
                for name, ip, vm in (
                    (sn, cell(row, "Source IP"), src),
                    (dn, cell(row, "Destination IP"), dst),
                ):
                    if vm is None:
                        unknown[(name or ip or "(blank)", path)] += 1
                if src is None or dst is None:
                    read.unknownRows += 1
                    continue
                read.edges.append(
                    Dependency(
                        source=src,
                        destination=dst,
                        port=_port(cell(row, "Destination port")),
                        kind=cell(row, "Destination process").lower(),
                    )
                )
            continue
        first = [h.lower() for h in head]
        body: Iterable[list[str]] = rows
        if not (first[:2] == ["source", "destination"] or (len(head) >= 3 and not _port(head[2]))):
            body = [header, *rows]  # no header: the first row is data
        for n, row in enumerate(body, 1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) < 2:
                raise ValueError(f"{path}: row {n}: expected source,destination,port[,kind]")
            read.rows += 1
            src, dst = resolve(cells[0]), resolve(cells[1])
            for name, vm in ((cells[0], src), (cells[1], dst)):
                if vm is None:
                    unknown[(name or "(blank)", path)] += 1
            if src is None or dst is None:
                read.unknownRows += 1
                continue
            port = _port(cells[2]) if len(cells) > 2 and cells[2] else None
            read.edges.append(
                Dependency(
                    source=src,
                    destination=dst,
                    port=port,
                    kind=cells[3].lower() if len(cells) > 3 else "",
                )
            )
    read.unknown = [
        UnknownServer(name=name, file=file, rows=count)
        for (name, file), count in sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return read
