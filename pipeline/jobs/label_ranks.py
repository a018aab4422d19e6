"""How stage one's torchrun ranks share one store: rank 0 opens it and says which blocks are pending, every rank
checks that it sees the folder rank 0 writes in, and rank 0 waits for the others' blocks before assembling.

The ranks' blocks land in the store's `.partial` folder beside `--out`, and rank 0 alone assembles them, so that
folder must be one folder for every node: a shared filesystem. A node with its own disk at the same path is found
before any labelling, with one line on every rank.
"""
from __future__ import annotations

import contextlib
import platform
import secrets
import time
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import UserError
from ..run.runtime import DistInfo, from_main, gather_all

BLOCK_WAIT_S = 60.0  # how long rank 0 waits for other nodes' blocks to appear (NFS caches a directory up to 60 s)


def visibility_mark(out: Path, token: str) -> Path:
    return out.parent / f".{out.name}.visible-{token}"


def open_on_main(dist_info: DistInfo, out: Path, open_main):
    """Check that every rank sees rank 0's folder, then rank 0 runs `open_main()` (its writer, or a UserError raised
    on every rank), and every rank gets the pending blocks as rank 0 sees them, so the ranks' shares add up to
    exactly those blocks. Returns (the writer on rank 0, else None; the pending blocks)."""
    check_folder_shared(dist_info, out)
    opened = {}

    def produce():
        opened["writer"] = open_main()
        return opened["writer"].pending_blocks()

    pending = from_main(dist_info, produce)
    return opened.get("writer"), pending


def check_folder_shared(dist_info: DistInfo, out: Path) -> None:
    """Every rank looks for a mark rank 0 writes beside --out; a rank that cannot see it is on a node with its own
    filesystem there, and its blocks would never reach rank 0. Nothing is left behind either way."""
    if not dist_info.enabled:
        return

    def write_mark():
        token = secrets.token_hex(8)  # a new name: no node can have cached that it is absent
        write_text_atomic(visibility_mark(out, token), platform.node())
        return token

    mark = visibility_mark(out, from_main(dist_info, write_mark))
    everyone = gather_all(dist_info, (dist_info.node_rank, platform.node(), mark.is_file()))
    if dist_info.is_main:
        with contextlib.suppress(OSError):
            mark.unlink()
    blind = [(rank, node, host) for rank, (node, host, seen) in enumerate(everyone) if not seen]
    if blind:
        rank, node, host = blind[0]
        raise UserError(f"rank {rank} (node {node}, {host}) does not see the files rank 0 writes beside {out}: the "
                        f"ranks of generate-labels write the store's blocks into one folder there, so --out must be "
                        f"on a filesystem every node shares; choose such an --out")


def wait_for_blocks(writer, pending: list[int], dist_info: DistInfo) -> None:
    """On rank 0, after the last barrier: every pending block's file, written by some rank, is there (a networked
    filesystem may show another node's new files a little late)."""
    deadline = time.monotonic() + BLOCK_WAIT_S
    missing = [b for b in pending if not writer.block_file(b).exists()]
    while missing and dist_info.enabled and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = [b for b in missing if not writer.block_file(b).exists()]
    if missing and dist_info.enabled:
        rank = pending.index(missing[0]) % dist_info.world_size
        raise UserError(f"{len(missing)} of the blocks other ranks wrote (first: block {missing[0]}, rank {rank}) are "
                        f"not in {writer.partial} after {BLOCK_WAIT_S:g} s: --out must be on a filesystem every node "
                        f"shares; rerun the same command to finish (blocks already there are kept)")
