"""Recipe files (`--config`): a file sets options, a flag overrides it, a run's config.json reruns the run exactly,
and a bad file is one line naming the file and the key, with nothing written."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from labelopt.cli import main
from labelopt.pipeline.run.recipes import shipped_names
from labelopt.pipeline.run.schedules import resolve_milestones

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def captured(monkeypatch):
    """The options each command would run with; nothing trains."""
    import labelopt.pipeline.jobs.labeling as labeling
    import labelopt.pipeline.jobs.student as student
    import labelopt.pipeline.run.training as training

    seen = []

    def record(options, **_):
        seen.append(options)
        return options.out

    for module, name in ((training, "train"), (student, "train_student"), (labeling, "generate_labels")):
        monkeypatch.setattr(module, name, record)
    return seen


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def options_of(captured, args):
    result = invoke(args)
    assert result.exit_code == 0, result.output + result.stderr
    return captured[-1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TRAIN = ["train", "--data", "d", "--arch", "resnet20", "--out", "o"]
STUDENT = ["train-student", "--data", "d", "--out", "o"]


def test_a_recipe_sets_options_and_a_flag_overrides_one(captured, tmp_path):
    recipe = write(tmp_path / "r.toml", 'epochs = 7\nlr = 0.2\nbatch_size = 16\nmilestones = [3, 5]\n'
                                        'workers = 2\nchannels_last = true\nschedule = "cosine"\n')
    options = options_of(captured, TRAIN + ["--config", recipe, "--lr", "0.3"])
    assert (options.epochs, options.lr, options.batch_size, options.milestones) == (7, 0.3, 16, (3, 5))
    assert (options.num_workers, options.channels_last, options.schedule) == (2, True, "cosine")
    assert (options.momentum, options.weight_decay, options.seed) == (0.9, 5e-4, 0)  # not in the file: defaults


def test_a_command_table_wins_over_the_top_level_and_other_tables_are_skipped(captured, tmp_path):
    recipe = write(tmp_path / "r.toml", 'epochs = 7\n[train-student]\nepochs = 9\nmethod = "kd"\n'
                                        '[generate-labels]\nviews = "cifar-crop-flip"\n')
    assert options_of(captured, TRAIN + ["--config", recipe]).epochs == 7
    student = options_of(captured, STUDENT + ["--student", "resnet20", "--config", recipe])
    assert (student.epochs, student.method) == (9, "kd")


def test_student_recipe_aliases_and_method_options(captured, tmp_path):
    recipe = write(tmp_path / "s.toml", 'student = "resnet32"\nmethod = "kd"\nteacher = "t.pt"\ntemperature = 3\n'
                                        '[method_options]\nce_weight = 0.25\nkd_weight = 0.75\nfitnet_weight = 0.1\n')
    options = options_of(captured, STUDENT + ["--config", recipe])
    assert (options.arch, options.method, options.teachers, options.temperature) == ("resnet32", "kd", ("t.pt",), 3.0)
    # fitnet_weight is no kd option: it reaches train-student as written, whose one-line refusal lists kd's options
    assert options.method_options == {"ce_weight": 0.25, "kd_weight": 0.75, "fitnet_weight": "0.1"}
    flags = options_of(captured, STUDENT + ["--config", recipe, "--teacher", "a.pt", "--teacher", "b.pt",
                                            "--ce-weight", "0.5"])
    assert flags.teachers == ("a.pt", "b.pt") and flags.method_options["ce_weight"] == 0.5


def test_generate_labels_recipe(captured, tmp_path):
    # its own keys at the top level; what it shares with the training commands (method, teachers, temperature)
    # under another meaning, in its table
    recipe = write(tmp_path / "g.toml", 'views = "cifar-crop-flip"\nlogits = true\nfeatures = ["pool"]\ntopk = 5\n'
                                        '[generate-labels]\nmethod = "sl-ens"\nteachers = ["a.pt", "b.pt"]\n'
                                        'temperature = 2\n')
    options = options_of(captured, ["generate-labels", "--data", "d", "--out", "s.h5", "--config", recipe])
    assert (options.method, options.teachers, options.views) == ("sl-ens", ("a.pt", "b.pt"), "cifar-crop-flip")
    assert (options.temperature, options.logits, options.features, options.topk) == (2.0, True, ("pool",), 5)


GENERATE = ["generate-labels", "--data", "d", "--out", "s.h5"]


def test_one_recipe_serves_every_command_it_names(captured, tmp_path):
    recipe = write(tmp_path / "flow.toml", 'data = "data/c100"\nepochs = 9\nbatch_size = 128\nseed = 3\n'
                                           'views = "cifar-crop-flip"\n'
                                           '[train]\narch = "resnet56"\n'
                                           '[train-student]\nstudent = "resnet20"\nmethod = "sl"\n'
                                           'labels = "labels/c100.h5"\n'
                                           '[generate-labels]\nteacher = "runs/r56/last.pt"\nbatch_size = 512\n')
    teacher = options_of(captured, ["train", "--config", recipe, "--out", "o"])
    assert (teacher.arch, teacher.data, teacher.epochs, teacher.batch_size, teacher.seed) == (
        "resnet56", "data/c100", 9, 128, 3)
    student = options_of(captured, ["train-student", "--config", recipe, "--out", "o"])
    assert (student.arch, student.method, student.labels, student.batch_size) == ("resnet20", "sl", "labels/c100.h5", 128)
    result = invoke(["generate-labels", "--config", recipe, "--out", "s.h5"])
    assert result.exit_code == 0
    assert result.stderr == ("note: flow.toml: seed at its top level is for train and train-student; generate-labels "
                             "reads its own from a [generate-labels] table\n")
    store = captured[-1]
    # the teacher's batch is its table's, never the students' top-level one; the seed is the training runs'
    assert (store.data, store.teachers, store.batch_size, store.seed, store.views) == (
        "data/c100", ("runs/r56/last.pt",), 512, 0, "cifar-crop-flip")


@pytest.mark.parametrize("name", sorted(["crd-benchmark", "seed", "label-enhancement", "label-enhancement-long",
                                         "label-enhancement-imagenet"]))
def test_a_shipped_training_recipe_sets_nothing_for_generate_labels_and_says_so(captured, name):
    result = invoke(GENERATE + ["--config", name])
    assert result.exit_code == 0, result.stderr
    assert captured[-1].batch_size is None  # the teacher's default batch, not the recipe's training batch
    assert result.stderr == (f"note: {name}.toml: it sets no option of labelopt generate-labels; batch_size at its "
                             f"top level is for train and train-student; generate-labels reads its own from a "
                             f"[generate-labels] table\n")


@pytest.mark.parametrize("epochs, milestones", [(10, (3, 6, 8)), (2, (1,)), (1, None), (200, (60, 120, 160)),
                                                (400, (120, 240, 320))])
def test_a_recipes_milestones_follow_a_new_epochs_flag_at_the_same_fractions(captured, epochs, milestones):
    result = invoke(TRAIN + ["--config", "seed", "--epochs", epochs])
    assert result.exit_code == 0, result.stderr
    assert captured[-1].milestones == milestones
    scaled = ",".join(map(str, milestones or ())) or "none"
    expected = ("" if epochs == 200 else f"note: seed.toml's milestones 60,120,160 of 200 epochs are scaled to "
                f"--epochs {epochs}: {scaled} (pass --milestones for others)\n")
    assert result.stderr == expected
    assert options_of(captured, TRAIN + ["--config", "seed", "--epochs", 10, "--milestones", "5"]).milestones == (5,)


# epochs, lr, batch, weight decay, milestones: the numbers each source gives (see the recipe files' comments)
SHIPPED = {
    "crd-benchmark": (240, 0.05, 64, 5e-4, (150, 180, 210)),
    "seed": (200, 0.1, 128, 5e-4, (60, 120, 160)),
    "label-enhancement": (240, 0.05, 64, 5e-4, (150, 180, 210)),
    "label-enhancement-long": (350, 0.05, 64, 5e-4, (150, 200, 250, 300)),
    "label-enhancement-imagenet": (100, 0.1, 256, 1e-4, (30, 60, 90)),
}


def test_every_shipped_recipe_is_listed_here():
    assert set(shipped_names()) == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("command", [TRAIN, STUDENT + ["--student", "resnet20"]], ids=["train", "train-student"])
def test_every_shipped_recipe_resolves(captured, name, command):
    options = options_of(captured, command + ["--config", name])
    milestones = resolve_milestones(options.epochs, options.milestones)
    assert (options.epochs, options.lr, options.batch_size, options.weight_decay, milestones) == SHIPPED[name]
    assert (options.momentum, options.gamma, options.schedule) == (0.9, 0.1, "step")
    by_path = options_of(captured, command + ["--config", REPO / "recipes" / f"{name}.toml"])
    assert by_path == options


def student_record(**changes) -> dict:
    """A train-student config.json as pipeline/run/training.py writes it (derived records included)."""
    record = {"command": "train-student", "data": "d", "arch": "resnet20", "out": "runs/a", "epochs": 15,
              "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "schedule": "step",
              "milestones": [9, 11, 13], "gamma": 0.1, "label_smoothing": 0.0, "augment": "cifar-crop-flip",
              "seed": 1, "device": "auto", "bf16": False, "channels_last": False, "num_workers": None,
              "resume": False, "overwrite": True, "warmup_epochs": 2, "warmup_milestones": [], "warmup_lr": None,
              "labels": None, "teachers": ["t.pt"], "method": "kd", "temperature": 3.0,
              "method_options": {"ce_weight": 0.2, "kd_weight": 0.8},
              "method_resolved": {"name": "kd", "options": {}}, "teacher_source": {"kind": "online"},
              "views": {"draw": "augment"}, "world_size": 1, "global_batch_size": 32,
              "dataset": {"name": "digits"}, "provenance": {"git_commit": "x"}}
    return {**record, **changes}


def test_a_runs_config_json_gives_back_its_options(captured, tmp_path):
    path = write(tmp_path / "config.json", json.dumps(student_record()))
    options = options_of(captured, ["train-student", "--config", path, "--out", tmp_path / "b"])
    assert (options.out, options.overwrite, options.resume) == (str(tmp_path / "b"), False, False)
    assert (options.epochs, options.batch_size, options.milestones, options.seed) == (15, 32, (9, 11, 13), 1)
    assert (options.teachers, options.temperature, options.augment) == (("t.pt",), 3.0, "cifar-crop-flip")
    assert options.method_options == {"ce_weight": 0.2, "kd_weight": 0.8}
    # derived records are not read back: the resolved label smoothing, and a method's phases (not options at all)
    assert options.label_smoothing == 0.0 and not hasattr(options, "warmup_epochs")
    by_folder = options_of(captured, ["train-student", "--config", tmp_path, "--out", tmp_path / "b"])
    assert by_folder == options


def test_default_milestones_of_a_run_follow_a_new_epochs_flag(captured, tmp_path):
    path = write(tmp_path / "config.json", json.dumps(student_record()))
    assert options_of(captured, ["train-student", "--config", path, "--out", "b", "--epochs", "4"]).milestones is None
    fixed = write(tmp_path / "fixed.json", json.dumps(student_record(milestones=[5, 10])))
    result = invoke(["train-student", "--config", fixed, "--out", "b", "--epochs", "4"])
    assert result.exit_code == 0 and captured[-1].milestones == (1, 3)  # 5 and 10 of 15 epochs, as 1 and 3 of 4
    assert "milestones 5,10 of 15 epochs are scaled to --epochs 4: 1,3" in result.stderr
    loose = write(tmp_path / "loose.toml", "milestones = [5, 10]\n")  # no epochs: the fractions are unknown
    one_line(invoke(TRAIN + ["--config", loose, "--epochs", "8"]),
             "sets milestones 5,10 but not the epochs they were set for", "('' for the default of 8 epochs)")


def test_a_store_with_many_views_keeps_its_own_augmentation(captured, tmp_path):
    record = student_record(labels="s.h5", teachers=[], method="sl", method_options={}, augment="cifar-crop-flip",
                            teacher_source={"kind": "store", "views": {"policy": "cifar-crop-flip"}})
    path = write(tmp_path / "config.json", json.dumps(record))
    options = options_of(captured, ["train-student", "--config", path, "--out", "b"])
    assert options.augment == "auto" and options.labels == "s.h5"


def one_line(result, *mentions):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output + result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for word in mentions:
        assert word in lines[0], lines[0]
    return lines[0]


BAD_FILES = {
    # name: (file text, words the line must hold)
    "unknown key": ("epochs = 3\nlearning_rate = 0.1\n", ["unknown key 'learning_rate'", "valid keys: arch,"]),
    "number as text": ('lr = "fast"\n', ["'lr' in", "'fast' is not a number"]),
    "true for an integer": ("epochs = true\n", ["'epochs' in", "not an integer"]),
    "out of range": ("batch_size = 0\n", ["'batch_size' in", "out of range"]),
    "text for a flag": ('bf16 = "yes"\n', ["'bf16' in", "not true or false"]),
    "list for a text option": ('device = ["cpu"]\n', ["'device' in", "not a string"]),
    "milestones decrease": ("milestones = [5, 3]\n", ["milestones = [5, 3]", "strictly increasing"]),
    "a key of no command": ("[method_option]\nx = 1\n", ["unknown key 'method_option'"]),
    "not TOML": ("epochs = = 3\n", ["is not valid TOML"]),
    "a table of the command that is not a table": ('train = "x"\n', ["'train' must be a table"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_recipe_is_one_line_naming_file_and_key_and_writes_nothing(tmp_path, case):
    text, words = BAD_FILES[case]
    recipe = write(tmp_path / "bad.toml", text)
    out = tmp_path / "run"
    one_line(invoke(["train", "--data", tmp_path, "--arch", "resnet20", "--out", out, "--config", recipe]),
             str(recipe), *words)
    assert not out.exists()


def test_a_bad_value_in_a_file_reads_as_the_flags_own_error(tmp_path):
    recipe = write(tmp_path / "bad.toml", "lr = -1\n")
    base = ["train", "--data", tmp_path, "--arch", "resnet20", "--out", tmp_path / "run"]
    by_flag = one_line(invoke(base + ["--lr", "-1"]), "'--lr'")
    by_file = one_line(invoke(base + ["--config", recipe]), f"'lr' in {recipe}")
    # the same line, the key and the file in place of the flag (the file's -1 is a number, the flag's a string)
    assert by_file == by_flag.replace("'--lr'", f"'lr' in {recipe}").replace("'-1'", "-1")


def test_student_refusals(tmp_path):
    record = write(tmp_path / "config.json", json.dumps(student_record()))
    bad_option = write(tmp_path / "bad.toml", "[method_options]\nft_weight = \"high\"\n")
    twice = write(tmp_path / "twice.toml", "ce_weight = 0.1\n[method_options]\nce_weight = 0.2\n")
    out = tmp_path / "run"
    one_line(invoke(["train-student", "--config", record]), "pass --out NEW_FOLDER", "runs/a")
    one_line(invoke(["train", "--config", record, "--out", out]), "records a labelopt train-student run")
    one_line(invoke(STUDENT[:-1] + [out, "--student", "resnet20", "--config", bad_option]), "method_options.ft_weight")
    one_line(invoke(STUDENT[:-1] + [out, "--student", "resnet20", "--config", twice]), "sets ce_weight twice")
    one_line(invoke(TRAIN[:-1] + [out, "--config", tmp_path / "missing.toml"]), "no recipe file",
             "crd-benchmark, label-enhancement")
    one_line(invoke(TRAIN[:-1] + [out, "--config", "no-such-recipe"]), "no recipe file no-such-recipe")
    assert not out.exists()


def same_weights(first: Path, second: Path) -> bool:
    a = torch.load(first / "last.pt", weights_only=True)["model"]
    b = torch.load(second / "last.pt", weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_record(first: Path, second: Path) -> bool:
    a, b = (json.loads((run / "config.json").read_text()) for run in (first, second))
    return {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}


def test_a_run_reruns_bit_for_bit_from_its_config_json(tiny_cifar_dir, tmp_path):
    """train from a recipe plus a flag; config.json records the resolved values; --config that config.json
    into another folder gives the same weights (CPU)."""
    recipe = write(tmp_path / "tiny.toml", 'epochs = 1\nbatch_size = 32\nlr = 0.2\nseed = 3\nworkers = 1\n'
                                           'device = "cpu"\n')
    first, second = tmp_path / "first", tmp_path / "second"
    result = invoke(["train", "--config", recipe, "--data", tiny_cifar_dir, "--arch", "resnet20", "--out", first,
                     "--lr", "0.07"])
    assert result.exit_code == 0, result.output + result.stderr
    config = json.loads((first / "config.json").read_text())
    assert (config["lr"], config["batch_size"], config["seed"], config["num_workers"]) == (0.07, 32, 3, 1)
    result = invoke(["train", "--config", first / "config.json", "--out", second])
    assert result.exit_code == 0, result.output + result.stderr
    assert same_record(first, second) and same_weights(first, second)


def test_a_student_run_reruns_bit_for_bit_from_its_config_json(tiny_cifar_dir, tmp_path):
    """ls with its own epsilon: config.json holds it in method_options and, resolved, as label_smoothing."""
    first, second = tmp_path / "first", tmp_path / "second"
    result = invoke(["train-student", "--data", tiny_cifar_dir, "--student", "resnet20", "--method", "ls",
                     "--label-smoothing", "0.3", "--epochs", "1", "--batch-size", "32", "--seed", "5", "--workers", "1",
                     "--device", "cpu", "--out", first])
    assert result.exit_code == 0, result.output + result.stderr
    config = json.loads((first / "config.json").read_text())
    assert config["method_options"] == {"label_smoothing": 0.3} and config["label_smoothing"] == 0.3
    result = invoke(["train-student", "--config", first / "config.json", "--out", second])
    assert result.exit_code == 0, result.output + result.stderr
    assert same_record(first, second) and same_weights(first, second)


def test_a_rerun_names_what_differs_from_the_recorded_run(captured, tiny_cifar_dir, tmp_path):
    from labelopt.pipeline.run.runs import provenance

    now = provenance()
    same = {"git_commit": now["git_commit"], "versions": dict(now["versions"])}
    fingerprint = json.loads((tiny_cifar_dir / "meta.json").read_text())["splits"]["train"]["fingerprint"]
    record = student_record(data=str(tiny_cifar_dir), provenance=same, dataset={"fingerprint": fingerprint})
    path = write(tmp_path / "config.json", json.dumps(record))
    quiet = invoke(["train-student", "--config", path, "--out", tmp_path / "b"])
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr
    older = {"git_commit": "0" * 40, "versions": {**now["versions"], "torch": "0.1"}}
    record.update(provenance=older, dataset={"fingerprint": "f" * 64})
    path.write_text(json.dumps(record))
    noted = invoke(["train-student", "--config", path, "--out", tmp_path / "b"])
    assert noted.exit_code == 0
    assert noted.stderr.startswith("note: rerunning the run in runs/a with labelopt commit 0000000000000000000000000")
    assert f"torch 0.1 -> {now['versions']['torch']}" in noted.stderr and "fingerprint ffffffffffff ->" in noted.stderr


def test_the_readmes_example_recipe_reads_as_it_says(captured, tmp_path):
    text = (REPO / "README.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    recipe = write(tmp_path / "my-recipe.toml", example)
    student = options_of(captured, ["train-student", "--config", recipe, "--data", "d", "--out", "o", "--lr", "0.05"])
    assert (student.epochs, student.lr, student.batch_size, student.milestones) == (200, 0.05, 128, (60, 120, 160))
    assert (student.arch, student.method, student.method_options) == ("resnet20", "sl-kd", {"ce_weight": 0.1})
    assert student.teachers == ("runs/r32/last.pt", "runs/r44/last.pt")
    teacher = options_of(captured, ["train", "--config", recipe, "--data", "d", "--arch", "resnet32", "--out", "o"])
    assert (teacher.epochs, teacher.lr) == (200, 0.1)
    store = options_of(captured, ["generate-labels", "--config", recipe, "--data", "d", "--out", "s.h5"])
    assert (store.teachers, store.batch_size) == (("runs/r32/last.pt",), 512)  # its table's batch, not the students'
