"""The keys a table file (`labelopt table`) may set, each with its check and the command-line flag it becomes.

A table's teachers, stores and rows are `labelopt train`, `generate-labels` and `train-student` runs, so their keys
are those commands' options spelled with underscores; each key here says what its value must be (a number in its
range of pipeline/limits.py, a name from a torch-free names module, true/false, text, a list) and how it is
passed on. A key not listed here is refused, naming the key and the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ...models.names import model_names
from ...stages.names import labeler_names, method_names
from ..limits import BOUNDS
from ..run.schedules import schedule_names
from ..views.names import MIX_POLICY_NAMES, STORE_VIEW_SPECS, VIEW_POLICY_NAMES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a teacher's, store's or row's name: also its folder's


@dataclass(frozen=True)
class Key:
    """One key: `kind` says what its value is; `bound` names its range in limits.BOUNDS, `choices` its names;
    `flag` is the option it becomes (default --KEY with dashes); `passed`: False for keys the table reads itself."""
    kind: str  # int, float, flag, text, choice, ints, texts, table
    bound: str | None = None
    choices: Callable[[], Sequence[str]] | None = None
    flag: str | None = None
    passed: bool = True

    def option(self, key: str) -> str:
        return self.flag or "--" + key.replace("_", "-")


def number(kind: str, bound: str | None = None, flag: str | None = None) -> Key:
    return Key(kind, bound=bound, flag=flag)


def choice(names: Callable[[], Sequence[str]], flag: str | None = None, passed: bool = True) -> Key:
    return Key("choice", choices=names, flag=flag, passed=passed)


TEXT, FLAG, TEXTS = Key("text"), Key("flag"), Key("texts")
OWN_TEXT = Key("text", passed=False)  # read by the table, never passed on

# What `train` and `train-student` share (cli.training_options); --config takes a recipe for the run.
RUN_KEYS: dict[str, Key] = {
    "epochs": number("int", "epochs"), "batch_size": number("int", "batch_size"), "lr": number("float", "lr"),
    "momentum": number("float", "momentum"), "weight_decay": number("float", "weight_decay"),
    "schedule": choice(schedule_names), "milestones": Key("ints", bound="milestone"),
    "gamma": number("float", "gamma"), "label_smoothing": number("float", "label_smoothing"),
    "augment": choice(lambda: ("auto", *VIEW_POLICY_NAMES)), "resolution": number("int", "resolution"),
    "workers": number("int", "num_workers"), "val_fraction": number("float", "val_fraction"),
    "bf16": FLAG, "channels_last": FLAG, "compile": FLAG, "config": TEXT,
}
TEACHER_KEYS: dict[str, Key] = {**RUN_KEYS, "arch": choice(model_names), "seed": number("int", "seed")}
STUDENT_KEYS: dict[str, Key] = {
    **RUN_KEYS, "temperature": number("float", "temperature"), "ce_weight": number("float", "ce_weight"),
    "kd_weight": number("float", "kd_weight"), "mix": choice(lambda: MIX_POLICY_NAMES),
    "mix_alpha": number("float", "mix_alpha"), "method_options": Key("table", passed=False),
}
COMMON_STUDENT_KEYS: dict[str, Key] = {**STUDENT_KEYS, "arch": choice(model_names, passed=False)}
ROW_KEYS: dict[str, Key] = {
    **STUDENT_KEYS, "name": OWN_TEXT, "label": OWN_TEXT, "method": choice(method_names),
    "student": choice(model_names, passed=False), "labels": OWN_TEXT, "teacher": OWN_TEXT,
    "teachers": Key("texts", passed=False), "published": Key("table", passed=False),
}
STORE_KEYS: dict[str, Key] = {
    "method": choice(labeler_names), "teacher": OWN_TEXT, "teachers": Key("texts", passed=False),
    "views": choice(lambda: STORE_VIEW_SPECS), "temperature": number("float", "temperature"),
    "mix_gt": number("float", "mix_gt"), "mix_alpha": number("float", "mix_alpha"), "logits": FLAG,
    "features": TEXTS, "topk": number("int", "topk"), "seed": number("int", "seed"),
    "batch_size": number("int", "batch_size"), "block_rows": number("int", "block_rows"),
    "layout": choice(lambda: ("auto", "compressed", "contiguous")), "resolution": number("int", "resolution"),
    "bf16": FLAG, "channels_last": FLAG, "compile": FLAG, "config": TEXT,
}
PUBLISHED_KEYS = ("top1", "top5", "nll", "ece", "top1_std", "top5_std", "nll_std", "ece_std")
CHECK_KEYS = ("question", "metric", "row", "better", "than", "published")


def named_choice(value: str, names: Sequence[str]) -> bool:
    """`value` is one of `names`, or NAME:K (K a whole number >= 1) where `names` holds NAME:K."""
    prefix, colon, count = value.rpartition(":")
    if colon and f"{prefix}:K" in names:
        return count.isdigit() and int(count) >= 1
    return value in names


def value_problem(key: Key, value) -> str | None:
    """What is wrong with `value` for `key` (one phrase), or None."""
    if key.kind in ("int", "float"):
        bound = BOUNDS[key.bound]
        return None if bound.accepts(value) else f"{value!r} is not {bound.describe()}"
    if key.kind == "flag":
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if key.kind == "text":
        return None if isinstance(value, str) and value else f"{value!r} is not a non-empty string"
    if key.kind == "choice":
        names = list(key.choices())
        ok = isinstance(value, str) and named_choice(value, names)
        return None if ok else f"{value!r} is not one of {', '.join(names)}"
    if key.kind == "ints":
        bound = BOUNDS[key.bound]
        ok = isinstance(value, list) and value and all(bound.accepts(v) for v in value)
        return None if ok else f"{value!r} is not a list of integers, each {bound.describe()}"
    if key.kind == "texts":
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        return None if ok else f"{value!r} is not a list of strings"
    return None if isinstance(value, dict) else f"{value!r} is not a table"


def option_args(options: dict, keys: dict[str, Key]) -> list[str]:
    """The command-line arguments of checked `options` (the keys that are passed on)."""
    args: list[str] = []
    for name, value in options.items():
        key = keys[name]
        if not key.passed or (key.kind == "flag" and not value):
            continue
        if key.kind == "flag":
            args.append(key.option(name))
        elif key.kind == "texts":
            for item in value:
                args += [key.option(name), item]
        elif key.kind == "ints":
            args += [key.option(name), ",".join(str(v) for v in value)]
        else:
            args += [key.option(name), str(value)]
    return args


def method_option_args(options: dict) -> list[str]:
    """--method-option NAME=VALUE for each of a row's method_options (booleans as 1/0)."""
    text = {True: "1", False: "0"}
    return [a for name, value in options.items()
            for a in ("--method-option", f"{name}={text[value] if isinstance(value, bool) else value}")]
