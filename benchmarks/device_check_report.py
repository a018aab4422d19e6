"""benchmarks/device_check.sh's one table: reads OUT's parts and writes device_check.json and device_check.md.

    python benchmarks/device_check_report.py OUT

A part that failed or did not run shows as missing, with its exit status from OUT/logs/parts.txt (the
ImageNet-shaped, the compiled stage-two and the fast stage-one parts only when they ran and failed: a run may leave
them out, and a folder from before a part existed has none).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

GOAL_OVER_CAPTURED_ANCHOR = 0.8  # stage_two.py's goal: project img/s over the captured anchor's, batch 128, bf16
ANCHORED_SETUPS = ("vanilla", "store", "store_replayed", "store_pack")  # stage_two.py's, in its order
GOAL_OVER_EAGER_ANCHOR = 0.7  # generate_labels.py's goal: generate-labels passes/s over the eager anchor's, batch 1024
GOAL_PARTS = ("identity", "cifar-crop-flip")  # the stage-one setups the goal is for (not the top-k store)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def part_status(out: Path) -> dict[str, str]:
    """{part: 'ok 123' or 'failed:124 240'} from parts.txt (name, status, seconds per line)."""
    status = {}
    for line in (out / "logs" / "parts.txt").read_text().splitlines() if (out / "logs" / "parts.txt").exists() else []:
        name, rest = line.split(" ", 1)
        status[name] = rest
    return status


def epoch_seconds(run: Path) -> list[float]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line)["train_seconds"] for line in lines if line.strip()]


def stage_one_rows(gen: dict) -> list[dict]:
    rows = []
    for name, part in gen["throughput"].items():
        bare, made = part.get("bare"), part["generate"]
        rows.append({"what": f"generate-labels {name}: {made['images']} images x {made['views']} views",
                     "figure": f"{made['img_per_s']:.0f} teacher passes/s",
                     "against": f"bare {bare['img_per_s']:.0f}/s: {part['ratio_generate_over_bare']:.3f}x"
                     if bare else f"{part['ratio_generate_over_bare']:.3f}x the dense bare run"})
    return rows


def teacher_flags(gen: dict) -> str:
    return "".join(f" --{flag.replace('_', '-')}" for flag in ("channels_last", "compile") if gen.get(flag))


def stage_one_anchor_rows(gen: dict) -> list[dict]:
    """generate_labels.py's anchors (the same teacher over images already on the device, per view set), each with
    generate / it for the setups measured against it; none when the run skipped them."""
    rows, s = [], gen.get("summary") or {}
    for spec, variants in (gen.get("anchor") or {}).items():
        for name, anchor in variants.items():
            what = (f"anchor {name}: {gen.get('teacher_arch', 'the teacher')} over images on the device, {spec}, "
                    f"batch {gen['batch_size']}")
            if "img_per_s" not in anchor:
                rows.append({"what": what, "figure": "failed", "against": cell(anchor.get("error", ""))[:120]})
                continue
            ratios = s.get(f"ratio_generate_over_anchor_{name}", {})
            mine = [f"{part} {r:.3f}x" for part, r in ratios.items() if part.split()[0] == spec]
            rows.append({"what": what, "figure": f"{anchor['img_per_s']:.0f} teacher passes/s ({anchor['mode']})",
                         "against": "generate / anchor: " + (", ".join(mine) or "-")})
    return rows


def fast_rows(gen: dict) -> list[dict]:
    """generate_labels_fast.json: each generate-labels setup at the goal's batch with its flags, against the eager
    anchor over the same view set (the goal for identity and cifar-crop-flip); then the anchors."""
    rows, s = [], gen.get("summary") or {}
    eager = s.get("ratio_generate_over_anchor_eager", {})
    for name, part in gen["throughput"].items():
        made, ratio = part["generate"], eager.get(name)
        goal = f" (goal >= {GOAL_OVER_EAGER_ANCHOR})" if name in GOAL_PARTS else ""
        rows.append({"what": f"generate-labels {name}, batch {gen['batch_size']}{teacher_flags(gen)}: "
                             f"{made['images']} images x {made['views']} views",
                     "figure": f"{made['img_per_s']:.0f} teacher passes/s",
                     "against": f"{ratio:.3f}x the eager anchor{goal}" if ratio is not None else "no eager anchor"})
    return rows + stage_one_anchor_rows(gen)


def imagenet_rows(gen: dict) -> list[dict]:
    """generate_labels_imagenet.py's throughput rows (the same shape as generate_labels.py's), then its top-k
    store projected to ImageNet's 1,281,167 training images."""
    rows = stage_one_rows(gen)
    for name, store in gen["stores"].items():
        projected = {p["views"]: p["projected_bytes"] / 2**30 for p in store["projected_imagenet_store"]}
        rows.append({"what": f"{name} store, {store['num_classes']} classes: 1,281,167 images x K views, projected",
                     "figure": ", ".join(f"K {k}: {gib:.2f} GiB" for k, gib in projected.items()),
                     "against": f"{store['bytes_per_image_view']:.1f} bytes per (image, view) row measured"})
    return rows


def stage_two_rows(two: dict) -> list[dict]:
    vanilla = two["setups"]["vanilla"]["median_epoch_seconds"]
    rows = []
    for key in ("vanilla", "vanilla_student", "store", "online"):
        setup = two["setups"][key]
        rows.append({"what": f"train-student {setup['setup']}",
                     "figure": f"{setup['median_epoch_seconds']:.2f} s/epoch ({setup['median_img_per_s']:.0f} img/s)",
                     "against": f"{setup['median_epoch_seconds'] / vanilla:.3f}x vanilla"})
    gen = two["generation"]
    rows.append({"what": f"generate-labels sl, {gen['num_views']} views x {two['images']} images",
                 "figure": f"{gen['seconds']:.1f} s ({gen['teacher_passes_per_s']:.0f} passes/s)",
                 "against": "break-even vs online: " + (f"{b:.1f} student epochs"
                                                        if (b := two["summary"]["break_even_epochs_vs_online"])
                                                        else "never")})
    return rows + anchor_rows(two)


def cell(text: str) -> str:
    """Text fit for one markdown table cell: one line, no column bar."""
    return " ".join(text.split()).replace("|", "/")


def anchor_rows(two: dict) -> list[dict]:
    """stage_two.py's anchors (the same student in a plain loop over images on the device), each with project / it
    in img/s; none when the run skipped them."""
    rows, s = [], two["summary"]
    for name, anchor in (two.get("anchor") or {}).items():
        what = f"anchor {name}: resnet20 in a plain loop over images on the device, batch {two['batch_size']}"
        if "img_per_s" not in anchor:
            rows.append({"what": what, "figure": "failed", "against": cell(anchor.get("error", ""))[:120]})
            continue
        ratios = [f"{key} {s[f'ratio_{key}_over_anchor_{name}']:.3f}x" for key in ANCHORED_SETUPS
                  if f"ratio_{key}_over_anchor_{name}" in s]
        rows.append({"what": what, "figure": f"{anchor['img_per_s']:.0f} img/s ({anchor['mode']})",
                     "against": "project / anchor: " + ", ".join(ratios)})
    return rows


def batch128_rows(two: dict) -> list[dict]:
    """stage_two_compiled.json / stage_two_128.json: vanilla, the store and (when it ran) a pack of students from
    it at the goal's batch, against the captured anchor at that batch; then the anchors. A pack's img/s counts
    student-images."""
    rows, s = [], two["summary"]
    flag = ", --compile" if two.get("compile") else ", eager"
    for key in [k for k in ANCHORED_SETUPS if k in two["setups"]]:
        setup, ratio = two["setups"][key], s.get(f"ratio_{key}_over_anchor_captured")
        goal = f" (goal >= {GOAL_OVER_CAPTURED_ANCHOR})" if key in ("vanilla", "store") else ""
        against = f"{ratio:.3f}x the captured anchor{goal}" if ratio is not None else "no captured anchor"
        if key == "store_replayed" and "ratio_store_over_store_replayed" in s:  # the loader's share of a step
            against += f"; the store's run took {s['ratio_store_over_store_replayed']:.3f}x its epoch time"
        rows.append({"what": f"train-student {setup['setup']}, batch {two['batch_size']}{flag}",
                     "figure": f"{setup['median_img_per_s']:.0f} img/s ({setup['median_epoch_seconds']:.2f} s/epoch)",
                     "against": against})
    return rows + anchor_rows(two)


def packed_rows(packed: dict) -> list[dict]:
    """benchmarks/packed.py: G students packed against G one after another, images in memory."""
    mode = "compiled" if packed.get("compile") else "eager"
    return [{"what": f"packed.py: {r['members']} resnet20 students, batch {packed['batch_size']}, {mode}",
             "figure": f"{r['packed_img_per_s']:.0f} student-img/s packed",
             "against": f"{r['speedup']:.2f}x one after another ({r['separate_img_per_s']:.0f})"}
            for r in packed["rows"]]


def overhead_rows(overhead: dict) -> list[dict]:
    """benchmarks/stage_one_overhead.py: generate-labels with a teacher that costs nothing, at each block size."""
    base = overhead["setups"]["blocks-256"]["median_seconds"]
    return [{"what": f"generate-labels {overhead['views']}, free teacher: {overhead['images']:,} images, {name} "
                     f"({s['block_rows']} rows a block)",
             "figure": f"{s['median_seconds']:.3f} s (finish {s['median_finish_seconds']:.3f} s)",
             "against": f"{s['median_seconds'] / base:.2f}x blocks-256"}
            for name, s in overhead["setups"].items()]


def opt_in_rows(out: Path, status: dict, name: str, rows_of) -> tuple[dict | None, list[dict]]:
    """(OUT/<name>.json, its rows): a 'missing' row where the part ran and failed, none where it did not run."""
    found = read_json(out / f"{name}.json")
    if found:
        return found, rows_of(found)
    return None, [{"what": f"{name}.py", "figure": "missing", "against": ""}] * (name in status)


def store_finish_rows(finish: dict) -> list[dict]:
    """benchmarks/store_finish.py: a gzip store's assembly, labelopt's chunks on every core against HDF5's own."""
    return [{"what": f"store finish: {r['store']} gzip store, {' x '.join(map(str, r['shape']))}, "
                     f"{finish['threads']} threads",
             "figure": f"{r['finish_seconds']:.2f} s",
             # below 1x HDF5 was the faster (tiny stores, where the threads' start outweighs the compressing)
             "against": f"HDF5 compressing took {r['hdf5_seconds']:.2f} s: {r['hdf5_over_finish']:.2f}x labelopt's time"
                        + ("" if r["same_chunks"] else "; the chunks DIFFER")}
            for r in finish["stores"]]


def ddp_row(seconds: list[float], two: dict | None, backend: str) -> dict:
    steady = statistics.median(seconds[1:])
    against = ""
    if two:
        store = two["setups"]["store"]["median_epoch_seconds"]
        against = f"{steady / store:.3f}x the same run without DDP"
    return {"what": f"train-student sl from store under torchrun (1 process, {backend} DDP)",
            "figure": f"{steady:.2f} s/epoch", "against": against}


def build(out: Path) -> dict:
    """The rows of every part that ran; a part that ran and left no figures shows as missing."""
    gen, two = read_json(out / "generate_labels.json"), read_json(out / "stage_two.json")
    ddp = epoch_seconds(out / "ddp")
    status = part_status(out)
    ran = lambda name: name in status or not status  # noqa: E731  (no parts.txt: a folder from before --parts)
    rows = []
    rows += stage_one_rows(gen) + stage_one_anchor_rows(gen) if gen else [
        {"what": "generate_labels.py", "figure": "missing", "against": ""}] * ran("generate_labels")
    fast = read_json(out / "generate_labels_fast.json")
    if fast:
        rows += fast_rows(fast)
    elif "generate_labels_fast" in status:  # run and failed; a folder from before the part existed has no row
        rows.append({"what": "generate_labels.py --batch-size 1024 --channels-last --compile", "figure": "missing",
                     "against": ""})
    rows += stage_two_rows(two) if two else [
        {"what": "stage_two.py", "figure": "missing", "against": ""}] * ran("stage_two")
    compiled, eager128 = read_json(out / "stage_two_compiled.json"), read_json(out / "stage_two_128.json")
    packed = read_json(out / "packed.json")
    machine = (two or gen or fast or compiled or eager128 or packed or {}).get("machine", {})
    backend = "NCCL" if str(machine.get("device", "")).startswith("cuda") else "gloo"
    if len(ddp) >= 2:
        rows.append(ddp_row(ddp, two, backend))
    elif ran("ddp"):
        rows.append({"what": "torchrun DDP", "figure": "missing", "against": ""})
    if compiled:
        rows += batch128_rows(compiled)
    elif "stage_two_compiled" in status:  # run and failed; a folder from before the part existed has no row
        rows.append({"what": "stage_two.py --batch-size 128 --compile", "figure": "missing", "against": ""})
    rows += batch128_rows(eager128) if eager128 else [
        {"what": "stage_two.py --batch-size 128", "figure": "missing", "against": ""}] * ("stage_two_128" in status)
    rows += packed_rows(packed) if packed else [
        {"what": "packed.py", "figure": "missing", "against": ""}] * ("packed" in status)
    finish, finish_rows = opt_in_rows(out, status, "store_finish", store_finish_rows)
    overhead, overhead_part_rows = opt_in_rows(out, status, "stage_one_overhead", overhead_rows)
    rows += finish_rows + overhead_part_rows
    imagenet = read_json(out / "generate_labels_imagenet.json")
    if imagenet:
        rows += imagenet_rows(imagenet)
    elif "generate_labels_imagenet" in status:  # run and failed; IMAGENET=0 leaves no status and no row
        rows.append({"what": "generate_labels_imagenet.py", "figure": "missing", "against": ""})
    return {"benchmark": "device_check", "parts": status, "rows": rows, "machine": machine,
            "bf16": (two or gen or fast or compiled or eager128 or packed or {}).get("bf16"), "ddp_epoch_seconds": ddp,
            "generate_labels": gen and gen.get("summary"),
            "generate_labels_fast": fast and fast.get("summary"), "stage_two": two and two.get("summary"),
            "stage_two_compiled": compiled and compiled.get("summary"),
            "stage_two_128": eager128 and eager128.get("summary"), "packed": packed and packed.get("rows"),
            "store_finish": finish and finish.get("stores"),
            "stage_one_overhead": overhead and overhead.get("setups"),
            "generate_labels_imagenet": imagenet and imagenet.get("summary")}


def markdown(result: dict) -> str:
    lines = ["| what | figure | against |", "| --- | --- | --- |"]
    lines += [f"| {r['what']} | {r['figure']} | {r['against']} |" for r in result["rows"]]
    m = result["machine"]
    if m:
        lines.append(f"\n{m.get('device_name', '?')}, torch {m.get('torch', '?')}, {m.get('cpu_affinity', '?')} "
                     f"CPU cores, bf16 {result['bf16']}; parts: "
                     + ", ".join(f"{k} {v}" for k, v in result["parts"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    result = build(out)
    (out / "device_check.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "device_check.md").write_text(table)
    print(json.dumps(result, indent=2))
    print()
    print(table)
    return 0 if all(v.startswith("ok") for v in result["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
