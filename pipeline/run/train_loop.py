"""The parts of a training run after its set-up: one epoch of steps, the epoch's held-out evaluation and its
checkpoints, and the watch that stops a run whose loss is no longer finite."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ...stages.batch import ViewedBatch
from ...stages.metrics import classification_metrics
from .checkpoints import save_best, save_checkpoint
from ..data.datasets import PreparedDataset
from ..errors import UserError
from ..progress import Progress
from .prediction import predict
from .runtime import DistInfo, autocast
from .packs import epoch_views_seed, member_metrics
from .train_setup import TrainingRun


STEP_RANGE = "labelopt.step"  # a step and its loss totals, as profilers show it (benchmarks/step_ops.py counts in it)


class TrainingDiverged(UserError):
    """The loss became nan or inf: the run stops, keeping the last checkpoint of a finished epoch."""


NEVER = torch.iinfo(torch.long).max  # a step number no epoch reaches


class EpochTotals:
    """Each step's figures (train_setup.step_figures: its loss, its logged loss parts, each member's correct count)
    as one row of a tensor on the device: one copy per step and no sync. Summed when the epoch ends; the nan watch
    reads the losses where the loop syncs anyway."""

    def __init__(self, device: torch.device, steps: int):
        self.device, self.steps = device, steps
        self.rows: torch.Tensor | None = None  # [steps, 1 + parts + members] float32
        self.parts: tuple[str, ...] = ()
        self.sizes: list[int] = []  # each step's batch rows

    def add(self, figures: torch.Tensor, parts: dict, rows: int) -> None:
        if self.rows is None:
            self.rows = torch.zeros(self.steps, figures.shape[0], device=self.device)
            self.parts = tuple(parts)
        self.rows[len(self.sizes)].copy_(figures.detach())
        self.sizes.append(rows)

    @property
    def seen(self) -> int:
        return sum(self.sizes)

    def sums(self) -> torch.Tensor:
        """Every figure summed over the epoch's steps, each step's weighted by its rows (its mean's sum)."""
        done = self.rows[:len(self.sizes)]
        sizes = torch.tensor(self.sizes, dtype=done.dtype, device=done.device)
        figures = 1 + len(self.parts)
        return torch.cat([(done[:, :figures] * sizes[:, None]).sum(0), done[:, figures:].sum(0)])

    def first_bad_step(self) -> torch.Tensor:
        """The first step so far whose loss was not finite, as a device scalar (NEVER: none)."""
        never = torch.full((), NEVER, dtype=torch.long, device=self.device)
        if not self.sizes:
            return never
        losses = self.rows[:len(self.sizes), 0]
        return torch.where(torch.isfinite(losses), never, torch.arange(len(losses), device=losses.device)).min()


def check_divergence(totals: EpochTotals, epoch: int, epochs: int, steps: int, out: Path,
                     dist_info: DistInfo) -> None:
    """Stop the run (on every rank at once under DDP) if a step's loss so far was nan or inf: one line with the
    epoch, the step and the value. Called where the loop syncs anyway."""
    first_bad = totals.first_bad_step()
    if dist_info.enabled:
        torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
    step = int(first_bad.item())
    if step == NEVER:
        return
    value = float(totals.rows[step, 0].item()) if step < len(totals.sizes) else float("nan")
    if math.isfinite(value):  # another rank's loss went bad at this step, not this one's
        value = float("nan")
    last = out / "last.pt"
    kept = (f"the last good checkpoint is {last} ({epoch} epochs done)" if epoch > 0 and last.is_file()
            else "no epoch had finished, so there is no checkpoint")
    raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps}; "
                           f"training stopped and {kept}; lower --lr (or the method's loss weights) and start "
                           f"a new run")


def train_step(run: TrainingRun, epoch: int, step: int, batch: ViewedBatch):
    """One optimizer step at the schedule's lr on a finished batch; returns (loss, the step's figures, parts)."""
    lr = run.schedule.lr(epoch, step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if run.step_mode.graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with autocast(run.device, run.options.bf16):
        loss, figures, parts = run.forward(batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss, figures, parts


class CompileClock:
    """Times the first step of a compiled student, which holds the compile: it is reported once (an epoch record's
    compile_seconds, with what was compiled) and left out of that epoch's train_seconds and img/s."""

    def __init__(self, run: TrainingRun):
        self.mode, self.device = run.step_mode, run.device
        self.seconds, self.rows, self.started, self.skips, self.skipped = 0.0, 0, None, 0, False

    def start(self) -> None:
        if self.mode.compile_pending:
            self.started, self.skips = time.perf_counter(), cudagraph_skips()

    def stop(self, rows: int) -> None:
        if self.started is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per process: the compiled step has really run
        self.seconds, self.rows, self.started = time.perf_counter() - self.started, rows, None
        self.mode.compile_pending = False
        if self.mode.graphs and cudagraph_skips() > self.skips:  # torch has warned why (a CPU tensor in the graph)
            self.mode.graphs, self.skipped = False, True

    def describe(self) -> str:
        """What the compiled step holds and how it runs, for the record (after `stop`)."""
        held = {"step": "the whole step", "student": "the student alone"}[self.mode.scope]
        if self.skipped:
            return f"{held}, without the CUDA graphs torch skipped (its warning says why)"
        return f"{held} in CUDA graphs" if self.mode.graphs else held


def cudagraph_skips() -> int:
    """How many compiled graphs torch has run without CUDA graphs so far in this process (each with a warning)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def train_epoch(run: TrainingRun, epoch: int) -> dict:
    """Every step of one epoch; returns the epoch's record (loss, train top-1, lr, time)."""
    started = time.perf_counter()
    # View draws depend only on (seed, epoch, rank): a resumed epoch sees the same views.
    views_rng = torch.Generator().manual_seed(epoch_views_seed(run.options.seed, epoch, run.dist_info.rank))
    run.train_model.train()
    if run.train_extra is not None:
        run.train_extra.train()
    steps = len(run.batches)
    totals = EpochTotals(run.device, steps)
    world = run.dist_info.world_size  # every rank takes a batch per step: the bar counts the job's images
    compiling = CompileClock(run)
    with Progress(steps * run.options.batch_size * world, f"epoch {epoch + 1}/{run.total_epochs}",
                  enabled=run.dist_info.is_main) as bar:
        for step, batch in enumerate(run.batches.epoch(epoch, views_rng)):
            compiling.start()
            with torch.profiler.record_function(STEP_RANGE):
                loss, figures, parts = train_step(run, epoch, step, batch)
                totals.add(figures, parts, batch.labels.shape[0])
            compiling.stop(batch.labels.shape[0])
            if step % 20 == 0:
                check_divergence(totals, epoch, run.total_epochs, steps, run.out, run.dist_info)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.schedule.lr(epoch, step):.4g}")
            bar.update(batch.labels.shape[0] * world)
    check_divergence(totals, epoch, run.total_epochs, steps, run.out, run.dist_info)  # before the epoch is saved
    seconds = time.perf_counter() - started - compiling.seconds  # the compile is reported on its own
    timed_rows = max(totals.seen - compiling.rows, 1)
    record = {"epoch": epoch, "phase": run.phases.phase_of(epoch), "lr": run.schedule.lr(epoch, 0),
              **epoch_figures(totals, pack=run.pack is not None), "train_seconds": round(seconds, 3),
              "train_img_per_s": round(timed_rows * run.dist_info.world_size / max(seconds, 1e-9), 1)}
    if compiling.rows:
        record["compile_seconds"], record["compiled"] = round(compiling.seconds, 3), compiling.describe()
    return record


def epoch_figures(totals: EpochTotals, pack: bool) -> dict:
    """The epoch's train loss and top-1 (a pack's, of any size: each member's too, and each member's loss as a
    part)."""
    sums, seen, parts = totals.sums().tolist(), totals.seen, len(totals.parts)
    correct = sums[1 + parts:]
    figures = {"train_loss": sums[0] / seen, "train_top1": 100.0 * sum(correct) / len(correct) / seen}
    if pack:
        figures["train_top1_members"] = [100.0 * c / seen for c in correct]
    if parts:
        figures["train_loss_parts"] = {name: total / seen for name, total in zip(totals.parts, sums[1:1 + parts])}
    return figures


def evaluate_epoch(run: TrainingRun, record: dict) -> None:
    """Rank 0's scores of the epoch's model: the validation split's (--val-fraction) as val_*, and the held-out
    split's (test, else val: eval_split names it) as test_*, each top-1, top-5, NLL and ECE."""
    if run.val_loader is not None:
        score_split(run, record, run.val_loader, "val", "validation")
    if run.test_loader is not None:
        score_split(run, record, run.test_loader, "test", run.eval_split)
        record["eval_split"] = run.eval_split


def score_split(run: TrainingRun, record: dict, loader, prefix: str, name: str) -> None:
    """One split's metrics into the record as <prefix>_*; a pack's members' figures in record["members"], the
    pack's own their means."""
    logits, labels = predict(run.model, loader, run.normalize, bf16=run.options.bf16,
                             desc=f"epoch {record['epoch'] + 1}/{run.total_epochs}: {name}")
    if run.pack is None:
        scores = classification_metrics(logits, labels)
        record.update({f"{prefix}_{k}": scores[k] for k in ("top1", "top5", "nll", "ece")})
        return
    members = member_metrics(logits, labels, len(run.pack.members), prefix)
    record["members"] = [{**own, **new} for own, new in zip(record.get("members", [{}] * len(members)), members)]
    record.update({k: sum(m[k] for m in members) / len(members) for k in members[0]})


def selection_score(record: dict) -> float | None:
    """What best.pt is chosen on: the validation split's top-1, and nothing without one (never the test split)."""
    return record.get("val_top1")


def save_epoch(run: TrainingRun, epoch: int, record: dict) -> None:
    """metrics.jsonl's line, last.pt (with the state to resume), and best.pt and best.json when the epoch is the
    best so far on the validation split (without --val-fraction there is no best.pt: last.pt is the run's model)."""
    run.metrics_log.append(record)
    score = selection_score(record)
    improved = score is not None and score > run.best["top1"]
    if improved:
        run.best = {"top1": score, "epoch": epoch, "selected_on": "val"}
    payload = checkpoint_payload(run.options, run.data, run.model, epoch, record)
    if run.pack is not None:
        run.pack.export(run.model, record, payload)
        payload["pack"] = run.pack.record()  # not one model: its members are
    training_state = {"optimizer": run.optimizer.state_dict(), "best": run.best, "torch_rng": torch.get_rng_state()}
    if run.extra_modules is not None:
        training_state["extra"] = {k: v.detach().cpu() for k, v in run.extra_modules.state_dict().items()}
    # last.pt first: if the disk fills while best.pt is written, the run can still be resumed.
    save_checkpoint(run.out / "last.pt", {**payload, "training": training_state})
    if improved:
        save_best(run.out, payload, run.best)


def checkpoint_payload(options, data: PreparedDataset, model: torch.nn.Module, epoch: int, record: dict) -> dict:
    return {
        "arch": options.arch,
        "num_classes": data.num_classes,
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": record,
        "dataset": {**data.identity("train"), "mean": data.mean, "std": data.std, "input_size": data.input_size},
    }


def epoch_line(record: dict, epochs: int) -> str:
    parts = record.get("train_loss_parts") or {}
    terms = f" ({' '.join(f'{k} {v:.4g}' for k, v in parts.items())})" if len(parts) > 1 else ""
    text = (f"epoch {record['epoch'] + 1}/{epochs}  loss {record['train_loss']:.4f}{terms}  "
            f"train {record['train_top1']:.2f}%")
    if "val_top1" in record:
        text += f"  validation {record['val_top1']:.2f}%"
    if "test_top1" in record:
        text += (f"  {record.get('eval_split', 'test')} {record['test_top1']:.2f}%  nll {record['test_nll']:.4f}  "
                 f"ece {record['test_ece']:.4f}")
    text += f"  {record['train_img_per_s']:.0f} img/s"
    if "compile_seconds" in record:
        text += f"  (compiling {record['compiled']} took {record['compile_seconds']:.1f} s, not counted)"
    return text
