"""The project file (``aimesh.yaml``) read with the line of every key, so errors point at it.

The YAML is composed into nodes (which keep their marks) before it becomes data, so that a
problem found later, by pydantic or by the unknown-key check here, can be reported as
``aimesh.yaml:12: services.models.0.replicas: must be at least 1``. This module knows
nothing of :class:`~aimesh.config.Settings`; it checks data against any pydantic model.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from aimesh.errors import ConfigError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the settings, at a line of the project file when it came from it."""

    line: int  # 0 when the problem did not come from the file (environment or arguments)
    loc: str
    message: str
    file: str = field(default="", compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else "invalid settings"
        return f"{where}: {self.loc or 'settings'}: {self.message}"


def dotted(loc: Sequence[str | int]) -> str:
    """``('services', 'models', 0, 'ref')`` as ``services.models.0.ref``."""
    return ".".join(str(part) for part in loc)


class ProjectFile:
    """A parsed project file: its data, and the line where each key or list item starts."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[Loc, int]) -> None:
        self.path = path
        self.data = data
        self._lines = lines
        self._duplicates: list[Problem] = []

    @classmethod
    def read(cls, path: Path) -> ProjectFile:
        """Parse ``path``; a file that is not YAML, or not a mapping, is a :class:`ConfigError`."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError(f"{where}: not valid YAML ({problem})") from exc
        finally:
            loader.dispose()
        if data is None:  # a file of comments only
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:1: the top level must be a mapping of settings")
        project = cls(path, data, {})
        if node is not None:
            project._index(node, ())
        return project

    def _index(self, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen and key != "<<":
                    # PyYAML keeps the last silently; a user who wrote it twice meant one.
                    self._duplicates.append(
                        Problem(
                            line,
                            dotted((*loc, key)),
                            f"duplicate key (first at line {seen[key]})",
                            str(self.path),
                        )
                    )
                seen.setdefault(key, line)
                self._lines[(*loc, key)] = line
                self._index(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._lines[(*loc, index)] = item.start_mark.line + 1
                self._index(item, (*loc, index))

    def line_of(self, loc: Sequence[str | int]) -> int:
        """The line of ``loc``, or of its nearest ancestor that the file holds (1 at worst)."""
        parts = tuple(loc)
        while parts:
            line = self._lines.get(parts) or self._lines.get(tuple(str(p) for p in parts))
            if line is not None:
                return line
            parts = parts[:-1]
        return 1

    def problem(self, loc: Sequence[str | int], message: str) -> Problem:
        """A problem at ``loc``, placed at its line."""
        return Problem(self.line_of(loc), dotted(loc), message, str(self.path))

    def check_keys(self, model: type[BaseModel]) -> tuple[dict[str, Any], list[Problem]]:
        """The data without keys ``model`` does not declare (at any depth), and a problem for each.

        Pydantic ignores unknown keys in nested models unless each forbids them; a typo in
        ``gateway.prot`` would then be silently dropped. Removing them here also keeps
        pydantic from telling the same problem a second time.
        """
        problems = list(self._duplicates)
        clean = _known(model, self.data, (), problems, self)
        return clean, problems


def _known(
    model: type[BaseModel],
    data: dict[str, Any],
    loc: Loc,
    problems: list[Problem],
    project: ProjectFile,
) -> dict[str, Any]:
    if model.model_config.get("extra") == "allow":
        return data
    fields = model.model_fields
    names = {name: name for name in fields} | {
        info.alias: name for name, info in fields.items() if info.alias
    }
    kept: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(str(key))
        if name is None:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            help_ = f"did you mean {hint[0]}?" if hint else f"known: {', '.join(fields)}"
            problems.append(project.problem((*loc, str(key)), f"unknown setting ({help_})"))
            continue
        kept[key] = _known_value(
            fields[name].annotation, value, (*loc, str(key)), problems, project
        )
    return kept


def _known_value(
    annotation: Any, value: Any, loc: Loc, problems: list[Problem], project: ProjectFile
) -> Any:
    """Descend into ``value`` where ``annotation`` holds models; leave anything else to pydantic."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (
            _known(annotation, value, loc, problems, project) if isinstance(value, dict) else value
        )
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        # Only an optional model is unambiguous; a union of several is left to pydantic.
        if len(models) == 1:
            return _known_value(models[0], value, loc, problems, project)
        return value
    if origin in (list, Sequence) and args and isinstance(value, list):
        return [
            _known_value(args[0], item, (*loc, index), problems, project)
            for index, item in enumerate(value)
        ]
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {
            key: _known_value(args[1], item, (*loc, str(key)), problems, project)
            for key, item in value.items()
        }
    return value
