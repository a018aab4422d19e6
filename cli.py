"""The `labelopt` command line: each command parses options and calls one function of `pipeline/`."""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python cli.py ...` from the repository root: run the installed package's CLI.
    from labelopt.cli import main as _installed_main

    sys.exit(_installed_main())

import click

from .cli_config import recipe_option
from .pipeline.errors import user_errors


class LabeloptGroup(click.Group):
    """Bad input ends as one line on stderr and a non-zero exit, never a traceback.

    A user's mistake (UserError, StoreError, a refused option) prints what is wrong and what to do; an internal
    error prints one line naming a log file that holds the traceback.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, SystemExit):  # --help, a refused option: as they are
            raise
        except user_errors() as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            raise click.ClickException(system_error_line(exc)) from None
        except Exception as exc:  # a bug of ours: the user gets one line, the traceback goes to a file
            raise click.ClickException(internal_error_line(exc)) from None

    def main(self, *args, **kwargs):
        if kwargs.pop("standalone_mode", True) is False:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see {exc.ctx.command_path} --help)"
            click.echo(f"Error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


class Number(click.ParamType):
    """A numeric option checked against its range in pipeline/limits.py: nan, inf and absurd values never pass."""

    def __init__(self, bound_name: str):
        from .pipeline.limits import BOUNDS

        self.bound_name = bound_name
        self.bound = BOUNDS[bound_name]
        self.name = "integer" if self.bound.kind is int else "float"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip()) if self.bound.kind is int else float(value)
            except (TypeError, ValueError, OverflowError):
                self.fail(f"{value!r} is not {'an integer' if self.bound.kind is int else 'a number'}", param, ctx)
        if not self.bound.accepts(number):
            self.fail(f"{value!r} is out of range: pass {self.bound.describe()}", param, ctx)
        return int(number) if self.bound.kind is int else float(number)


def number(bound_name: str) -> Number:
    return Number(bound_name)


class RegistryChoice(click.Choice):
    """One of a registry's names, read when needed (help, parsing): --help lists what is registered now, and
    importing the CLI stays cheap (the registries import torch). An entry "NAME:K" stands for NAME:<an integer in
    the range pipeline/limits.py gives `count_bound`>."""

    def __init__(self, names, count_bound: str | None = None):
        self.names = names  # () -> the registered names, in listing order
        self.count_bound = count_bound  # the BOUNDS entry of K, for a registry with NAME:K entries
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.names())

    @choices.setter
    def choices(self, _):  # click.Choice.__init__ assigns it; the registry stays the source
        pass

    def convert(self, value, param, ctx):
        from .pipeline.limits import BOUNDS

        prefix, colon, count = str(value).rpartition(":")
        if colon and f"{prefix}:K" in self.choices:
            bound = BOUNDS[self.count_bound]
            if count.isdigit() and bound.accepts(int(count)):
                return value
            self.fail(f"{value!r}: K must be {bound.describe()}, e.g. {prefix}:10", param, ctx)
        return super().convert(value, param, ctx)


# The registries' names, from modules that import no torch: --help, --version and a refused option stay fast.
def registered_methods():
    from .stages.names import method_names

    return method_names()


def registered_labelers():
    from .stages.names import labeler_names

    return labeler_names()


def registered_models():
    from .models.names import model_names

    return model_names()


def pack_layouts():
    from .models.names import PACK_LAYOUT_NAMES

    return list(PACK_LAYOUT_NAMES)


def registered_schedules():
    from .pipeline.run.schedules import schedule_names

    return schedule_names()


def mix_policies():
    from .pipeline.views.names import MIX_POLICY_NAMES

    return list(MIX_POLICY_NAMES)


def augment_policies():
    from .pipeline.views.names import VIEW_POLICY_NAMES

    return ["auto", *VIEW_POLICY_NAMES]


def store_view_specs():
    from .pipeline.views.names import STORE_VIEW_SPECS

    return list(STORE_VIEW_SPECS)


def system_error_line(exc: OSError) -> str:
    """A failed read or write (disk full, permission, read-only mount): what failed, where, what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    advice = {errno.ENOSPC: "free space there or choose another --out", errno.EDQUOT: "free space or raise the quota",
              errno.EROFS: "the file system is read-only: choose another --out",
              errno.EACCES: "permission denied: choose a path you can write",
              errno.EPERM: "operation not permitted: choose a path you can write"}.get(exc.errno, "check the path")
    return f"cannot access{where}: {exc.strerror or exc}; {advice}"


def internal_error_line(exc: BaseException) -> str:
    log = write_traceback_log(exc)
    where = f"; the traceback is in {log}" if log else ""
    return (f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}){where}; "
            f"please report it with that file")


def write_traceback_log(exc: BaseException) -> str | None:
    """The traceback in LABELOPT_LOG_DIR (default: the system temp folder); None when nothing can be written."""
    import tempfile
    import time
    import traceback

    folder = Path(os.environ.get("LABELOPT_LOG_DIR") or Path(tempfile.gettempdir()) / "labelopt-errors")
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"labelopt {' '.join(sys.argv[1:])}\n\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return str(path)


def echo_once(text: str) -> None:
    """Print the result line once under torchrun (rank 0), not once per process."""
    if os.environ.get("RANK", "0") == "0":
        click.echo(text)


def seed_list(text: str | None) -> tuple[int, ...]:
    """--seeds: comma-separated seeds, each in --seed's range."""
    if not text:
        return ()
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of seeds", param_hint="--seeds") from None
    bound = number("seed").bound
    if not all(bound.accepts(v) for v in values):
        raise click.BadParameter(f"'{text}': each seed must be {bound.describe()}", param_hint="--seeds")
    return values


def int_list(text: str | None) -> tuple[int, ...] | None:
    """--milestones: comma-separated epochs, each in range, strictly increasing."""
    if not text:
        return None
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers",
                                 param_hint="--milestones") from None
    bound = number("milestone").bound
    if not all(bound.accepts(v) for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise click.BadParameter(f"'{text}' must be strictly increasing epochs, each {bound.describe()}",
                                 param_hint="--milestones")
    return values


def cache_dir_option(command):
    """--cache-dir for the commands that take a store by URL."""
    return click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Where stores given by URL are fetched to [$LABELOPT_CACHE_DIR, else "
                             "$XDG_CACHE_HOME/labelopt/stores, else ~/.cache/labelopt/stores].")(command)


def expect_digest_option(command):
    """--expect-digest for the commands that read one label store: a pin of its root digest."""
    return click.option("--expect-digest", default=None, metavar="HEX",
                        help="Refuse the store unless its root digest (labels inspect and labels card print it) "
                             "is HEX.")(command)


STORE_HELP = "a path or a URL (https://, s3://, gs://, hf://: fetched once, checked, then cached)"


def float_list(text: str | None, bound_name: str, flag: str) -> list[float] | None:
    if not text:
        return None
    bound = number(bound_name).bound
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=flag) from None
    if not all(bound.accepts(v) for v in values):
        raise click.BadParameter(f"'{text}': each value must be {bound.describe()}", param_hint=flag)
    return values


@click.group(cls=LabeloptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labelopt")
def main():
    """labelopt: pay the teacher once per dataset.

    \b
    The two-stage flow:
      prepare          dataset files -> FFCV .beton splits + meta.json
      train            the teacher (also the vanilla and label-smoothing baselines)
      generate-labels  stage one: run the teacher once, write its soft labels to a label store
      train-student    stage two: students from the store (or online teachers), any method
      evaluate         top-1/top-5, NLL, ECE, reliability diagrams; runs side by side
      table            a whole results table (teachers, stores, rows x seeds) from one file

    \b
    Listings: models, methods (stage-two methods and their options).
    Stores: labels inspect, verify, card, combine, repack (inspect, verify, card and
    train-student --labels also take a store's URL, with --cache-dir).
    """


@main.command()
@click.option("--dataset", required=True, help="cifar10, cifar100, stl10, imagenet or digits (embedded, no --root).")
@click.option("--root", type=click.Path(path_type=Path), help="Folder holding the official files.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Writes OUT/<dataset>/.")
@click.option("--overwrite", is_flag=True, help="Replace an existing prepared dataset.")
@click.option("--unlabeled", is_flag=True, help="STL-10: also write the 100,000-image unlabeled split.")
@click.option("--max-side", type=number("max_side"), default=256, show_default=True, help="JPEG datasets: longest side stored.")
@click.option("--jpeg-quality", type=number("jpeg_quality"), default=90, show_default=True, help="JPEG datasets: encoder quality.")
def prepare(dataset, root, out, overwrite, unlabeled, max_side, jpeg_quality):
    """Convert a dataset's official files to FFCV .beton splits plus meta.json."""
    from .pipeline.data.prepare import prepare as run_prepare

    final = run_prepare(dataset, root, out, overwrite=overwrite, include_unlabeled=unlabeled, max_side=max_side,
                        jpeg_quality=jpeg_quality, log=lambda m: click.echo(m, err=True))
    meta = json.loads((final / "meta.json").read_text())
    for split, info in meta["splits"].items():
        click.echo(f"{final / info['file']}  {info['num_samples']} images  fingerprint {info['fingerprint'][:16]}")
    click.echo(f"{final / 'meta.json'}")


@main.command()
@click.option("--classes", type=number("classes"), default=100, show_default=True, help="Class count for the parameter counts.")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
def models(classes, as_json):
    """List the model architectures and their parameter counts."""
    from .models import create_model, get_spec, model_names, parameter_count, tap_names
    from .pipeline.jobs.reports import format_table

    rows = []
    for name in model_names():
        spec = get_spec(name)
        rows.append({"name": name, "family": spec.family, "input": spec.input_size,
                     "parameters": parameter_count(create_model(name, classes)), "taps": ", ".join(tap_names(name))})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_table(rows, [("name", "model"), ("family", "family"), ("input", "input"),
                                       ("parameters", f"params ({classes} classes)"), ("taps", "feature taps")],
                                width=table_width()))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
def methods(as_json):
    """List the stage-two methods: teacher signals, student taps, default options, store or online."""
    from .pipeline.jobs.reports import format_methods
    from .stages.distillers import DISTILLERS

    rows = [{"method": name, "teacher_signals": list(cls.teacher_signals), "student_taps": list(cls.student_taps),
             "defaults": cls.option_defaults(),
             "option_types": {k: t.__name__ for k, t in cls.option_types().items()},
             "source": ("none" if not cls.teacher_signals else "store or online" if cls.store_servable
                        else "online (--teacher)"),
             "not_from_store": cls.why_not_store() or None,
             "mix": {"no": "-", "optional": "--mix optional", "required": "--mix required"}[cls.mixes],
             "compile": {"graphs": "CUDA graphs", "eager": "eager (hooks)"}[cls.capture],
             "summary": cls.summary} for name, cls in DISTILLERS.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_methods(rows, table_width()))


def table_width() -> int:
    """The terminal's width for a wide table (its text columns wrap to fit); 100 when output is not a terminal."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def training_options(command):
    """The options `train` and `train-student` share: data, run folder, recipe, runtime."""
    options = [
        click.option("--data", required=True, type=click.Path(path_type=Path),
                     help="A prepared dataset folder (has meta.json)."),
        click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder."),
        click.option("--epochs", type=number("epochs"), default=240, show_default=True),
        click.option("--batch-size", type=number("batch_size"), default=64, show_default=True, help="Per process; config.json records the global batch."),
        click.option("--lr", type=number("lr"), default=0.05, show_default=True),
        click.option("--momentum", type=number("momentum"), default=0.9, show_default=True),
        click.option("--weight-decay", type=number("weight_decay"), default=5e-4, show_default=True),
        click.option("--schedule", type=RegistryChoice(registered_schedules), default="step", show_default=True,
                     help="Learning-rate schedule."),
        click.option("--milestones", default=None,
                     help="Step epochs, e.g. 150,180,210 [default: 62.5/75/87.5% of --epochs]."),
        click.option("--gamma", type=number("gamma"), default=0.1, show_default=True, help="Step decay factor."),
        click.option("--seed", type=number("seed"), default=0, show_default=True),
        click.option("--order-seed", type=number("order_seed"), default=None,
                     help="Seed of the data order alone [default: --seed]: a run with a pack member's --seed and "
                          "the pack's order seed trains as that member."),
        click.option("--val-fraction", type=number("val_fraction"), default=0.0, show_default=True,
                     metavar="F",
                     help="Hold out this share of each class of the training split (the same images in every "
                          "run: a fixed seed) as a validation split, scored each epoch (val_* in metrics.jsonl), "
                          "and save best.pt at its best epoch. 0: train on the whole split and write no best.pt "
                          "(last.pt is the run's model); the test split never chooses a checkpoint."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--bf16", is_flag=True, help="bf16 autocast (GPU)."),
        click.option("--channels-last", is_flag=True, help="channels_last memory format."),
        click.option("--compile", is_flag=True,
                     help="Compile the step with torch.compile: the student's forward and backward with the "
                          "method's loss (the student alone when a teacher runs online or under torchrun); on one "
                          "GPU, capture it in CUDA graphs (where the method allows: labelopt methods). The first "
                          "step pays the compile, reported once and left out of the epoch's img/s. Every step's "
                          "batch is full: an epoch's last partial batch is always dropped. Off by default."),
        click.option("--resolution", type=number("resolution"), default=None, metavar="PIXELS",
                     help="JPEG datasets (imagenet): the side models train and are evaluated at, cropped from "
                          "decodes of PIXELS*256/224 [default: 224]; a small one (64, 128) makes a quick run."),
        click.option("--workers", "num_workers", type=number("num_workers"), default=None,
                     help="CPU threads: torch's, and FFCV's JPEG decoding (raw images are read from the file as they "
                          "are) [default: all cores]."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run folder."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def as_plain(kwargs: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}


@main.command()
@recipe_option
@click.option("--arch", required=True, type=RegistryChoice(registered_models), help="Model (labelopt models).")
@training_options
@click.option("--label-smoothing", type=number("label_smoothing"), default=0.0, show_default=True)
@click.option("--augment", type=RegistryChoice(augment_policies), default="auto", show_default=True,
              help="View policy; auto picks by image size.")
def train(milestones, **kwargs):
    """Train a model from scratch (teachers, vanilla and label-smoothing baselines)."""
    from .pipeline.run.options import TrainOptions
    from .pipeline.run.training import train as run_train

    options = TrainOptions(milestones=int_list(milestones), **as_plain(kwargs))
    out = run_train(options, log=lambda m: click.echo(m, err=True))
    echo_once(f"run folder: {out}  ({run_files(options.val_fraction)})")


def run_files(val_fraction: float) -> str:
    """What a finished run folder holds: best.pt only where a validation split chose it."""
    return "config.json, metrics.jsonl, last.pt" + (", best.pt" if val_fraction else "")


@main.command("train-student")
@recipe_option
@click.option("--student", "arch", required=True, type=RegistryChoice(registered_models),
              help="Student model (labelopt models).")
@click.option("--method", type=RegistryChoice(registered_methods), default="sl", show_default=True,
              help="Stage-two method (labelopt methods: teacher signals, options, store or online).")
@click.option("--labels", default=None, metavar="STORE",
              help=f"A label store (generate-labels): {STORE_HELP}.")
@cache_dir_option
@expect_digest_option
@click.option("--teacher", "teachers", multiple=True,
              help="Online teacher checkpoint instead of a store (repeat for an ensemble).")
@training_options
@click.option("--temperature", type=number("temperature"), default=None,
              help="kd: its temperature [4]; online sl/sl-kd: the labels' [4]; stores fix their own.")
@click.option("--ce-weight", type=number("ce_weight"), default=None, help="sl-kd, kd: weight of hard-label CE [0.1].")
@click.option("--kd-weight", type=number("kd_weight"), default=None, help="sl-kd, kd: weight of the soft term [0.9].")
@click.option("--label-smoothing", type=number("label_smoothing"), default=None, help="ls: epsilon [0.1].")
@click.option("--method-option", "extra_options", multiple=True, metavar="NAME=VALUE",
              help="Any other option of the method (labelopt methods lists them), e.g. fitnet_weight=100.")
@click.option("--augment", type=RegistryChoice(augment_policies), default="auto", show_default=True,
              help="Images of identity stores and online teachers (identity: clean); stores with many views "
                   "define their own.")
@click.option("--mix", type=RegistryChoice(mix_policies), default=None,
              help="Mixed images after the views (vanilla: mixed one-hot; aug-sl, aug-sl-kd: the teacher labels "
                   "the mixed image).")
@click.option("--mix-alpha", type=number("mix_alpha"), default=None,
              help="The mix's Beta(alpha, alpha) [mixup 1.0, cutmix 1.0, ricap 0.3].")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="A pack: one student per seed, trained in one pass as one network (--pack-layout; label-based "
                   "methods, one view per image, mixed or not; one process); each member's run folder is "
                   "OUT/seed-S. They share the data order (--order-seed, default the first seed).")
@click.option("--member", "members", multiple=True, metavar="SPEC",
              help="A pack member of its own (repeat; instead of --seeds, --method, --labels and their options): "
                   "name=NAME,method=M,seed=S[,labels=STORE][,temperature=T][,out=FOLDER][,OPTION=VALUE...], "
                   "OPTION any of the method's (labelopt methods). Members may differ in method, label store "
                   "(of the same data) and seed; each trains as a run of its own options with the pack's data "
                   "order, in OUT/NAME (or out=FOLDER).")
@click.option("--pack-layout", type=RegistryChoice(pack_layouts), default=None,
              help="How a pack computes its members: grouped (one wide network: a GPU's layout) or stacked (each "
                   "member's own layers in turn: a CPU's, where grouped convolutions run slower). Default: grouped "
                   "on a GPU, stacked on a CPU; --resume keeps the pack's own.")
def train_student(milestones, teachers, ce_weight, kd_weight, label_smoothing, extra_options, cache_dir, seeds,
                  members, **kwargs):
    """Stage two: train a student from a label store (or online teachers) with a distillation method."""
    from .pipeline.errors import UserError
    from .pipeline.jobs.student import StudentOptions, train_student as run_student
    from .pipeline.run.members import parse_member

    if members and click.get_current_context().get_parameter_source("method").name != "DEFAULT":
        raise UserError("--member gives each member its method (method=M in its SPEC): drop --method")
    chosen = {k: v for k, v in (("ce_weight", ce_weight), ("kd_weight", kd_weight),
                                ("label_smoothing", label_smoothing)) if v is not None}
    chosen.update(method_option_values(kwargs["method"], extra_options))
    options = StudentOptions(milestones=int_list(milestones), teachers=tuple(teachers), method_options=chosen,
                             seeds=seed_list(seeds), members=tuple(parse_member(m) for m in members),
                             **as_plain(kwargs))
    out = run_student(options, cache_dir=cache_dir, log=lambda m: click.echo(m, err=True))
    echo_once(f"run folder: {out}  ({run_files(options.val_fraction)})")


def method_option_values(method: str, items) -> dict:
    """--method-option NAME=VALUE, each parsed by the type of the method's option (int, float, bool); a name the
    method lacks is passed on as text, for train-student's one-line refusal that lists the method's options."""
    from .stages.distillers import get_distiller
    from .stages.distillers.options import parse_value

    types = get_distiller(method).option_types()
    values = {}
    for item in items:
        name, equals, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not name or not equals or not value.strip():
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--method-option")
        try:
            values[name] = parse_value(name, types[name], value) if name in types else value.strip()
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--method-option") from None
    return values


@main.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="A prepared dataset folder.")
@click.option("--split", default=None, help="The split to score [default: the held-out one: test, else val].")
@click.option("--resolution", type=number("resolution"), default=None, metavar="PIXELS",
              help="JPEG datasets: the side models see [default: each checkpoint's training --resolution, else 224].")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for metrics.json and reliability PNGs.")
@click.option("--bins", type=number("bins"), default=15, show_default=True, help="ECE confidence bins.")
@click.option("--device", default="auto", show_default=True)
@click.option("--bf16", is_flag=True)
@click.option("--compare", is_flag=True, help="Different models side by side: rows named by run folder, no mean ± std; with --out also one "
                   "figure with every run's calibration curve.")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
def evaluate(checkpoints, data, split, resolution, out, bins, device, bf16, compare, as_json):
    """Top-1, top-5, NLL, ECE and reliability diagrams; mean ± std over several checkpoints."""
    from .pipeline.jobs.evaluation import evaluate_checkpoints, result_json
    from .pipeline.jobs.reports import format_table

    result = evaluate_checkpoints(list(checkpoints), str(data), split=split, device=device, bf16=bf16,
                                  out=str(out) if out else None, n_bins=bins, compare=compare, resolution=resolution)
    for run in result["runs"]:
        if run.get("note"):
            click.echo(f"note: {run['checkpoint']} was {run['note']}", err=True)
    if as_json:
        click.echo(result_json(result))
        return
    metrics = [("top1", "top-1 %"), ("top5", "top-5 %"), ("nll", "NLL"), ("ece", "ECE")]
    rows = list(result["runs"])
    if compare:  # rows named by run; "epoch" is epochs done, as in metrics.json and train's epoch lines
        click.echo(format_table(rows, [("run", "run"), ("arch", "model"), ("epoch", "epoch"), *metrics]))
    else:
        if len(rows) > 1:
            rows.append({"checkpoint": f"mean ± std ({len(rows)})", **result["summary"]})
        click.echo(format_table(rows, [("checkpoint", "checkpoint"), *metrics]))
    if out:
        plots = [Path(r["reliability_png"]).name for r in result["runs"]]
        if "comparison_png" in result:
            plots.append(Path(result["comparison_png"]).name)
        click.echo(f"written in {out}: metrics.json, {', '.join(plots)}")


@main.command("generate-labels")
@recipe_option
@click.option("--data", required=True, type=click.Path(path_type=Path), help="A prepared dataset folder.")
@click.option("--split", default="train", show_default=True)
@click.option("--teacher", "teachers", multiple=True, help="Teacher checkpoint (repeat for sl-ens).")
@click.option("--method", type=RegistryChoice(registered_labelers), default="sl", show_default=True,
              help="Label method (sl-ens: several --teacher).")
@click.option("--views", type=RegistryChoice(store_view_specs, count_bound="views"), default="identity", show_default=True,
              help="Views stored per image: identity (1), cifar-crop-flip (162), sampled:K (K drawn), "
                   "mix:POLICY:K (K mixed images per image, partners from the split: Aug-SL); K up to 10,000.")
@click.option("--temperature", type=number("temperature"), default=4.0, show_default=True,
              help="Label temperature (the same default as online teachers in train-student).")
@click.option("--mix-gt", type=number("mix_gt"), default=0.0, show_default=True, help="Weight of the one-hot ground truth mixed in.")
@click.option("--mix-alpha", type=number("mix_alpha"), default=None,
              help="--views mix:POLICY:K: the mix's Beta(alpha, alpha) [mixup 1.0, cutmix 1.0, ricap 0.3].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The label store (.h5).")
@click.option("--logits", is_flag=True, help="Also store the teacher logits.")
@click.option("--features", multiple=True, help="Also store a teacher tap per view (pool).")
@click.option("--topk", type=number("topk"), default=None, help="Store only the k largest probabilities per view.")
@click.option("--seed", type=number("seed"), default=0, show_default=True, help="For sampled views and random labels.")
@click.option("--batch-size", type=number("batch_size"), default=None,
              help="Teacher batch (images, all views)  [default: 512 on a GPU, 64 on a CPU]")
@click.option("--block-rows", type=number("block_rows"), default=None,
              help="Samples per block: the unit of resume and of the work split between torchrun ranks  "
                   "[default: a stopped run's own when it resumes, else 256, or 512-1,024 for 1-3 views per "
                   "sample so that a block holds at least 1,024 rows]")
@click.option("--device", default="auto", show_default=True)
@click.option("--resolution", type=number("resolution"), default=None, metavar="PIXELS",
              help="JPEG datasets (imagenet): the side the teacher sees, as train --resolution [default: 224].")
@click.option("--bf16", is_flag=True, help="bf16 autocast (GPU).")
@click.option("--channels-last", is_flag=True, help="The teacher in channels_last memory format (faster on a GPU).")
@click.option("--compile", is_flag=True,
              help="Compile the teacher's forward with torch.compile, captured in CUDA graphs on a GPU (not with "
                   "--features, whose taps are hooks). The first batches pay the compile.")
@click.option("--layout", type=click.Choice(["auto", "compressed", "contiguous"]), default="auto", show_default=True,
              help="compressed: gzip, loaded whole by each student process; contiguous: uncompressed, read in place "
                   "(larger than memory, one copy per node); auto: contiguous from 1 GiB.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
def generate_labels(teachers, features, **kwargs):
    """Stage one: run teachers over every stored view of a split and write a label store."""
    from .pipeline.jobs.labeling import GenerateOptions, generate_labels as run_generate

    out = run_generate(GenerateOptions(teachers=tuple(teachers), features=tuple(features), **as_plain(kwargs)),
                       log=lambda m: click.echo(m, err=True))
    echo_once(f"label store: {out}")


@main.group(cls=LabeloptGroup)
def labels():
    """Label store tools: inspect, verify, card, combine, repack."""


@labels.command("inspect")
@click.argument("store")
@click.option("--bins", type=number("bins"), default=15, show_default=True, help="ECE confidence bins.")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
@cache_dir_option
@expect_digest_option
def labels_inspect(store, bins, as_json, cache_dir, expect_digest):
    """Provenance, shapes, size on disk and the quality of the stored labels. STORE: a path or a URL."""
    from .pipeline.jobs.store_report import format_inspection, inspect_store

    report = inspect_store(store, n_bins=bins, cache_dir=cache_dir, expect_digest=expect_digest)
    click.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


@labels.command("verify")
@click.argument("store")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="A prepared dataset folder: also check the store was made from it (fingerprint, N, classes).")
@click.option("--teacher", "teachers", multiple=True,
              help="Re-label random rows with this checkpoint (the store's own; repeat for an ensemble); needs --data.")
@click.option("--sample", type=number("sample"), default=None, help="How many random (index, view) rows to re-label [64].")
@click.option("--device", default="auto", show_default=True, help="Where to re-label: auto, cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="JSON for programs.")
@cache_dir_option
@expect_digest_option
def labels_verify(store, data, teachers, sample, device, as_json, cache_dir, expect_digest):
    """Schema, digest, every dataset's checksum, with --data the fingerprint, and with --teacher a re-label of
    --sample random rows compared within float16 tolerance; exit 0 only when all hold. STORE: a path or a URL."""
    from .pipeline.jobs.store_report import format_relabel, verify_store
    from .pipeline.jobs.reports import format_table

    result = verify_store(store, data, teachers=teachers, sample=sample, device=device, cache_dir=cache_dir,
                          expect_digest=expect_digest)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        rows = [{**c, "ok": "ok" if c["ok"] else "FAILED"} for c in result["checks"]]
        click.echo(format_table(rows, [("name", "check"), ("ok", "result"), ("detail", "detail")]))
        if "relabel" in result:
            click.echo(format_relabel(result["relabel"]))
    if not result["ok"]:
        failed = [c["name"] for c in result["checks"] if not c["ok"]]
        raise click.ClickException(f"{store}: verification failed ({', '.join(failed)})")


@labels.command("card")
@click.argument("store")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the card here (.md) [stdout].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@cache_dir_option
@expect_digest_option
def labels_card(store, out, overwrite, cache_dir, expect_digest):
    """A short Markdown card for sharing a store: data and fingerprint, teachers and their accuracy, method,
    temperature, views, size, checksums and the command that made it. STORE: a path or a URL."""
    from .pipeline.jobs.store_card import write_store_card

    text = write_store_card(store, out, overwrite, cache_dir=cache_dir, expect_digest=expect_digest)
    click.echo(f"card: {out}" if out is not None else text, nl=out is not None)


@labels.command("combine")
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The new ensemble store (.h5).")
@click.option("--weights", default=None, help="Comma-separated member weights [default: equal].")
@click.option("--layout", type=click.Choice(["auto", "compressed", "contiguous"]), default="auto", show_default=True,
              help="As generate-labels --layout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--expect-digest", "expect_digests", multiple=True, metavar="HEX",
              help="Pins, one per STORE in their order: refuse a store whose root digest differs.")
def labels_combine(stores, out, weights, layout, overwrite, expect_digests):
    """A new ensemble store: the weighted mean of stores made from the same data and views."""
    from .pipeline.jobs.store_report import combine_stores

    parsed = float_list(weights, "combine_weight", "--weights")
    made = combine_stores(list(stores), out, parsed, overwrite=overwrite, layout=layout,
                          expect_digests=list(expect_digests) or None)
    click.echo(f"label store: {made}")


@labels.command("repack")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(["compressed", "contiguous"]), required=True,
              help="contiguous: uncompressed, read in place by students; compressed: gzip, smaller to share.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The repacked store (.h5).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@expect_digest_option
def labels_repack(store, layout, out, overwrite, expect_digest):
    """The same store in another layout: every dataset's bytes and every attribute kept (same checksums and
    digest), each dataset checked against its sha256 as it is copied."""
    from .pipeline.jobs.store_report import repack_store

    click.echo(f"label store: {repack_store(store, out, layout, overwrite=overwrite, expect_digest=expect_digest)}")


@main.command()
@click.argument("table_file", metavar="TABLE")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder of the whole table: data/, teachers/, labels/, runs/, logs/, eval/, table.md, table.json.")
@click.option("--dry-run", is_flag=True, help="Print each step with its state (done, resume, new) and run none.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with --dry-run: the plan) as JSON.")
@click.option("--smoke", is_flag=True,
              help="Every run 1 epoch (warm-ups 1) and the first seed, with the file's [smoke] table merged over it.")
@click.option("--rows", default=None, metavar="A,B,...", help="Only these rows (and the teachers and stores they need).")
@click.option("--seeds", default=None, metavar="S1,S2,...", help="These student seeds instead of the file's.")
@click.option("--data", default=None, metavar="DIR", help="A prepared dataset folder instead of the file's data.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N: for every step.")
@click.option("--jobs", type=number("jobs"), default=1, show_default=True,
              help="Steps run at once, each its own process with its share of the cores.")
@click.option("--max-pack", type=number("max_pack"), default=None, metavar="N",
              help="At most N students per pack: rows of the same student and options train their seeds together "
                   "[default: the file's max_pack, else 16; fewer where the device's memory holds fewer]; 1: every "
                   "run its own process, data order its own.")
def table(table_file, out, dry_run, as_json, smoke, rows, seeds, data, device, jobs, max_pack):
    """A whole results table from one table file: teachers, label stores, every row over its seeds (packed where
    the method allows), evaluated and summarized as mean ± std. TABLE: a .toml file or a shipped table's name."""
    from .pipeline.jobs.tables import TableRequest, run_table

    request = TableRequest(table_file, out, dry_run=dry_run, smoke=smoke, seeds=seed_list(seeds), data=data,
                           rows=tuple(r.strip() for r in rows.split(",") if r.strip()) if rows else (),
                           device=device, jobs=jobs, max_pack=max_pack)
    result = run_table(request, log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
    elif dry_run:
        for step in result["steps"]:
            click.echo(f"[{step['state']}] {step['command']}")
    else:
        click.echo(result["markdown"], nl=False)


# One line per command in the group's --help, whole (click cuts a docstring's first sentence at about 45 columns).
SHORT_HELP = {
    "prepare": "Dataset files to FFCV .beton splits and meta.json.",
    "models": "List the architectures and their parameter counts.",
    "methods": "List the stage-two methods, their signals and defaults.",
    "train": "Train a teacher, or a vanilla or label-smoothing baseline.",
    "train-student": "Stage two: a student from a label store or online teachers.",
    "evaluate": "Top-1, top-5, NLL, ECE and reliability diagrams.",
    "generate-labels": "Stage one: a teacher's soft labels into a label store.",
    "labels": "Label store tools: inspect, verify, card, combine, repack.",
    "labels inspect": "A store's provenance, shapes, size and label quality.",
    "labels verify": "Check a store's checksums, data and (with --teacher) labels.",
    "labels card": "A Markdown card to share a store with.",
    "labels combine": "An ensemble store: the weighted mean of stores.",
    "labels repack": "The same store in another layout, checksums kept.",
    "table": "A whole results table from one table file.",
}


def set_short_help() -> None:
    for path, text in SHORT_HELP.items():
        command = main
        for name in path.split():
            command = command.commands[name]
        command.short_help = text


set_short_help()


if __name__ == "__main__":
    main()
