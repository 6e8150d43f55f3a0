"""DeepSpeed: the generated config (pure), ZeRO-2 in one process and under torchrun with 2 CPU ranks."""

from __future__ import annotations

import json
import sys

import pytest
from tuneloop.api import FineTuneJobSpec
from tuneloop_trainer.context import load_context
from tuneloop_trainer.errors import ConfigError
from tuneloop_trainer.stages.prepare import run as prepare
from tuneloop_trainer.training.distributed import Topology, topology, torchrun_command
from tuneloop_trainer.training.dsconfig import deepspeed_config

from .conftest import free_port, run_stage, stage_env

pytestmark = pytest.mark.unit


def _spec(**over):
    doc = {"baseModel": {"path": "/m"}, "dataset": {"train": {"path": "d.jsonl"}}, "output": {"path": "/o"},
           "hyperparameters": {"batchSize": 128, "microBatchSize": 4}, "deepspeed": {"zeroStage": 3, "offload": "cpu"}}
    doc.update(over)
    return FineTuneJobSpec.model_validate(doc)


def test_config_for_two_nodes_of_eight_gpus_with_overrides():
    spec = _spec(deepspeed={"zeroStage": 3, "offload": "cpu",
                            "overrides": {"zero_optimization": {"stage3_max_live_parameters": 1e9}, "wall_clock_breakdown": True}})
    cfg = deepspeed_config(spec, 16)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2 and cfg["train_batch_size"] == 128
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] is True and z["stage3_max_live_parameters"] == 1e9
    assert cfg["wall_clock_breakdown"] is True and cfg["bf16"] == {"enabled": "auto"}
    json.dumps(cfg)


def test_zero2_without_offload_and_bad_batch():
    cfg = deepspeed_config(_spec(deepspeed={"zeroStage": 2}), 8)
    assert cfg["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in cfg["zero_optimization"]
    with pytest.raises(ConfigError, match="batchSize 128 is not a multiple of microBatchSize 4 × world size 24"):
        deepspeed_config(_spec(), 24)


def test_topology_from_the_operator_environment():
    topo = topology({"NNODES": "2", "NPROC_PER_NODE": "8", "JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "job-0.svc", "MASTER_PORT": "29400"})
    assert topo == Topology(2, 8, 1, "job-0.svc", 29400) and topo.world_size == 16
    cmd = torchrun_command(topo, ["train", "--spec", "s", "--workdir", "w"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--node_rank=1" in cmd and "--master_addr=job-0.svc" in cmd and cmd[-7:] == ["-m", "tuneloop_trainer", "train", "--spec", "s", "--workdir", "w"]


DS = {"deepspeed": {"zeroStage": 2}, "hyperparameters": {"maxSteps": 3, "saveSteps": 3, "batchSize": 4, "microBatchSize": 2}}


def _check(work, world):
    result = json.loads((work / "result.json").read_text())
    assert result["outcome"] == "Succeeded" and result["steps"] == 3 and result["world_size"] == world
    assert (work / "artifact" / "adapter_model.safetensors").exists()
    assert any(p.name.startswith("global_step") for p in (work / "checkpoints" / "checkpoint-3").iterdir())  # a DeepSpeed checkpoint
    return result


def test_zero2_in_one_process(write_spec, tmp_path):
    spec, work = write_spec(**DS)
    prepare(load_context(spec, work))
    done = run_stage("train", spec, work, stage_env(tmp_path), timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    _check(work, 1)


def test_zero2_under_torchrun_with_two_cpu_ranks(write_spec, tmp_path):
    spec, work = write_spec(**DS)
    prepare(load_context(spec, work))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m"]
    done = run_stage("train", spec, work, stage_env(tmp_path), launcher=launcher, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    _check(work, 2)
    assert "gloo" in done.stderr or "world_size" in json.loads((work / "lineage.json").read_text())
