"""What a table's rows and stores are checked against before anything trains, from the methods themselves: a row's
method has the teacher it needs (a store that can serve it, with the signals it reads, or an online teacher), its
method options exist and parse, and whether a pack can hold it (pipeline/jobs/student_pack.py's check_member,
decided from the method's declarations before any model exists). An existing store is checked to open."""
from __future__ import annotations

from pathlib import Path

from ...stages.distillers import FEATURE_PREFIX, SIGNAL_LOGITS, get_distiller
from ...stages.distillers.options import parse_value
from ...store import LabelStore, StoreError
from ...store.layout import partial_dir
from ..errors import UserError
from .table_file import RowSpec, StoreSpec, TableSpec
from .table_steps import DONE, NEW, RESUME


def check_row(row: RowSpec, table: TableSpec) -> None:
    """One line for the first thing that would make the row's train-student refuse it, before anything runs."""
    method = get_distiller(row.method)
    where = f"{table.path}: row {row.name!r} (method {row.method})"
    has_source = row.labels is not None or bool(row.teachers)
    if method.teacher_signals and not has_source:
        raise UserError(f"{where} needs teacher signals ({', '.join(method.teacher_signals)}): give it labels = a "
                        f"store or teacher = a teacher")
    if not method.teacher_signals and has_source:
        raise UserError(f"{where} uses no teacher: drop its labels/teacher")
    if row.labels is not None and not method.store_servable:
        raise UserError(f"{where} cannot be served by a label store: {method.why_not_store()}; give it teacher = a "
                        f"teacher (online)")
    store = table.stores.get(row.labels) if row.labels is not None else None
    if store is not None:
        check_store_signals(method, store, where)
    known = method.option_types()
    for name, value in row.options.get("method_options", {}).items():
        if name not in known:
            raise UserError(f"{where}: method_options has no '{name}' (its options: {', '.join(known) or 'none'})")
        try:
            parse_value(name, known[name], value)
        except ValueError as exc:
            raise UserError(f"{where}: method_options {exc}") from None


def check_store_signals(method, store: StoreSpec, where: str) -> None:
    """The signals the method reads beyond soft labels are in what the store is told to keep."""
    if SIGNAL_LOGITS in method.teacher_signals and not store.options.get("logits"):
        raise UserError(f"{where} reads the teacher's logits: give [stores.{store.name}] logits = true")
    kept = set(store.options.get("features", ()))
    for signal in method.teacher_signals:
        if signal.startswith(FEATURE_PREFIX) and signal[len(FEATURE_PREFIX):] not in kept:
            raise UserError(f"{where} reads {signal}: give [stores.{store.name}] features = "
                            f"[\"{signal[len(FEATURE_PREFIX):]}\"]")


def pack_refusal(row: RowSpec, table: TableSpec) -> str:
    """Why a pack cannot hold the row (what check_member refuses), or "" when it can."""
    method = get_distiller(row.method)
    if method.student_taps:
        return "its method reads the student's features"
    warmup = row.options.get("method_options", {}).get("warmup_epochs", method.option_defaults().get("warmup_epochs"))
    if warmup:
        return "its method warms up first"
    return ""


def smoke_warmups(row: RowSpec) -> dict:
    """--smoke: a method's warm-up is one epoch too (its default belongs to the full recipe)."""
    defaults = get_distiller(row.method).option_defaults()
    if "warmup_epochs" not in defaults:
        return row.options
    return {**row.options, "method_options": {**row.options.get("method_options", {}), "warmup_epochs": 1}}


def store_state(path: Path, store: StoreSpec) -> tuple[str, str]:
    """done: the store exists and opens (made by the same method); resume: a stopped run's blocks wait in its
    partial folder; new: nothing yet."""
    if path.is_file():
        try:
            opened = LabelStore.open(path)
        except StoreError as exc:
            raise UserError(f"label store {path} exists but does not open ({exc}); delete it to make it again"
                            ) from None
        made = (opened.generator or {}).get("method")
        if made != store.method:
            raise UserError(f"label store {path} was made by method {made} and this table asks for {store.method}: "
                            f"delete it or choose another --out")
        return DONE, f"{opened.num_samples} samples x {opened.num_views} views"
    if partial_dir(path).is_dir():
        return RESUME, "blocks of a stopped run"
    return NEW, ""
