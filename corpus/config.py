"""Config machinery shared by every job: one small pydantic model per component, defaults in code,
YAML files for runs, `--set a.b=value` overrides, and errors that name the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment, and no number
    is infinite or NaN (`--sample-files inf` ended in an OverflowError traceback)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping naming one key twice: PyYAML keeps the last value without a
    word, so a run file setting `min_images` twice (an edit that did not replace the old line) silently ran
    with whichever came last. Keys brought in by a merge (`<<: *defaults`) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class names it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"key {key!r} given twice (first at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so 3 -> int, [en,de] -> list)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. --set images.min_side=200")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set {text!r}: empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"--set {text!r}: value is not valid YAML: {_yaml_problem(e)}") from None
    except (RecursionError, ValueError) as e:
        raise ValueError(f"--set {key}: value is not valid YAML: {_unreadable(e)}") from None
    _check_size(value, f"--set {key}")
    return key.split("."), value


MAX_CONFIG_VALUES = 100_000  # values of a config once YAML aliases are expanded


def _check_size(tree: Any, where: str) -> None:
    """Refuse a config that expands to more than MAX_CONFIG_VALUES values: YAML aliases share one object, so
    a few lines of `&a [*b, *b, ...]` (an alias bomb) would make validation walk billions of them."""
    stack, n = [tree], 0
    while stack:
        node = stack.pop()
        n += 1
        if n > MAX_CONFIG_VALUES:
            raise ValueError(
                f"{where}: more than {MAX_CONFIG_VALUES:,} values once YAML aliases are expanded (an alias bomb?)"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _unreadable(e: RecursionError | ValueError) -> str:
    """What PyYAML's constructor raised outside YAMLError: a value nested thousands deep (its composer
    recurses), an integer of more digits than Python converts (sys.get_int_max_str_digits)."""
    if isinstance(e, RecursionError):
        return "nested too deep"
    return " ".join(str(e).split())


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: `line L, column C: problem (context)`."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None:
        context += f" started at line {cmark.line + 1}, column {cmark.column + 1}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def _apply(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        node = node.setdefault(part, {})
        if isinstance(node, list):
            whole = ".".join(path[: i + 1])
            raise ValueError(f"--set {'.'.join(path)}: {part!r} is a list; set it whole, e.g. --set '{whole}=[...]'")
        if not isinstance(node, dict):
            raise ValueError(f"--set {'.'.join(path)}: {part!r} is not a section")
    node[path[-1]] = value


def _format_errors(err: ValidationError, where: str) -> str:
    return f"invalid config ({where}): {validation_problems(err)}"


def validation_problems(err: ValidationError) -> str:
    """pydantic's multi-line report as one line: `key.path: problem (got VALUE); other.key: unknown key`."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key")
            continue
        value = e.get("input")
        if isinstance(value, dict):  # a whole section (a model validator's error): the message says what
            problems.append(f"{loc}: {e['msg']}")
            continue
        got = repr(value)
        got = got if len(got) <= 80 else got[:77] + "..."
        problems.append(f"{loc}: {e['msg']} (got {got})")
    return "; ".join(problems)


def load_json_model(model: type[M], path: str | Path, what: str = "") -> M:
    """`model` validated from the JSON file at `path`; a missing, unreadable, non-JSON or invalid file is one
    ValueError line naming the file (and `what` it is) and the offending key."""
    p = Path(path)
    label = f"{p}{f' ({what})' if what else ''}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{label}: cannot read it: {e}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as e:
        if any(x["type"] == "json_invalid" for x in e.errors()):
            raise ValueError(f"{label}: {e.errors()[0]['msg']}") from None
        raise ValueError(f"{label}: {validation_problems(e)}") from None


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> M:
    """Build a config: model defaults <- `base` <- YAML file at `path` <- `--set` overrides.

    Raises ValueError naming the file and the offending field on any unknown key or bad value.
    """
    tree: dict[str, Any] = dict(base or {})
    where = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file not found: {p}")
        try:
            loaded = _load_yaml(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {p}: cannot read it: {e}") from None
        except (RecursionError, ValueError) as e:
            raise ValueError(f"config file {p} is not valid YAML: {_unreadable(e)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p}: top level must be a mapping, got {type(loaded).__name__}")
        _check_size(loaded, f"config file {p}")
        tree = _deep_merge(tree, loaded)
        where = str(p)
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply(tree, keys, value)
    if overrides:
        where += " + --set " + " ".join(overrides)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ValueError(_format_errors(e, where)) from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: {"images": {"min_side": 150}} -> {"images.min_side": 150}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
