"""The benchmark scripts CI can run: the seed table's steps (--dry-run of its two table files), and store_scale.py on one tiny store."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_seed_table_dry_run_lists_both_tables_on_shared_teachers_and_stores(tmp_path):
    """benchmarks/seed_table.sh: CIFAR-100 prepared once, then tables/cifar100-resnet20.toml and
    cifar100-resnet110.toml into one folder (their teachers and stores are the same steps, made once)."""
    out = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "seed_table.sh"), "--dry-run", str(tmp_path / "root"),
                          str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    commands = [line.split()[1:] for line in run.stdout.splitlines()]
    assert not out.exists()  # a dry run writes nothing
    assert [c[1] for c in commands].count("prepare") == 1
    option = lambda c, name: c[c.index(name) + 1]
    teachers = {option(c, "--arch") for c in commands if c[1] == "train"}
    assert teachers == {"resnet32", "resnet44", "resnet56", "resnet110"}
    stores = {Path(option(c, "--out")).name: c for c in commands if c[1] == "generate-labels"}
    assert set(stores) == {"sl-r44.h5", "enc-r32.h5", "ens-r32-r44-r56.h5", "random.h5", "aug-r110.h5"}
    assert stores["ens-r32-r44-r56.h5"].count("--teacher") == 3
    assert option(stores["aug-r110.h5"], "--views") == "mix:ricap:32"
    runs = {Path(option(c, "--out")).name: c for c in commands if c[1] == "train-student"}
    rows = {"r20": ["vanilla", "ls", "random", "sl", "sl-enc", "sl-ens", "sl-kd"],
            "r110": ["vanilla", "ls", "sl", "sl-enc", "sl-ens", "sl-kd"]}
    # the label rows of a student and its recipe share packs of at most 16 students (rows x seeds); kd's online
    # teacher packs its own three seeds; Aug-SL, of its own recipe, packs its own three seeds too
    packs = {"r20": ["r20-vanilla-seed-0", "r20-sl-ens-seed-1"], "r110": ["r110-vanilla-seed-0", "r110-sl-kd-seed-1"]}
    assert {*packs["r20"], *packs["r110"], "r20-kd", "r110-kd", "r20-aug-sl", "r110-aug-sl"} == set(runs)
    for student, names in packs.items():
        members = [[c[i + 1].split(",")[0] for i, a in enumerate(c) if a == "--member"] for c in map(runs.get, names)]
        assert len(members[0]) == 16 and sorted(members[0] + members[1]) == sorted(
            f"name={student}-{row}-seed-{k}" for row in rows[student] for k in (0, 1, 2))
        assert option(runs[f"{student}-kd"], "--seeds") == "0,1,2"
        assert option(runs[f"{student}-aug-sl"], "--seeds") == "0,1,2"
    # the seed's recipe for teachers and students, the follow-up's 350 epochs for Aug-SL
    aug = [c for c in commands if "aug-sl" in c]
    assert len(aug) == 2 and all(option(c, "--config") == "label-enhancement-long" for c in aug)
    training = [c for c in commands if c[1] in ("train", "train-student") and c not in aug]
    assert all(option(c, "--config") == "seed" for c in training)
    assert not any("--epochs" in c or "--milestones" in c for c in training)


@pytest.mark.slow
def test_store_scale_measures_a_store_with_one_and_two_reader_processes(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import store_scale

    monkeypatch.setattr(store_scale, "warm_gathers", 11)  # one pass of 11 per warm run (readers get --warm-gathers)
    args = SimpleNamespace(batch=64)
    row = store_scale.measure({"kind": "top-10", "n": 700, "views": 3, "layout": "contiguous", "together": True},
                              tmp_path, args, keep=True)
    (path,) = tmp_path.glob("*.h5")
    assert row["bytes"] == path.stat().st_size >= 700 * 3 * 10 * 6
    reader = row["reader"]
    assert reader["layout"] == "contiguous" and reader["cold"]["gathers"] == 11
    assert [run["gathers"] for run in reader["warm"]["runs"]] == [11] * store_scale.WARM_RUNS
    assert reader["warm"]["p99_ms"] == sorted(run["p99_ms"] for run in reader["warm"]["runs"])[1]  # the median
    assert reader["emptied_by"] in ("drop_caches", "fadvise")
    warm = reader["warm"]  # gathers that read from storage are counted; the page-cache p99 is over the others
    runs = warm["runs"]
    assert warm["gathers"] == 33 and warm["gathers_reading_storage"] == sum(r["gathers_reading_storage"] for r in runs)
    assert warm["storage_read_mib"] == pytest.approx(sum(r["storage_read_mib"] for r in runs))
    assert (warm["storage_read_mib"] > 0) == (warm["gathers_reading_storage"] > 0)  # counted from the same bytes
    assert warm["gathers_reading_storage"] == 33 or warm["p99_in_page_cache_ms"] > 0
    assert [len(row["together"][k]["peak_kib"]) for k in ("1", "2")] == [1, 2]
    paired = row["v2_side_by_side"]  # the same gathers from a schema 2 copy (removed: one .h5 above)
    assert paired["v3"]["gathers"] == paired["v2"]["gathers"] == 33 and paired["p50_ratio_v2_over_v3"] > 0
    table = store_scale.table([row], empty_kib=reader["memory_end_kib"]["VmHWM"])
    assert "| top-10 | contiguous | 700 | 3 |" in table and "| 2 |" in table and " of 33, " in table
    assert "| top-10 N=700 V=3 | " in table and "schema 2: two reads" in table
    goals = store_scale.goals([row], reader["memory_end_kib"]["VmHWM"])
    assert goals["contiguous_peak_over_empty_mib"] == 0 and len(goals["two_readers_cache_growth_ratio"]) == 1



def test_store_scale_leaves_the_gathers_that_read_storage_out_of_the_page_cache_p99(monkeypatch):
    """A scripted run: gathers 3 and 7 of 10 read 8 KiB from storage and take 50 ms, the others 0 bytes and 0.1 ms;
    they are counted, their bytes summed, and the page-cache p99 is over the other 8 alone."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import store_scale

    slow = {3, 7}
    storage = SimpleNamespace(bytes=0, close=lambda: None)
    storage.total = lambda: storage.bytes  # read before and after each gather
    calls = []

    class Store:
        num_samples, num_views = 10, 1

        def gather(self, rows, cols):
            if len(calls) in slow:
                storage.bytes += 8192
            calls.append(len(rows))

    # each gather's start and end: 1 s apart, lasting 50 ms for the slow ones and 0.1 ms for the others
    ticks = iter(t for k in range(10) for t in (k, k + (0.05 if k in slow else 0.0001)))
    monkeypatch.setattr(store_scale, "StorageReads", lambda: storage)
    monkeypatch.setattr(store_scale.time, "perf_counter", lambda: next(ticks))
    run = store_scale.one_pass(Store(), batch=1, seed=0)
    assert run["gathers"] == 10 and calls == [1] * 10
    assert run["gathers_reading_storage"] == 2 and run["storage_read_mib"] == 2 * 8192 / 2 ** 20
    assert run["p99_ms"] > 49 and run["p99_in_page_cache_ms"] == pytest.approx(0.1)


def run_imagenet_bench(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "generate_labels_imagenet.py"), *flags],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_generate_labels_imagenet_smoke_labels_a_generated_jpeg_tree(tmp_path):
    keep = tmp_path / "keep"
    run = run_imagenet_bench(tmp_path, "--images", "6", "--classes", "3", "--views-per-image", "2", "--topk", "2",
                             "--long-side", "48", "--batch-size", "4", "--repeats", "1", "--device", "cpu",
                             "--keep", str(keep), "--json-only")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    # The tree: ImageNet's layout, every class folder in train/ and val/, image i in class i % 3
    train = sorted(p.relative_to(keep / "bench" / "tree" / "train").as_posix()
                   for p in (keep / "bench" / "tree" / "train").rglob("*.JPEG"))
    assert len(train) == 6 and [t.split("/")[0] for t in train] == ["n00000000"] * 2 + ["n00000001"] * 2 + [
        "n00000002"] * 2
    assert sorted(p.name for p in (keep / "bench" / "tree" / "val").iterdir()) == [f"n0000000{c}" for c in range(3)]
    data = result["data"]
    assert data["train_images"] == 6 and 0 < data["beton_mean_width"] <= 48 and data["beton_jpeg_bytes_per_image"] > 0
    # One top-k part: 6 images x 2 sampled rrc-flip views, bare and generate over the same passes
    (name, part), = result["throughput"].items()
    assert name == "sampled:2 top2"
    assert part["bare"]["teacher_passes"] == part["generate"]["teacher_passes"] == 12
    assert part["ratio_generate_over_bare"] == pytest.approx(part["generate"]["img_per_s"] / part["bare"]["img_per_s"])
    store = result["stores"][name]
    assert (store["view_policy"], store["num_samples"], store["num_views"], store["num_classes"], store["topk"]) == (
        "rrc-flip", 6, 2, 3, 2)
    # The split of the bytes on disk adds up, and the projection grows linearly in K from it
    assert store["fixed_bytes"] + 6 * store["bytes_per_image"] + 12 * store["bytes_per_image_view"] == pytest.approx(
        store["bytes"])
    by_k = {p["views"]: p["projected_bytes"] for p in store["projected_imagenet_store"]}
    assert sorted(by_k) == [1, 10, 50, 100]
    assert by_k[100] - by_k[10] == pytest.approx(90 * 1_281_167 * store["bytes_per_image_view"])
    assert by_k[1] > store["fixed_bytes"] + 1_281_167 * store["bytes_per_image_view"]
    from labelopt.store import LabelStore
    kept = LabelStore.open(keep / "stores" / "sampled2-top2.h5")
    assert (kept.num_samples, kept.num_views, kept.topk) == (6, 2, 2)


@pytest.mark.parametrize("flags, message", [
    (["--topk", "5", "--classes", "5"], "need 1 <= --topk < --classes (5)"),
    (["--views-per-image", "0"], "--views-per-image"),
    (["--teacher-arch", "resnet20"], "use an ImageNet model"),
])
@pytest.mark.slow
def test_generate_labels_imagenet_refuses_bad_sizes_in_one_line(tmp_path, flags, message):
    run = run_imagenet_bench(tmp_path, *flags, "--device", "cpu")
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_packed_measures_each_pack_size_against_its_students_one_after_another(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import packed

    assert packed.main(["--members", "1,2", "--batch-size", "4", "--steps", "1", "--device", "cpu",
                        "--json-only"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["members"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        students = row["members"] * 4
        assert row["packed_img_per_s"] == pytest.approx(students / row["packed_seconds"])
        assert row["speedup"] == pytest.approx(row["separate_seconds"] / row["packed_seconds"])
    with pytest.raises(SystemExit):
        packed.main(["--members", "0"])


def test_store_finish_times_both_assemblies_of_the_same_chunks(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import store_finish

    assert store_finish.main(["--samples", "300", "--views", "4", "--classes", "10", "--topk", "3", "--reps", "1",
                              "--json-only"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["store"] for r in result["stores"]] == ["dense", "top3"]
    for row in result["stores"]:
        assert row["same_chunks"] and row["shape"] == [300, 4, 10]
        assert row["hdf5_over_finish"] == pytest.approx(row["hdf5_seconds"] / row["finish_seconds"])
    with pytest.raises(SystemExit):
        store_finish.main(["--topk", "100"])


@pytest.mark.slow  # it writes a .beton, which imports FFCV: about 7 s alone
def test_stage_one_overhead_times_generate_labels_with_a_free_teacher_at_both_block_sizes(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import stage_one_overhead
    from labelopt.stages.teachers import Teacher

    real = Teacher.outputs
    assert stage_one_overhead.main(["--images", "300", "--reps", "1", "--device", "cpu", "--json-only"]) == 0
    assert Teacher.outputs is real  # the free teacher is gone afterwards
    result = json.loads(capsys.readouterr().out)
    assert {name: s["block_rows"] for name, s in result["setups"].items()} == {"blocks-256": 256, "default": 1024}
    for setup in result["setups"].values():
        assert 0 < setup["median_finish_seconds"] < setup["median_seconds"]
    assert result["default_over_blocks_256"] == pytest.approx(
        result["setups"]["default"]["median_seconds"] / result["setups"]["blocks-256"]["median_seconds"])
    with pytest.raises(SystemExit):
        stage_one_overhead.main(["--reps", "0"])


def test_table_packs_times_the_rows_of_both_ways_from_their_done_lines(tmp_path, capsys, monkeypatch):
    """table_packs.py: the packed table runs whole, the second reads its data and copies its teachers and stores,
    runs the same rows with --max-pack 1, and only row and pack steps count as the rows' seconds."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import table_packs

    calls, real_run = [], table_packs.subprocess.run
    lines = {"packed": ["table: data digits: done in 5 s", "table: teacher r56: done in 100 s",
                        "table: store sl: done in 9 s", "table: pack vanilla-seed-0 (4 members: vanilla, sl): done in 60 s"],
             "separate": [f"table: row {r} seed {s}: done in 20 s" for r in ("vanilla", "sl") for s in (0, 1)]}

    def fake_run(command, **kwargs):
        if "table" not in command:  # the machine facts' own calls (uname)
            return real_run(command, **kwargs)
        out = Path(command[command.index("--out") + 1])
        calls.append(command)
        if out.name == "packed":  # what the first table leaves for the second
            for folder in ("data/digits", "teachers/r56", "labels"):
                (out / folder).mkdir(parents=True)
        report = {"rows": [{"name": "vanilla", "last": {"top1": {"mean": 90.0}}},
                           {"name": "sl", "last": {"top1": {"mean": 91.5 if out.name == "packed" else 92.0}}}]}
        return SimpleNamespace(returncode=0, stdout=json.dumps(report), stderr="\n".join(lines[out.name]))

    monkeypatch.setattr(table_packs.subprocess, "run", fake_run)
    assert table_packs.main([str(tmp_path / "out"), "--rows", "vanilla,sl", "--seeds", "0,1", "--json-only"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["packed"]["row_seconds"] == 60 and result["packed"]["other_step_seconds"] == 114
    assert result["separate"]["row_seconds"] == 80 and result["separate"]["row_steps"] == 4
    assert result["ratio_rows_packed_over_separate"] == pytest.approx(0.75)
    assert result["top1_separate"] == {"vanilla": 90.0, "sl": 92.0}
    second = calls[1]
    assert second[second.index("--max-pack") + 1] == "1"
    assert second[second.index("--data") + 1] == str(tmp_path / "out" / "packed" / "data" / "digits")
    assert (tmp_path / "out" / "separate" / "teachers" / "r56").is_dir()  # copied, so not trained again
    assert json.loads((tmp_path / "out" / "table_packs.json").read_text())["table"] == "digits"


def profile_steps(extra_op: str):
    """Two steps of a linear model under torch.profiler, each with a stand-in compiled region and an SGD step;
    `extra_op`: where one more operator runs ("inside" the region, "outside" it, or "none")."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from labelopt.pipeline.run.train_loop import STEP_RANGE

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function(STEP_RANGE):
                inputs = torch.ones(3, 4)
                with record_function("Torch-Compiled Region: 0/0"):  # what a compiled graph's ops run under
                    inputs = (inputs * 2).relu().exp()
                    if extra_op == "inside":
                        inputs = inputs.neg()
                loss = model(inputs).sum()
                if extra_op == "outside":
                    loss = loss.neg()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        (inputs + 1).sum()  # outside any step: not counted
    return prof.events()


def test_step_ops_counts_each_operator_a_step_launches_outside_its_compiled_regions(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import step_ops

    plain, extra, inside = (step_ops.count_step_operators(profile_steps(where))
                            for where in ("none", "outside", "inside"))
    assert plain["steps"] == extra["steps"] == 2 and plain["graphs_per_step"] == 1.0
    assert inside["ops_per_step"] == plain["ops_per_step"]  # what a compiled region runs is not counted
    assert plain["ops_per_step"]["optimizer"] > 0 and plain["ops_per_step"]["loss_and_bookkeeping"] > 0
    # One more operator per step outside the region: its forward and its backward (neg's gradient is a neg).
    assert extra["ops_per_step"]["loss_and_bookkeeping"] == plain["ops_per_step"]["loss_and_bookkeeping"] + 2
    assert extra["ops_per_step"]["optimizer"] == plain["ops_per_step"]["optimizer"]


@pytest.mark.slow
def test_loader_times_both_raw_loaders_first_in_a_fresh_process_and_later(tiny_cifar_dir, monkeypatch):
    """loader.py's raw-image part: each start once as a fresh process's first loader (the script run again)
    and once in this process, each with a bare epoch of every image."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import loader

    monkeypatch.setattr(loader, "PIPELINE_REPEATS", 1)
    result = loader.time_pipelines(Path(tiny_cifar_dir), batch_size=32, workers=2)
    assert sorted(result) == ["ffcv", "raw_reader"]
    for row in result.values():
        assert len(row["runs"]["first_start"]) == len(row["runs"]["later_start"]) == 1
        assert 0 < row["median_first_start"] < 60 and 0 < row["median_later_start"] < 60
        assert row["median_first_start"] < row["median_process_seconds"] < 120
        assert row["median_epoch_img_per_s"] > 0
