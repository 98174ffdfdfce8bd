"""Load the inventory: YAML files -> `${ENV}` substitution -> merge -> schema -> cross-checks.

Every problem is reported with its file, line and dotted path, all at once, sorted, in one
`ConfigError`; nothing downstream ever sees a raw dict.
"""

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from collector.inventory.checks import check_alerting
from collector.inventory.models import (
    CostKpi,
    DurationKpi,
    Inventory,
    OverdueKpi,
    Process,
    RatioKpi,
    SlaKpi,
)
from collector.inventory.sources import RECORD_STORE_TABLES, SOURCE_KINDS, TmfEventsSource
from collector.inventory.webconfig import WebConfig
from collector.logs import safe_dsn

VARIABLE = re.compile(r"\$\{(?:file:(?P<file>[^}]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")
"""A `${VAR}`, `${VAR:-default}` or `${file:/path}` reference in a value (the JSON Schema publishes it too)."""
RESERVED_LABELS = frozenset({"process", "kpi", "outcome", "component", "currency", "le", "source",
                             "reason", "bound", "job", "instance", "quantile"})
_MERGEABLE = re.compile(r"^(service|sources|processes|processes\.[^.]+|processes\.[^.]+\.(kpis|costs))$")
"""Mappings that several files may extend; anything below them is defined by one file only."""
MAX_FILE_BYTES = 1024 * 1024
"""Largest inventory file read (the example is 12 KB): PyYAML parses about 1 MiB a second."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists; PyYAML composes recursively and would overflow the stack."""
MAX_NODES = 50_000
"""Most YAML values a file may hold, or stand for once its aliases are expanded (a "billion laughs"
is refused); the example holds 1,425. Each costs PyYAML about 50 µs and 1 KB."""
SHOWN_CHARS = 200
"""Longest value quoted whole in a problem."""
_LONG_QUOTE = re.compile(rf"'([^'\n]{{{SHOWN_CHARS + 1},}})'")
_SQL_WORDS = frozenset("""and or not is null in like between case when then else end true false
    coalesce cast as integer real text float double precision lower upper abs exists select from
    where distinct length substr trim""".split())


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __post_init__(self) -> None:
        # A bad value may be a megabyte long: a problem quotes its start, never the whole of it.
        message = _LONG_QUOTE.sub(lambda m: _shown(m[1]), self.message)
        object.__setattr__(self, "message", shorten(message, 5 * SHOWN_CHARS))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """Return `text` cut to `limit` characters, with an ellipsis and its full length when cut."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class ConfigError(Exception):
    """The inventory is invalid; `problems` lists each reason with its place."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class _Origins:
    """Which file and line each dotted path came from (the first file wins)."""

    lines: dict[str, tuple[str, int]] = field(default_factory=dict)

    def locate(self, path: str) -> tuple[str, int]:
        probe = path
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe.rpartition(".")[0]
        return self.lines.get("", ("<inventory>", 0))


def load_inventory(paths: Sequence[str | Path], environ: Mapping[str, str] | None = None) -> Inventory:
    """Load, merge and check the inventory files; raise `ConfigError` naming every problem."""
    env = os.environ if environ is None else environ
    origins = _Origins()
    problems: list[Problem] = []
    merged: dict[str, Any] = {}
    for path in paths:
        document = _read_file(Path(path), origins, problems)
        if document is not None:
            # Top-level `x-...` keys hold YAML anchors to reuse (as in Compose files); they are not
            # config, and anchors are per file: two files may each have their own `x-columns`.
            document = {k: v for k, v in document.items() if not str(k).startswith("x-")}
            _merge(merged, document, "", str(path), origins, problems)
    substituted = _substitute(merged, "", env, origins, problems)
    if problems:
        raise ConfigError(problems)
    try:
        inventory = Inventory.model_validate(substituted)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(exc, origins)) from None
    problems = [_problem(origins, path, msg) for path, msg in cross_check(inventory)]
    if problems:
        raise ConfigError(problems)
    return inventory


def load_web_config(path: str | Path) -> WebConfig:
    """Load the service port's web configuration file (exporter-toolkit format); raise `ConfigError`
    naming every problem, with the same limits on hostile YAML as the inventory."""
    origins = _Origins()
    problems: list[Problem] = []
    document = _read_file(Path(path), origins, problems, what="tls_server_config, basic_auth_users")
    if problems or document is None:
        raise ConfigError(problems)
    try:
        return WebConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(exc, origins)) from None


def _read_file(path: Path, origins: _Origins, problems: list[Problem],
               what: str = "service, sources, processes") -> dict[str, Any] | None:
    text = _read_text(path, problems)
    if text is None:
        return None
    loader = None
    try:
        loader = _StrictLoader(text)  # its reader refuses a control character at once
        node = loader.get_single_node()
        _check_size(node)
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        problems.append(Problem(str(path), line, "", f"invalid YAML: {exc.problem}"))
        return None
    except yaml.reader.ReaderError as exc:  # a control character: no mark, a position in the text
        line = text.count("\n", 0, exc.position) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        problems.append(Problem(str(path), line, "", f"invalid YAML: character #x{code:04x} is not allowed "
                                                     "(a control character)"))
        return None
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]
    if origins.lines.get("") is None:  # where a missing top-level section is reported
        origins.lines[""] = (str(path), 1)
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(Problem(str(path), 1, "", f"the file must hold a mapping ({what})"))
        return None
    _record_lines(node, "", str(path), origins)
    return data


def _read_text(path: Path, problems: list[Problem]) -> str | None:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)  # never more, whatever the file's size
        text = raw.decode("utf-8")
    except OSError as exc:
        problems.append(Problem(str(path), 0, "", f"cannot read the file: {exc.strerror}"))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(path), 0, "", f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset "
                                                  f"{exc.start}; save the file as UTF-8"))
        return None
    if len(raw) > MAX_FILE_BYTES:
        problems.append(Problem(str(path), 0, "", f"over {MAX_FILE_BYTES // (1024 * 1024)} MiB: not an inventory"))
        return None
    return text


def _check_size(root: yaml.Node | None) -> None:
    """Refuse a document whose aliases expand to more than `MAX_NODES` nodes or `MAX_DEPTH` levels,
    or refer to a node that holds them (a cycle); each node is visited once: linear in the file."""
    done: dict[int, tuple[int, int]] = {}  # node -> (nodes, depth) once expanded
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, children_done = stack.pop()
        if children_done:
            sizes = [done[id(c)] for c in _children(node)]
            done[id(node)] = (min(MAX_NODES + 1, 1 + sum(n for n, _ in sizes)),
                              1 + max((d for _, d in sizes), default=0))
            open_.discard(id(node))
            _refuse_if_too_big(node, *done[id(node)])
            continue
        if id(node) in done:
            continue
        if id(node) in open_:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that holds it",
                                              node.start_mark)
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in done)


def _refuse_if_too_big(node: yaml.Node, nodes: int, depth: int) -> None:
    if nodes > MAX_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"its aliases expand to over {MAX_NODES:,} values (an alias bomb?)", node.start_mark)
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(
            None, None, f"its aliases nest over {MAX_DEPTH} levels deep", node.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (e.g. a duplicate KPI), nesting
    deeper than `MAX_DEPTH` before PyYAML's recursive composer overflows the stack, and more than
    `MAX_NODES` values before they take seconds and gigabytes."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, counting how deep it nests and how many came before it."""
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested over {MAX_DEPTH} levels deep",
                                              self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"holds over {MAX_NODES:,} values",
                                              self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call,no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key: SafeLoader's own error names it, with its line
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _record_lines(node: yaml.Node | None, path: str, file: str, origins: _Origins) -> None:
    if node is None:
        return
    origins.lines.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            origins.lines.setdefault(child, (file, key.start_mark.line + 1))
            _record_lines(value, child, file, origins)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, f"{path}.{index}", file, origins)


def _merge(into: dict[str, Any], new: Mapping[str, Any], path: str, file: str,
           origins: _Origins, problems: list[Problem]) -> None:
    """Merge mappings recursively; a value given by two files is a problem, not an override."""
    for key, value in new.items():
        child = f"{path}.{key}" if path else str(key)
        if key not in into:
            into[key] = value
        elif _MERGEABLE.match(child) and isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, child, file, origins, problems)
        else:
            first, _ = origins.locate(child)
            what = "duplicate KPI" if ".kpis." in child else "given twice"
            problems.append(Problem(file, 0, child, f"{what}: already defined in {first}"))


def _substitute(value: Any, path: str, env: Mapping[str, str], origins: _Origins,
                problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), env, origins, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}.{i}", env, origins, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("file"):
            return _read_secret(match.group("file"), path, origins, problems)
        name, default = match.group("name"), match.group("default")
        if env.get(name) or (name in env and default is None):
            return env[name]
        if default is not None:  # `${VAR:-default}`: unset or empty, as in a shell
            return default
        problems.append(_problem(origins, path, f"environment variable {name} is not set"))
        return ""

    return VARIABLE.sub(replace, value)


def _read_secret(file: str, path: str, origins: _Origins, problems: list[Problem]) -> str:
    try:
        return Path(file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(_problem(origins, path, f"cannot read secret file {file}: {exc.strerror}"))
    except UnicodeDecodeError:
        problems.append(_problem(origins, path, f"secret file {file} is not UTF-8 text"))
    return ""


def _validation_problems(exc: ValidationError, origins: _Origins) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        # A discriminated union adds the chosen tag ("sla") to the location: drop it.
        if len(loc) >= 5 and loc[2] == "kpis" and loc[4] in {"volume", "backlog", "overdue", "duration",
                                                               "sla", "ratio", "cost", "value"}:
            del loc[4]
        if len(loc) >= 3 and loc[0] == "sources" and loc[2] in SOURCE_KINDS:
            del loc[2]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "string_pattern_mismatch":
            message = f"{_shown(error['input'])} does not match {error['ctx']['pattern']}"
        elif isinstance(error["input"], str) and len(error["input"]) > SHOWN_CHARS:
            message = message.replace(repr(error["input"]), _shown(error["input"]))
        problems.append(_problem(origins, ".".join(loc), message))
    return problems


def _shown(value: object) -> str:
    """Quote a bad value for a problem: its start only, and a URL's credentials masked."""
    text = safe_dsn(value) if isinstance(value, str) and "://" in value else value
    if isinstance(text, str) and len(text) > SHOWN_CHARS:
        return f"{text[:SHOWN_CHARS]!r}… ({len(text):,} characters)"
    return shorten(repr(text))


def _problem(origins: _Origins, path: str, message: str) -> Problem:
    file, line = origins.locate(path)
    return Problem(file, line, path, message)


def cross_check(inventory: Inventory) -> list[tuple[str, str]]:
    """Return (path, message) for each inconsistency between parts of the inventory."""


    problems: list[tuple[str, str]] = []
    costs = sorted(n for n, s in inventory.sources.items() if s.kind == "cost_csv")
    for name, process in inventory.processes.items():
        problems += _check_process(f"processes.{name}", process, set(inventory.sources))
        problems += [(f"processes.{name}.costs.{c}.monthly_from",
                      f"{cost.monthly_from!r} is not a cost_csv source; cost_csv sources: {', '.join(costs) or 'none'}")
                     for c, cost in process.costs.items()
                     if cost.monthly_from is not None and cost.monthly_from not in costs]
    syncing = {n for n, s in inventory.sources.items() if s.kind != "sql"}
    problems += [(f"processes.{name}.records.query", "records.query reads a SQL source; a "
                  f"{inventory.sources[process.records.source].kind} source keeps its records in a table of its "
                  "record store: give records.table")
                 for name, process in inventory.processes.items()
                 if process.records.source in syncing and process.records.query is not None]
    problems += [(f"processes.{name}.records.table", f"{process.records.table!r} is a table of the record store "
                  f"itself; choose another name (reserved: {', '.join(sorted(RECORD_STORE_TABLES))})")
                 for name, process in inventory.processes.items()
                 if process.records.source in syncing and process.records.table in RECORD_STORE_TABLES
                 and process.records.table is not None]
    return problems + callback_problems(inventory) + check_alerting(inventory)


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def callback_problems(inventory: Inventory) -> list[tuple[str, str]]:
    """A hub registration needs an address the hub can call: the default callback is built from the
    service's listen address, which is no such address when it is a wildcard (all interfaces)."""
    service = inventory.service
    host = service.events_address[0] if service.events_address is not None else service.host
    if host not in _WILDCARDS:
        return []
    where = "service.events_listen" if service.events_address is not None else "service.listen"
    return [(f"sources.{name}.callback", f"required with hub_url: {where} is {host or '*'} (every interface), "
             "not an address the hub can call back; give the URL the hub reaches fabwatch at")
            for name, source in inventory.sources.items()
            if isinstance(source, TmfEventsSource) and source.hub_url is not None and source.callback is None]


def _check_process(path: str, process: Process, sources: set[str]) -> list[tuple[str, str]]:
    records, columns = process.records, process.records.columns
    known = columns.all()
    problems: list[tuple[str, str]] = []
    if records.source not in sources:
        problems.append((f"{path}.records.source",
                         f"unknown source {records.source!r}; known: {', '.join(sorted(sources)) or 'none'}"))
    for index, dim in enumerate(columns.dimensions):
        if dim in RESERVED_LABELS:
            problems.append((f"{path}.records.columns.dimensions.{index}",
                             f"{dim!r} is a label fabwatch sets itself; rename the column in the mapping"))
        elif dim in columns.dimensions[:index]:
            problems.append((f"{path}.records.columns.dimensions.{index}",
                             f"{dim!r} is already dimension {columns.dimensions.index(dim)}: a label may "
                             "appear once per series (Prometheus rejects the whole scrape otherwise)"))
    for name, cost in process.costs.items():
        if cost.driver is not None and cost.driver not in known:
            problems.append((f"{path}.costs.{name}.driver", _unknown_column(cost.driver, known)))
    for name, kpi in process.kpis.items():
        problems += [(f"{path}.kpis.{name}{sub}", msg) for sub, msg in _check_kpi(kpi, process, known)]
    buckets = {k.buckets for k in process.kpis.values() if isinstance(k, DurationKpi)}
    if len(buckets) > 1:
        problems.append((f"{path}.kpis", "all duration KPIs of a process share one histogram: "
                         "give them the same buckets"))
    if records.where:
        problems += [(f"{path}.records.where", _unknown_column(c, known))
                     for c in predicate_columns(records.where) - known]
    for kind in ("time_types", "lookups"):
        problems += [(f"{path}.records.{kind}.{c}", _unknown_column(c, known))
                     for c in sorted(set(getattr(records, kind)) - known)]
    times = {columns.created, columns.completed, columns.due} - {None}
    problems += [(f"{path}.records.time_types.{c}", f"{c!r} is not a time column of the mapping (created, "
                  f"completed, due: {', '.join(sorted(str(t) for t in times))})")
                 for c in sorted(set(records.time_types) & known - times)]
    return problems


def _check_kpi(kpi: object, process: Process, known: set[str]) -> list[tuple[str, str]]:
    columns = process.records.columns
    needs: list[tuple[str, str | None]] = []
    if isinstance(kpi, DurationKpi | SlaKpi | CostKpi) or getattr(kpi, "of", None) == "completed":
        needs.append(("completed", columns.completed))
    if isinstance(kpi, OverdueKpi) or (isinstance(kpi, SlaKpi) and kpi.good is None):
        needs.append(("due", columns.due))
    problems = [("", f"a {kpi.kind} KPI needs records.columns.{what}")  # type: ignore[attr-defined]
                for what, column in needs if column is None]
    if isinstance(kpi, CostKpi) and not process.costs:
        problems.append(("", "a cost KPI needs at least one entry under costs"))
    if isinstance(kpi, RatioKpi | SlaKpi) and kpi.good:
        problems += [(".good", _unknown_column(c, known)) for c in predicate_columns(kpi.good) - known]
    return problems


def _unknown_column(column: str, known: set[str]) -> str:
    return f"unknown column {column!r}; the records mapping declares: {', '.join(sorted(known))}"


def predicate_columns(predicate: str) -> set[str]:
    """Return the identifiers a simple SQL predicate refers to (string literals and keywords removed)."""
    without_strings = re.sub(r"'(?:[^']|'')*'", " ", predicate)
    words = re.findall(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", without_strings)
    return {w for w in words if w.lower() not in _SQL_WORDS}
