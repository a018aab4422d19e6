"""Stage two's cost: seconds per student epoch trained vanilla, from a label store, and from an online teacher.

The same student (resnet20), data, seed, batch and device in three setups, one after the other in one process:

  vanilla  labelopt.pipeline.run.training.train: cross-entropy, fresh crop + flip views (no teacher); also
           train_student --method vanilla (the same loop through the distiller machinery), for reference
  store    train_student --method sl from a label store with all 162 cifar-crop-flip views (stage one
           ran the teacher once per (image, view); each step gathers the stored label of the view it draws)
  store_replayed
           the same run with its loader taken off the step's path: epoch 1's finished batches are kept on the
           device and every later epoch replays them (benchmark only; labelopt's code is untouched). What is
           left is labelopt's own step and loop, so store / store_replayed is what the loader (FFCV, views,
           store rows, copies) costs a step, and store_replayed / anchor what the step machinery costs
  online   train_student --method sl with the teacher (resnet56) run on every batch (teachers=(ckpt,))
  mixes    train_student --method vanilla --mix M (mixed one-hot targets, no teacher) against --method aug-sl from
           a store of K mix records per image (generate-labels --views mix:M:K): what a stored Aug-SL label costs
           a student over the same mix without a teacher (goal <= 1.10); --mix none skips the pair

The data are CIFAR-shaped random images (100 classes) written through labelopt's own .beton writer, as in
benchmarks/loader.py. The teacher is a freshly initialised resnet56 saved as a labelopt checkpoint: speed does
not depend on its accuracy. An epoch's time is `train_seconds` from the run's metrics.jsonl (the training loop
only; there is no test split, so no evaluation). The first epoch can include one-off costs (a JPEG dataset's
FFCV Loader compiling, the first calls of the step's kernels), so the reported figure is the median of epochs
2..N; the fastest of them is reported too (on a shared machine other processes can stretch single epochs
many-fold). generate-labels is timed as a whole (the one-off cost);
the break-even is the number of student epochs after which it is paid back against online distillation:
gen_seconds / (online_epoch - store_epoch). Both terms grow linearly with the number of images, so the
break-even does not depend on --images.

The anchor (the limit the setups are measured against; --no-anchor skips it), after the setups in the same process:
the same student, batch and precision in a plain PyTorch loop (SGD lr 0.05, momentum 0.9, wd 5e-4, cross-entropy)
over every training image already on the device as one uint8 tensor: each step gathers a random batch of rows (one
permutation per epoch), crops and flips it on the device, normalises it, and steps. Two variants: eager, and
captured (crop, normalisation, student and loss as one torch.compile graph, as train-student --compile has it: mode
reduce-overhead, i.e. CUDA graphs, on a GPU; the default mode on a CPU). Each runs ANCHOR_WARMUP_STEPS untimed steps (they hold the compile), then epochs 2..N of the project's
epoch size (images // batch steps), timed with the device synchronised; its figure is the median img/s. The ratios
project / anchor compare the setups' median img/s with it; the goal (GPU, resnet20, batch 128, bf16): vanilla and
store at least GOAL_PROJECT_OVER_CAPTURED_ANCHOR of the captured anchor. --compile trains every project setup under
train-student's --compile (their first compiled step, the compile, is left out of their epoch times).

    .venv/bin/python benchmarks/stage_two.py [--images N] [--epochs 5] [--batch-size 64] [--device auto]
                                             [--bf16] [--views V] [--workers N] [--keep DIR] [--json-only]
                                             [--compile] [--no-anchor]

--images defaults to 50,000 (CIFAR's training split) on a GPU and to 512 on a CPU: there, stage one costs 162
resnet56 passes per image (83k teacher passes for 512 images), which is what bounds the run to ~10 min on
2 cores. Prints JSON, then a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_arguments, checked_device, machine_facts, work_folder  # noqa: E402
from loader import make_dataset  # noqa: E402  (benchmarks/loader.py: random CIFAR-shaped prepared dataset)

TEACHER, STUDENT = "resnet56", "resnet20"
TEMPERATURE = 4.0
DEFAULT_VIEWS = "cifar-crop-flip"
GPU_IMAGES, CPU_IMAGES = 50000, 512
GOAL_STORE_OVER_VANILLA = 1.05
DEFAULT_MIX, DEFAULT_MIX_VIEWS = "ricap", 8
SETUP_ORDER = ("vanilla", "vanilla_student", "store", "store_replayed", "store_pack", "online", "vanilla_mix",
               "aug_sl_store")
SETUP_CHOICES = ("vanilla", "vanilla_student", "store", "store_replayed", "online", "mixes")  # --pack: store_pack
ANCHORED_SETUPS = ("vanilla", "store", "store_replayed", "store_pack")  # measured against the anchors
GOAL_AUG_STORE_OVER_VANILLA_MIX = 1.10
ANCHOR_WARMUP_STEPS = 10  # untimed steps before the anchor's clock starts: they hold the captured variant's compile
ANCHOR_LR, ANCHOR_MOMENTUM, ANCHOR_WEIGHT_DECAY = 0.05, 0.9, 5e-4
GOAL_PROJECT_OVER_CAPTURED_ANCHOR = 0.8  # on a GPU, resnet20, batch 128, bf16: vanilla and store alike


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def save_teacher(folder: Path, out: Path) -> Path:
    """A freshly initialised resnet56 saved the way `labelopt train` saves its checkpoints."""
    from labelopt.models import create_model
    from labelopt.pipeline.run.checkpoints import save_checkpoint
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.run.runtime import seed_everything
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.train_loop import checkpoint_payload

    data = open_dataset(folder)
    seed_everything(0)
    model = create_model(TEACHER, data.num_classes)
    options = TrainOptions(data=str(folder), arch=TEACHER, out=str(out.parent))
    save_checkpoint(out, checkpoint_payload(options, data, model, epoch=0, record={}))
    return out


def epochs_of(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def timing(run: Path, setup: str, members: int = 1) -> dict:
    """A setup's epoch times from its metrics.jsonl; a pack's img/s counts student-images (members x images)."""
    records = epochs_of(run)
    seconds = [r["train_seconds"] for r in records]
    steady = seconds[1:] or seconds  # epoch 1 holds the one-off costs (first kernel calls, FFCV's compile for JPEGs)
    return {"setup": setup, "run": str(run), "epoch_seconds": seconds,
            "img_per_s": [members * r["train_img_per_s"] for r in records], "members": members,
            "first_epoch_seconds": seconds[0], "median_epoch_seconds": statistics.median(steady),
            "min_epoch_seconds": min(steady),
            "epochs_in_median": len(steady) if len(seconds) > 1 else 0,
            "median_img_per_s": members * statistics.median(r["train_img_per_s"] for r in (records[1:] or records)),
            **compile_timing(records)}


def compile_timing(records: list[dict]) -> dict:
    """Under --compile: the seconds of the step that compiled (left out of its epoch's train_seconds), and what the
    run says it compiled (the whole step or the student alone, in CUDA graphs or not: torch may skip them)."""
    compiled = [r for r in records if "compile_seconds" in r]
    if not compiled:
        return {}
    return {"compile_seconds": sum(r["compile_seconds"] for r in compiled),
            "compiled": compiled[0].get("compiled", "the student")}


def run_setups(root: Path, args, device: str) -> dict:
    from labelopt.pipeline.jobs.student import StudentOptions, train_student
    from labelopt.pipeline.run.options import TrainOptions
    from labelopt.pipeline.run.training import train

    log(f"stage_two: writing {args.images} CIFAR-shaped images under {root}")
    folder, _, _ = make_dataset(root, args.images)
    teacher = save_teacher(folder, root / f"teacher-{TEACHER}.pt")
    common = dict(data=str(folder), arch=STUDENT, epochs=args.epochs, batch_size=args.batch_size, seed=0,
                  device=device, bf16=args.bf16, num_workers=args.workers, compile=args.compile)
    runs, wanted, measured = root / "runs", set(args.setups), {}
    if "vanilla" in wanted:
        log("stage_two: (a) vanilla")
        measured["vanilla"] = timing(train(TrainOptions(out=str(runs / "vanilla"), **common), log=log),
                                     "vanilla (labelopt train, CE)")
    if "vanilla_student" in wanted:
        log("stage_two: (a') vanilla through train_student (the same loop with a distiller, no teacher)")
        run = train_student(StudentOptions(out=str(runs / "vanilla-student"), method="vanilla", **common), log=log)
        measured["vanilla_student"] = timing(run, "vanilla (train_student --method vanilla)")
    store_path = None
    if wanted & {"store", "store_replayed", "store_pack"}:
        store_path, measured["generation"] = generate_store(root, args, device, folder, teacher)
    if "store" in wanted:
        log("stage_two: (b) sl from the label store")
        run = train_student(StudentOptions(out=str(runs / "store-sl"), labels=str(store_path), method="sl",
                                           **common), log=log)
        measured["store"] = timing(run, f"sl from store ({args.views}, {measured['generation']['num_views']} views)")
    if "store_replayed" in wanted:
        log("stage_two: (b'') sl from the label store, epoch 1's batches replayed from the device")
        with replayed_batches():
            run = train_student(StudentOptions(out=str(runs / "store-sl-replayed"), labels=str(store_path),
                                               method="sl", **common), log=log)
        measured["store_replayed"] = timing(run, "sl from store, batches replayed from the device (no loader)")
    if "store_pack" in wanted:
        log(f"stage_two: (b') a pack of {args.pack} sl students from the label store (--seeds 0..{args.pack - 1})")
        run = train_student(StudentOptions(out=str(runs / "store-sl-pack"), labels=str(store_path), method="sl",
                                           seeds=tuple(range(args.pack)), **common), log=log)
        measured["store_pack"] = timing(run, f"{args.pack} packed sl students from store", members=args.pack)
    if "online" in wanted:
        log(f"stage_two: (c) sl with an online {TEACHER} teacher")
        run = train_student(StudentOptions(out=str(runs / "online-sl"), teachers=(str(teacher),), method="sl",
                                           temperature=TEMPERATURE, **common), log=log)
        measured["online"] = timing(run, f"sl, online {TEACHER} teacher")
    if args.mix != "none" and "mixes" in wanted:
        measured.update(run_mix_pair(root, args, device, folder, teacher, common))
    return measured


@contextlib.contextmanager
def replayed_batches():
    """For one setup: BatchLoader.epoch keeps epoch 1's finished batches (already on the device) and replays them
    at every later epoch, so no loader work is left on the step's path. Each epoch has the same steps and rows."""
    from labelopt.pipeline.run.batches import BatchLoader

    original, kept = BatchLoader.epoch, []

    def epoch(self, epoch, generator):
        if kept:
            yield from kept
            return
        for batch in original(self, epoch, generator):
            kept.append(batch)
            yield batch

    BatchLoader.epoch = epoch
    try:
        yield kept
    finally:
        BatchLoader.epoch = original


def generate_store(root: Path, args, device: str, folder: Path, teacher: Path) -> tuple[Path, dict]:
    """Stage one for the store setups: generate-labels sl over every image and view, timed as a whole."""
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
    from labelopt.store import LabelStore

    log(f"stage_two: generate-labels sl, views {args.views}, T {TEMPERATURE:g}, teacher {TEACHER}")
    store_path = root / "labels" / f"sl-{TEACHER}-t{TEMPERATURE:g}.h5"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generate_labels(GenerateOptions(data=str(folder), out=str(store_path), teachers=(str(teacher),), method="sl",
                                    views=args.views, temperature=TEMPERATURE, device=device, bf16=args.bf16), log=log)
    gen_seconds = time.perf_counter() - started
    store = LabelStore.open(store_path)
    return store_path, {"seconds": gen_seconds, "method": "sl", "teacher": TEACHER, "views": args.views,
                        "num_views": store.num_views, "temperature": TEMPERATURE,
                        "teacher_passes": args.images * store.num_views,
                        "teacher_passes_per_s": args.images * store.num_views / gen_seconds,
                        "seconds_per_image": gen_seconds / args.images,
                        "store_bytes": store.size_bytes(), "path": str(store_path)}


def run_mix_pair(root: Path, args, device: str, folder: Path, teacher: Path, common: dict) -> dict:
    """vanilla with --mix against aug-sl from a store of the same mix: the price of a stored Aug-SL label."""
    from labelopt.pipeline.jobs.labeling import GenerateOptions, generate_labels
    from labelopt.pipeline.jobs.student import StudentOptions, train_student

    runs = root / "runs"
    log(f"stage_two: (d) vanilla --mix {args.mix}")
    vanilla_mix = train_student(StudentOptions(out=str(runs / "vanilla-mix"), method="vanilla", mix=args.mix,
                                               **common), log=log)
    spec = f"mix:{args.mix}:{args.mix_views}"
    store_path = root / "labels" / f"aug-sl-{args.mix}.h5"
    log(f"stage_two: generate-labels sl, views {spec}")
    started = time.perf_counter()
    generate_labels(GenerateOptions(data=str(folder), out=str(store_path), teachers=(str(teacher),), method="sl",
                                    views=spec, temperature=TEMPERATURE, device=device, bf16=args.bf16), log=log)
    seconds = time.perf_counter() - started
    log(f"stage_two: (e) aug-sl from the {spec} store")
    aug = train_student(StudentOptions(out=str(runs / "store-aug-sl"), labels=str(store_path), method="aug-sl",
                                       **common), log=log)
    return {"vanilla_mix": timing(vanilla_mix, f"vanilla --mix {args.mix} (no teacher)"),
            "aug_sl_store": timing(aug, f"aug-sl from store ({spec})"),
            "mix_generation": {"seconds": seconds, "views": spec, "teacher_passes": args.images * args.mix_views}}


def measure(root: Path, args, device: str) -> dict:
    """The setups, then (unless --no-anchor) the anchor over the same prepared images."""
    measured = run_setups(root, args, device)
    if not args.no_anchor:
        measured["anchor"] = run_anchors(root / "bench", args, device)
    return measured


def device_images(folder: Path, batch: int, device, workers: int | None = None):
    """Every training image of the prepared dataset as one uint8 [N,3,H,W] tensor on the device, its labels
    (int64 [N]) there too, and the dataset (read once, in order, through labelopt's loader)."""
    from labelopt.pipeline.data.datasets import open_dataset
    from labelopt.pipeline.data.loading import make_loader

    data = open_dataset(folder)
    images, labels = [], []
    for x, y, _ in make_loader(data, "train", batch, shuffle=False, num_workers=workers).epoch(0):
        images.append(x)
        labels.append(y)
    return torch.cat(images).to(device), torch.cat(labels).to(device), data


def anchor_rows(count: int, batch: int, steps: int, device):
    """[steps, batch] rows of the device's images: one random permutation per epoch of count // batch steps (the
    rest of each is dropped, as the project's loader drops it)."""
    per_epoch = count // batch
    epochs = -(-steps // per_epoch)
    perms = [torch.randperm(count, device=device)[:per_epoch * batch] for _ in range(epochs)]
    return torch.cat(perms).view(-1, batch)[:steps]


def anchor_step(model, optimizer, images, labels, normalize, device, bf16: bool, captured: bool, graphs: bool):
    """The anchor's step on rows of the device's images: crop + flip on the device, normalise, forward with the
    loss, backward, SGD. Captured, everything from the crop to the loss is one compiled graph, as train-student
    --compile compiles its step (the gather of the batch's rows out of the whole split stays outside: a graph input
    that large would be copied at every replay). Returns step(rows) -> the loss (never read in the timed loop)."""
    import torch.nn.functional as F
    from labelopt.pipeline.run.runtime import autocast
    from labelopt.pipeline.views.policies import PadCropFlipView

    crop = PadCropFlipView()

    def forward_loss(batch_images, views, batch_labels):
        return F.cross_entropy(model(normalize(crop.apply(batch_images, views))), batch_labels)

    loss_of = torch.compile(forward_loss, mode="reduce-overhead" if graphs else "default") if captured \
        else forward_loss

    def step(rows):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        views = torch.randint(0, crop.num_views, (rows.shape[0], 1), device=device)
        with autocast(device, bf16):
            loss = loss_of(images[rows], views, labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_anchor(model, images, labels, normalize, *, batch: int, steps_per_epoch: int, epochs: int, device,
                bf16: bool = False, captured: bool = False, warmup: int = ANCHOR_WARMUP_STEPS) -> dict:
    """The anchor loop on `model` (trained in place): `warmup` untimed steps, then `epochs` timed epochs of
    `steps_per_epoch` steps each, the device synchronised before every clock reading."""
    device = torch.device(device)
    graphs = captured and device.type == "cuda"
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=ANCHOR_LR, momentum=ANCHOR_MOMENTUM,
                                weight_decay=ANCHOR_WEIGHT_DECAY)
    step = anchor_step(model, optimizer, images, labels, normalize, device, bf16, captured, graphs)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    started = clock()
    for rows in anchor_rows(len(images), batch, warmup, device):
        step(rows)
    warmup_seconds, seconds = clock() - started, []
    for _ in range(epochs):
        rows = anchor_rows(len(images), batch, steps_per_epoch, device)
        started = clock()
        for row in rows:
            loss = step(row)
        seconds.append(clock() - started)
    per_epoch = steps_per_epoch * batch
    return {"mode": "CUDA graphs (reduce-overhead)" if graphs else "compiled (default)" if captured else "eager",
            "batch_size": batch, "warmup_steps": warmup, "warmup_seconds": warmup_seconds,
            "steps_per_epoch": steps_per_epoch, "images_per_epoch": per_epoch, "epoch_seconds": seconds,
            "median_epoch_seconds": statistics.median(seconds), "min_epoch_seconds": min(seconds),
            "img_per_s": statistics.median(per_epoch / s for s in seconds), "final_loss": float(loss)}


def run_anchors(folder: Path, args, device: str) -> dict:
    """The eager and the captured anchor, each from a freshly initialised student; the captured one records its
    error instead of ending the run when torch.compile fails (the setups' figures are kept)."""
    from labelopt.models import create_model
    from labelopt.pipeline.data.normalize import Normalizer

    images, labels, data = device_images(folder, args.batch_size, device, args.workers)
    sizes = dict(batch=args.batch_size, steps_per_epoch=len(images) // args.batch_size,
                 epochs=max(args.epochs - 1, 1), device=device, bf16=args.bf16)
    normalize = Normalizer(data.mean, data.std, device)
    anchors = {}
    for name, captured in (("eager", False), ("captured", True)):
        log(f"stage_two: anchor, {name}: {len(images)} images on {device}, batch {args.batch_size}")
        torch.manual_seed(0)
        model = create_model(STUDENT, data.num_classes).to(device)
        try:
            anchors[name] = time_anchor(model, images, labels, normalize, captured=captured, **sizes)
        except Exception as exc:  # noqa: BLE001  (a compile failure must not lose the setups' figures)
            if not captured:
                raise
            log(f"stage_two: the captured anchor failed: {type(exc).__name__}: {exc}")
            anchors[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return anchors


def summarize(result: dict) -> dict:
    """The ratios between the setups that ran (a ratio is left out where one of its setups did not run)."""
    setups, gen = result["setups"], (result.get("generation") or {}).get("seconds")
    median = {k: row["median_epoch_seconds"] for k, row in setups.items()}
    fastest = {k: row["min_epoch_seconds"] for k, row in setups.items()}
    summary = {}
    if {"store", "vanilla"} <= median.keys():
        summary.update(ratio_store_over_vanilla=median["store"] / median["vanilla"],
                       goal_store_over_vanilla=GOAL_STORE_OVER_VANILLA,
                       goal_met=median["store"] / median["vanilla"] <= GOAL_STORE_OVER_VANILLA,
                       # The fastest timed epoch: less sensitive to other processes on a shared machine.
                       ratio_store_over_vanilla_fastest=fastest["store"] / fastest["vanilla"])
    if {"store", "vanilla_student"} <= median.keys():
        summary["ratio_store_over_vanilla_student"] = median["store"] / median["vanilla_student"]
    if {"store", "online"} <= median.keys():
        saved = median["online"] - median["store"]
        summary.update(ratio_store_over_online=median["store"] / median["online"],
                       seconds_saved_per_epoch_vs_online=saved,
                       break_even_epochs_vs_online=gen / saved if saved > 0 else None,
                       ratio_store_over_online_fastest=fastest["store"] / fastest["online"],
                       break_even_epochs_vs_online_fastest=gen / (fastest["online"] - fastest["store"])
                       if fastest["online"] > fastest["store"] else None)
    if {"store", "store_replayed"} <= median.keys():
        # Above 1: the loader slows the step down by that much; the same run replayed its batches from the device.
        summary["ratio_store_over_store_replayed"] = median["store"] / median["store_replayed"]
    if {"store", "store_pack"} <= setups.keys():
        summary["ratio_pack_over_store_img_per_s"] = (setups["store_pack"]["median_img_per_s"]
                                                      / setups["store"]["median_img_per_s"])
    return {**summary, **mix_summary(setups), **anchor_summary(setups, result.get("anchor"))}


def mix_summary(setups: dict) -> dict:
    if "aug_sl_store" not in setups:
        return {}
    ratio = setups["aug_sl_store"]["median_epoch_seconds"] / setups["vanilla_mix"]["median_epoch_seconds"]
    fastest = setups["aug_sl_store"]["min_epoch_seconds"] / setups["vanilla_mix"]["min_epoch_seconds"]
    return {"ratio_aug_sl_store_over_vanilla_mix": ratio, "ratio_aug_sl_store_over_vanilla_mix_fastest": fastest,
            "goal_aug_sl_store_over_vanilla_mix": GOAL_AUG_STORE_OVER_VANILLA_MIX,
            "goal_aug_sl_met": ratio <= GOAL_AUG_STORE_OVER_VANILLA_MIX}


def anchor_summary(setups: dict, anchors: dict | None) -> dict:
    """project / anchor in img/s (above 1: the project is the faster) for vanilla and store against each anchor
    that ran, and the goal against the captured one."""
    if not anchors:
        return {}
    ratios = {f"ratio_{setup}_over_anchor_{name}": setups[setup]["median_img_per_s"] / anchor["img_per_s"]
              for setup in ANCHORED_SETUPS if setup in setups
              for name, anchor in anchors.items() if "img_per_s" in anchor}
    captured = [ratios.get(f"ratio_{setup}_over_anchor_captured") for setup in ("vanilla", "store")]
    return {**ratios, "goal_over_anchor_captured": GOAL_PROJECT_OVER_CAPTURED_ANCHOR,
            "goal_over_anchor_captured_met": None if None in captured
            else all(r >= GOAL_PROJECT_OVER_CAPTURED_ANCHOR for r in captured)}


def anchor_table_rows(result: dict) -> list[dict]:
    """The anchors as rows of the setups' table (no epoch 1: their warm-up steps are reported on their own)."""
    vanilla = result["setups"].get("vanilla", {}).get("median_epoch_seconds")
    rows = []
    for name, anchor in (result.get("anchor") or {}).items():
        if "img_per_s" not in anchor:
            rows.append({"setup": f"anchor {name}: failed", "all": anchor.get("error", "")[:60]})
            continue
        rows.append({"setup": f"anchor {name} (images on the device)", "median": anchor["median_epoch_seconds"],
                     "min": anchor["min_epoch_seconds"], "img_s": anchor["img_per_s"],
                     "vs_vanilla": anchor["median_epoch_seconds"] / vanilla if vanilla else None,
                     "all": ", ".join(f"{x:.2f}" for x in anchor["epoch_seconds"])})
    return rows


def print_anchor_lines(result: dict) -> None:
    """Under the table: --compile's compile times, then project / anchor as ratios of img/s."""
    s, anchors = result["summary"], result.get("anchor") or {}
    compiles = {k: row for k, row in result["setups"].items() if "compile_seconds" in row}
    if compiles:
        print("--compile: the compiling first step, left out of the epochs: "
              + ", ".join(f"{k} {row['compile_seconds']:.1f} s ({row['compiled']})" for k, row in compiles.items()))
    for name, anchor in anchors.items():
        if "img_per_s" in anchor:
            print(f"anchor {name}: {anchor['mode']}, {anchor['img_per_s']:.0f} img/s (median of "
                  f"{len(anchor['epoch_seconds'])} epochs of {anchor['images_per_epoch']} images, after "
                  f"{anchor['warmup_steps']} warm-up steps in {anchor['warmup_seconds']:.1f} s)")
            ratios = [f"{setup} {s[key]:.3f}x" for setup in ANCHORED_SETUPS
                      if (key := f"ratio_{setup}_over_anchor_{name}") in s]
            print(f"  project / anchor {name} (img/s): " + ", ".join(ratios))
        else:
            print(f"anchor {name}: failed ({anchor.get('error')})")
    met = s.get("goal_over_anchor_captured_met")
    if met is not None:
        print(f"goal (GPU, batch 128, bf16): vanilla and store >= {GOAL_PROJECT_OVER_CAPTURED_ANCHOR}x the captured "
              f"anchor: {'met' if met else 'missed'} here (batch {result['batch_size']}, "
              f"{'bf16' if result['bf16'] else 'fp32'}, {result['machine']['device']})")


def print_setup_ratios(result: dict) -> None:
    """Stage one's one-off cost and the ratios between the setups that ran."""
    s, gen = result["summary"], result.get("generation")
    if gen:
        print(f"\nstage one (one-off): generate-labels sl, {gen['num_views']} views x {result['images']} images "
              f"with {TEACHER}: {gen['seconds']:.1f} s ({gen['teacher_passes_per_s']:.0f} teacher passes/s), "
              f"store {gen['store_bytes'] / 2**20:.1f} MiB")
    if "ratio_store_over_vanilla" in s:
        goal = "meets" if s["goal_met"] else "misses"
        print(f"store / vanilla: {s['ratio_store_over_vanilla']:.3f}x (fastest epochs "
              f"{s['ratio_store_over_vanilla_fastest']:.3f}x; {goal} the goal <= {GOAL_STORE_OVER_VANILLA})")
    if "ratio_store_over_store_replayed" in s:
        print(f"store / the same run with its batches replayed from the device: "
              f"{s['ratio_store_over_store_replayed']:.3f}x the seconds per epoch (the loader's share)")
    if "ratio_pack_over_store_img_per_s" in s:
        print(f"pack of {result['setups']['store_pack']['members']} / one student from the store: "
              f"{s['ratio_pack_over_store_img_per_s']:.2f}x the student-images/s")
    if "ratio_store_over_online" in s:
        fastest_even = s["break_even_epochs_vs_online_fastest"]
        print(f"store / online:  {s['ratio_store_over_online']:.3f}x (fastest epochs "
              f"{s['ratio_store_over_online_fastest']:.3f}x, break-even "
              + ("never" if fastest_even is None else f"{fastest_even:.1f} student epochs") + ")")
        even = s["break_even_epochs_vs_online"]
        print("break-even vs online: never (the store saves no time per epoch here)" if even is None else
              f"break-even vs online: {even:.1f} student epochs (generation {gen['seconds']:.1f} s / "
              f"{s['seconds_saved_per_epoch_vs_online']:.2f} s saved per epoch)")
    if "ratio_aug_sl_store_over_vanilla_mix" in s:
        goal = "meets" if s["goal_aug_sl_met"] else "misses"
        print(f"aug-sl from store / vanilla with the same mix: {s['ratio_aug_sl_store_over_vanilla_mix']:.3f}x "
              f"(fastest epochs {s['ratio_aug_sl_store_over_vanilla_mix_fastest']:.3f}x; {goal} the goal <= "
              f"{GOAL_AUG_STORE_OVER_VANILLA_MIX}); its store: {result['mix_generation']['views']}, "
              f"{result['mix_generation']['seconds']:.1f} s")


def print_table(result: dict) -> None:
    from labelopt.pipeline.jobs.reports import format_table

    facts = result["machine"]
    rows = []
    vanilla = result["setups"].get("vanilla", {}).get("median_epoch_seconds")
    for key in [k for k in SETUP_ORDER if k in result["setups"]]:
        row = result["setups"][key]
        rows.append({"setup": row["setup"], "median": row["median_epoch_seconds"], "min": row["min_epoch_seconds"],
                     "img_s": row["median_img_per_s"], "first": row["first_epoch_seconds"],
                     "vs_vanilla": row["median_epoch_seconds"] / vanilla if vanilla else None,
                     "all": ", ".join(f"{x:.2f}" for x in row["epoch_seconds"])})
    rows += anchor_table_rows(result)
    compiled = ", --compile" if result.get("compile") else ""
    print(format_table(rows, [("setup", f"{STUDENT}, {result['images']} images, batch {result['batch_size']}"
                                        f"{compiled}"),
                              ("median", "s/epoch (median 2..N)"), ("min", "fastest"), ("img_s", "img/s"),
                              ("first", "epoch 1 s"), ("vs_vanilla", "x vanilla"), ("all", "every epoch s")]))
    print_setup_ratios(result)
    print_anchor_lines(result)
    print(f"device {facts['device']} ({facts['device_name']}), {facts['cpu_affinity']} cores, torch {facts['torch']}, "
          f"load average {facts['loadavg_before'][0]:.2f} before / {facts['loadavg_after'][0]:.2f} after; "
          f"whole script {result['script_seconds']:.0f} s")


def parse_setups(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SETUP_CHOICES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown setups {unknown}; known: {', '.join(SETUP_CHOICES)}")
    return names


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help=f"CIFAR-shaped training images [{GPU_IMAGES} on a GPU, {CPU_IMAGES} on a CPU]")
    parser.add_argument("--epochs", type=int, default=5, help="Student epochs per setup; epochs 2..N are timed [5].")
    parser.add_argument("--batch-size", type=int, default=64, help="Student batch (the recipe's) [64].")
    parser.add_argument("--views", default=DEFAULT_VIEWS,
                        help=f"The store's views [{DEFAULT_VIEWS}: 162 per image]; identity makes a quick run.")
    parser.add_argument("--workers", type=int, default=None,
                        help="CPU threads of the runs (torch's, and FFCV's for JPEGs) [all cores].")
    parser.add_argument("--mix", default=DEFAULT_MIX, choices=["mixup", "cutmix", "ricap", "none"],
                        help=f"The mix of the vanilla-mix / aug-sl-from-store pair [{DEFAULT_MIX}]; none skips it.")
    parser.add_argument("--mix-views", type=int, default=DEFAULT_MIX_VIEWS,
                        help=f"Mix records per image in the aug-sl store [{DEFAULT_MIX_VIEWS}].")
    parser.add_argument("--compile", action="store_true",
                        help="Train every project setup under --compile (torch.compile; CUDA graphs on a GPU).")
    parser.add_argument("--setups", type=parse_setups, default=list(SETUP_CHOICES),
                        help=f"Comma-separated setups to run [{','.join(SETUP_CHOICES)}].")
    parser.add_argument("--pack", type=int, default=0,
                        help="Also train G sl students from the store as one pack (--seeds 0..G-1) [0: none].")
    parser.add_argument("--no-anchor", action="store_true",
                        help="Skip the anchor (the plain loop over images already on the device).")
    add_run_arguments(parser, keeps="data, teacher, store and run folders")
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    device = checked_device(parser, args)

    from labelopt.pipeline.errors import UserError

    if args.images is None:
        args.images = GPU_IMAGES if device.type == "cuda" else CPU_IMAGES
    if args.epochs < 2:
        log("stage_two: with --epochs 1 the only epoch includes numba's compile; use --epochs 3 or more")
    if args.pack < 0 or args.pack > 64:
        parser.error(f"--pack {args.pack}: give 0 (none) or a pack of 1 to 64 students")
    if args.pack:
        args.setups = [*args.setups, "store_pack"]
    if args.images < args.batch_size:
        parser.error(f"--images {args.images} is smaller than --batch-size {args.batch_size} (batches drop the rest)")

    loadavg_before = os.getloadavg()
    started = time.perf_counter()
    try:
        with work_folder(args.keep, "labelopt-stage-two-") as root:
            measured = measure(root, args, str(device))
    except UserError as exc:
        log(f"stage_two: {exc}")
        return 1
    script_seconds = time.perf_counter() - started
    machine = machine_facts(device, loadavg_before)
    from labelopt.pipeline.data.beton import worker_count
    result = {
        "benchmark": "stage_two",
        "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size, "bf16": args.bf16,
        "compile": args.compile,
        "workers": args.workers or worker_count(), "teacher": TEACHER, "student": STUDENT, "method": "sl",
        "temperature": TEMPERATURE, "timed": "median train_seconds of epochs 2..N (metrics.jsonl)",
        "machine": machine,
        "setups": {k: measured[k] for k in SETUP_ORDER if k in measured},
        "generation": measured.get("generation"),
        "mix_generation": measured.get("mix_generation"),
        "anchor": measured.get("anchor"),
        "script_seconds": script_seconds,
        "kept": str(args.keep) if args.keep is not None else None,
    }
    result["summary"] = summarize(result)
    print(json.dumps(result, indent=2))
    if not args.json_only:
        print()
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
