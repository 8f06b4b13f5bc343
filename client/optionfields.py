"""Option sets as dataclasses whose fields say everything about an option, so nothing lists them by hand.

A field made with `option(...)` carries its help, its range or choices and its *setting name*: the name
it has on the command line (`--score-threshold`), in Triton config parameters and in recipe YAML
(`score_threshold`; default: the field's own name). From that one definition come:
    check(obj)              every field's value checked, one clear UserError naming the option
    parse(cls, name, v)     a JSON or string value (request parameter, config parameter) -> the field's type
    add_arguments(p, cls)   the argparse flags, in field order, with the field's help and default
    from_args(cls, args)    the dataclass from the parsed flags
    settings(obj)           {setting name: string} for config parameters
    from_settings(cls, m)   {field name: value} from a mapping keyed by setting names (config, recipe)
A new option is one more `option(...)` field. Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import UserError


def option(default: Any = None, help: str = "", *, name: str | None = None, lo: float | None = None,
           hi: float | None = None, choices: tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, default_factory: Callable[[], Any] | None = None,
           cli: bool = True) -> Any:
    """A dataclass field with its option metadata. name: the setting name (CLI flag / config / recipe key);
    lo/hi: the inclusive range of a number; choices: the allowed strings; parse: text -> value for values
    that are not a number, a bool or a string (e.g. a version policy); cli: False keeps it off the CLI."""
    meta = {"option": True, "help": help, "name": name, "lo": lo, "hi": hi, "choices": choices, "parse": parse,
            "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def same_as(cls: type, name: str) -> Any:
    """Field `name` of option set `cls` again (same default, help, range): one option in two sets."""
    f = _fields(cls)[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


def _fields(cls: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("option")}


def setting_name(f: dataclasses.Field) -> str:
    return f.metadata.get("name") or f.name


def flag(f: dataclasses.Field) -> str:
    return "--" + setting_name(f).replace("_", "-")


def _kind(f: dataclasses.Field) -> type | None:
    """bool, int, float or str from the default (None for anything else: parsed by metadata 'parse')."""
    default = f.default
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    return None


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None and math.isfinite(hi):
        return f"in [{lo:g}, {hi:g}]"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def parse_value(f: dataclasses.Field, value: Any, label: str, *, hi: float | None = None,
                error: type[UserError] = UserError) -> Any:
    """`value` (typed, a JSON value or a string) as field `f`'s type, checked against its range or choices;
    `error` naming `label`=value otherwise. hi: an upper bound that replaces the field's (e.g. K)."""
    kind, meta = _kind(f), f.metadata
    if kind is bool:
        text = value if isinstance(value, bool) else str(value).strip().lower()
        if text in (True, "1", "true", "yes"):
            return True
        if text in (False, "0", "false", "no"):
            return False
        raise error(f"{label}={value!r} must be true or false")
    if kind in (int, float):
        return _number(meta, value, label, kind, meta["hi"] if hi is None else hi, error)
    if meta["choices"] and value not in meta["choices"]:
        raise error(f"{label} {value!r}: use {' or '.join(meta['choices'])}")
    if meta["parse"] and isinstance(value, str):
        return meta["parse"](value)
    return value


def _number(meta: Mapping[str, Any], value: Any, label: str, kind: type, hi: float | None,
            error: type[UserError]) -> float | int:
    lo = meta["lo"]
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise error(f"{label}={value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(out) or (lo is not None and out < lo) \
            or (hi is not None and out > hi):
        raise error(f"{label}={value!r} must be a number {_range_text(lo, hi)}")
    if kind is int:
        if out != int(out):
            raise error(f"{label}={value!r} must be an integer")
        return int(out)
    return out


def check(obj: Any, label: Callable[[dataclasses.Field], str] = flag, error: type[UserError] = UserError) -> None:
    """Every option field of `obj` valid (the one check of an option set; call it from __post_init__)."""
    for f in _fields(type(obj)).values():
        value = getattr(obj, f.name)
        if value is not None:
            parse_value(f, value, label(f), error=error)


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, only: Iterable[str] | None = None,
                  skip: Iterable[str] = ()) -> None:
    """One flag per option field of `cls` (in field order; `only` / `skip`: a subset): --setting-name,
    the field's help, default, choices and type; a bool is a store_true switch."""
    defaults, chosen, skipped = cls(), set(only) if only is not None else None, set(skip)
    for f in _fields(cls).values():
        if not f.metadata["cli"] or f.name in skipped or (chosen is not None and f.name not in chosen):
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"]}
        kind = _kind(f)
        if kind is bool:
            kw["action"] = "store_true"
        else:
            kw["default"] = getattr(defaults, f.name)
            if f.metadata["choices"]:
                kw["choices"] = list(f.metadata["choices"])
            else:  # the flag's name, not the field's, in the usage line
                kw["metavar"] = setting_name(f).upper()
            if kind is not None or f.metadata["parse"]:
                kw["type"] = kind or _argtype(f.metadata["parse"])
        parser.add_argument(flag(f), **kw)


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The option set from parsed flags (add_arguments); fields without a flag keep their defaults."""
    return cls(**{n: getattr(args, n) for n in _fields(cls) if hasattr(args, n)})


def settings(obj: Any, only: Iterable[str] | None = None) -> dict[str, str]:
    """{setting name: value as text} of the fields that have a value (`only`: of these field names):
    booleans as true/false."""
    out = {}
    for f in _fields(type(obj)).values():
        value = getattr(obj, f.name)
        if value is not None and (only is None or f.name in only):
            out[setting_name(f)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def from_settings(cls: type, mapping: Mapping[str, Any], *, what: str = "setting", strict: bool = False,
                  error: type[UserError] = UserError) -> dict[str, Any]:
    """{field name: parsed value} of the settings of `cls` present in `mapping` (keyed by setting names:
    config parameters, a recipe section). strict: a key that is no setting of `cls` is an error."""
    by_name = {setting_name(f): f for f in _fields(cls).values()}
    if strict:
        unknown = sorted(set(mapping) - set(by_name))
        if unknown:
            raise error(f"unknown {what}(s) {unknown}; known: {sorted(by_name)}")
    return {f.name: parse_value(f, mapping[key], f"{what} {key}", error=error)
            for key, f in by_name.items() if key in mapping}
