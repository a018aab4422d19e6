"""Recipe files for `--config`: a TOML recipe, or a run's config.json, read as option values of one command.

Keys are the names config.json records (batch_size, num_workers, milestones, method_options, ...) or the flag
spelled with underscores (student, teacher, workers). The CLI applies the values as defaults, so a flag on the
command line wins over the file and the file over the option's own default. Values are converted and checked
by the options' own types there; this module finds the file, reads it and maps its keys to parameters.

One recipe can serve every command that takes --config (command_table): a table named after a command
(`[train-student]`, `[generate-labels]`) is that command's alone; each top-level key goes to the commands that take
it, except that a key generate-labels shares with the training commands under another meaning (batch_size: the
teacher's batch or the student's) is the training recipe's, and generate-labels reads its own from its table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

from ..errors import UserError
from ..limits import BOUNDS
from .members import member_text
from .schedules import default_milestones

SHIPPED = Path(__file__).resolve().parents[2] / "recipes"  # recipes/ at the package root
COMMANDS = ("train", "train-student", "generate-labels")  # the commands that take --config: a recipe's tables
TRAINING_COMMANDS = ("train", "train-student")
# Top-level keys generate-labels reads although the training commands take them too: the same thing for both.
# Its other keys that they take (batch_size, seed, method, temperature, teacher, mix_alpha, out) are theirs there.
SAME_MEANING = frozenset({"data", "device", "bf16", "compile", "channels_last", "overwrite"})
METHOD_OPTIONS_KEY = "method_options"  # the table behind repeated --method-option NAME=VALUE
# Method options the CLI takes as flags of their own (and records in method_options, as cli.train_student does).
FLAGGED_METHOD_OPTIONS = ("ce_weight", "kd_weight", "label_smoothing")
# What a run's config.json records beyond the options it was given: for the reader, never read back.
DERIVED = frozenset({"command", "method_resolved", "teacher_source", "views", "world_size", "global_batch_size",
                     "dataset", "validation", "provenance", "warmup_epochs", "warmup_milestones", "warmup_lr",
                     "pack"})  # a pack member's record of its pack: a rerun of it is a run of its own
RUN_FOLDER = frozenset({"out", "resume", "overwrite"})  # a rerun goes to a new --out: the run is never replaced


@dataclass
class Recipe:
    path: Path
    values: dict  # parameter name -> value as the file holds it
    keys: dict  # parameter name -> the key that set it (for messages)
    run: dict | None = None  # the whole config.json when the file records a run
    notes: list = field(default_factory=list)  # lines for the user: what the file left to others, what was scaled


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def recipe_path(spec: str) -> Path:
    """A file, a run folder holding config.json, or the bare name of a shipped recipe (when no such file exists)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path / "config.json"
        raise UserError(f"--config {spec} is a folder without config.json; pass a recipe file or a run folder")
    if path.is_file():
        return path
    shipped = SHIPPED / f"{spec}.toml"
    if "/" not in spec and not path.suffix and shipped.is_file():
        return shipped
    raise UserError(f"no recipe file {spec}; pass a .toml file, a run's config.json or a shipped recipe "
                    f"({', '.join(shipped_names())})")


def read_table(path: Path) -> dict:
    """The file's top-level table: JSON for .json (a run's config.json), TOML otherwise."""
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        table = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except ValueError as exc:  # json's and tomllib's decode errors are ValueErrors
        raise UserError(f"{path} is not valid {kind}: {' '.join(str(exc).split())}") from None
    if not isinstance(table, dict):
        raise UserError(f"{path} must hold a table of option = value, not a {type(table).__name__}")
    return table


def reads_top_level(key: str, command: str, keys_by_command: dict) -> bool:
    """Whether `command` reads a top-level `key`: it takes the key, and (for generate-labels) the training commands
    do not take it under another meaning."""
    if key not in keys_by_command.get(command, {}):
        return False
    return (command in TRAINING_COMMANDS or key in SAME_MEANING
            or not any(key in keys_by_command.get(c, {}) for c in TRAINING_COMMANDS))


def command_table(table: dict, command: str, path: Path, keys_by_command: dict) -> tuple[dict, list[str]]:
    """(the keys `command` reads, the top-level keys it takes but leaves to the training commands). Its own table
    (`[train-student]`) wins over the top-level keys; other commands' tables and their keys are theirs; a key no
    command takes stays in, to be refused as unknown."""
    own = table.get(command, {})
    if not isinstance(own, dict):
        raise UserError(f"{path}: '{command}' must be a table of that command's options")
    read, left = {}, []
    for key, value in table.items():
        if key in COMMANDS:
            continue
        if reads_top_level(key, command, keys_by_command):
            read[key] = value
        elif key in keys_by_command.get(command, {}):
            left.append(key)
        elif not any(key in keys for keys in keys_by_command.values()):
            read[key] = value
    return {**read, **own}, [key for key in left if key not in own]


def run_table(run: dict, command: str, path: Path) -> dict:
    """The options a run was given, from its config.json: derived records and its own folder left out."""
    if run.get("command") != command:
        raise UserError(f"{path} records a labelopt {run.get('command')} run; rerun it with "
                        f"labelopt {run.get('command')} --config {path}")
    skip = DERIVED | RUN_FOLDER
    if command == "train-student":
        skip |= {"label_smoothing"}  # the method's resolved value; what the user set is in method_options
        source = run.get("teacher_source") or {}
        if source.get("kind") == "store" and (source.get("views") or {}).get("policy") != "identity":
            skip |= {"augment"}  # a store with many views records its own policy; --augment is refused with it
    return {k: v for k, v in run.items() if k not in skip}


def load_recipe(spec: str, command: str, keys_by_command: dict, given: dict) -> Recipe:
    """The values `spec` sets for `command`. `keys_by_command`: for each command that takes --config, every key it
    accepts -> its parameter name; `given`: the parameters set on the command line (they win; some change what
    the file may say, see check_overrides)."""
    path = recipe_path(spec)
    table = read_table(path)
    run = table if "command" in table else None
    keys, left = keys_by_command[command], []
    if run is not None:
        table = run_table(table, command, path)
    else:
        table, left = command_table(table, command, path, keys_by_command)
    values, used = {}, {}
    for key, value in table.items():
        for name, item, label in key_values(key, value, keys, command, path):
            if name in used:
                raise UserError(f"{path} sets {name} twice ({used[name]} and {label})")
            values[name], used[name] = item, label
    recipe = Recipe(path, values, used, run)
    recipe.notes += [note for note in [left_note(recipe, command, left)] if note]
    check_overrides(recipe, given)
    return recipe


def left_note(recipe: Recipe, command: str, left: list[str]) -> str | None:
    """What a file that serves other commands leaves to them, where the user could expect it here."""
    parts = [] if recipe.values else [f"it sets no option of labelopt {command}"]
    if left:
        parts.append(f"{', '.join(left)} at its top level {'is' if len(left) == 1 else 'are'} for train and "
                     f"train-student; {command} reads its own from a [{command}] table")
    return f"note: {recipe.path.name}: {'; '.join(parts)}" if parts else None


def key_values(key: str, value, keys: dict, command: str, path: Path) -> list[tuple[str, object, str]]:
    """(parameter, value, key) for one key of the file; unknown keys are refused, naming the valid ones."""
    if key not in keys:
        raise UserError(f"{path}: unknown key '{key}' for labelopt {command}; valid keys: {', '.join(sorted(keys))}")
    if value is None:  # JSON null: not set, the option's default applies
        return []
    name = keys[key]
    if key == METHOD_OPTIONS_KEY:
        return method_option_values(value, keys, path)
    if name == "milestones":
        return [(name, milestone_text(value, f"{path}: {key}"), key)]
    if name == "seeds":  # a pack's seeds: a list, as config.json records it, or "1,2,3" as --seeds takes it
        return seed_values(value, f"{path}: {key}", name, key)
    if name == "members" and isinstance(value, list):  # a pack's members, as config.json records them
        return [(name, [member_value(m, f"{path}: {key}") for m in value], key)] if value else []
    return [(name, value, key)]


def member_value(member, where: str) -> str:
    """A member as config.json records it, as the SPEC --member takes."""
    try:
        return member if isinstance(member, str) else member_text(member)
    except TypeError:
        raise UserError(f"{where}: {member!r} is not a pack member (name, method, seed, ...)") from None


def seed_values(value, where: str, name: str, key: str) -> list[tuple[str, object, str]]:
    if isinstance(value, str):
        return [(name, value, key)] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f"{where} = {value!r} must be a list of seeds, e.g. [0, 1, 2]")
    return [(name, ",".join(map(str, value)), key)] if value else []


def method_option_values(table, keys: dict, path: Path) -> list[tuple[str, object, str]]:
    """A [method_options] table: ce_weight, kd_weight and label_smoothing go to their flags (as the CLI takes
    them), every other one to --method-option NAME=VALUE, written so it parses back to the same float."""
    if not isinstance(table, dict):
        raise UserError(f"{path}: {METHOD_OPTIONS_KEY} must be a table of NAME = number")
    bound = BOUNDS["method_option"]
    flagged, extra = [], []
    for name, value in table.items():
        if not bound.accepts(value):
            raise UserError(f"{path}: {METHOD_OPTIONS_KEY}.{name} = {value!r} must be {bound.describe()}")
        if name in FLAGGED_METHOD_OPTIONS and name in keys.values():
            flagged.append((name, value, f"{METHOD_OPTIONS_KEY}.{name}"))
        else:
            extra.append(f"{name}={float(value)!r}")
    return flagged + ([(keys[METHOD_OPTIONS_KEY], extra, METHOD_OPTIONS_KEY)] if extra else [])


def milestone_text(value, where: str) -> str:
    """Milestones as --milestones takes them ("60,120,160") from a list of epochs or such a string."""
    items = None
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        try:
            items = [int(v) for v in value.split(",")] if value.strip() else []
        except ValueError:
            items = None
    bound = BOUNDS["milestone"]
    if items is None or not all(bound.accepts(m) for m in items) or any(b <= a for a, b in zip(items, items[1:])):
        raise UserError(f"{where} = {value!r} must be a list of strictly increasing epochs, each {bound.describe()}")
    return ",".join(str(int(m)) for m in items)


def as_int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def check_overrides(recipe: Recipe, given: dict) -> None:
    """What the flags on the command line change about the file: a rerun needs its own --out, and --epochs
    meets the file's milestones."""
    if recipe.run is not None and "out" not in given:
        raise UserError(f"{recipe.path} records the run in {recipe.run.get('out')}; pass --out NEW_FOLDER for the "
                        f"rerun (a rerun never replaces the run it comes from)")
    if "epochs" not in given or "milestones" in given or "milestones" not in recipe.values:
        return
    run = recipe.run or {}
    recorded = as_int(run.get("epochs"))
    if recorded and tuple(run.get("milestones") or ()) == default_milestones(recorded):
        del recipe.values["milestones"]  # the run took the default for its epochs: it follows --epochs too
        return
    epochs, text, planned = as_int(given["epochs"]), recipe.values["milestones"], as_int(recipe.values.get("epochs"))
    if epochs is None or not text or epochs == planned:
        return
    if planned is not None:  # the file's schedule, at the same fractions of the run
        scaled = ",".join(map(str, scale_milestones([int(m) for m in text.split(",")], planned, epochs)))
        recipe.values["milestones"] = scaled
        recipe.notes.append(f"note: {recipe.path.name}'s milestones {text} of {planned} epochs are scaled to "
                            f"--epochs {epochs}: {scaled or 'none'} (pass --milestones for others)")
    elif int(text.split(",")[-1]) >= epochs:
        raise UserError(f"{recipe.path} sets milestones {text} but not the epochs they were set for, and they do "
                        f"not fit --epochs {epochs}; pass --milestones as well ('' for the default of {epochs} "
                        f"epoch{'' if epochs == 1 else 's'})")


def scale_milestones(milestones: list[int], planned: int, epochs: int) -> tuple[int, ...]:
    """Milestones set for `planned` epochs at the same fractions of `epochs`: rounded (halves up), kept inside the
    run (1 .. epochs-1), repeats merged, as default_milestones does (200 -> 10 epochs: 60,120,160 -> 3,6,8)."""
    scaled = {min(max(1, (2 * m * epochs + planned) // (2 * planned)), epochs - 1) for m in milestones}
    return tuple(sorted(m for m in scaled if m >= 1))


def rerun_notes(recipe: Recipe, given: dict) -> str | None:
    """What differs between a recorded run and its rerun (code, libraries, data), so a rerun whose weights do
    not match the run's says why; None when nothing does (or the file is not a run's)."""
    if recipe.run is None:
        return None
    from .runs import provenance  # git and package versions: asked only for a rerun

    then, now = recipe.run.get("provenance") or {}, provenance()
    changed = []
    if then.get("git_commit") not in (None, now["git_commit"]):
        changed.append(f"labelopt commit {then['git_commit']} -> {now['git_commit']}")
    for name, version in (then.get("versions") or {}).items():
        if name in now["versions"] and now["versions"][name] != version:
            changed.append(f"{name} {version} -> {now['versions'][name]}")
    recorded = (recipe.run.get("dataset") or {}).get("fingerprint")
    data = given.get("data", recipe.values.get("data"))
    try:
        current = json.loads((Path(str(data)) / "meta.json").read_text())["splits"]["train"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        current = None  # no readable dataset: the command itself says so
    if recorded and current and current != recorded:
        changed.append(f"the training data (fingerprint {recorded[:12]} -> {current[:12]})")
    if not changed:
        return None
    return (f"note: rerunning the run in {recipe.run.get('out')} with {'; '.join(changed)}: "
            f"its weights may differ from the run's")
