"""Synthetic long conversations for the recall benchmark: planted facts among chit-chat.

Each conversation gets some facts (a sister's city, an allergy, an order number...) planted at
chosen depths among filler messages, plus near-miss fillers of the same kind ("my colleague
moved to Madrid"). Other conversations hold facts of the same kind with other values, so a
recall that leaks across conversations shows. Every fact has a paraphrase question (no shared
keyword needed) and, for the ones carrying a rare token (order and ticket numbers), an
exact-token question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CITIES = ["Porto", "Lisbon", "Madrid", "Bologna", "Lyon", "Krakow", "Ghent", "Seville", "Graz"]
NAMES = ["Margarida", "Ines", "Beatriz", "Carla", "Sofia", "Joana", "Rita", "Marta", "Lucia"]
PETS = ["Biscuit", "Pirate", "Luna", "Mochi", "Rex", "Pepper", "Olive", "Nacho"]
ALLERGENS = ["peanuts", "shellfish", "sesame", "kiwi", "gluten", "walnuts"]
JOBS = ["nurse", "radiologist", "pharmacist", "physiotherapist", "paramedic"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
BANDS = ["Radiohead", "Madredeus", "Coldplay", "Massive Attack", "Daft Punk"]
INSTRUMENTS = ["cello", "saxophone", "ukulele", "harp", "trumpet"]
CARS = ["Volvo estate", "Fiat Panda", "Toyota Corolla", "Renault Clio", "Skoda Octavia"]


@dataclass(frozen=True)
class FactKind:
    fact: str  # the planted message, with {slots}
    question: str  # a paraphrase that shares (almost) no keyword with the fact
    exact: str | None = None  # a question quoting the fact's rare token
    near_miss: str | None = None  # a filler of the same kind about someone else


KINDS = [
    FactKind(
        "My sister {name} moved to {city} last spring, she loves it there.",
        "Which town does my sibling live in now?",
        near_miss="My colleague from work moved to {city2} for a new job.",
    ),
    FactKind(
        "I'm allergic to {allergen}, please keep that in mind for recipes.",
        "What food makes me ill?",
        near_miss="My neighbour cannot eat {allergen2} at all.",
    ),
    FactKind(
        "Our dog is called {pet}, he is a very naughty beagle.",
        "What is the name of my pet?",
        near_miss="My cousin's cat is named {pet2}.",
    ),
    FactKind(
        "I work as a {job} at the hospital downtown, mostly night shifts.",
        "What do I do for a living?",
    ),
    FactKind(
        "My flight to {city} leaves on {day} at seven in the morning.",
        "When does my plane depart?",
        near_miss="My boss is travelling to {city2} next month.",
    ),
    FactKind(
        "My favourite band has always been {band}.",
        "Which musicians do I like the most?",
    ),
    FactKind(
        "I started taking {instrument} lessons on Saturdays.",
        "Which musical instrument am I learning?",
    ),
    FactKind(
        "I bought a second-hand {car} last month, it runs great.",
        "What kind of automobile did I purchase recently?",
    ),
    FactKind(
        "My grandmother grew up in a small village near {city}.",
        "Where is my grandma originally from?",
    ),
    FactKind(
        "The dentist moved my appointment to {day} afternoon.",
        "When do I have to see the tooth doctor?",
    ),
    FactKind(
        "My order number is {order} and the parcel still has not arrived.",
        "Did my package ever get delivered?",
        exact="Any news about {order}?",
        near_miss="The earlier order {order2} came on time, no problem there.",
    ),
    FactKind(
        "The support ticket for the broken boiler is {ticket}.",
        "Who did I contact about the heating not working?",
        exact="What was {ticket} about?",
        near_miss="The old ticket {ticket2} for the leaking tap was closed.",
    ),
]

FILLERS = [
    "Can you remind me to buy {item} tomorrow?",
    "The weather has been {weather} all week.",
    "I had {food} for lunch today, it was fine.",
    "Work was busy, lots of meetings again.",
    "I watched a documentary about {topic} last night.",
    "Do you think I should repaint the kitchen {colour}?",
    "Traffic this morning was terrible near the bridge.",
    "I need to call the bank about my card.",
    "My phone battery keeps dying after lunch.",
    "Let's plan the weekend, maybe a walk by the river.",
    "I finally finished the book about {topic}.",
    "The neighbours are renovating again, so noisy.",
    "I'm thinking of joining a gym near the office.",
    "Remind me to water the plants on {day}.",
]
REPLIES = [
    "Sure, I'll keep that in mind.",
    "That sounds good to me.",
    "Noted! Anything else?",
    "Oh, that's interesting, tell me more.",
    "Happy to help with that.",
    "Got it.",
]
SLOTS = {
    "item": ["milk", "batteries", "bread", "coffee", "stamps", "tomatoes"],
    "weather": ["rainy", "sunny", "windy", "grey", "hot"],
    "food": ["soup", "a salad", "pasta", "sushi", "a sandwich"],
    "topic": ["volcanoes", "bees", "the Roman empire", "deep sea fish", "chess"],
    "colour": ["green", "white", "yellow", "blue"],
    "day": DAYS,
}


@dataclass
class Question:
    conversation: str
    text: str
    answer: str  # the planted message's text
    kind: str  # "paraphrase" or "exact"


@dataclass
class Conversation:
    id: str
    messages: list[str] = field(default_factory=list)  # alternate user / assistant


def _values(rng: random.Random) -> dict[str, str]:
    return {
        "name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        "city2": rng.choice(CITIES),
        "pet": rng.choice(PETS),
        "pet2": rng.choice(PETS),
        "allergen": rng.choice(ALLERGENS),
        "allergen2": rng.choice(ALLERGENS),
        "job": rng.choice(JOBS),
        "day": rng.choice(DAYS),
        "band": rng.choice(BANDS),
        "instrument": rng.choice(INSTRUMENTS),
        "car": rng.choice(CARS),
        "order": f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randint(10, 99)}"
        f"{rng.choice('XYZKQ')}-{rng.randint(1000, 9999)}",
        "order2": f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randint(10, 99)}"
        f"{rng.choice('XYZKQ')}-{rng.randint(1000, 9999)}",
        "ticket": f"INC-{rng.randint(100000, 999999)}",
        "ticket2": f"INC-{rng.randint(100000, 999999)}",
    }


def _filler(rng: random.Random) -> str:
    template = rng.choice(FILLERS)
    return template.format(**{k: rng.choice(v) for k, v in SLOTS.items()})


def build(
    conversations: int, length: int, *, recent: int = 50, seed: int = 7
) -> tuple[list[Conversation], list[Question]]:
    """``conversations`` of ``length`` messages each, every fact kind planted once per
    conversation at a random depth older than the last ``recent`` messages."""
    rng = random.Random(seed)
    result: list[Conversation] = []
    questions: list[Question] = []
    for c in range(conversations):
        conv = Conversation(id=f"bench-{seed}-{c}")
        slots_free = list(range(0, max(1, length - recent - 1), 2))  # user turns only
        rng.shuffle(slots_free)
        planted: dict[int, tuple[FactKind, str]] = {}
        for kind in KINDS:
            values = _values(rng)
            planted[slots_free.pop()] = (kind, kind.fact.format(**values))
            if kind.near_miss:
                planted[slots_free.pop()] = (kind, kind.near_miss.format(**values))
            fact_text = kind.fact.format(**values)
            questions.append(Question(conv.id, kind.question, fact_text, "paraphrase"))
            if kind.exact:
                questions.append(Question(conv.id, kind.exact.format(**values), fact_text, "exact"))
        for position in range(length):
            if position in planted:
                conv.messages.append(planted[position][1])
            elif position % 2 == 0:
                conv.messages.append(_filler(rng))
            else:
                conv.messages.append(rng.choice(REPLIES))
        result.append(conv)
    return result, questions
