"""Kubernetes manifest files as a configuration source (`--manifests DIR`).

Each path is a file or a directory. A directory is read like `kubectl apply -f
DIR` without `-R`: its `*.yaml`, `*.yml` and `*.json` files, sorted by name,
not recursively (a subdirectory is noted, not read) and skipping hidden
files. A file given by name is read whatever its suffix. Files hold one or
more YAML documents (JSON is YAML); a `kind: List` (or `IngressList`, ...)
document is expanded into its `items`.

Every `load()` reads everything again: that is how SIGHUP reloads. The
objects go through `meshgate.config.manifests.translate`; its problems and
notes are kept on the source as `problems` and `notes` of the last load: an
invalid object is skipped and reported, the rest is served.

`load()` raises ConfigError when a file cannot be used at all: a path that
does not exist, a file or directory the process may not read, a file that is
not UTF-8 or not valid YAML (named with its line). Loading without it would
withdraw its routes, so the caller keeps the table it has (a half-saved edit
changes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshgate.config.manifests import IngressOptions, KubeObject, translate
from meshgate.config.model import Config
from meshgate.errors import ConfigError, ConfigProblem

SUFFIXES = frozenset({".yaml", ".yml", ".json"})
INVALID_YAML = "invalid YAML"  # how parse_documents starts a syntax error's reason


def parse_documents(text: str, source: str) -> tuple[list[KubeObject], list[ConfigProblem]]:
    """The objects of a multi-document YAML text, each with its start line.

    A syntax error is a problem at its line; the documents before it are kept.
    """
    objects: list[KubeObject] = []
    problems: list[ConfigProblem] = []
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character: can raise already
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is None:
                continue  # an empty document, e.g. a trailing `---`
            line = _line_of(node)
            if _is_list(data):
                objects.extend(_list_items(data, node, source, line, problems))
            else:
                objects.append(KubeObject(data, source, line))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        detail = err.problem or str(err)
        if err.problem and err.context:
            detail += f" ({err.context})"
        problems.append(
            ConfigProblem(
                source,
                "",
                "",
                f"{INVALID_YAML}: {detail}",
                mark.line + 1 if mark is not None else None,
            )
        )
    except yaml.YAMLError as err:
        reason = f"{INVALID_YAML}: {err}"
        problems.append(ConfigProblem(source, "", "", reason))
    except RecursionError:
        reason = f"{INVALID_YAML}: nested too deeply"
        problems.append(ConfigProblem(source, "", "", reason))
    except (ValueError, IndexError, TypeError, OverflowError) as err:
        # PyYAML's constructors raise these for a typed scalar that is not
        # one: an unquoted `creationTimestamp: 2024-02-30`, an empty `!!int`.
        problems.append(ConfigProblem(source, "", "", f"{INVALID_YAML} value: {err}"))
    finally:
        if loader is not None:
            loader.dispose()
    return objects, problems


def _line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_list(data: object) -> bool:
    if not isinstance(data, Mapping):
        return False
    kind = data.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in data


def _list_items(
    data: Mapping[str, object],
    node: Node,
    source: str,
    line: int,
    problems: list[ConfigProblem],
) -> list[KubeObject]:
    items = data.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        reason = f"a {data.get('kind')}'s items must be a list"
        problems.append(ConfigProblem(source, str(data.get("kind")), "items", reason, line))
        return []
    lines: list[int] = []
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if (
                isinstance(key, ScalarNode)
                and key.value == "items"
                and isinstance(value, SequenceNode)
            ):
                lines = [_line_of(item) for item in value.value]
    return [
        KubeObject(item, source, lines[i] if i < len(lines) else line)
        for i, item in enumerate(items)
    ]


class ManifestSource:
    """Kubernetes objects from files and directories, translated on each load."""

    def __init__(self, paths: Sequence[str | Path], options: IngressOptions | None = None) -> None:
        self.paths: tuple[str | Path, ...] = tuple(paths)
        self.options = options if options is not None else IngressOptions()
        # Of the last load():
        self.problems: tuple[ConfigProblem, ...] = ()
        self.notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "--manifests " + ",".join(str(p) for p in self.paths)

    def load(self) -> Config:
        errors: list[ConfigProblem] = []
        problems: list[ConfigProblem] = []
        notes: list[str] = []
        objects: list[KubeObject] = []
        for path in self.paths:
            for file in self._files(Path(path), errors, notes):
                text = self._read(file, errors, problems)
                if text is not None:
                    found, trouble = parse_documents(text, str(file))
                    objects.extend(found)
                    for problem in trouble:
                        (errors if problem.reason.startswith(INVALID_YAML) else problems).append(
                            problem
                        )
        if errors:
            raise ConfigError(errors)
        translation = translate(objects, self.options)
        self.problems = (*problems, *translation.problems)
        self.notes = (*notes, *translation.notes)
        return translation.config

    @staticmethod
    def _files(path: Path, errors: list[ConfigProblem], notes: list[str]) -> list[Path]:
        source = str(path)
        try:
            if not path.is_dir():
                if not path.exists():
                    errors.append(ConfigProblem(source, "", "", "no such file or directory"))
                    return []
                return [path]
            entries = sorted(path.iterdir(), key=lambda p: p.name)
        except OSError as err:
            errors.append(ConfigProblem(source, "", "", f"cannot read: {err.strerror or err}"))
            return []
        files: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                notes.append(f"{entry}: subdirectory not read (--manifests is not recursive)")
            elif entry.suffix.lower() in SUFFIXES:
                files.append(entry)
        if not files:
            notes.append(f"{path}: no .yaml, .yml or .json files")
        return files

    @staticmethod
    def _read(file: Path, errors: list[ConfigProblem], problems: list[ConfigProblem]) -> str | None:
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            errors.append(ConfigProblem(str(file), "", "", "no such file"))
            return None
        except OSError as err:
            errors.append(ConfigProblem(str(file), "", "", f"cannot read: {err.strerror or err}"))
            return None
        try:
            # utf-8-sig: a byte order mark left by some Windows editors is fine.
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            errors.append(ConfigProblem(str(file), "", "", f"not UTF-8 text (byte {err.start})"))
            return None
