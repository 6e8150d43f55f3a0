"""Batched generation gives the answers one-at-a-time generation gives (left padding, shared prefix cache)."""

from __future__ import annotations

import math

import pytest
from tuneloop_trainer.evaluation.generate import chat_prompt, generate, reference_nll, reference_pair, shared_prefix_length
from tuneloop_trainer.testing import make_tiny_model

pytestmark = pytest.mark.unit

SYSTEM = {"role": "system", "content": "reply with one line about the data and the model please"}
QUESTIONS = ["hello", "what is the loss of the model", "one two three four five six seven", "dog", "reset my password please now", "red"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = make_tiny_model(tmp_path_factory.mktemp("gen") / "tiny")
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # each prompt keeps one token of its own
    assert shared_prefix_length([[1, 2, 3]]) == 0
    assert shared_prefix_length([[9], [1]]) == 0


@pytest.mark.parametrize("system", [True, False])
def test_batched_equals_one_at_a_time(tiny, system):
    model, tok = tiny
    prompts = [chat_prompt(tok, ([SYSTEM] if system else []) + [{"role": "user", "content": q}]) for q in QUESTIONS]
    one = generate(model, tok, prompts, batch_size=1, max_new_tokens=10, share_prefix=False)
    plain = generate(model, tok, prompts, batch_size=4, max_new_tokens=10, share_prefix=False)
    shared = generate(model, tok, prompts, batch_size=4, max_new_tokens=10, share_prefix=True)
    assert one.texts == plain.texts == shared.texts
    assert one.new_tokens == plain.new_tokens == shared.new_tokens
    assert all(0 < n <= 10 for n in one.new_tokens)
    stats = shared.stats()
    assert stats["prompts"] == len(QUESTIONS) and stats["batches"] == 2 and stats["tokensPerSecond"] > 0


def test_batched_equals_one_at_a_time_with_a_lora_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    import torch

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    try:
        prompts = [chat_prompt(tok, [SYSTEM, {"role": "user", "content": q}]) for q in QUESTIONS]
        one = generate(peft_model, tok, prompts, batch_size=1, max_new_tokens=8, share_prefix=False)
        shared = generate(peft_model, tok, prompts, batch_size=3, max_new_tokens=8, share_prefix=True)
        assert one.texts == shared.texts
    finally:
        peft_model.unload()


def test_generation_restores_model_mode_and_handles_empty(tiny):
    model, tok = tiny
    model.train()
    generate(model, tok, [chat_prompt(tok, [{"role": "user", "content": "hi"}])], max_new_tokens=2)
    assert model.training
    model.eval()
    assert generate(model, tok, [], max_new_tokens=2).texts == []


def test_reference_nll_scores_only_the_answer(tiny):
    model, tok = tiny
    rec = {"messages": [SYSTEM, {"role": "user", "content": "hello"}, {"role": "assistant", "content": "the answer is red"}]}
    context, answer = reference_pair(tok, rec)
    assert context.endswith("<|im_start|>assistant\n") and answer == "the answer is red<|im_end|>"
    nll, n = reference_nll(model, tok, [(context, answer)])
    assert n == len(tok(answer, add_special_tokens=False)["input_ids"])
    # batched with a longer record (padding) gives the same sum as one at a time
    other = reference_pair(tok, {"messages": [{"role": "user", "content": "what is the loss of the model"}, {"role": "assistant", "content": "one two"}]})
    both = reference_nll(model, tok, [(context, answer), other], batch_size=2)
    single = reference_nll(model, tok, [other], batch_size=1)
    assert both[1] == n + single[1]
    assert math.isclose(both[0], nll + single[0], rel_tol=1e-4)
    # text records: no context, every token after the first is scored
    _, count = reference_nll(model, tok, [reference_pair(tok, {"text": "the cat sat on the mat"})])
    assert count == len(tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]) - 1


def test_reference_nll_with_shared_prefix_matches(tiny):
    model, tok = tiny
    recs = [{"messages": [SYSTEM, {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("hello", "the answer is red"), ("what is the loss of the model", "one two three"), ("dog", "yes")]]
    pairs = [reference_pair(tok, r) for r in recs]
    plain = reference_nll(model, tok, pairs, batch_size=2, share_prefix=False)
    shared = reference_nll(model, tok, pairs, batch_size=2, share_prefix=True)
    assert plain[1] == shared[1]
    assert math.isclose(plain[0], shared[0], rel_tol=1e-4)
