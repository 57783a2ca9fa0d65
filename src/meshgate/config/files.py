"""YAML configuration files -> validated `Config`, errors carrying file, line and field.

The schema is the `Config` model itself, e.g.::

    listeners:
      - name: web
        address: 100.100.0.2
        port: 80
        backend: web
    backends:
      - name: web
        endpoints: ["web.default.svc.cluster.local:80", "[fd00::1]:80"]

Loading goes text -> YAML node tree (lines known) -> plain data -> pydantic
-> `merge.validate`. The loader remembers the line of every mapping key and
sequence item, so each pydantic error, whose `loc` is a path such as
`("listeners", 0, "port")`, is reported at the line the user has to edit.
Only `load_file` touches the file system; `parse_yaml` is pure.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshgate.config.merge import validate
from meshgate.config.model import Config
from meshgate.errors import ConfigError, ConfigProblem

# A position in the loaded data: mapping keys are str, sequence indexes int,
# the same shape as a pydantic error's `loc`.
DataPath = tuple[str | int, ...]

_NAME_RULE = "use letters, digits, '.', '_' and '-', starting and ending with a letter or digit"


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that also records the 1-based line of each key and item."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[DataPath, int] = {}
        # PyYAML silently keeps the last of repeated keys; we report them.
        self.duplicate_keys: list[tuple[DataPath, int]] = []

    def load_with_lines(self) -> tuple[Node | None, object]:
        """The document's root node (None for an empty stream) and its data."""
        node = self.get_single_node()
        if node is None:
            return None, None
        self._record(node)
        return node, self.construct_document(node)

    def _record(self, root: Node) -> None:
        self.lines[()] = _line_of(root)
        # Iterative, and each node visited once: an alias is the same node
        # object as its anchor, so a "billion laughs" document stays linear.
        seen: set[int] = set()
        stack: list[tuple[DataPath, Node]] = [((), root)]
        while stack:
            path, node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, MappingNode):
                keys: set[str] = set()
                for key_node, value_node in node.value:
                    if not isinstance(key_node, ScalarNode):
                        continue
                    child = (*path, str(key_node.value))
                    if key_node.value in keys:
                        self.duplicate_keys.append((child, _line_of(key_node)))
                    else:
                        keys.add(key_node.value)
                        self.lines[child] = _line_of(key_node)
                    stack.append((child, value_node))
            elif isinstance(node, SequenceNode):
                for index, item in enumerate(node.value):
                    self.lines[(*path, index)] = _line_of(item)
                    stack.append(((*path, index), item))


def _line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def dotted(path: DataPath) -> str:
    """("listeners", 0, "port") -> "listeners[0].port"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def load_file(path: str | Path) -> Config:
    """Read, parse and fully validate one YAML file."""
    source = str(path)
    try:
        # utf-8-sig: a byte order mark left by some Windows editors is fine.
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError.one(source, "", "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError.one(source, "", "", "is a directory, not a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError.one(source, "", "", f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError.one(source, "", "", f"cannot read: {err.strerror or err}") from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str) -> Config:
    """Parse and fully validate YAML text; `source` names it in errors."""
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # checks every character: can raise already
        root, data = loader.load_with_lines()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        # PyYAML's `problem` is what went wrong, `context` what it was doing.
        detail = err.problem or str(err)
        if err.problem and err.context:
            detail += f" ({err.context})"
        reason = f"invalid YAML: {detail}"
        line = mark.line + 1 if mark is not None else None
        raise ConfigError.one(source, "", "", reason, line) from None
    except yaml.YAMLError as err:
        raise ConfigError.one(source, "", "", f"invalid YAML: {err}") from None
    except RecursionError:
        raise ConfigError.one(source, "", "", "invalid YAML: nested too deeply") from None
    except (ValueError, IndexError, TypeError, OverflowError) as err:
        # PyYAML's constructors raise these for a typed scalar that is not
        # one: `2024-02-30` as a date, an empty `!!int`.
        raise ConfigError.one(source, "", "", f"invalid YAML value: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()

    if root is None:
        raise ConfigError.one(source, "", "", "file is empty; expected listeners and backends")
    if not isinstance(data, dict):
        reason = f"expected a mapping (listeners:, backends:) at the top, got {_kind(data)}"
        raise ConfigError.one(source, "", "", reason, _line_of(root))

    problems = [
        ConfigProblem(
            source,
            _object_label(path, data),
            dotted(path),
            f"duplicate key '{path[-1]}' (YAML would silently keep only the last)",
            line,
        )
        for path, line in loader.duplicate_keys
    ]
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems += [_problem(e, data, source, loader.lines) for e in err.errors()]
    if problems:
        raise ConfigError(problems)
    validate(config, source, {dotted(path): line for path, line in loader.lines.items()})
    return config


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r:.40})"


def _object_label(loc: DataPath, data: Mapping[object, object]) -> str:
    """ "listeners[0] (web)" for anything inside a list item, "" at the top."""
    if len(loc) < 2 or not isinstance(loc[1], int):
        return ""
    label = f"{loc[0]}[{loc[1]}]"
    items = data.get(loc[0])
    if isinstance(items, list) and loc[1] < len(items):
        item = items[loc[1]]
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
    return label


def _nearest_line(loc: DataPath, lines: Mapping[DataPath, int]) -> int | None:
    """The line of `loc`, or of its nearest parent (a missing key has none)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _problem(
    err: ErrorDetails, data: Mapping[object, object], source: str, lines: Mapping[DataPath, int]
) -> ConfigProblem:
    loc: DataPath = tuple(err["loc"])
    return ConfigProblem(
        source=source,
        object=_object_label(loc, data),
        field=dotted(loc),
        reason=_reason(err, loc),
        line=_nearest_line(loc, lines),
    )


def _reason(err: ErrorDetails, loc: DataPath) -> str:
    """Pydantic's message, reworded where it would puzzle someone editing YAML."""
    kind, value, last = err["type"], err["input"], loc[-1] if loc else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(last), allowed, n=1)
        if close:
            return f"unknown key '{last}'; did you mean '{close[0]}'?"
        if allowed:
            return f"unknown key '{last}'; expected one of: {', '.join(allowed)}"
        return f"unknown key '{last}'"
    if kind == "missing":
        return f"missing required key '{last}'"
    if kind in ("value_error", "assertion_error"):
        # Our own validators' messages, after pydantic's "Value error, " prefix.
        return str(err["msg"]).partition(", ")[2] or err["msg"]
    if kind == "string_pattern_mismatch" and last in ("name", "backend"):
        return f"{value!r} is not a valid name: {_NAME_RULE}"
    message = err["msg"].replace("a valid tuple", "a list")
    message = message[:1].lower() + message[1:]
    if isinstance(value, str | int | float | bool) or value is None:
        message += f", got {value!r}"
    return message


def _allowed_keys(loc: DataPath) -> list[str]:
    """The keys the model at `loc` accepts, found by walking the field types."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a tuple field: same model
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model inside an annotation such as `tuple[Listener, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
