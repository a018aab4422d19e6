"""Checkpoints: a state dict plus metadata, readable with torch.load(weights_only=True).

Checkpoints travel between teams, so they are never unpickled beyond tensors and
plain containers, and a file that is not ours is refused with one line.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ...models import UnknownModelError, create_model
from ...stages.teachers import Teacher
from ...store.files import write_bytes_atomic
from ..data.datasets import PreparedDataset
from ..data.normalize import Normalizer
from ..atomic import write_json_atomic
from ..errors import UserError

CHECKPOINT_FORMAT = "labelopt.checkpoint"
CHECKPOINT_VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file: a label store given as a checkpoint


def save_checkpoint(path: Path, payload: dict) -> None:
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    # Serialised in memory first: torch.save reports a full disk as an opaque RuntimeError, a plain write as ENOSPC.
    buffer = io.BytesIO()
    torch.save(body, buffer)
    write_bytes_atomic(path, buffer.getbuffer(), error=UserError,
                       then="rerun with --resume (it continues from last.pt)")


def save_best(folder: Path, payload: dict, best: dict) -> None:
    """A run folder's best.pt (`payload`, saying what it was selected on) and best.json (`best`: the epoch, its
    score and what it was selected on); best.pt first, so best.json never names weights that were not saved."""
    save_checkpoint(folder / "best.pt", {**payload, "selected_on": best["selected_on"]})
    write_json_atomic(folder / "best.json", best)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .pt file written by labelopt train")
    with open(path, "rb") as file:
        if file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            raise UserError(f"{path} is a label store (an HDF5 file), not a model checkpoint: pass it as --labels "
                            f"(train-student); a teacher is a run's last.pt or best.pt")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that is not a torch zip of plain tensors fails in many ways (KeyError, ...)
        raise UserError(f"{path} is not a labelopt checkpoint (it does not load as plain tensors: "
                        f"{load_failure(exc)})") from None
    if not isinstance(body, dict) or body.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a labelopt checkpoint (no '{CHECKPOINT_FORMAT}' header); "
                        f"use a last.pt or best.pt from a labelopt run folder")
    if body.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path} has checkpoint version {body.get('version')}; this labelopt reads version "
                        f"{CHECKPOINT_VERSION}: upgrade labelopt")
    check_header(body, path)
    return body


def load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, in a few words: torch's weights-only refusal is paragraphs of advice to load
    it unsafely, of which only the unpickler's own reason (when it gives one) is about the file."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        reason = text.partition("WeightsUnpickler error:")[2].partition(" Check the documentation")[0]
        reason = reason.partition(". ")[0].strip().rstrip(".")
        return f"torch refused it: {reason}" if reason else "torch refused it"
    words = text[:160].rsplit(" ", 1)[0] + " ..." if len(text) > 160 else text
    return f"{type(exc).__name__}: {words}" if words else type(exc).__name__


def check_header(body: dict, path: Path) -> None:
    """The fields every reader relies on, with their types: a damaged or hand-made header is refused here."""
    problems = []
    if not isinstance(body.get("arch"), str) or not body.get("arch"):
        problems.append("arch (the model name)")
    classes = body.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        problems.append("num_classes")
    model = body.get("model")
    if not isinstance(model, dict) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        problems.append("model (the weights)")
    epoch = body.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        problems.append("epoch")
    if problems:
        raise UserError(f"{path} is a damaged labelopt checkpoint: its header lacks a valid "
                        f"{', '.join(problems)}; use a last.pt or best.pt written by labelopt train")


def build_model_from_checkpoint(body: dict, path: str | Path, *, num_classes: int | None = None,
                                arch: str | None = None) -> torch.nn.Module:
    """The checkpoint's model with its weights; refuses a mismatch with what the caller expects."""
    if body.get("pack"):
        seeds, members = body["pack"].get("seeds", []), body["pack"].get("members") or [{}]
        folder = Path(path).parent / (members[0].get("out") or f"seed-{seeds[0] if seeds else 'S'}")
        raise UserError(f"{path} is a pack's checkpoint ({len(seeds)} {body['arch']} students in one network); "
                        f"use a member's own: {folder}/last.pt or best.pt")
    ckpt_arch, ckpt_classes = body["arch"], int(body["num_classes"])
    if arch is not None and arch != ckpt_arch:
        raise UserError(f"{path} holds a {ckpt_arch}, not a {arch}; pass a {arch} checkpoint or --arch {ckpt_arch}")
    if num_classes is not None and num_classes != ckpt_classes:
        raise UserError(f"{path} was trained for {ckpt_classes} classes but the data has {num_classes}; "
                        f"use a checkpoint trained on this dataset")
    try:
        model = create_model(ckpt_arch, ckpt_classes)
    except UnknownModelError as exc:
        raise UserError(f"{path}: {exc}") from None
    missing, unexpected = _state_mismatch(model, body["model"])
    if missing or unexpected:
        raise UserError(f"{path}'s weights do not fit a {ckpt_arch} (missing {len(missing)}, unexpected "
                        f"{len(unexpected)} tensors, e.g. {(missing or unexpected)[0]}); it was made for "
                        f"another architecture")
    try:
        model.load_state_dict(body["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserError(f"{path}'s weights do not fit a {ckpt_arch} ({first}); it was made for another "
                        f"architecture") from None
    return model


def _state_mismatch(model: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    given = set(state)
    return sorted(expected - given), sorted(given - expected)


def training_stats(body: dict, fallback_mean, fallback_std) -> tuple[list[float], list[float]]:
    """The per-channel mean/std a checkpoint's model was trained with: a model is fed the inputs it learned on,
    whatever data it is run over (older checkpoints without them use the fallback)."""
    stats = body.get("dataset") or {}
    return stats.get("mean", fallback_mean), stats.get("std", fallback_std)


def trained_elsewhere(body: dict, data) -> str | None:
    """A note when the checkpoint was trained on other data than `data`'s training split, else None."""
    stats = body.get("dataset") or {}
    if "train" not in data.splits or not stats.get("fingerprint"):
        return None
    if stats["fingerprint"] == data.fingerprint("train"):
        return None
    return (f"trained on {stats.get('name', '?')} (train fingerprint {str(stats['fingerprint'])[:12]}), not on the "
            f"evaluated {data.name} (train fingerprint {data.fingerprint('train')[:12]})")


def load_teachers(paths, data: PreparedDataset, device: torch.device, *, channels_last: bool = False
                  ) -> list[Teacher]:
    """Frozen teachers from checkpoints, each fed images normalised as in its own training (in channels_last with
    its weights, when asked)."""
    from ...store.checksums import file_sha256  # here: `labelopt train` loads no store (h5py)
    teachers = []
    for path in paths:
        body = load_checkpoint(path)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model_from_checkpoint(body, path, num_classes=data.num_classes).to(device,
                                                                                          memory_format=memory_format)
        stats = body.get("dataset", {})
        # A teacher sees images normalised as in its own training.
        normalize = Normalizer(*training_stats(body, data.mean, data.std), device, channels_last=channels_last)
        teachers.append(Teacher(model, body["arch"], normalize,
                                {"arch": body["arch"], "checkpoint": Path(path).name,
                                 "checkpoint_sha256": file_sha256(Path(path)),
                                 "trained_on": {k: stats.get(k) for k in ("name", "fingerprint")},
                                 # what the checkpoint reports of itself (for a store's card), where it does
                                 "test_top1": body.get("metrics", {}).get("test_top1"),
                                 "epoch": body.get("epoch")}))
    return teachers
