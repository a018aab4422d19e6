"""`labelopt labels card STORE`: a short Markdown card for a label store shared with another team: what data it
belongs to, which teachers made it and how well they did, how its labels were made, its size, its checksums, and
the command that made it."""
from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlsplit

from ...store.remote import is_url, local_store
from ..atomic import check_output_file, write_text_atomic
from .store_report import inspect_store, open_store


def _teacher_rows(generator: dict) -> list[str]:
    rows = ["| teacher | checkpoint | sha256 | test top-1 % (its own record) | epochs |", "|---|---|---|---|---|"]
    for t in generator.get("teachers", []):
        top1 = t.get("test_top1")
        epoch = t.get("epoch")
        rows.append(f"| {t.get('arch')} | {t.get('checkpoint')} | `{str(t.get('checkpoint_sha256'))[:16]}` | "
                    f"{'not recorded' if top1 is None else f'{top1:.2f}'} | "
                    f"{'-' if epoch is None else int(epoch) + 1} |")
    return rows if len(rows) > 2 else ["No teacher (method " + str(generator.get("method")) + ")."]


def _views_line(views: dict) -> str:
    line = f"`{views.get('spec', views.get('policy'))}`: {views.get('num_views')} view(s) per image, policy " \
           f"`{views.get('policy')}`"
    if views.get("policy") == "mix":
        line += (f" ({views.get('mix')}, alpha {views.get('alpha')}, {views.get('parts')} images per mixed image, "
                 f"each seen through `{views.get('base', {}).get('policy')}`; partners from the whole split)")
    if "seed" in views:
        line += f"; drawn per image from seed {views['seed']}"
    return line


def _command(generator: dict, name: str) -> list[str]:
    command = generator.get("command")
    if command:
        return ["```bash", f"{command} --out {shlex.quote(name)}", "```"]
    members = generator.get("members")
    if members:
        return [f"Combined by `labelopt labels combine` from {len(members)} stores (weights "
                f"{generator.get('weights')}); each member's card says how it was made."]
    return ["Not recorded: this store was written before labelopt recorded its command (the generator record "
            "above has its method, temperature and options)."]


def _fetched(path) -> list[str]:
    return [f"Fetched from <{path}> (checked against its checksums and digest); train from it with "
            f"`labelopt train-student --labels {path} ...`.", ""] if is_url(path) else []


def store_card(path, cache_dir=None, expect_digest: str | None = None) -> str:
    """`expect_digest`: a pin of the store's root digest, refused when the store's differs."""
    local = local_store(path, cache_dir)
    report = inspect_store(local, expect_digest=expect_digest)
    checksums = open_store(local).checksums
    digest = report["digest"]
    ds, gen, q = report["dataset"], report["generator"], report["labels"]
    opts = gen.get("options") or {}
    name = Path(urlsplit(path).path).name if is_url(path) else local.name  # the cache adds a prefix to its name
    lines = [
        f"# Label store `{name}`",
        "",
        f"Soft labels for **{ds.get('name')} / {ds.get('split')}** ({ds.get('num_samples')} images, "
        f"{ds.get('num_classes')} classes), made by labelopt {report['labelopt_version']} on "
        f"{report['created_utc']}. A student joins them to the data by sample index, and labelopt refuses data "
        f"whose fingerprint differs.",
        "",
        *_fetched(path),
        "| | |",
        "|---|---|",
        f"| root digest | `{digest}` (pin it: `--expect-digest {digest}`) |",
        f"| dataset fingerprint | `{ds.get('fingerprint')}` |",
        f"| method | `{gen.get('method')}` |",
        f"| temperature | {report['temperature']:g} |",
        f"| options | {', '.join(f'{k}={v}' for k, v in sorted(opts.items())) or '-'} |",
        f"| views | {_views_line(report['views'])} |",
        f"| storage | {report['storage']}, {report['layout']} layout; signals {', '.join(report['signals'])} |",
        f"| size on disk | {report['size_bytes'] / 2**20:.2f} MiB |",
        f"| labels vs ground truth | top-1 {q['top1']:.2f} %, mean confidence {q['mean_confidence']:.4f}, "
        f"ECE {q['ece']:.4f} over {q['rows']} rows"
        f"{' (a mixed image against its first part' + chr(39) + 's class)' if report['views'].get('policy') == 'mix' else ''}"
        f" |" if q.get("top1") is not None else
        f"| labels | mean confidence {q['mean_confidence']:.4f} over {q['rows']} rows |",
        "",
        "## Teachers",
        "",
        *_teacher_rows(gen),
        "",
        "## How it was made",
        "",
        *_command(gen, name),
        "",
        "## Integrity",
        "",
        f"Root digest (sha256 over every attribute, checksums included): `{digest}`. It names this store's "
        f"whole content: pin it where the store is read (`--expect-digest {digest}`, or `expect_digest` in a "
        f"recipe) and labelopt refuses any other file under this name, even one whose checksums were recomputed.",
        "",
        "| dataset | sha256 |",
        "|---|---|",
        *[f"| `{dset}` | `{value}` |" for dset, value in sorted(checksums.items())],
        "",
        f"Check a copy with `labelopt labels verify {name} --data DATA` (schema, digest, every "
        f"checksum, the data's fingerprint); add `--teacher CKPT` to re-label random rows.",
    ]
    return "\n".join(lines) + "\n"


def write_store_card(path, out: Path | None, overwrite: bool = False, cache_dir=None,
                     expect_digest: str | None = None) -> str:
    text = store_card(path, cache_dir, expect_digest)
    if out is not None:
        check_output_file(out, overwrite, "card")
        write_text_atomic(out, text)
    return text
