"""Multi-process / multi-node launch from the environment the operator sets.

The operator runs the same command on every node: `python -m tuneloop_trainer train ...` with
NNODES, NPROC_PER_NODE, MASTER_ADDR (the headless service of node 0), MASTER_PORT and the node rank
from JOB_COMPLETION_INDEX (Indexed Job). When more than one rank is asked for and the process is
not already under torchrun, the stage re-executes itself under `torch.distributed.run` with a
static rendezvous. CPU ranks use the gloo backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def topology(env: dict[str, str] | None = None) -> Topology:
    e = os.environ if env is None else env
    return Topology(
        nnodes=int(e.get("NNODES", "1")),
        nproc_per_node=int(e.get("NPROC_PER_NODE", "1")),
        node_rank=int(e.get("NODE_RANK", e.get("JOB_COMPLETION_INDEX", "0"))),
        master_addr=e.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(e.get("MASTER_PORT", "29500")),
    )


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def torchrun_command(topo: Topology, stage_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={topo.nnodes}", f"--nproc_per_node={topo.nproc_per_node}", f"--node_rank={topo.node_rank}",
        f"--master_addr={topo.master_addr}", f"--master_port={topo.master_port}",
        "-m", "tuneloop_trainer", *stage_args,
    ]


def relaunch(stage_args: list[str], topo: Topology) -> int:
    """Run the stage under torchrun and return its exit code (the first failing rank's)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if topo.nproc_per_node > 1 else env.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(torchrun_command(topo, stage_args), env=env)


def single_process_env() -> None:
    """The rendezvous environment of a one-rank job on a free local port (DeepSpeed without torchrun)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(k, v)
