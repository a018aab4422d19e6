"""What one rank reads and all ranks need: every rank gets rank 0's value or rank 0's refusal, ranks that read
different inputs are refused together (two gloo processes, no torchrun agent), and rank 0 waits for the blocks
other nodes wrote."""
import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from labelopt.pipeline.errors import UserError
from labelopt.pipeline.jobs import label_ranks
from labelopt.pipeline.run.runtime import DistInfo
from labelopt.tests.two_nodes import free_port

RANK_SCRIPT = """
import json, os, sys
from labelopt.pipeline.errors import UserError
from labelopt.pipeline.run.runtime import check_same_inputs, from_main, init_distributed
info = init_distributed("cpu")
seen = {"node": info.node_rank, "nodes": info.nodes}
seen["value"] = from_main(info, lambda: {"read by": info.rank})
def refuse():
    raise UserError("only rank 0 can see this")
try:
    from_main(info, refuse)
except UserError as exc:
    seen["refusal"] = str(exc)
check_same_inputs(info, {"dataset": {"fingerprint": "same"}})
try:
    check_same_inputs(info, {"dataset": {"fingerprint": "same"}, "label store": {"checksums": info.rank}})
except UserError as exc:
    seen["inputs"] = str(exc)
print(json.dumps(seen))
sys.stdout.flush()
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # rank 0 hosts the TCPStore: leave without C++ static destructors (see test_crd)
"""


def run_two_ranks(tmp_path, text: str, nodes: int) -> list[str]:
    """`text` as a script in two gloo processes (no torchrun agent), one per node or both on one; their stdout."""
    script = tmp_path / "rank.py"
    script.write_text(text)
    env = {**os.environ, "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": str(nodes), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(script)],
                              env={**env, "RANK": str(r), "GROUP_RANK": str(r if nodes == 2 else 0)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outputs = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    assert all(rank.returncode == 0 for rank in ranks), [err[-2000:] for _, err in outputs]
    return [out for out, _ in outputs]


def test_every_rank_gets_rank_0s_value_or_its_refusal_and_different_inputs_are_refused(tmp_path):
    outputs = run_two_ranks(tmp_path, RANK_SCRIPT, nodes=2)
    seen = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    for rank, got in enumerate(seen):
        assert got["node"] == rank and got["nodes"] == 2
        assert got["value"] == {"read by": 0} and got["refusal"] == "only rank 0 can see this"
        assert got["inputs"].startswith("rank 1 (node 1) reads another label store than rank 0"), got["inputs"]


LEAVE_SCRIPT = """
import atexit, sys
import torch.distributed as dist
# atexit runs its handlers last-registered first: this one runs after what init_distributed registers.
atexit.register(lambda: print("group left before teardown:", not dist.is_initialized(), flush=True))
from labelopt.pipeline.run.runtime import init_distributed
init_distributed("cpu")
dist.barrier()
"""


def test_a_rank_leaves_its_process_group_before_the_interpreter_tears_down(tmp_path):
    """Left to the interpreter's teardown, gloo's threads can abort a finished rank (SIGABRT): a two-node CI run
    lost a rank that way. init_distributed registers the group's destruction for the normal exit."""
    outputs = run_two_ranks(tmp_path, LEAVE_SCRIPT, nodes=1)
    assert all("group left before teardown: True" in out for out in outputs), outputs


def test_rank_0_waits_for_blocks_other_nodes_wrote_then_names_the_rank_whose_blocks_never_came(tmp_path,
                                                                                                monkeypatch):
    writer = SimpleNamespace(partial=tmp_path, block_file=lambda b: tmp_path / f"block-{b:06d}.npz")
    two = DistInfo(rank=0, world_size=2)
    for b in (0, 1, 2):
        writer.block_file(b).write_bytes(b"")
    # Block 3 appears late, as another node's new file may through a networked filesystem's cache.
    late = threading.Timer(0.3, lambda: writer.block_file(3).write_bytes(b""))
    late.start()
    label_ranks.wait_for_blocks(writer, [0, 1, 2, 3], two)
    assert writer.block_file(3).exists()
    writer.block_file(4).write_bytes(b"")
    monkeypatch.setattr(label_ranks, "BLOCK_WAIT_S", 0.2)
    with pytest.raises(UserError, match=r"^1 of the blocks other ranks wrote \(first: block 5, rank 1\) are not in "):
        label_ranks.wait_for_blocks(writer, [0, 1, 2, 3, 4, 5], two)
