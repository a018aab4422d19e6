"""A pack: G students of one architecture trained in one pass as one network; each member is a standalone run of
its own seed, method and label store (train-student --seeds, or --member: pipeline/run/members.py).

The training loop sees one model (models/packing.py: the members side by side on the channel axis, grouped on a
GPU, stacked on a CPU), one batch and one loss; what differs per member lives here:
- `PackViews` draws each member's views with its own sampler (its store's views, mixed or not, or fresh ones,
  mixed or not) and its own generator, seeded as a standalone run of its seed would seed it, and puts the members'
  pixels side by side ([B, G * 3, H, W]) and their mixed images' parts one above the other ([B, G, parts]); the
  data order is the pack's one.
- `pack_teacher_rows` gathers each member's store rows for its own views ({signal: [B, M, ...]} over the M members
  that read the signal; `signal_slots` says where member g's rows are).
- `PackNormalizer` normalizes each member's channels; given a plain batch (the held-out split) it shows every
  member the same images.
- `pack_objective` splits the pack's logits per member, gives each member's method its own slice of the batch and
  sums the members' losses (their parameters are disjoint, so each gets exactly its own gradient).
- `PackMembers` keeps each member's run folder: an ordinary run folder (config.json, metrics.jsonl, last.pt,
  best.pt and best.json where --val-fraction holds out a validation split) that `labelopt evaluate` reads like any
  other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...models.packing import member_outputs, member_state
from ...stages.batch import ViewedBatch
from ...stages.metrics import classification_metrics
from ..data.normalize import Normalizer
from ..views.draws import Chosen, ChoosingSampler, Drawn, MixParts, ViewSampler
from .checkpoints import save_best, save_checkpoint
from .runs import MetricsLog, write_config


def recorded_layout(config: dict) -> str | None:
    """The layout a run's config.json says its pack trains in (None: not a pack); a pack from before layouts were
    recorded was grouped."""
    if not config.get("pack"):
        return None
    return config.get("pack_layout") or "grouped"


def epoch_views_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a run's view generator for one epoch (train_loop and a pack's members use the same)."""
    return seed * 1_000_003 + epoch * 7919 + rank


class PackViews(ViewSampler):
    """Member g's views drawn by `samplers[g]` from its own generator (reseeded each epoch by `start_epoch`). The
    pixels of members whose samplers choose a policy's parameters are made together (member_pixels); a member
    whose sampler mixes images as it draws (fresh mixes) draws alone. Mixed members' parts are stacked as
    [B, G, parts] (`mixed_parts` of the widest; a member's own are its first `member_parts[g]`)."""

    def __init__(self, samplers: list[ViewSampler], seeds: list[int]):
        self.samplers, self.seeds = samplers, seeds
        self.generators = [torch.Generator() for _ in seeds]
        self.member_parts = [s.mixed_parts() for s in samplers]

    def start_epoch(self, epoch: int, rank: int) -> None:
        for generator, seed in zip(self.generators, self.seeds):
            generator.manual_seed(epoch_views_seed(seed, epoch, rank))

    def mixed_parts(self) -> int:
        return max(self.member_parts)

    def draw(self, images, indices, generator):
        own = [s.choose(images, indices, g) if isinstance(s, ChoosingSampler) else s.draw(images, indices, g)
               for s, g in zip(self.samplers, self.generators)]
        chosen = [g for g, drawn in enumerate(own) if isinstance(drawn, Chosen)]
        for g, pixels in zip(chosen, member_pixels(images, [own[g] for g in chosen])):
            own[g] = own[g].made(pixels, indices)
        keyed = [d.views for d in own if d.views is not None]
        # A member without a store has no view keys: its column is a placeholder that nothing reads.
        views = None if not keyed else torch.stack([torch.zeros_like(keyed[0]) if d.views is None else d.views
                                                    for d in own], dim=1)
        return Drawn(torch.cat([d.images for d in own], dim=1), views, self._stacked_mixes(own, len(indices)))

    def _stacked_mixes(self, own: list[Drawn], size: int) -> MixParts | None:
        """Every mixed member's parts as [B, G, parts], zero past a member's own parts (nothing reads them)."""
        width = self.mixed_parts()
        if not width:
            return None
        labels = torch.zeros(size, len(own), width, dtype=torch.long)
        weights = torch.zeros(size, len(own), width, dtype=torch.float32)
        for g, (drawn, parts) in enumerate(zip(own, self.member_parts)):
            if parts:
                labels[:, g, :parts], weights[:, g, :parts] = drawn.mix.labels.cpu(), drawn.mix.weights.cpu()
        return MixParts(labels, weights)

    def describe(self):
        described = [s.describe() for s in self.samplers]
        pack = {"members": len(self.seeds), "seeds": self.seeds}
        if all(d == described[0] for d in described):
            return {**described[0], "pack": pack}
        return {"pack": {**pack, "views": described}}


def member_pixels(images: torch.Tensor, chosen: list[Chosen]) -> list[torch.Tensor]:
    """Each member's pixels, uint8 [B, 3, H, W]: made in one call for all the members whose views share a policy
    (one set of kernels per step, not one per member), each the pixels its own draw would make."""
    groups: list[tuple[object, list[int]]] = []  # (policy, its members); policies compare equal by their fields
    for g, choice in enumerate(chosen):
        group = next((members for policy, members in groups if policy == choice.policy), None)
        if group is None:
            groups.append((choice.policy, [g]))
        else:
            group.append(g)
    size, made = images.shape[0], [None] * len(chosen)
    for policy, members in groups:
        rows = torch.arange(size, device=images.device).repeat(len(members))
        pixels = policy.apply_rows(images, torch.cat([chosen[g].params for g in members]), rows)
        for i, g in enumerate(members):
            made[g] = pixels[i * size:(i + 1) * size]
    return made


def signal_slots(member_signals: list) -> list[dict[str, int]]:
    """For each member, where its rows of each signal it reads sit in `pack_teacher_rows`' [B, M, ...] stacks (M:
    the members that read that signal, in member order)."""
    counts: dict[str, int] = {}
    slots = []
    for names in member_signals:
        slots.append({name: counts.get(name, 0) for name in names})
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    return slots


def pack_teacher_rows(sources: list):
    """Rows of every member's store for its own views: {signal: [B, M, ...]}; sources[g]: member g's StoreSource,
    or None (no store). Members that read the same signals of one store share one gather, of every member's keys
    at once (a --seeds pack of G members: one call for G * B keys, not G calls), or of the batch's rows once where
    the batch has no view keys."""
    groups: dict[tuple, list[int]] = {}
    for g, source in enumerate(sources):
        if source is not None:
            groups.setdefault((id(source.store), source.names), []).append(g)

    def rows(indices: torch.Tensor, views: torch.Tensor | None) -> dict:
        gathered = [{} for _ in sources]
        for members in groups.values():
            fetch = sources[members[0]].rows
            if views is None:
                shared = fetch(indices, None)
                for g in members:
                    gathered[g] = shared
                continue
            together = fetch(indices.repeat(len(members)), torch.cat([views[:, g] for g in members]))
            size = len(indices)
            for i, g in enumerate(members):
                gathered[g] = {name: block[i * size:(i + 1) * size] for name, block in together.items()}
        names = dict.fromkeys(name for own in gathered for name in own)
        return {name: torch.stack([own[name] for own in gathered if name in own], dim=1) for name in names}
    return rows


class PackNormalizer(Normalizer):
    """The dataset's normalization on each member's 3 channels; a 3-channel batch is shown to every member."""

    def __init__(self, mean, std, device, members: int, channels_last: bool = False):
        super().__init__(list(mean) * members, list(std) * members, device, channels_last)
        self.members = members

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3 and self.members > 1:
            images = images.repeat(1, self.members, 1, 1)
        return super().__call__(images)


def member_batch(batch: ViewedBatch, g: int, slots: dict[str, int], viewed: bool, parts: int = 0) -> ViewedBatch:
    """Member g's view of a pack's batch: its pixels, its view keys (`viewed`: it has some), its mixed images'
    `parts` (0: unmixed) and its teacher rows."""
    mix = (batch.mix_labels[:, g, :parts], batch.mix_weights[:, g, :parts]) if parts else (None, None)
    return ViewedBatch(batch.images[:, 3 * g:3 * g + 3], batch.labels, batch.indices,
                       batch.views[:, g] if viewed and batch.views is not None else None, *mix,
                       teacher={name: batch.teacher[name][:, slot] for name, slot in slots.items()})


def pack_objective(distillers: list, sources: list, slots: list[dict[str, int]], viewed: list[bool],
                   mixed_parts: list[int]):
    """The loss of a pack's step: each member's method on its logits and its batch, summed; logits [B, G, C]."""
    members = len(distillers)

    def objective(model, inputs, batch: ViewedBatch, extra=None):
        logits = member_outputs(model(inputs), members)
        total, parts = 0.0, {}
        for g, (distiller, source) in enumerate(zip(distillers, sources)):
            own = member_batch(batch, g, slots[g], viewed[g], mixed_parts[g])
            teacher = source.signals(own, distiller.teacher_signals) if distiller.teacher_signals else {}
            loss = distiller(logits[:, g], {}, teacher, own)["loss"]
            parts[f"member{g}"] = loss
            total = total + loss
        return total, logits, parts
    return objective


@dataclass
class PackMember:
    """A member's run folder and its config.json: what a standalone run of it would record, and the pack."""
    name: str
    seed: int
    out: Path
    config: dict
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})


class PackMembers:
    """Each member's ordinary run folder, written from the pack at the end of every epoch."""

    def __init__(self, out: Path, members: list[PackMember], resume: bool):
        self.out, self.members = Path(out), members
        for member in self.members:
            member.out.mkdir(parents=True, exist_ok=True)
            write_config(member.out, member.config)
            if resume:
                member.best = read_best(member.out)
            else:  # an overwritten pack's: this run may choose no best (no validation split), or another
                for name in ("best.pt", "best.json"):
                    (member.out / name).unlink(missing_ok=True)

    def record(self) -> dict:
        """What the pack's last.pt says of its members (names, methods, stores, seeds, folders)."""
        return {"seeds": [m.seed for m in self.members],
                "members": [{"name": m.name, "method": m.config.get("method"), "seed": m.seed,
                             "labels": m.config.get("labels"), "out": self.where(m.out)} for m in self.members]}

    def where(self, folder: Path) -> str:
        """A member's folder as the pack records it: relative to the pack's when inside it (the two move together)."""
        try:
            return str(folder.relative_to(self.out))
        except ValueError:
            return str(folder.expanduser().resolve())

    def export(self, model: torch.nn.Module, record: dict, payload: dict) -> None:
        """Member g's line, last.pt and (when its own validation top-1 is its best) best.pt and best.json."""
        for g, member in enumerate(self.members):
            own = member_record(record, g)
            MetricsLog(member.out / "metrics.jsonl", keep_through_epoch=own["epoch"] - 1).append(own)
            body = {**payload, "model": member_state(model, g, len(self.members)), "metrics": own}
            save_checkpoint(member.out / "last.pt", body)
            score = own.get("val_top1")  # its own validation top-1; without a validation split, no best.pt
            if score is not None and score > member.best["top1"]:
                member.best = {"top1": score, "epoch": own["epoch"], "selected_on": "val"}
                save_best(member.out, body, member.best)


def read_best(folder: Path) -> dict:
    path = folder / "best.json"
    return json.loads(path.read_text()) if path.is_file() else {"top1": -1.0, "epoch": -1}


def member_record(record: dict, g: int) -> dict:
    """A pack epoch's record as member g's own: its loss, its train top-1, its held-out figures."""
    own = {k: v for k, v in record.items() if k not in ("members", "train_loss_parts", "train_top1_members")}
    own["train_loss"] = record["train_loss_parts"][f"member{g}"]
    own["train_top1"] = record["train_top1_members"][g]
    if "members" in record:  # where the data has a held-out split or the run a validation split
        own.update(record["members"][g])
    return own


def member_metrics(logits: torch.Tensor, labels: torch.Tensor, members: int, prefix: str = "test") -> list[dict]:
    """Each member's top-1, top-5, NLL and ECE on a split (as <prefix>_*) from the pack's logits [N, G * C]."""
    per_member = member_outputs(logits, members)
    return [{f"{prefix}_{k}": v for k, v in classification_metrics(per_member[:, g], labels).items()
             if k in ("top1", "top5", "nll", "ece")} for g in range(members)]
