"""Shared by the multi-node tests: two `torchrun` agents on this machine, each one "node" of a 2-node job (one
process each, gloo on the CPU), meeting at a free port on 127.0.0.1."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(args_of_node, logs: Path, timeout: float = 240) -> list[tuple[int, str]]:
    """Run `labelopt *args_of_node(node)` under one torchrun agent per node; (exit code, stdout + stderr) per node.

    Each agent leads its own process group, killed whole (agent and worker) if the job outlives `timeout` or the
    test fails, so a hung rendezvous cannot stall the suite."""
    bin_dir = Path(sys.executable).parent
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs.mkdir(parents=True, exist_ok=True)
    agents = []
    try:
        for node in (0, 1):
            command = [str(bin_dir / "torchrun"), "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                       "--master-addr", "127.0.0.1", "--master-port", str(port), "--no-python",
                       str(bin_dir / "labelopt"), *map(str, args_of_node(node))]
            with open(logs / f"node{node}.log", "w") as log:
                agents.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))
        codes = [agent.wait(timeout=timeout) for agent in agents]
    finally:
        for agent in agents:
            stop(agent)
    return [(code, (logs / f"node{node}.log").read_text()) for node, code in enumerate(codes)]


def stop(agent: subprocess.Popen) -> None:
    """An agent still running: SIGTERM first (torchrun then stops its worker, which runs in a session of its own),
    SIGKILL to the agent's group if it does not exit."""
    if agent.poll() is not None:
        return
    agent.terminate()
    try:
        agent.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
