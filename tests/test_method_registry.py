"""The method registry: typed options, the decorator, store_servable derived from signals, the CLI built from it."""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch.nn.functional as F
from click.testing import CliRunner

from labelopt.cli import main, method_option_values
from labelopt.stages.distillers import DISTILLERS, Distiller, register_method
from labelopt.stages.distillers.crd import ContrastiveRepresentation
from labelopt.stages.distillers.options import build_options, parse_value

# Every method's options as they were before they were typed (names, order, values), with the type each has now.
DEFAULTS = {
    "vanilla": {},
    "ls": {"label_smoothing": 0.1},
    "sl": {},
    "sl-kd": {"ce_weight": 0.1, "kd_weight": 0.9},
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
    "aug-sl": {},
    "aug-sl-kd": {"ce_weight": 0.1, "kd_weight": 0.9},
    "fitnet": {"ce_weight": 1.0, "fitnet_weight": 100.0},
    "at": {"ce_weight": 1.0, "at_weight": 1000.0},
    "sp": {"ce_weight": 1.0, "sp_weight": 3000.0},
    "vid": {"ce_weight": 1.0, "vid_weight": 1.0},
    "rkd": {"ce_weight": 1.0, "rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    "pkt": {"ce_weight": 1.0, "pkt_weight": 30000.0},
    "ab": {"warmup_epochs": 30, "ab_weight": 1.0, "margin": 1.0, "ce_weight": 1.0, "always_connect": False},
    "ft": {"warmup_epochs": 30, "warmup_lr": 0.01, "ce_weight": 1.0, "ft_weight": 200.0, "rate": 0.5,
           "paper_factor": False, "paraphraser_bn": False},
    "crd": {"ce_weight": 1.0, "crd_weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
            "nce_momentum": 0.5, "negatives_other_class": True, "negatives_replace": False},
    "crd+kd": {"ce_weight": 1.0, "crd_weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
               "nce_momentum": 0.5, "negatives_other_class": True, "negatives_replace": False, "kd_weight": 1.0,
               "temperature": 4.0},
    "kdss": {"ce_weight": 0.1, "kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0, "kd_temperature": 4.0,
             "tf_temperature": 4.0, "ss_temperature": 0.5, "head_temperature": 1.0, "tf_keep_wrong": 1.0,
             "ss_keep_wrong": 0.75, "warmup_epochs": 60, "crop_each_rotation": True},
}
# The hand-set store_servable of every method before it was derived: stage maps and kdss's rotations are not.
NOT_FROM_STORE = {"fitnet", "at", "sp", "vid", "ab", "ft", "kdss"}


@pytest.fixture
def fake_method():
    """A method registered through the decorator, removed from the registry afterwards."""
    before = dict(DISTILLERS)

    @register_method
    class Fake(Distiller):
        name = "fake-registry-probe"
        summary = "ce_weight * CE, with an int and a bool option"
        teacher_signals = ()

        @dataclass(frozen=True)
        class Options:
            ce_weight: float = 1.0
            copies: int = 2
            sharpen: bool = False

        def forward(self, logits, student, teacher, batch):
            ce = F.cross_entropy(logits.float(), batch.labels)
            return {"loss": self.options.ce_weight * ce, "ce": ce}

    yield Fake
    DISTILLERS.clear()
    DISTILLERS.update(before)


def test_every_method_keeps_its_option_names_defaults_and_order_with_types():
    assert list(DISTILLERS) == list(DEFAULTS)
    for name, cls in DISTILLERS.items():
        defaults = cls.option_defaults()
        assert list(defaults.items()) == list(DEFAULTS[name].items()), name
        assert [type(v) for v in defaults.values()] == [type(v) for v in DEFAULTS[name].values()], name
        assert cls.option_types() == {k: type(v) for k, v in DEFAULTS[name].items()}, name


def test_store_servable_is_derived_from_the_signals_as_it_was_set_by_hand():
    assert {n for n, cls in DISTILLERS.items() if not cls.store_servable} == NOT_FROM_STORE
    assert "features:stage2" in DISTILLERS["fitnet"].why_not_store()
    assert DISTILLERS["kdss"].why_not_store() == "a label store holds no rotated views"  # its signals alone are 1-D
    assert all(DISTILLERS[n].why_not_store() == "" for n in ("sl", "kd", "rkd", "pkt", "crd", "crd+kd"))


def test_values_parse_by_type():
    assert parse_value("nce_k", int, "16384") == 16384 and type(parse_value("nce_k", int, "16384")) is int
    assert parse_value("nce_k", int, "1e4") == 10000 and parse_value("nce_k", int, 64.0) == 64
    assert type(parse_value("ce_weight", float, "1")) is float and parse_value("ce_weight", float, 2) == 2.0
    truths = {"1": True, "0": False, "true": True, "False": False, " TRUE ": True, 1.0: True, 0: False}
    assert {k: parse_value("sharpen", bool, k) for k in truths} == truths
    for kind, bad, message in ((int, "1.5", "nce_k must be a whole number"), (int, 1.5, "whole number"),
                               (int, True, "takes a number"), (float, "nan", "finite"), (float, "inf", "finite"),
                               (float, "-1e10", "finite"), (float, "abc", "finite"), (bool, "2", "is 0 or 1"),
                               (bool, "yes", "is 0 or 1"), (bool, 0.5, "is 0 or 1")):
        with pytest.raises(ValueError, match=message):
            parse_value("nce_k", kind, bad)


def test_options_build_typed_and_range_checked():
    options = build_options(ContrastiveRepresentation.Options, {"nce_k": "64", "negatives_replace": "true"}, "crd")
    assert (options.nce_k, options.negatives_replace, options.feat_dim) == (64, True, 128)
    assert json.dumps(dataclasses.asdict(options)).count('"nce_k": 64,') == 1  # config.json: an int, not 64.0
    for given, message in (({"nce_k": "0"}, r"nce_k must be a whole number in \[1, 1e\+06\]"),
                           ({"crd_weight": "-1"}, r"crd_weight must be a number in \[0"),
                           ({"nce_t": "0"}, r"nce_t must be a number in \(0"), ({"nce_kk": "1"}, "do not apply")):
        with pytest.raises(ValueError, match=message):
            build_options(ContrastiveRepresentation.Options, given, "crd")


def test_a_method_file_with_a_mistake_fails_at_import():
    with pytest.raises(TypeError, match="Options"):
        class OldStyle(Distiller):
            defaults = {"ce_weight": 1.0}
    with pytest.raises(TypeError, match="store_refusal"):
        class HandSet(Distiller):
            store_servable = False
    for body, message in (("ratio: str = 'a'", "int, float or bool"), ("copies: int = 2.0", "default of type int"),
                          ("ce_weight: float = -1.0", "ce_weight must be")):
        namespace = {}
        exec(f"@dataclass(frozen=True)\nclass Options:\n    {body}\n", {"dataclass": dataclass}, namespace)
        with pytest.raises((TypeError, ValueError), match=message):
            type("Bad", (Distiller,), {"Options": namespace["Options"]})
    with pytest.raises(TypeError, match="frozen"):
        type("Mutable", (Distiller,), {"Options": dataclass(type("Options", (), {"__annotations__": {}}))})


def test_the_decorator_refuses_a_name_taken_or_missing(fake_method):
    with pytest.raises(ValueError, match="registered twice"):
        register_method(type("Again", (fake_method,), {}))
    with pytest.raises(TypeError, match="name"):
        register_method(type("Nameless", (fake_method,), {"name": ""}))


def test_a_method_registered_by_decorator_is_listed_and_offered_by_the_cli(fake_method):
    runner = CliRunner()
    rows = {r["method"]: r for r in json.loads(runner.invoke(main, ["methods", "--json"]).output)}
    row = rows[fake_method.name]
    assert row["defaults"] == {"ce_weight": 1.0, "copies": 2, "sharpen": False}
    assert row["option_types"] == {"ce_weight": "float", "copies": "int", "sharpen": "bool"}
    assert row["source"] == "none" and row["summary"] == fake_method.summary
    assert fake_method.name in runner.invoke(main, ["methods"]).output
    command = main.commands["train-student"]
    [method] = [p for p in command.params if p.name == "method"]
    assert list(method.type.choices) == [*DEFAULTS, fake_method.name]
    help_text = runner.invoke(main, ["train-student", "--help"]).output
    assert all(name in help_text for name in method.type.choices)
    assert method_option_values(fake_method.name, ["copies=3", "sharpen=1", "other=x"]) == {
        "copies": 3, "sharpen": True, "other": "x"}  # an unknown name is left for train-student's refusal


@pytest.mark.parametrize("args, mentions", [
    (["train-student", "--student", "resnet20", "--method", "nope"], "'kdss'"),
    (["train-student", "--student", "resnet20", "--method", "crd", "--method-option", "nce_k=1.5"],
     "nce_k must be a whole number"),
    (["train-student", "--student", "resnet20", "--method", "ft", "--method-option", "paper_factor=2"],
     "paper_factor is 0 or 1"),
    (["train-student", "--student", "resnet99", "--method", "kd"], "'resnet152'"),
    (["train", "--arch", "resnet20", "--schedule", "linear"], "'cosine'"),
    (["train", "--arch", "resnet20", "--augment", "blur"], "'rrc-flip'"),
    (["generate-labels", "--views", "sampled:0"], "sampled:10"),
    (["generate-labels", "--views", "crops"], "'sampled:K'"),
    (["generate-labels", "--method", "sl-kd"], "'sl-ens'"),
])
def test_registry_options_refuse_in_one_line(args, mentions, tmp_path):
    result = CliRunner().invoke(main, [*args, "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and mentions in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_top_level_help_shows_the_two_stage_flow_in_order():
    text = CliRunner().invoke(main, ["--help"]).output
    flow = text[text.index("two-stage flow"):text.index("Options:")]
    positions = [flow.index(f"\n    {step} ") for step in ("prepare", "train", "generate-labels", "train-student",
                                                             "evaluate")]
    assert positions == sorted(positions)


@pytest.mark.slow
def test_a_registered_method_trains_with_typed_options_end_to_end(fake_method, tiny_cifar_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train-student", "--student", "resnet20", "--data", str(tiny_cifar_dir),
                                       "--method", fake_method.name, "--method-option", "copies=3",
                                       "--method-option", "sharpen=true", "--epochs", "1", "--batch-size", "32",
                                       "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    resolved = json.loads((out / "config.json").read_text())["method_resolved"]
    assert resolved["name"] == fake_method.name
    assert resolved["options"] == {"ce_weight": 1.0, "copies": 3, "sharpen": True}
    assert type(resolved["options"]["copies"]) is int


def test_the_docs_example_is_the_real_method_file():
    repo = Path(__file__).resolve().parents[1]
    docs = (repo / "docs" / "methods.md").read_text()
    section = docs[docs.index("## Adding a method"):]
    example = section[section.index("```python\n") + len("```python\n"):section.index("```\n\nWhat a method")]
    assert example == (repo / "stages" / "distillers" / "kd.py").read_text()
