"""benchmarks/device_check.sh: the commands it would run on a GPU (--dry-run), its refusals, and its report's table
when a part is missing. The real run needs a GPU; the README gives its figures."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device_check.sh"


def run_script(out: Path, *flags: str, **env) -> subprocess.CompletedProcess:
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(out.parent),
                   "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), str(out), *flags], capture_output=True, text=True, timeout=60,
                          env=environment)


def load_report():
    return load_script("device_check_report")


def test_dry_run_lists_the_six_parts_on_the_gpu_in_bf16(tmp_path):
    out = tmp_path / "out"
    done = run_script(out, "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = [line.split() for line in done.stdout.splitlines()]
    assert len(commands) == 6 and not out.exists()
    gen, fast, two, ddp, compiled, imagenet = commands
    assert gen[1].endswith("generate_labels.py") and gen[gen.index("--images") + 1] == "50000"
    assert gen[gen.index("--crop-flip-images") + 1] == "5000"  # 1,000 x 162 views ran 4 s: too short to judge
    # Stage one as it was sized (no anchor, the script's batch, eager), then the goal's setup against its anchor:
    # batch 1024, the teacher in channels_last under --compile, over the same images with the same teacher.
    assert "--no-anchor" in gen and not {"--batch-size", "--channels-last", "--compile"} & set(gen)
    assert fast[1].endswith("generate_labels.py") and fast[fast.index("--batch-size") + 1] == "1024"
    assert "--channels-last" in fast and "--compile" in fast and "--no-anchor" not in fast and "--keep" not in fast
    for flag in ("--images", "--crop-flip-images", "--teacher-arch"):
        assert fast[fast.index(flag) + 1] == gen[gen.index(flag) + 1]
    assert fast[fast.index("--teacher-arch") + 1] == "resnet56"
    assert imagenet[1].endswith("generate_labels_imagenet.py")
    assert [imagenet[imagenet.index(flag) + 1] for flag in ("--images", "--views-per-image", "--classes")] == [
        "2000", "8", "1000"]
    assert two[1].endswith("stage_two.py") and two[two.index("--views") + 1] == "cifar-crop-flip"
    assert ddp[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "train-student" in ddp
    for command in commands:
        assert "--bf16" in command and command[command.index("--device") + 1] == "cuda"
    # The DDP run trains from stage two's store and data, with its epochs
    assert ddp[ddp.index("--labels") + 1].startswith(str(out / "stage_two" / "labels"))
    assert ddp[ddp.index("--epochs") + 1] == two[two.index("--epochs") + 1] == "4"
    # Stage two again at the goal's batch under --compile, with stage two's images, views and epochs, against the
    # anchor (on by default), without the mix pair; stage two itself stays eager at the recipe's batch.
    assert compiled[1].endswith("stage_two.py") and "--compile" in compiled and "--no-anchor" not in compiled
    assert compiled[compiled.index("--batch-size") + 1] == "128"
    assert compiled[compiled.index("--setups") + 1] == "vanilla,store,store_replayed" and compiled[compiled.index("--pack") + 1] == "8"
    for flag in ("--images", "--views", "--epochs"):
        assert compiled[compiled.index(flag) + 1] == two[two.index(flag) + 1]
    assert "--compile" not in two and "--batch-size" not in two and "--keep" not in compiled


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_the_imagenet_part_at_sizes_its_script_accepts(tmp_path, monkeypatch):
    done = run_script(tmp_path / "out", "--dry-run", "--smoke")
    assert done.returncode == 0, done.stderr
    imagenet = done.stdout.splitlines()[-1].split()
    assert imagenet[1].endswith("generate_labels_imagenet.py") and "--bf16" not in imagenet
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    args, device = load_script("generate_labels_imagenet").parse_args(imagenet[2:])
    assert (args.images, args.views_per_image, args.classes, args.repeats) == (8, 2, 4, 1)
    assert args.topk < args.classes and args.long_side <= 64
    fast = next(line.split() for line in done.stdout.splitlines() if "--channels-last" in line)
    args = load_script("generate_labels").make_parser().parse_args(fast[2:])
    assert (args.images, args.crop_flip_images, args.batch_size, args.teacher_arch) == (128, 2, 64, "resnet56")
    assert args.channels_last and args.compile and not args.bf16 and not args.no_anchor and args.device == "auto"
    compiled = next(line.split() for line in done.stdout.splitlines() if "stage_two.py" in line and "--compile" in line)
    args = load_script("stage_two").make_parser().parse_args(compiled[2:])
    assert (args.images, args.epochs, args.batch_size, args.views) == (128, 2, 128, "identity")
    assert args.compile and not args.bf16 and not args.no_anchor and args.setups == ["vanilla", "store", "store_replayed"]
    assert args.pack == 2


def test_parts_picks_parts_in_the_script_order_and_refuses_unknown_ones(tmp_path):
    done = run_script(tmp_path / "out", "--dry-run", "--parts", "packed,stage_two_128,stage_two_compiled",
                      GEN_FAST_COMPILE="0")
    assert done.returncode == 0, done.stderr
    compiled, eager, packed = [line.split() for line in done.stdout.splitlines()]
    assert "--compile" in compiled and "--compile" not in eager and packed[1].endswith("packed.py")
    assert eager[eager.index("--pack") + 1] == "8" and "--bf16" in packed
    done = run_script(tmp_path / "out", "--dry-run", "--parts", "generate_labels_fast", GEN_FAST_COMPILE="0")
    assert "--compile" not in done.stdout and "--channels-last" in done.stdout
    done = run_script(tmp_path / "out", "--dry-run", "--parts", "stage_two,bogus")
    assert done.returncode == 2 and "unknown part 'bogus'" in done.stderr and not done.stdout


def test_report_shows_the_pack_and_the_packed_benchmark(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("stage_two_128 ok 60\npacked ok 30\n")
    anchor = {"captured": {"img_per_s": 4000.0, "mode": "CUDA graphs (reduce-overhead)"}}
    two = stage_two_json(128, anchor)
    two["compile"] = False
    two["setups"]["store_pack"] = {"setup": "8 packed sl students from store", "median_epoch_seconds": 4.0,
                                   "median_img_per_s": 8000.0}
    two["summary"]["ratio_store_pack_over_anchor_captured"] = 2.0
    two["setups"]["store_replayed"] = {"setup": "sl from store, batches replayed from the device (no loader)",
                                       "median_epoch_seconds": 1.5, "median_img_per_s": 3600.0}
    two["summary"]["ratio_store_replayed_over_anchor_captured"] = 0.9
    two["summary"]["ratio_store_over_store_replayed"] = 1.25
    (tmp_path / "stage_two_128.json").write_text(json.dumps(two))
    packed = {"batch_size": 128, "compile": False, "rows": [
        {"members": 8, "packed_img_per_s": 9000.0, "separate_img_per_s": 3000.0, "speedup": 3.0}]}
    (tmp_path / "packed.json").write_text(json.dumps(packed))
    rows = {row["what"]: (row["figure"], row["against"]) for row in report.build(tmp_path)["rows"]}
    assert rows["train-student 8 packed sl students from store, batch 128, eager"] == (
        "8000 img/s (4.00 s/epoch)", "2.000x the captured anchor")
    assert rows["train-student sl from store, batches replayed from the device (no loader), batch 128, eager"] == (
        "3600 img/s (1.50 s/epoch)",  # a diagnosis, with no goal of its own
        "0.900x the captured anchor; the store's run took 1.250x its epoch time")
    plain = "anchor captured: resnet20 in a plain loop over images on the device, batch 128"
    assert rows[plain][1].endswith("store_replayed 0.900x, store_pack 2.000x")
    assert rows["packed.py: 8 resnet20 students, batch 128, eager"] == (
        "9000 student-img/s packed", "3.00x one after another (3000)")
    assert "stage_two.py" not in rows and "torchrun DDP" not in rows  # not among the parts that ran


def test_store_finish_part_runs_the_assembly_benchmark_and_reports_it(tmp_path):
    done = run_script(tmp_path / "out", "--dry-run", "--parts", "store_finish", CROP_FLIP_IMAGES="300")
    assert done.returncode == 0, done.stderr
    command = done.stdout.split()
    assert command[1].endswith("store_finish.py") and command[command.index("--samples") + 1] == "300"
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("store_finish ok 20\n")
    finish = {"threads": 16, "stores": [
        {"store": "dense", "shape": [300, 162, 100], "finish_seconds": 0.25, "hdf5_seconds": 2.0,
         "hdf5_over_finish": 8.0, "same_chunks": True},
        {"store": "top10", "shape": [300, 162, 100], "finish_seconds": 0.1, "hdf5_seconds": 0.2,
         "hdf5_over_finish": 2.0, "same_chunks": False}]}
    (tmp_path / "store_finish.json").write_text(json.dumps(finish))
    rows = {row["what"]: (row["figure"], row["against"]) for row in report.build(tmp_path)["rows"]}
    assert rows["store finish: dense gzip store, 300 x 162 x 100, 16 threads"] == (
        "0.25 s", "HDF5 compressing took 2.00 s: 8.00x labelopt's time")
    assert rows["store finish: top10 gzip store, 300 x 162 x 100, 16 threads"][1].endswith("the chunks DIFFER")
    (tmp_path / "store_finish.json").unlink()
    assert {"what": "store_finish.py", "figure": "missing", "against": ""} in report.build(tmp_path)["rows"]


def test_stage_one_overhead_part_runs_the_free_teacher_benchmark_and_reports_it(tmp_path):
    done = run_script(tmp_path / "out", "--dry-run", "--parts", "stage_one_overhead", GEN_IMAGES="5000")
    assert done.returncode == 0, done.stderr
    command = done.stdout.split()
    assert command[1].endswith("stage_one_overhead.py") and command[command.index("--images") + 1] == "5000"
    assert command[command.index("--device") + 1] == "cuda"
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("stage_one_overhead ok 30\n")
    setup = lambda rows, seconds, finish: {"block_rows": rows, "median_seconds": seconds, "min_seconds": seconds,
                                           "median_finish_seconds": finish, "median_cpu_seconds": seconds}
    overhead = {"views": "identity", "images": 50000,
                "setups": {"blocks-256": setup(256, 0.8, 0.2), "default": setup(1024, 0.6, 0.05)}}
    (tmp_path / "stage_one_overhead.json").write_text(json.dumps(overhead))
    result = report.build(tmp_path)
    rows = {row["what"]: (row["figure"], row["against"]) for row in result["rows"]}
    assert rows["generate-labels identity, free teacher: 50,000 images, default (1024 rows a block)"] == (
        "0.600 s (finish 0.050 s)", "0.75x blocks-256")
    assert result["stage_one_overhead"]["blocks-256"]["median_seconds"] == 0.8
    (tmp_path / "stage_one_overhead.json").unlink()
    assert {"what": "stage_one_overhead.py", "figure": "missing", "against": ""} in report.build(tmp_path)["rows"]


def test_imagenet_0_leaves_the_imagenet_part_out(tmp_path):
    done = run_script(tmp_path / "out", "--dry-run", IMAGENET="0")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 5 and "generate_labels_imagenet" not in done.stdout


@pytest.mark.parametrize("env, message", [
    ({"IMAGENET": "yes"}, "IMAGENET must be 0 or 1"),
    ({"IMAGENET_VIEWS": "0"}, "IMAGENET_VIEWS must be a positive integer"),
    ({"EPOCHS": "1"}, "EPOCHS must be at least 2"),
    ({"STAGE2_IMAGES": "0"}, "STAGE2_IMAGES must be a positive integer"),
    ({"GEN_IMAGES": "-5"}, "GEN_IMAGES must be a positive integer"),
    ({"PART_LIMIT": "nan"}, "PART_LIMIT must be a positive integer"),
    ({"GEN_FAST_LIMIT": "0"}, "GEN_FAST_LIMIT must be a positive integer"),
])
def test_bad_sizes_are_refused_in_one_line(tmp_path, env, message):
    done = run_script(tmp_path / "out", "--dry-run", **env)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run_script(out)
    assert done.returncode == 2 and "not empty" in done.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_report_marks_missing_parts_and_fails(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("generate_labels ok 38\nstage_two failed:124 170\nddp failed:1 3\n")
    gen = {"bf16": True, "machine": {"device": "cuda", "device_name": "GPU X"},
           "throughput": {"identity": {"bare": {"img_per_s": 200.0},
                                       "generate": {"images": 10, "views": 1, "img_per_s": 100.0},
                                       "ratio_generate_over_bare": 0.5}},
           "summary": {"ratio_goal_met": False}}
    (tmp_path / "generate_labels.json").write_text(json.dumps(gen))
    assert report.main([str(tmp_path)]) == 1
    result = json.loads((tmp_path / "device_check.json").read_text())
    figures = {row["what"]: row["figure"] for row in result["rows"]}
    assert figures["generate-labels identity: 10 images x 1 views"] == "100 teacher passes/s"
    assert figures["stage_two.py"] == figures["torchrun DDP"] == "missing"
    table = (tmp_path / "device_check.md").read_text()
    assert "bare 200/s: 0.500x" in table and "stage_two failed:124 170" in table


def test_report_compares_ddp_epochs_with_the_store_run(tmp_path):
    report = load_report()
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "metrics.jsonl").write_text(
        "".join(json.dumps({"train_seconds": s}) + "\n" for s in (9.0, 2.0, 3.0, 2.5)))
    setup = {"setup": "s", "median_epoch_seconds": 2.0, "median_img_per_s": 1.0}
    two = {"images": 10, "machine": {"device": "cuda"},
           "setups": {k: setup for k in ("vanilla", "vanilla_student", "store", "online")},
           "generation": {"num_views": 162, "seconds": 1.0, "teacher_passes_per_s": 1.0},
           "summary": {"break_even_epochs_vs_online": None}}
    (tmp_path / "stage_two.json").write_text(json.dumps(two))
    result = report.build(tmp_path)
    ddp = result["rows"][-1]
    # median of epochs 2..N (2.0, 3.0, 2.5) = 2.5 against the store's 2.0
    assert ddp["figure"] == "2.50 s/epoch" and ddp["against"] == "1.250x the same run without DDP"
    assert "NCCL" in ddp["what"]
    assert any(row["against"] == "break-even vs online: never" for row in result["rows"])


def test_report_adds_the_imagenet_rows_and_marks_the_part_missing_when_it_failed(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("generate_labels_imagenet failed:124 240\n")
    assert [r["figure"] for r in report.build(tmp_path)["rows"]][-1] == "missing"
    (tmp_path / "logs" / "parts.txt").write_text("generate_labels_imagenet ok 80\n")
    store = {"num_classes": 1000, "bytes_per_image_view": 27.84,
             "projected_imagenet_store": [{"views": 10, "projected_bytes": 0.5 * 2**30},
                                          {"views": 100, "projected_bytes": 3.25 * 2**30}]}
    imagenet = {"throughput": {"sampled:8 top10": {"bare": {"img_per_s": 4000.0},
                                                   "generate": {"images": 2000, "views": 8, "img_per_s": 3800.0},
                                                   "ratio_generate_over_bare": 0.95}},
                "stores": {"sampled:8 top10": store}, "summary": {"ratio_goal_met": True}}
    (tmp_path / "generate_labels_imagenet.json").write_text(json.dumps(imagenet))
    result = report.build(tmp_path)
    figures = {row["what"]: (row["figure"], row["against"]) for row in result["rows"]}
    assert figures["generate-labels sampled:8 top10: 2000 images x 8 views"] == (
        "3800 teacher passes/s", "bare 4000/s: 0.950x")
    assert figures["sampled:8 top10 store, 1000 classes: 1,281,167 images x K views, projected"] == (
        "K 10: 0.50 GiB, K 100: 3.25 GiB", "27.8 bytes per (image, view) row measured")
    assert result["generate_labels_imagenet"] == {"ratio_goal_met": True}
    (tmp_path / "logs" / "parts.txt").write_text("")  # IMAGENET=0: no status, no file, no row
    (tmp_path / "generate_labels_imagenet.json").unlink()
    assert not any("imagenet" in row["what"] for row in report.build(tmp_path)["rows"])


def stage_two_json(batch: int, anchor: dict | None) -> dict:
    """A stage_two.py result as the report reads it: every setup at 2 s/epoch and 1,000 img/s, the store at 1,200."""
    setups = {k: {"setup": k, "median_epoch_seconds": 2.0, "median_img_per_s": 1000.0}
              for k in ("vanilla", "vanilla_student", "store", "online")}
    setups["store"]["median_img_per_s"] = 1200.0
    summary = {"break_even_epochs_vs_online": 3.0}
    for name, row in (anchor or {}).items():
        if "img_per_s" in row:
            summary.update({f"ratio_{k}_over_anchor_{name}": setups[k]["median_img_per_s"] / row["img_per_s"]
                            for k in ("vanilla", "store")})
    return {"images": 10, "batch_size": batch, "compile": batch == 128, "machine": {"device": "cuda"},
            "setups": setups, "generation": {"num_views": 162, "seconds": 1.0, "teacher_passes_per_s": 1.0},
            "anchor": anchor, "summary": summary}


def test_report_shows_the_compiled_part_against_the_captured_anchor(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("stage_two ok 100\nstage_two_compiled ok 150\n")
    anchor = {"eager": {"img_per_s": 2000.0, "mode": "eager"},
              "captured": {"img_per_s": 1250.0, "mode": "CUDA graphs (reduce-overhead)"}}
    (tmp_path / "stage_two.json").write_text(json.dumps(stage_two_json(64, None)))  # --no-anchor: no anchor rows
    (tmp_path / "stage_two_compiled.json").write_text(json.dumps(stage_two_json(128, anchor)))
    result = report.build(tmp_path)
    rows = {row["what"]: (row["figure"], row["against"]) for row in result["rows"]}
    goal = "the captured anchor (goal >= 0.8)"
    assert rows["train-student vanilla, batch 128, --compile"] == ("1000 img/s (2.00 s/epoch)", f"0.800x {goal}")
    assert rows["train-student store, batch 128, --compile"] == ("1200 img/s (2.00 s/epoch)", f"0.960x {goal}")
    plain = "resnet20 in a plain loop over images on the device, batch 128"
    assert rows[f"anchor eager: {plain}"] == ("2000 img/s (eager)", "project / anchor: vanilla 0.500x, store 0.600x")
    assert rows[f"anchor captured: {plain}"] == ("1250 img/s (CUDA graphs (reduce-overhead))",
                                                 "project / anchor: vanilla 0.800x, store 0.960x")
    assert not any("batch 64" in what for what in rows)  # stage two ran without its anchor
    assert result["stage_two_compiled"]["ratio_store_over_anchor_captured"] == 0.96
    assert "| train-student store, batch 128, --compile | 1200 img/s" in report.markdown(result)


def test_report_marks_the_compiled_part_missing_and_a_failed_captured_anchor(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("stage_two ok 100\nstage_two_compiled failed:124 240\n")
    anchor = {"eager": {"img_per_s": 2000.0, "mode": "eager"},
              "captured": {"error": "BackendCompilerFailed: no | compiler\nfound"}}
    (tmp_path / "stage_two.json").write_text(json.dumps(stage_two_json(64, anchor)))
    assert report.main([str(tmp_path)]) == 1
    result = json.loads((tmp_path / "device_check.json").read_text())
    rows = {row["what"]: (row["figure"], row["against"]) for row in result["rows"]}
    assert rows["stage_two.py --batch-size 128 --compile"] == ("missing", "")
    plain = "resnet20 in a plain loop over images on the device, batch 64"
    assert rows[f"anchor eager: {plain}"] == ("2000 img/s (eager)", "project / anchor: vanilla 0.500x, store 0.600x")
    assert rows[f"anchor captured: {plain}"] == ("failed", "BackendCompilerFailed: no / compiler found")
    assert "stage_two_compiled failed:124 240" in (tmp_path / "device_check.md").read_text()
    (tmp_path / "logs" / "parts.txt").write_text("stage_two ok 100\n")  # a folder from before the part: no row
    assert not any("--compile" in row["what"] for row in report.build(tmp_path)["rows"])


def generate_labels_fast_json(captured_error: str | None = None) -> dict:
    """A generate_labels.py result at batch 1024 with --channels-last --compile as the report reads it, its summary
    made by the script's own anchor_summary: generate-labels identity 7,000 passes/s, cifar-crop-flip 6,000 and its
    top-10 store 6,500, against eager anchors of 10,000 (identity) and 8,000 (cifar-crop-flip) passes/s."""
    parts = {"identity": {"bare": {"img_per_s": 7500.0}, "generate": {"images": 50000, "views": 1, "img_per_s": 7000.0},
                          "ratio_generate_over_bare": 0.933},
             "cifar-crop-flip": {"bare": {"img_per_s": 7000.0},
                                 "generate": {"images": 5000, "views": 162, "img_per_s": 6000.0},
                                 "ratio_generate_over_bare": 0.857},
             "cifar-crop-flip top10": {"generate": {"images": 5000, "views": 162, "img_per_s": 6500.0},
                                       "ratio_generate_over_bare": 0.929}}
    captured = {"error": captured_error} if captured_error else {"img_per_s": 16000.0,
                                                                 "mode": "CUDA graphs (reduce-overhead)"}
    anchors = {"identity": {"eager": {"img_per_s": 10000.0, "mode": "eager"},
                            "captured": {"img_per_s": 14000.0, "mode": "CUDA graphs (reduce-overhead)"}},
               "cifar-crop-flip": {"eager": {"img_per_s": 8000.0, "mode": "eager"}, "captured": captured}}
    summary = load_script("generate_labels").anchor_summary(parts, anchors)
    return {"bf16": True, "batch_size": 1024, "channels_last": True, "compile": True, "teacher_arch": "resnet56",
            "machine": {"device": "cuda"}, "throughput": parts, "anchor": anchors, "summary": summary}


def test_report_shows_the_fast_stage_one_part_against_the_eager_anchor(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("generate_labels ok 90\ngenerate_labels_fast ok 300\n")
    (tmp_path / "generate_labels_fast.json").write_text(json.dumps(generate_labels_fast_json()))
    result = report.build(tmp_path)
    rows = {row["what"]: (row["figure"], row["against"]) for row in result["rows"]}
    fast = "batch 1024 --channels-last --compile"
    goal = "the eager anchor (goal >= 0.7)"
    assert rows[f"generate-labels identity, {fast}: 50000 images x 1 views"] == (
        "7000 teacher passes/s", f"0.700x {goal}")
    assert rows[f"generate-labels cifar-crop-flip, {fast}: 5000 images x 162 views"] == (
        "6000 teacher passes/s", f"0.750x {goal}")
    assert rows[f"generate-labels cifar-crop-flip top10, {fast}: 5000 images x 162 views"] == (
        "6500 teacher passes/s", "0.812x the eager anchor")  # the top-k store is not in the goal
    plain = "resnet56 over images on the device"
    assert rows[f"anchor eager: {plain}, identity, batch 1024"] == (
        "10000 teacher passes/s (eager)", "generate / anchor: identity 0.700x")
    assert rows[f"anchor captured: {plain}, identity, batch 1024"] == (
        "14000 teacher passes/s (CUDA graphs (reduce-overhead))", "generate / anchor: identity 0.500x")
    assert rows[f"anchor eager: {plain}, cifar-crop-flip, batch 1024"] == (
        "8000 teacher passes/s (eager)", "generate / anchor: cifar-crop-flip 0.750x, cifar-crop-flip top10 0.812x")
    assert rows[f"anchor captured: {plain}, cifar-crop-flip, batch 1024"][1] == (
        "generate / anchor: cifar-crop-flip 0.375x, cifar-crop-flip top10 0.406x")
    assert result["generate_labels_fast"]["goal_over_anchor_eager_met"] is True
    assert result["generate_labels"] is None and rows["generate_labels.py"] == ("missing", "")
    table = report.markdown(result)  # the machine line comes from the fast part when it is the only one
    assert "| generate-labels identity, batch 1024 --channels-last --compile" in table
    assert "bf16 True; parts: generate_labels ok 90, generate_labels_fast ok 300" in table


def test_report_marks_the_fast_part_missing_and_a_failed_captured_anchor(tmp_path):
    report = load_report()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "parts.txt").write_text("generate_labels_fast failed:124 480\n")
    assert report.main([str(tmp_path)]) == 1
    rows = {row["what"]: row["figure"] for row in json.loads((tmp_path / "device_check.json").read_text())["rows"]}
    assert rows["generate_labels.py --batch-size 1024 --channels-last --compile"] == "missing"
    assert "| generate_labels.py --batch-size 1024 --channels-last --compile | missing |" in (
        tmp_path / "device_check.md").read_text()
    (tmp_path / "logs" / "parts.txt").write_text("")  # a folder from before the part: no row
    assert not any("--compile" in row["what"] for row in report.build(tmp_path)["rows"])
    fast = generate_labels_fast_json(captured_error="BackendCompilerFailed: no | compiler\nfound")
    (tmp_path / "generate_labels_fast.json").write_text(json.dumps(fast))
    rows = {row["what"]: (row["figure"], row["against"]) for row in report.build(tmp_path)["rows"]}
    assert rows["anchor captured: resnet56 over images on the device, cifar-crop-flip, batch 1024"] == (
        "failed", "BackendCompilerFailed: no / compiler found")
    assert rows["generate-labels cifar-crop-flip, batch 1024 --channels-last --compile: 5000 images x 162 views"][1] \
        == "0.750x the eager anchor (goal >= 0.7)"  # the eager anchor still gives the goal's ratio
