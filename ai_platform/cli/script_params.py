"""What a task script takes, read from its source without running it (``aip tasks params SCRIPT``).

A script declares its params as a dict of defaults that ``run`` hands to ``sdk.resolve_params(params, PARAMS, ...)``,
one key per line with a comment saying what it does. The dict may spread others (``**idx.FETCH_PARAMS``,
``**PARAMS`` imported from a sibling script); those are followed into the sibling files. Nothing is imported, so
listing a training script's params costs no torch import and runs none of its code.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 4  # spreads followed into sibling files


class ScriptError(ValueError):
    """A file that is not a readable Python script; the message names it."""


@dataclass(frozen=True)
class Param:
    name: str
    default: str  # the default as JSON (as written when it is not a literal)
    note: str  # the comment beside it

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "default": self.default, "note": self.note}


@dataclass(frozen=True)
class ScriptParams:
    script: str
    summary: str  # the first line of the script's docstring
    declared_in: str  # the name of the dict ``run`` resolves its params against ('' when it declares none)
    params: list[Param]
    run_doc: str  # run()'s docstring, for a script that declares no dict

    def as_dict(self) -> dict:
        return {"script": self.script, "summary": self.summary, "declared_in": self.declared_in,
                "params": [p.as_dict() for p in self.params], "run_doc": self.run_doc}


@dataclass
class _Source:
    path: Path
    tree: ast.Module
    text: str
    comments: dict[int, str]

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            text = path.read_text()
            tree = ast.parse(text, str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ScriptError(f"{path}: cannot read it ({exc})") from None
        except SyntaxError as exc:
            raise ScriptError(f"{path}: not valid Python (line {exc.lineno}: {exc.msg})") from None
        comments: dict[int, str] = {}
        try:
            for token in tokenize.generate_tokens(io.StringIO(text).readline):
                if token.type == tokenize.COMMENT:
                    comments[token.start[0]] = token.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError):
            pass
        return cls(path, tree, text, comments)

    def assigned(self, name: str) -> ast.expr | None:
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return node.value
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                return node.value
        return None

    def imported_from(self, name: str) -> tuple[str, str] | None:
        """(module, name) for ``from module import name``, or (module, '') for ``import module``."""
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        return node.module, alias.name
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        return alias.name, ""
        return None

    def sibling(self, module: str) -> _Source | None:
        path = self.path.parent / f"{module.replace('.', '/')}.py"
        return _Source.read(path) if path.is_file() else None


def _resolved_name(tree: ast.Module) -> str:
    """The name of the dict ``run`` passes to ``resolve_params`` (or ``check_params``), else ``PARAMS``."""
    run = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "run"),
               None)
    for node in ast.walk(run) if run else ():
        if isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Name):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("resolve_params", "check_params"):
                return node.args[1].id
    return "PARAMS"


def _lookup(source: _Source, node: ast.expr, depth: int) -> tuple[_Source, ast.expr] | None:
    """Where a spread dict (``NAME`` or ``module.NAME``) is written: this file or a sibling script."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(node, ast.Name):
        value = source.assigned(node.id)
        if value is not None:
            return source, value
        origin = source.imported_from(node.id)
        if origin and origin[1] and (other := source.sibling(origin[0])):
            value = other.assigned(origin[1])
            return (other, value) if value is not None else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        origin = source.imported_from(node.value.id)
        if origin and not origin[1] and (other := source.sibling(origin[0])):
            value = other.assigned(node.attr)
            return (other, value) if value is not None else None
    return None


def _params_of(source: _Source, node: ast.expr, depth: int = 0) -> list[Param]:
    if not isinstance(node, ast.Dict):
        where = _lookup(source, node, depth)
        if where is None:
            shown = ast.get_source_segment(source.text, node) or "?"
            return [Param(f"**{shown}", "", "not found in the script or a sibling file")]
        return _params_of(*where, depth + 1)
    params: dict[str, Param] = {}
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:  # **spread
            for param in _params_of(source, value, depth + 1):
                params[param.name] = param
        elif isinstance(key, ast.Constant) and isinstance(key.value, str):
            params[key.value] = Param(key.value, _as_json(source, value),
                                      source.comments.get(value.end_lineno or 0, ""))
    return list(params.values())


def _as_json(source: _Source, value: ast.expr) -> str:
    """A default as the JSON a task is given its params in (``true``, ``null``), else as written."""
    try:
        return json.dumps(ast.literal_eval(value))
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return ast.get_source_segment(source.text, value) or ""


def script_params(path: Path) -> ScriptParams:
    """The params ``path`` declares, their defaults as written and the comment beside each."""
    if path.suffix != ".py":
        raise ScriptError(f"{path}: not a .py file")
    source = _Source.read(path)
    summary = (ast.get_docstring(source.tree) or "").strip().split("\n", 1)[0]
    run = next((n for n in source.tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    if run is None:
        raise ScriptError(f"{path}: defines no run(input_path, output_path, params), so it is not a task script")
    name = _resolved_name(source.tree)
    declared = source.assigned(name)
    params = _params_of(source, declared) if declared is not None else []
    return ScriptParams(str(path), summary, name if declared is not None else "", params,
                        (ast.get_docstring(run) or "").strip())
