"""A pack's members as the command line names them: `--member name=NAME,method=M,seed=S[,labels=STORE][,...]`.

Torch-free, so the CLI, a recipe (a pack's config.json rerun) and a table's plan read and write the same text. A
member is a standalone train-student run of its own method, label store, seed and method options that trains in
a pack (pipeline/run/packs.py) beside the others; its run folder is the pack's OUT/NAME, or `out=FOLDER`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..limits import BOUNDS

SPEC_TEXT = "name=NAME,method=M,seed=S[,labels=STORE][,temperature=T][,out=FOLDER][,OPTION=VALUE...]"
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")  # a folder name: no separator, no leading dot
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "best.json", "reliability.png")  # OUT's own
OWN_KEYS = ("name", "method", "seed", "labels", "temperature", "out")  # the rest of a SPEC: method options


@dataclass
class MemberSpec:
    name: str
    method: str
    seed: int
    labels: str | None = None  # a label store (path or URL); None: a method without a teacher
    temperature: float | None = None
    method_options: dict = field(default_factory=dict)  # as given (text or numbers): the method parses them
    out: str | None = None  # the member's run folder; None: the pack's OUT/NAME

    def folder(self, pack: Path) -> Path:
        return Path(self.out).expanduser() if self.out else Path(pack) / self.name

    def record(self) -> dict:
        """What a pack records of the member and a resume must find unchanged (its folder may move)."""
        return {"name": self.name, "method": self.method, "seed": self.seed, "labels": self.labels}


def parse_member(text: str) -> MemberSpec:
    """A --member SPEC, checked: one line for the first thing wrong with it."""
    fields = {}
    for item in text.split(","):
        key, equals, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not key or not equals or not value:
            raise UserError(f"--member {text!r}: {item.strip()!r} is not KEY=VALUE (a SPEC is {SPEC_TEXT})")
        if key in fields:
            raise UserError(f"--member {text!r} gives {key} twice")
        fields[key] = value
    missing = [k for k in ("name", "method", "seed") if k not in fields]
    if missing:
        raise UserError(f"--member {text!r} needs {missing[0]}= (a SPEC is {SPEC_TEXT})")
    name = fields["name"]
    if not MEMBER_NAME.match(name) or name in RUN_FILES:
        raise UserError(f"--member {text!r}: name {name!r} must be a folder name of letters, digits, '.', '_', "
                        f"'+' and '-' (not starting with '.'; not one of the pack's own files)")
    return MemberSpec(name, fields["method"], spec_number(fields, "seed", name, int),
                      fields.get("labels"), spec_number(fields, "temperature", name, float),
                      {k: v for k, v in fields.items() if k not in OWN_KEYS}, fields.get("out"))


def spec_number(fields: dict, key: str, name: str, kind: type):
    """A SPEC's number in the range of its option (pipeline/limits.py), or None when the SPEC has none."""
    if key not in fields:
        return None
    bound = BOUNDS[key]
    try:
        value = kind(fields[key])
    except ValueError:
        value = None
    if value is None or not bound.accepts(value):
        raise UserError(f"--member {name}: {key} {fields[key]!r} is not {bound.describe()}")
    return value


def member_text(spec: MemberSpec | dict) -> str:
    """The SPEC that parses back to `spec` (a MemberSpec, or one as config.json records it)."""
    spec = spec if isinstance(spec, MemberSpec) else MemberSpec(**spec)
    own = [("name", spec.name), ("method", spec.method), ("seed", spec.seed), ("labels", spec.labels),
           ("temperature", spec.temperature), *spec.method_options.items(), ("out", spec.out)]
    items = [f"{key}={spec_value(value)}" for key, value in own if value is not None]
    bad = next((item for item in items if "," in item), None)
    if bad is not None:
        raise UserError(f"member {spec.name}: {bad!r} holds a comma, which a --member SPEC cannot carry; use a "
                        f"path without one")
    return ",".join(items)


def spec_value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def check_members(members, pack: Path) -> None:
    """Names unique; run folders distinct, none the pack's folder or inside another member's or above the pack."""
    names = [m.name for m in members]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UserError(f"--member name {twice!r} is given twice: each member needs its own name (its run folder)")
    pack = Path(pack).expanduser().resolve()
    folders = [(m.name, m.folder(pack).resolve()) for m in members]
    for name, folder in folders:
        if folder == pack or folder in pack.parents:
            raise UserError(f"--member {name}: out={folder} holds the pack's folder {pack}; give it a folder of its "
                            f"own")
        inside = next((other for other, f in folders if other != name and (f == folder or folder in f.parents)),
                      None)
        if inside is not None:
            raise UserError(f"--member {name}'s run folder {folder} is or holds --member {inside}'s: give each a "
                            f"folder of its own")
