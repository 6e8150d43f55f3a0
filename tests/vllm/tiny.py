"""A tiny local run that vLLM's CPU build can serve: a random Llama with head_dim 64 (hidden 256, 4 heads), a random
LoRA adapter on it (peft), and the ModelVersion a local run would write (RUN_DIR/report/modelversion.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml
from tuneloop.contract import layout

SERVED = "tiny-bot"


def make_run(root: Path, *, hidden: int = 256, rank: int = 8) -> Path:
    """RUN_DIR with artifact/ (the adapter) and report/modelversion.yaml; the base in root/base. Idempotent."""
    from tuneloop_trainer.testing import make_tiny_model

    base = make_tiny_model(root / "base", hidden=hidden, layers=2)
    run = root / "run"
    artifact = run / layout.ARTIFACT_DIR
    if not (artifact / "adapter_config.json").exists():
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(base)
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False, task_type="CAUSAL_LM"))
        peft_model.save_pretrained(artifact)
    mv = {
        "apiVersion": "tuneloop.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": f"{SERVED}-v1-local", "namespace": "default"},
        "spec": {
            "modelName": SERVED,
            "version": "v1-local",
            "baseModel": {"name": str(base), "revision": "", "servingPath": str(base)},
            "artifact": {"uri": artifact.resolve().as_uri(), "format": "lora-adapter", "loraRank": rank},
            "evaluation": {"verdict": "Passed"},
        },
    }
    (run / layout.REPORT_DIR).mkdir(parents=True, exist_ok=True)
    (run / layout.MODELVERSION_FILE).write_text(yaml.safe_dump(mv, sort_keys=False))
    return run
