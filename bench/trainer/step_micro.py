"""One training step (forward+backward, LoRA r16 all-linear) of the same 4 records in different batch layouts,
alternating in one process so the layouts see the same machine load.

    OMP_NUM_THREADS=2 python bench/trainer/step_micro.py quickstart padded,grouped-sparse 4
"""
import glob
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from tuneloop_trainer.dataset.encoding import encode
from tuneloop_trainer.training.collate import FlatCollator, PaddedCollator, sparse_logits_loss

from bench import records

torch.set_num_threads(2)
d = glob.glob(os.path.expanduser('~/.cache/tuneloop/gguf/*'))[0]
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d); m.config.use_cache=False
m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
m.train()
task = sys.argv[1]
feats = [dict(zip(("input_ids","labels"), encode(tok, r))) for r in records(task, 4)]
def step(kind):
    if kind == "padded":
        b = PaddedCollator(tok.pad_token_id)(feats); loss = m(**b).loss
    elif kind == "flat-dense":
        b = FlatCollator(sparse_logits=False)(feats); loss = m(**b).loss
    elif kind == "flat-sparse":
        b = FlatCollator()(feats); lab = b.pop("labels"); loss = sparse_logits_loss(m(**b), lab)
    elif kind == "grouped-sparse":
        b = PaddedCollator(tok.pad_token_id, sparse_logits=True)(feats); lab = b.pop("labels"); loss = sparse_logits_loss(m(**b), lab)
    loss.backward()
res = {}
kinds = sys.argv[2].split(",")
for rep in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    for k in kinds:
        t = time.time(); step(k); res.setdefault(k, []).append(time.time() - t)
print(task, {k: [round(x,2) for x in v] for k, v in res.items()})
