"""The ticket -> JSON task: support messages in, a fixed-schema JSON object out (notebook 05).

Every example is generated from a seed, so the shipped files in data/tickets/ can be rebuilt and
checked (`python -m lora_course.data`). The messages are made hard on purpose: products are
named by paraphrase, a second product that is fine often appears, urgency must be inferred from
cues, and the order number sits among other numbers (prices, counts, model numbers).
"""

from __future__ import annotations

import json
import random

from .task import Task

FIELDS = ("product", "issue", "urgency", "order_id")

PRODUCTS = {
    "headphones": ["headphones", "wireless earbuds", "noise-cancelling headset", "earphones"],
    "blender": ["blender", "smoothie maker", "countertop blender"],
    "laptop": ["laptop", "notebook computer", "ultrabook"],
    "coffee maker": ["coffee maker", "espresso machine", "coffee machine"],
    "vacuum": ["vacuum cleaner", "robot vacuum", "cordless vacuum"],
    "smartwatch": ["smartwatch", "fitness watch", "smart watch"],
    "router": ["wifi router", "mesh router", "router"],
    "desk lamp": ["desk lamp", "LED lamp", "reading lamp"],
}
PARTS = ["charger", "power cable", "lid", "manual", "remote", "battery", "stand"]

ISSUES = {
    "damaged": [
        "The {item} arrived with a cracked casing.",
        "My {item} came broken, the box was crushed.",
        "The {item} showed up scratched and dented.",
        "When I opened the package the {item} was smashed.",
    ],
    "missing_part": [
        "The {item} came without the {part}.",
        "There was no {part} in the box with my {item}.",
        "My {item} is missing its {part}.",
        "I unpacked the {item} and the {part} isn't there.",
    ],
    "wrong_item": [
        "I ordered a {item} but you sent me a {other}.",
        "The box had a {other} in it, not the {item} I paid for.",
        "Instead of my {item} I received a {other}.",
        "You shipped the wrong thing: a {other} rather than a {item}.",
    ],
    "not_working": [
        "The {item} won't turn on at all.",
        "My {item} stopped working after {days} days.",
        "The {item} keeps restarting every few minutes.",
        "My new {item} doesn't charge.",
    ],
    "late_delivery": [
        "My {item} still hasn't arrived.",
        "Tracking for the {item} has said 'in transit' for {days} days.",
        "The {item} was supposed to be here last week and it's not.",
        "Where is my {item}? It's {days} days late.",
    ],
    "refund": [
        "I changed my mind about the {item} and want my money back.",
        "Please refund the {item}, I no longer need it.",
        "I'd like to return the {item} for a refund, it's unopened.",
        "Can I get a refund for the {item}? I found it cheaper elsewhere.",
    ],
}
URGENCY = {
    "high": [
        "This is urgent.",
        "I need this sorted today.",
        "Please fix this ASAP.",
        "It's a gift for tomorrow.",
        "I need it for work first thing Monday.",
    ],
    "normal": ["", "Thanks for your help.", "Let me know what you can do.", "Please advise."],
    "low": [
        "No rush on this.",
        "Whenever you get a chance.",
        "Not urgent, just letting you know.",
        "Take your time.",
    ],
}
ORDER = [
    "Order {id}.",
    "My order number is {id}.",
    "(order #{id})",
    "Order no. {id}, for reference.",
]
DISTRACTORS = [
    "I paid ${price} for it.",
    "I've called {calls} times already.",
    "It's the model {model} version.",
    "The {fine} from the same order is fine.",
    "I've been a customer for {years} years.",
]
GREETINGS = ["", "", "Hi,", "Hello,", "Hey -"]
CLOSINGS = ["", "", "Thanks, Sam", "- Priya", "Cheers"]


def make_example(rng: random.Random) -> dict[str, str]:
    """One ticket: {'ticket': message, 'answer': the JSON string the model should write}."""
    product = rng.choice(list(PRODUCTS))
    others = [p for p in PRODUCTS if p != product]
    issue = rng.choice(list(ISSUES))
    urgency = rng.choice(list(URGENCY))
    order_id = str(rng.randrange(100000, 1000000))
    slots = {
        "item": rng.choice(PRODUCTS[product]),
        "other": rng.choice(PRODUCTS[rng.choice(others)]),
        "fine": rng.choice(PRODUCTS[rng.choice(others)]),
        "part": rng.choice(PARTS),
        "days": rng.randint(2, 21),
        "price": rng.randint(19, 899),
        "calls": rng.randint(2, 6),
        "model": f"{rng.choice('XSP')}{rng.randint(100, 9999)}",
        "years": rng.randint(2, 15),
    }
    body = [rng.choice(ISSUES[issue]), rng.choice(ORDER).format(id=order_id)]
    body += rng.sample(DISTRACTORS, k=rng.choice([0, 1, 1, 2]))
    rng.shuffle(body)
    body.append(rng.choice(URGENCY[urgency]))
    parts = [rng.choice(GREETINGS), *body, rng.choice(CLOSINGS)]
    ticket = " ".join(p for p in parts if p).format(**slots)
    answer = {"product": product, "issue": issue, "urgency": urgency, "order_id": order_id}
    return {"ticket": ticket, "answer": json.dumps(answer)}


def draw(rng: random.Random, split: str) -> dict[str, str]:
    """One example for any split: train, validation and test share one distribution."""
    return make_example(rng)


def score(prediction: str, answer: str) -> dict[str, bool]:
    """Per-field correctness of a predicted JSON string; 'valid_json' and 'exact' too."""
    gold = json.loads(answer)
    try:
        predicted = json.loads(prediction)
    except json.JSONDecodeError:
        predicted = None
    if not isinstance(predicted, dict):
        return {"valid_json": False, **{f: False for f in FIELDS}, "exact": False}
    fields = {f: str(predicted.get(f, "")) == gold[f] for f in FIELDS}
    return {"valid_json": True, **fields, "exact": all(fields.values())}


TASK = Task(
    name="tickets",
    input_field="ticket",
    # Short on purpose: every prompt token costs compute in every training step. The allowed
    # values of each field are not listed; the model learns the schema from the training examples.
    system_prompt="Reply with the ticket as JSON.",
    splits={"train": (2000, 1), "validation": (200, 2), "test": (200, 3)},  # size, seed
    draw=draw,
    score=score,
    main_metric="exact",  # every field exactly right
)
