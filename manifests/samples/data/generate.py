#!/usr/bin/env python3
"""Generate the quickstart dataset: customer-support tickets → a strict JSON triage record.

    python manifests/samples/data/generate.py            # rewrites train.jsonl and test.jsonl here
    python manifests/samples/data/generate.py --check    # exit 1 if the committed files differ

Every ticket is written by us from templates and vocabularies (no scraped text), deterministically
from a seed, in tuneloop's `chat` format: a short system prompt naming the task, the ticket as the
user turn, and the triage record (compact JSON, fixed key order) as the assistant turn. Every label
is recoverable from the ticket's wording (a cue phrase decides priority, sentiment and escalation),
so a small model can learn the task and exact-match scoring is meaningful.

train.jsonl also holds the rehearsal records of rehearsal.jsonl (general prompts under the model's
default system prompt, answered by the base model itself; made by rehearsal.py), mixed in at
seeded positions, so the adapter learns to answer triage only under the triage prompt.
test.jsonl holds tickets only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261122
N_TRAIN = 360
N_TEST = 60

CATEGORIES = ["billing", "shipping", "returns", "technical", "account", "product_question"]
PRIORITIES = ["low", "medium", "high", "urgent"]
SENTIMENTS = ["negative", "neutral", "positive"]

# Short on purpose: the schema-describing prompt it replaces was 99 of a record's ~198 tokens, so it
# halved the tickets a CPU trains on in the quickstart's time; the tuned model learns the label set and
# key order from the answers it trains on. The schema itself is evaluation.jsonSchema in quickstart.yaml.
SYSTEM_PROMPT = "Triage this support ticket. Reply with the JSON record."
REHEARSAL = HERE / "rehearsal.jsonl"

# The schema the quickstart's evaluation.jsonSchema repeats (tests keep the two in sync).
JSON_SCHEMA = {
    "type": "object",
    "required": ["category", "priority", "product", "order_id", "sentiment", "needs_human"],
    "additionalProperties": False,
    "properties": {
        "category": {"enum": CATEGORIES},
        "priority": {"enum": PRIORITIES},
        "product": {"type": ["string", "null"]},
        "order_id": {"type": ["string", "null"], "pattern": "^ORD-[0-9]{6}$"},
        "sentiment": {"enum": SENTIMENTS},
        "needs_human": {"type": "boolean"},
    },
}

PRODUCTS = [
    "AeroBuds Pro", "HomeHub Mini", "VoltBike 300", "PixelFrame 10", "ChefMate Blender", "TrailCam 4K",
    "Nimbus Laptop 14", "SmartThermo 2", "Glide Vacuum X", "Lumen Desk Lamp", "PulseWatch S", "EchoSpeaker Max",
    "BrewMaster Kettle", "SnapPrint Go", "RoamRouter AX", "ZenChair Ergo", "AquaPure Filter", "KeyFlow Keyboard",
]

# Per category: (template needing a product?, needing an order?) sentences. {p} product, {o} order reference.
BODIES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {o} and only placed it once.",
        "My card statement shows a charge for the {p} that I never authorised.",
        "The invoice for {o} lists the wrong price for the {p}.",
        "I cancelled my subscription last month but I was still billed.",
        "Why did the price of the {p} change after I paid for {o}?",
        "I applied a discount code but it wasn't taken off {o}.",
        "Can you send me a VAT invoice for {o}?",
        "I was billed for shipping on {o} even though it said free delivery.",
    ],
    "shipping": [
        "{o} still hasn't arrived and the tracking hasn't moved in a week.",
        "The courier marked {o} as delivered but nothing came.",
        "My {p} was shipped to my old address.",
        "Can I change the delivery date for {o}?",
        "The box with my {p} arrived crushed.",
        "Tracking for {o} says 'exception' and I don't know what that means.",
        "Do you ship the {p} to Canada?",
        "Only half of {o} arrived, the {p} is missing.",
    ],
    "returns": [
        "I'd like to return the {p} from {o}, it isn't what I expected.",
        "How do I send back the {p}? It's still in the box.",
        "I returned {o} three weeks ago and haven't got my refund.",
        "The return label for {o} doesn't work.",
        "Can I exchange the {p} for a different colour?",
        "I want a refund for the {p}, it stopped working after two days.",
        "Is it too late to return {o}? I bought it 40 days ago.",
        "The refund for {o} was less than what I paid.",
    ],
    "technical": [
        "My {p} won't turn on anymore.",
        "The {p} keeps disconnecting from wifi every few minutes.",
        "After the last firmware update my {p} is stuck on the logo screen.",
        "The app can't find my {p} when I try to pair it.",
        "The {p} makes a loud clicking noise when it runs.",
        "The battery on my {p} drains in a couple of hours.",
        "I get error code E42 on the {p} display.",
        "The {p} from {o} overheats after ten minutes.",
    ],
    "account": [
        "I can't log in, the password reset email never arrives.",
        "Someone changed the email on my account without my permission.",
        "Please delete my account and all my data.",
        "I want to update the phone number on my account.",
        "My account is locked after too many login attempts.",
        "I see orders in my account that I didn't make, including {o}.",
        "How do I turn on two-factor authentication?",
        "I'd like to merge my two accounts into one.",
    ],
    "product_question": [
        "Does the {p} work with Alexa?",
        "What's the warranty on the {p}?",
        "Is the {p} compatible with 220V outlets?",
        "Can the {p} be used outdoors?",
        "Is there a newer model of the {p} coming out soon?",
        "How much does the {p} weigh?",
        "Does the {p} come with a charger in the box?",
        "What's the difference between the {p} and the {p2}?",
    ],
}

GREETINGS = ["", "Hi,", "Hello,", "Hey there,", "Good morning,", "Hi team,", "Dear support,", "To whom it may concern,"]
SIGNOFFS = ["", "Thanks.", "Regards, Sam", "Cheers, Priya", "- Tom", "Best, Alex", "Thank you, Mei", "Sent from my phone"]
SENTIMENT_CUES = {
    "negative": [
        "This is really frustrating.", "I'm very disappointed.", "Honestly this is unacceptable.",
        "I'm getting pretty annoyed.", "Terrible experience so far.", "I'm fed up with this.",
    ],
    "neutral": ["", "", "Just checking.", "Let me know.", "Please advise."],
    "positive": [
        "I love your products by the way!", "Thanks so much for your help!", "You've been great so far.",
        "Really happy with the service otherwise.", "Appreciate the quick replies!",
    ],
}
PRIORITY_CUES = {
    "low": ["No rush on this.", "Whenever you get a chance.", "Not urgent at all.", "Just curious."],
    "medium": ["", "", "Would be good to sort this out this week."],
    "high": ["I need this sorted soon.", "This is important to me.", "Please look at this quickly.", "Please prioritise this."],
    "urgent": ["URGENT!", "I need this fixed today.", "This is an emergency, please respond immediately.", "Please help ASAP, it can't wait."],
}
HUMAN_CUES = [
    "I want to speak to a real person.", "Please escalate this to a manager.", "Can someone call me?",
    "If this isn't fixed I'll file a chargeback.", "I don't want another bot reply.", "I'm talking to my lawyer about this.",
]
ORDER_FORMS = ["order ORD-{n}", "order #{n}", "my order (ORD-{n})", "order number {n}", "ORD-{n}"]


def _order_ref(rng: random.Random) -> tuple[str, str]:
    n = f"{rng.randint(100000, 999999)}"
    return rng.choice(ORDER_FORMS).format(n=n), f"ORD-{n}"


def make_ticket(rng: random.Random) -> tuple[str, dict]:
    category = rng.choice(CATEGORIES)
    body = rng.choice(BODIES[category])
    product = rng.choice(PRODUCTS) if "{p}" in body else None
    other = rng.choice([p for p in PRODUCTS if p != product])
    order_id = None
    order_text = ""
    if "{o}" in body:
        order_text, order_id = _order_ref(rng)
    elif category in ("billing", "shipping", "returns") and rng.random() < 0.5:
        order_text, order_id = _order_ref(rng)
        body += rng.choice([" It's about {o}.", " Order ref: {o}.", " ({o})"])
    if product is None and category != "account" and rng.random() < 0.35:
        product = rng.choice(PRODUCTS)
        body += rng.choice([" It's for the {p}.", " This is about my {p}.", " Product: {p}."])
    text = body.format(p=product or "", p2=other, o=order_text)

    sentiment = rng.choices(SENTIMENTS, weights=[4, 4, 2])[0]
    priority = rng.choices(PRIORITIES, weights=[2, 3, 3, 2])[0]
    if category == "product_question" and priority in ("high", "urgent"):
        priority = "low"
    needs_human = rng.random() < 0.3
    if "without my permission" in text or "didn't make" in text:  # security incidents always go to a person
        needs_human, priority = True, "urgent"

    parts = [rng.choice(GREETINGS), text, rng.choice(SENTIMENT_CUES[sentiment]), rng.choice(PRIORITY_CUES[priority])]
    if needs_human and "without my permission" not in text and "didn't make" not in text:
        parts.append(rng.choice(HUMAN_CUES))
    parts.append(rng.choice(SIGNOFFS))
    middle = parts[2:-1]
    rng.shuffle(middle)
    ticket = " ".join(p for p in [parts[0], parts[1], *middle, parts[-1]] if p)
    if rng.random() < 0.15:
        ticket = ticket.lower()
    record = {
        "category": category,
        "priority": priority,
        "product": product,
        "order_id": order_id,
        "sentiment": sentiment,
        "needs_human": needs_human,
    }
    return ticket, record


def to_chat(ticket: str, record: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": ticket},
            {"role": "assistant", "content": json.dumps(record, separators=(", ", ": "))},
        ]
    }


def generate(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Distinct tickets (normalized text), first n_train for training, the next n_test held out."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n_train + n_test:
        ticket, record = make_ticket(rng)
        key = " ".join(ticket.lower().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(to_chat(ticket, record))
    return out[:n_train], out[n_train:]


def mix_rehearsal(train: list[dict], rehearsal: list[dict], seed: int = SEED) -> list[dict]:
    """train with the rehearsal records inserted at seeded positions (each keeps its order)."""
    rng = random.Random(seed + 1)
    slots = set(rng.sample(range(len(train) + len(rehearsal)), len(rehearsal)))
    tickets, extra = iter(train), iter(rehearsal)
    return [next(extra) if i in slots else next(tickets) for i in range(len(train) + len(rehearsal))]


def load_rehearsal(path: Path = REHEARSAL) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def dumps(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="directory for train.jsonl and test.jsonl")
    ap.add_argument("--check", action="store_true", help="verify the files on disk instead of writing them")
    args = ap.parse_args(argv)
    train, test = generate()
    train = mix_rehearsal(train, load_rehearsal())
    files = {"train.jsonl": dumps(train), "test.jsonl": dumps(test)}
    if args.check:
        stale = [n for n, text in files.items() if not (args.out / n).exists() or (args.out / n).read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print("up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(train)} train and {len(test)} test records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
