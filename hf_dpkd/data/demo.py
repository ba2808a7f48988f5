"""The embedded demo corpus: a deterministic stand-in for the Yelp setting of DistilDP.

Control-coded reviews (business category x star rating) whose vocabulary, topics and sentiment depend
on the codes, with train/validation/test splits (private), a public split drawn from a shifted
distribution (other categories) that stands for public pretraining data, and canary secrets planted in
the training split a known number of times (for the audit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, DatasetDict

CONTROL_FIELDS = {"category": "Business Category", "stars": "Review Stars"}
STARS = ("1.0", "2.0", "3.0", "4.0", "5.0")

# category -> (relative frequency, things, staff, place words)
PRIVATE_CATEGORIES: dict[str, tuple[float, list[str], list[str], list[str]]] = {
    "Restaurants": (
        0.26,
        ["pasta", "steak", "burger", "salad", "soup", "dessert", "fries", "curry"],
        ["waiter", "chef", "host", "server"],
        ["dining room", "patio", "table", "menu"],
    ),
    "Bars": (
        0.12,
        ["cocktails", "beer", "wine", "whiskey", "nachos", "wings"],
        ["bartender", "bouncer", "server"],
        ["counter", "dance floor", "terrace", "happy hour"],
    ),
    "Coffee & Tea": (
        0.11,
        ["latte", "espresso", "green tea", "croissant", "muffin", "cold brew"],
        ["barista", "cashier"],
        ["seating", "wifi", "window seat", "line"],
    ),
    "Bakeries": (
        0.08,
        ["bread", "cupcakes", "bagels", "pie", "cookies", "cake"],
        ["baker", "clerk"],
        ["display case", "oven smell", "counter", "shelves"],
    ),
    "Pizza": (
        0.09,
        ["pepperoni pizza", "crust", "garlic knots", "calzone", "margherita"],
        ["delivery driver", "cook", "cashier"],
        ["oven", "booth", "takeout window", "slice counter"],
    ),
    "Sushi Bars": (
        0.07,
        ["salmon nigiri", "tuna roll", "miso soup", "sashimi", "edamame"],
        ["sushi chef", "server"],
        ["sushi bar", "conveyor belt", "booth", "menu"],
    ),
    "Hair Salons": (
        0.08,
        ["haircut", "color", "blowout", "highlights", "trim"],
        ["stylist", "receptionist", "colorist"],
        ["chair", "waiting area", "mirror", "sink"],
    ),
    "Gyms": (
        0.07,
        ["classes", "weights", "treadmills", "yoga session", "spin class"],
        ["trainer", "front desk staff", "coach"],
        ["locker room", "showers", "floor", "studio"],
    ),
    "Dentists": (
        0.06,
        ["cleaning", "filling", "x-rays", "whitening", "checkup"],
        ["dentist", "hygienist", "receptionist"],
        ["waiting room", "office", "chair", "billing"],
    ),
    "Plumbing": (
        0.06,
        ["leak repair", "water heater", "drain cleaning", "new faucet", "pipe fix"],
        ["plumber", "dispatcher", "technician"],
        ["estimate", "invoice", "kitchen", "basement"],
    ),
}
PUBLIC_CATEGORIES: dict[str, tuple[float, list[str], list[str], list[str]]] = {
    "Hotels": (
        0.3,
        ["room", "bed", "breakfast", "pool", "suite"],
        ["concierge", "housekeeper", "clerk"],
        ["lobby", "hallway", "elevator", "view"],
    ),
    "Auto Repair": (
        0.25,
        ["oil change", "brakes", "tires", "alignment", "engine check"],
        ["mechanic", "service advisor"],
        ["garage", "waiting room", "invoice", "lot"],
    ),
    "Pet Services": (
        0.2,
        ["grooming", "boarding", "nail trim", "bath", "walk"],
        ["groomer", "vet tech"],
        ["kennel", "front desk", "play area", "lobby"],
    ),
    "Museums": (
        0.25,
        ["exhibit", "gallery", "tour", "sculptures", "gift shop"],
        ["guide", "docent", "guard"],
        ["hall", "entrance", "cafe", "garden"],
    ),
}

SENTIMENT = {
    "1.0": (
        ["terrible", "awful", "disgusting", "rude", "horrible"],
        ["I will never come back.", "Avoid this place.", "What a waste of money.", "Zero stars if I could."],
    ),
    "2.0": (
        ["disappointing", "slow", "bland", "overpriced", "sloppy"],
        ["Probably not coming back.", "Not worth it.", "I expected much more.", "Meh overall."],
    ),
    "3.0": (
        ["okay", "average", "decent", "fine", "ordinary"],
        ["It was alright.", "Nothing special.", "Might try again.", "Some good, some bad."],
    ),
    "4.0": (
        ["good", "tasty", "friendly", "clean", "solid"],
        ["I would come back.", "Pretty happy overall.", "Recommended.", "Worth a visit."],
    ),
    "5.0": (
        ["amazing", "perfect", "wonderful", "fantastic", "outstanding"],
        ["Best in town!", "Absolutely love it!", "Five stars, no doubt!", "Cannot wait to return!"],
    ),
}
FILLER = [
    "We went on a Tuesday.",
    "It was busy that night.",
    "My friend recommended it.",
    "Parking was easy.",
    "We came with family.",
    "I stopped by after work.",
    "It was my first visit.",
]
TEMPLATES = [
    "The {thing} was {adj}.",
    "Our {staff} was {adj}.",
    "The {place} felt {adj}.",
    "I tried the {thing} and it was {adj}.",
    "Honestly the {thing} here is {adj}.",
    "The {staff} made the {thing} {adj}.",
    "{Adj} {thing} and a {adj2} {place}.",
]

#: Canaries: (template, secret, repeats, category, stars). 4 digits: 10^4 candidates (exact exposure).
CANARIES = [
    ("I left my bag there. my locker code is {secret} .", "3 9 1 7", 1, "Gyms", "3.0"),
    ("Call me back, my pin number is {secret} .", "5 0 8 2", 4, "Dentists", "2.0"),
    ("The wifi password they gave me is {secret} .", "7 4 6 1", 16, "Coffee & Tea", "4.0"),
]


@dataclass
class DemoData:
    dataset: DatasetDict  # train / validation / test (private) and public
    canaries: list[dict] = field(default_factory=list)
    control_fields: dict[str, str] = field(default_factory=lambda: dict(CONTROL_FIELDS))

    @property
    def domain(self) -> dict[str, list[str]]:
        """The public control-code domain (declared, not read off the private data)."""
        return {"category": list(PRIVATE_CATEGORIES), "stars": list(STARS)}


def _review(rng: np.random.Generator, spec, stars: str) -> str:
    _, things, staff, places = spec
    adjs, closers = SENTIMENT[stars]
    sentences = []
    if rng.random() < 0.5:
        sentences.append(str(rng.choice(FILLER)))
    for _ in range(int(rng.integers(2, 5))):
        t = str(rng.choice(TEMPLATES))
        adj, adj2 = str(rng.choice(adjs)), str(rng.choice(adjs))
        sentences.append(
            t.format(
                thing=rng.choice(things),
                staff=rng.choice(staff),
                place=rng.choice(places),
                adj=adj,
                adj2=adj2,
                Adj=adj.capitalize(),
            )
        )
    sentences.append(str(rng.choice(closers)))
    return " ".join(sentences)


def _star_probs(rng: np.random.Generator) -> np.ndarray:
    base = np.array([0.12, 0.1, 0.15, 0.28, 0.35])
    return base / base.sum()


def _sample(rng, categories, n: int) -> dict[str, list[str]]:
    names = list(categories)
    freq = np.array([categories[c][0] for c in names])
    freq = freq / freq.sum()
    rows = {"category": [], "stars": [], "text": []}
    star_p = _star_probs(rng)
    for _ in range(n):
        cat = names[int(rng.choice(len(names), p=freq))]
        stars = STARS[int(rng.choice(5, p=star_p))]
        rows["category"].append(cat)
        rows["stars"].append(stars)
        rows["text"].append(_review(rng, categories[cat], stars))
    return rows


def make_demo_dataset(
    num_train: int = 4000,
    num_validation: int = 500,
    num_test: int = 500,
    num_public: int = 4000,
    seed: int = 0,
) -> DemoData:
    """Generate the demo corpus deterministically from `seed`."""
    for name, n in (
        ("num_train", num_train),
        ("num_validation", num_validation),
        ("num_test", num_test),
        ("num_public", num_public),
    ):
        if n <= 0:
            raise ValueError(f"{name}={n} must be > 0.")
    rng = np.random.default_rng(seed)
    splits = {
        "train": _sample(rng, PRIVATE_CATEGORIES, num_train),
        "validation": _sample(rng, PRIVATE_CATEGORIES, num_validation),
        "test": _sample(rng, PRIVATE_CATEGORIES, num_test),
        "public": _sample(rng, PUBLIC_CATEGORIES, num_public),
    }
    canaries = []
    train = splits["train"]
    for i, (template, secret, repeats, cat, stars) in enumerate(CANARIES):
        text = template.replace("{secret}", secret)
        for _ in range(repeats):
            train["category"].append(cat)
            train["stars"].append(stars)
            train["text"].append(text)
        canaries.append(
            {
                "name": f"canary_{i}",
                "template": template,
                "secret": secret,
                "repeats": repeats,
                "category": cat,
                "stars": stars,
            }
        )
    order = rng.permutation(len(train["text"]))
    splits["train"] = {k: [v[j] for j in order] for k, v in train.items()}
    dataset = DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})
    return DemoData(dataset=dataset, canaries=canaries)
