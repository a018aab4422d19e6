"""A results table's file: read, checked and resolved before anything trains (`labelopt table`).

The file is TOML (tables/digits.toml is a whole example):

    title = "..."                   what the report is headed with; note = "..." is printed under it
    prepare = "digits"              a dataset `labelopt prepare` makes into OUT/data (root = "..." for its files),
    data = "data/cifar100"          or a prepared folder (--data overrides either)
    seeds = [0, 1, 2]               the students' seeds: each row trains one run per seed
    max_pack = 16                   the most students trained together as one pack (1: each run its own process)
    [student]                       every row's train-student options (arch = the student), unless the row sets its own
    [teachers.NAME]                 a `labelopt train` run: arch, epochs, seed, config, ...
    [stores.NAME]                   a `labelopt generate-labels` store: teacher = NAME or checkpoint (teachers = [...]
                                    for sl-ens), method, views, temperature, logits, ...
    [[rows]]                        name, method, student, labels = a store NAME or path, or teacher(s) = NAME or
                                    checkpoint (online methods), label (the report's name), published = {top1, ...}
    [[checks]]                      question, metric, row, better = "higher"|"lower", than, published = [a, b]
    [smoke]                         what --smoke changes besides 1 epoch and 1 seed: the same keys, merged over the
                                    file (rows by name: [smoke.rows.NAME])

Relative paths are relative to the working directory, as on the command line.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

from ..errors import UserError
from ..limits import BOUNDS
from .table_keys import (CHECK_KEYS, COMMON_STUDENT_KEYS, NAME, PUBLISHED_KEYS, ROW_KEYS, STORE_KEYS, TEACHER_KEYS,
                         Key, value_problem)

SHIPPED_TABLES = Path(__file__).resolve().parents[2] / "tables"  # tables/ at the package root
TOP_KEYS = ("title", "note", "prepare", "root", "data", "seeds", "max_pack", "student", "teachers", "stores", "rows",
            "checks", "smoke")
DEFAULT_MAX_PACK = 16
METRICS = ("top1", "top5", "nll", "ece")


@dataclass
class TeacherSpec:
    name: str
    arch: str
    options: dict  # TEACHER_KEYS, arch included


@dataclass
class StoreSpec:
    name: str
    method: str
    teachers: tuple[str, ...]  # teacher names or checkpoint paths
    options: dict  # STORE_KEYS less teacher(s)


@dataclass
class RowSpec:
    name: str
    label: str
    method: str
    student: str
    labels: str | None  # a store name or a store path
    teachers: tuple[str, ...]  # online teachers: names or checkpoint paths
    options: dict  # the [student] options, then the row's own (STUDENT_KEYS)
    published: dict = field(default_factory=dict)


@dataclass
class CheckSpec:
    question: str
    metric: str
    row: str
    better: str  # higher or lower
    than: str
    published: tuple[float, float] | None  # the published pair (row, than): its direction is shown beside ours


@dataclass
class TableSpec:
    path: Path
    title: str
    note: str
    prepare: str | None
    root: str | None
    data: str | None
    seeds: tuple[int, ...]
    teachers: dict[str, TeacherSpec]
    stores: dict[str, StoreSpec]
    rows: list[RowSpec]
    checks: list[CheckSpec]
    smoke: bool = False
    max_pack: int = DEFAULT_MAX_PACK  # the most students of one pack (tables.py plans the packs)


def shipped_tables() -> list[str]:
    return sorted(p.stem for p in SHIPPED_TABLES.glob("*.toml"))


def table_path(spec: str) -> Path:
    """A table file, or the bare name of a shipped one (tables/NAME.toml) when no such file exists."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = SHIPPED_TABLES / f"{spec}.toml"
    if "/" not in spec and not path.suffix and shipped.is_file():
        return shipped
    raise UserError(f"no table file {spec}; pass a .toml file or a shipped table ({', '.join(shipped_tables())})")


def read_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read table file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not valid TOML: {' '.join(str(exc).split())}") from None


def load_table(spec: str, *, smoke: bool = False) -> TableSpec:
    """The checked table of file or shipped name `spec`; with `smoke`, its [smoke] table merged over it. Both are
    always checked, so neither run hides a mistake of the other."""
    path = table_path(spec)
    raw = read_toml(path)
    table = parse_table(raw, path)
    merged = parse_table(merge_smoke(raw, path), path, "[smoke] merged over the file: ")
    return replace(merged, smoke=True) if smoke else table


def merge_smoke(raw: dict, path: Path) -> dict:
    """The file with its [smoke] table merged over it: tables key by key, other values replaced, rows by name."""
    smoke = raw.get("smoke", {})
    expect_table(smoke, path, "smoke")
    check_keys(smoke, [k for k in TOP_KEYS if k != "smoke"], path, "[smoke]")
    merged = {k: v for k, v in raw.items() if k != "smoke"}
    for key, value in smoke.items():
        if key == "rows":
            merged["rows"] = merge_rows(raw.get("rows", []), value, path)
        else:
            merged[key] = merge_values(merged.get(key), value)
    return merged


def merge_values(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge_values(base.get(k), v) for k, v in over.items()}}
    return over


def merge_rows(rows, over, path: Path) -> list:
    expect_table(over, path, "smoke.rows")
    names = [r.get("name") for r in rows if isinstance(r, dict)]
    unknown = [name for name in over if name not in names]
    if unknown:
        raise UserError(f"{path}: [smoke.rows] names no row '{unknown[0]}' (rows: {', '.join(map(str, names))})")
    return [merge_values(r, over.get(r.get("name"), {})) if isinstance(r, dict) else r for r in rows]


def expect_table(value, path: Path, where: str) -> None:
    if not isinstance(value, dict):
        raise UserError(f"{path}: '{where}' must be a table")


def check_keys(table: dict, known, path: Path, where: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' in {where} (known: {', '.join(known)})")


def checked_options(table: dict, keys: dict[str, Key], path: Path, where: str) -> dict:
    """The table's values, each checked against its key (unknown keys refused, naming the key and the file)."""
    check_keys(table, list(keys), path, where)
    for name, value in table.items():
        problem = value_problem(keys[name], value)
        if problem:
            raise UserError(f"{path}: {where} '{name}': {problem}")
    return dict(table)


def parse_table(raw: dict, path: Path, context: str = "") -> TableSpec:
    try:
        return parse_checked(raw, path)
    except UserError as exc:
        if not context:
            raise
        raise UserError(f"{context}{exc}") from None


def parse_checked(raw: dict, path: Path) -> TableSpec:
    check_keys(raw, TOP_KEYS, path, "the file")
    for key in ("title", "note", "prepare", "root", "data"):
        if key in raw and not (isinstance(raw[key], str) and raw[key]):
            raise UserError(f"{path}: '{key}' must be a non-empty string")
    if ("prepare" in raw) == ("data" in raw):
        raise UserError(f"{path}: give the dataset as data = \"a prepared folder\" or prepare = \"digits\" (one "
                        f"of the two)")
    student = raw.get("student", {})
    expect_table(student, path, "student")
    common = checked_options(student, COMMON_STUDENT_KEYS, path, "[student]")
    teachers = {n: parse_teacher(n, t, path) for n, t in named_tables(raw, "teachers", path).items()}
    stores = {n: parse_store(n, s, path) for n, s in named_tables(raw, "stores", path).items()}
    rows = parse_rows(raw.get("rows"), common, path)
    table = TableSpec(path, raw.get("title", path.stem), raw.get("note", ""), raw.get("prepare"), raw.get("root"),
                      raw.get("data"), parse_seeds(raw.get("seeds", [0]), path), teachers, stores, rows,
                      parse_checks(raw.get("checks", []), path), max_pack=parse_max_pack(raw, path))
    check_references(table)
    return table


def parse_max_pack(raw: dict, path: Path) -> int:
    bound, value = BOUNDS["max_pack"], raw.get("max_pack", DEFAULT_MAX_PACK)
    if not bound.accepts(value):
        raise UserError(f"{path}: 'max_pack' {value!r} is not {bound.describe()}")
    return int(value)


def named_tables(raw: dict, key: str, path: Path) -> dict:
    tables = raw.get(key, {})
    expect_table(tables, path, key)
    for name, value in tables.items():
        if not NAME.match(name):
            raise UserError(f"{path}: [{key}.{name}]: a name is letters, digits, '.', '_', '+' and '-'")
        expect_table(value, path, f"{key}.{name}")
    return tables


def parse_seeds(seeds, path: Path) -> tuple[int, ...]:
    bound = BOUNDS["seed"]
    if not (isinstance(seeds, list) and seeds and all(bound.accepts(s) for s in seeds)):
        raise UserError(f"{path}: 'seeds' must be a list of integers, each {bound.describe()}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: 'seeds' {seeds}: each seed once")
    return tuple(int(s) for s in seeds)


def parse_teacher(name: str, table: dict, path: Path) -> TeacherSpec:
    options = checked_options(table, TEACHER_KEYS, path, f"[teachers.{name}]")
    if "arch" not in options:
        raise UserError(f"{path}: [teachers.{name}] needs arch = \"resnet56\" (labelopt models lists them)")
    return TeacherSpec(name, options["arch"], options)


def teacher_list(table: dict, path: Path, where: str) -> tuple[str, ...]:
    """`teacher = "x"` or `teachers = ["x", "y"]` (not both)."""
    if "teacher" in table and "teachers" in table:
        raise UserError(f"{path}: {where}: give teacher or teachers, not both")
    if "teacher" in table:
        return (table["teacher"],)
    return tuple(table.get("teachers", ()))


def parse_store(name: str, table: dict, path: Path) -> StoreSpec:
    where = f"[stores.{name}]"
    options = checked_options(table, STORE_KEYS, path, where)
    teachers = teacher_list(options, path, where)
    method = options.get("method", "sl")
    wanted = {"random": (0, 0), "sl-ens": (2, None)}.get(method, (1, 1))
    if len(teachers) < wanted[0] or (wanted[1] is not None and len(teachers) > wanted[1]):
        count = {(0, 0): "no teacher", (2, None): "two or more teachers", (1, 1): "one teacher"}[wanted]
        raise UserError(f"{path}: {where}: method {method} takes {count}, got {len(teachers)}")
    rest = {k: v for k, v in options.items() if k not in ("teacher", "teachers")}
    return StoreSpec(name, method, teachers, {"method": method, **rest})


def parse_rows(rows, common: dict, path: Path) -> list[RowSpec]:
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
        raise UserError(f"{path}: needs one or more [[rows]], each with a name and a method")
    parsed, seen = [], set()
    for i, row in enumerate(rows):
        where = f"[[rows]] {row.get('name', f'#{i + 1}')!r}"
        options = checked_options(row, ROW_KEYS, path, where)
        for needed in ("name", "method"):
            if needed not in options:
                raise UserError(f"{path}: {where} needs {needed} = \"...\"")
        name = options["name"]
        if not NAME.match(name) or name in seen:
            raise UserError(f"{path}: {where}: a row's name is unique, of letters, digits, '.', '_', '+' and '-'")
        seen.add(name)
        if "labels" in options and ("teacher" in options or "teachers" in options):
            raise UserError(f"{path}: {where}: give labels (a store) or teacher (online), not both")
        own = {k: v for k, v in options.items() if k not in ROW_ONLY}
        merged = {**{k: v for k, v in common.items() if k != "arch"}, **own}
        merged["method_options"] = {**common.get("method_options", {}), **own.get("method_options", {})}
        student = options.get("student", common.get("arch"))
        if student is None:
            raise UserError(f"{path}: {where} needs a student: student = \"resnet20\", or arch in [student]")
        parsed.append(RowSpec(name, options.get("label", name), options["method"], student, options.get("labels"),
                              teacher_list(options, path, where), merged,
                              parse_published(options.get("published", {}), path, where)))
    return parsed


ROW_ONLY = ("name", "label", "method", "student", "labels", "teacher", "teachers", "published")


def parse_published(table: dict, path: Path, where: str) -> dict:
    check_keys(table, PUBLISHED_KEYS, path, f"{where} published")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path}: {where} published '{key}': {value!r} is not a number")
    return {k: float(v) for k, v in table.items()}


def parse_checks(checks, path: Path) -> list[CheckSpec]:
    if not (isinstance(checks, list) and all(isinstance(c, dict) for c in checks)):
        raise UserError(f"{path}: 'checks' must be [[checks]] tables")
    parsed = []
    for i, check in enumerate(checks):
        where = f"[[checks]] #{i + 1}"
        check_keys(check, CHECK_KEYS, path, where)
        missing = [k for k in CHECK_KEYS[:5] if not isinstance(check.get(k), str)]
        if missing:
            raise UserError(f"{path}: {where} needs {missing[0]} = \"...\"")
        if check["metric"] not in METRICS or check["better"] not in ("higher", "lower"):
            raise UserError(f"{path}: {where}: metric is one of {', '.join(METRICS)}, better is higher or lower")
        published = check.get("published")
        if published is not None and not (isinstance(published, list) and len(published) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in published)):
            raise UserError(f"{path}: {where}: published is a pair of numbers [row's, than's]")
        parsed.append(CheckSpec(check["question"], check["metric"], check["row"], check["better"], check["than"],
                                tuple(published) if published else None))
    return parsed


def check_references(table: TableSpec) -> None:
    """Every name a store, row or check gives resolves: a teacher or store of the file, or an existing file."""
    path = table.path
    for store in table.stores.values():
        for teacher in store.teachers:
            resolve_file(teacher, table.teachers, path, f"[stores.{store.name}] teacher")
    for row in table.rows:
        for teacher in row.teachers:
            resolve_file(teacher, table.teachers, path, f"row {row.name!r} teacher")
        if row.labels is not None:
            resolve_file(row.labels, table.stores, path, f"row {row.name!r} labels")
    names = [r.name for r in table.rows]
    for check in table.checks:
        for name in (check.row, check.than):
            if name not in names:
                raise UserError(f"{path}: [[checks]] {check.question!r} names no row '{name}'")


def resolve_file(value: str, names: dict, path: Path, where: str) -> None:
    if value in names or Path(value).expanduser().is_file():
        return
    raise UserError(f"{path}: {where} '{value}' is neither a name of this file ({', '.join(names) or 'none'}) nor "
                    f"an existing file")
