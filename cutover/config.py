"""Loading YAML files into pydantic models with errors a person can act on.

Every problem is reported as `FILE: field.path: message (line N)`; nothing here ever lets a
traceback reach the operator for bad input.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input file."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        path = self.path or "(document)"
        # One problem, one line: input echoed in a message may hold line breaks.
        text = f"{self.file}: {path}: {self.message}{where}"
        return text.replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(Exception):
    """Bad input: carries every problem found, never a partial result."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: with plain YAML the last one silently wins."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    if not isinstance(node, yaml.MappingNode):  # e.g. `!!map [1]`: let PyYAML report it
        return loader.construct_mapping(node, deep=deep)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, merged by PyYAML
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # a list or mapping as a key: PyYAML reports it with its line
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first at line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """Best line for a pydantic error location: the deepest node the path still reaches."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every key a model tree accepts, for "did you mean" hints on unknown keys."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for arg in _walk_types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names |= _field_names(arg, seen)
    return names


def _walk_types(tp: Any) -> Iterable[Any]:
    yield tp
    for arg in get_args(tp):
        yield from _walk_types(arg)


def _message(err: Any, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1]) if err["loc"] else ""
        close = difflib.get_close_matches(key, sorted(_field_names(model)), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown key (unknown keys are rejected){hint}"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


#: A file larger than this is refused before it is read (a site, runbook or wave file of
#: thousands of applications is a few MiB).
MAX_FILE_BYTES = 16 << 20
#: Alias uses (`*anchor`, `<<: *anchor`) in one document (a wave of 2,600 applications
#: written with anchors uses about 10,000; the values limit is what stops a bomb).
MAX_ALIASES = 100_000
#: Values in a document once its aliases are expanded: what JSON (the workflow's input)
#: would carry. A few levels of nested aliases multiply it (an "alias bomb").
MAX_EXPANDED_VALUES = 1_000_000


def _expansion(root: yaml.Node) -> tuple[int, int]:
    """(alias uses, values once every alias is expanded), in time linear in the nodes the
    document really has (sizes are memoized per node: an alias reuses its target's)."""
    size: dict[int, int] = {}
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            size[key] = min(1 + sum(size.get(id(c), 0) for c in children), 1 << 62)
            continue
        if key in size or key in on_path:
            aliases += 1  # the same node reached again: an alias use
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(_children(node)))
    return aliases, size.get(id(root), 1)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document; raise ConfigError naming the file and line on bad syntax,
    or on a document whose aliases expand past the limits (before building any value)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            aliases, values = _expansion(node)
            if aliases > MAX_ALIASES or values > MAX_EXPANDED_VALUES:
                raise ConfigError([Problem(file, "", (
                    f"refused: {aliases} alias uses expanding to {values:,} values (limits: "
                    f"{MAX_ALIASES:,} aliases, {MAX_EXPANDED_VALUES:,} values); write the "
                    "values out instead of nesting aliases"))])  # fmt: skip
        data = _Loader(text).get_single_data() if node is not None else None
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ConfigError([Problem(file, "", f"invalid YAML: {problem}", line)]) from None
    except yaml.YAMLError as exc:  # e.g. a control character: no mark, a multi-line str
        reason = " ".join(str(exc).split())
        raise ConfigError([Problem(file, "", f"invalid YAML: {reason}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "", "invalid YAML: nested too deeply")]) from None
    except Exception as exc:  # PyYAML constructors raise plain errors, e.g. `a: 2024-02-30`
        msg = f"invalid YAML: cannot read a value ({type(exc).__name__}: {exc})"
        raise ConfigError([Problem(file, "", msg)]) from None
    return data, node


_NOT_FOUND = object()


def _input_loc(data: Any, loc: Sequence[int | str], fields: set[str]) -> tuple[int | str, ...]:
    """An error's location in the file. Pydantic puts union member tags in locations
    (`float`, `int`, `constrained-int`, a discriminator value such as `command`); they name
    nothing in the file, so only keys present in the data, list indexes, and field names
    (a missing or defaulted field) are kept."""
    out: list[int | str] = []
    for part in loc:
        if isinstance(data, dict):
            key = next((k for k in data if k == part or str(k) == part), _NOT_FOUND)
            if key is not _NOT_FOUND:
                out.append(part)
                data = data[key]
                continue
        elif isinstance(data, list) and type(part) is int and 0 <= part < len(data):
            out.append(part)
            data = data[part]
            continue
        if isinstance(part, str) and part in fields:
            out.append(part)
            data = None
    return tuple(out)


def validate_document(
    model: type[M],
    data: Any,
    file: str,
    node: yaml.Node | None = None,
    context: dict[str, Any] | None = None,
) -> M:
    """Validate parsed data against a model, turning every error into a located Problem."""
    if not isinstance(data, dict):
        kind = "empty document" if data is None else f"a {type(data).__name__}"
        raise ConfigError([Problem(file, "", f"expected a mapping of keys to values, got {kind}")])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        problems: list[Problem] = []
        fields = _field_names(model)
        for e in exc.errors():
            loc = _input_loc(data, e["loc"], fields)
            problem = Problem(file, format_path(loc), _message(e, model), _line_of(node, loc))
            if problem not in problems:
                problems.append(problem)
        raise ConfigError(problems) from None


def read_text(path: str | Path) -> str:
    """A config file's text; ConfigError when it cannot be read or is oversized (refused
    before reading it)."""
    file = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError([Problem(file, "", f"refused: {size:,} bytes, more than the "
                                       f"{MAX_FILE_BYTES:,} a config file may have")])  # fmt: skip
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(file, "", f"cannot read file: {reason}")]) from None


def load_file(model: type[M], path: str | Path, context: dict[str, Any] | None = None) -> M:
    """Read, parse and validate one YAML file."""
    file = str(path)
    data, node = parse_yaml(read_text(path), file)
    return validate_document(model, data, file, node, context)
