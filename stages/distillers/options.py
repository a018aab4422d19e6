"""A method's options: a frozen dataclass of int, float and bool fields, parsed by type and range-checked by name.

Values arrive as text (`--method-option nce_k=16384`) or as Python numbers (flags, library callers); each is
parsed by its field's type, so an int option stays an int in the loss and in config.json, and a bool accepts
0/1/true/false. Ranges shared by every method are matched by option name (OPTION_RULES); a method checks
anything more specific itself.
"""
from __future__ import annotations

import dataclasses
import math
import typing

LIMIT = 1e9  # no option of any method is meaningful beyond this magnitude
TRUE_WORDS, FALSE_WORDS = ("1", "true"), ("0", "false")

# (does it apply to this name, low, high, low_open)
OPTION_RULES = (
    (lambda k: k.endswith("_weight") or k == "margin", 0.0, 1e9, False),
    (lambda k: "temperature" in k or k == "nce_t", 0.0, 1e3, True),
    (lambda k: k == "label_smoothing", 0.0, 1.0, False),
    (lambda k: k.endswith("_momentum") or k.endswith("_keep_wrong"), 0.0, 1.0, False),
    (lambda k: k == "warmup_epochs", 0.0, 1e5, False),
    (lambda k: k.endswith("_lr"), 0.0, 10.0, True),
    (lambda k: k in ("feat_dim", "nce_k"), 1.0, 1e6, False),
)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


def _number(name: str, value) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} takes a number, got {value}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or abs(number) > LIMIT:
        raise ValueError(f"{name} must be a finite number within ±{LIMIT:g}, got {value!r}")
    return number


def _whole(name: str, value) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _yes_no(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):  # 0 / 1.0 from a library caller
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in TRUE_WORDS + FALSE_WORDS:
        return text in TRUE_WORDS
    raise ValueError(f"{name} is 0 or 1 (or false/true), got {value!r}")


PARSERS = {int: _whole, float: _number, bool: _yes_no}


def option_types(options_cls) -> dict[str, type]:
    """Field name -> int, float or bool, in declaration order (annotations resolved, also under `from
    __future__ import annotations`)."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(options_cls)}


def check_declaration(options_cls, owner: str) -> None:
    """An Options class must be a frozen dataclass of its own whose fields are int/float/bool with defaults
    inside their ranges: a mistake in a method file fails at import, not mid-run."""
    params = vars(options_cls).get("__dataclass_params__")
    if params is None or not params.frozen:
        raise TypeError(f"{owner}.Options must be declared with @dataclass(frozen=True)")
    types = option_types(options_cls)
    for f in dataclasses.fields(options_cls):
        kind = types[f.name]
        if kind not in PARSERS:
            raise TypeError(f"{owner}.Options.{f.name}: options are int, float or bool, not {kind}")
        if f.default is dataclasses.MISSING or type(f.default) is not kind:
            raise TypeError(f"{owner}.Options.{f.name} needs a default of type {kind.__name__}")
        check_range(f.name, f.default)


def parse_value(name: str, kind: type, value):
    """`value` (text or a number) as `kind`; ValueError with one line when it is not one."""
    return PARSERS[kind](name, value)


def check_range(name: str, value) -> None:
    if isinstance(value, bool):
        return
    for applies, low, high, low_open in OPTION_RULES:
        if applies(name) and not ((value > low if low_open else value >= low) and value <= high):
            kind = "a whole number" if isinstance(value, int) else "a number"
            raise ValueError(f"{name} must be {kind} in {'(' if low_open else '['}{low:g}, {high:g}], got {value:g}")
    if name == "label_smoothing" and value >= 1.0:
        raise ValueError(f"label_smoothing must be below 1, got {value:g}")


def build_options(options_cls, given: dict, method: str):
    """The Options instance from the defaults and the values `given` (by name); ValueError names what is wrong."""
    types = option_types(options_cls)
    unknown = sorted(set(given) - set(types))
    if unknown:
        raise ValueError(f"options {unknown} do not apply to --method {method} "
                         f"(its options: {', '.join(types) or 'none'})")
    parsed = {name: parse_value(name, types[name], value) for name, value in given.items()}
    for name, value in parsed.items():
        check_range(name, value)
    return options_cls(**parsed)
