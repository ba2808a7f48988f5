"""The embedded demo corpus: a deterministic stand-in for the Yelp setting of DistilDP.

Control-coded reviews (business category x star rating). What a review talks about (dishes, services,
staff, places, category-specific details) depends on the category; its sentiment (adjectives, openers,
closers, contrasts) on the stars; templates, sentence counts and shared filler vary. A model that learns
the conditioning therefore reaches a lower perplexity than one that ignores it.

Splits: train / validation / test are PRIVATE (10 categories, Yelp-like skewed frequencies, per-category
star distributions); `public` is drawn from a SHIFTED distribution (other categories, same language
style) and stands for public pretraining data. Canary secrets are planted in the train split only, each
a known number of times, so an audit can compute their exposure (Carlini et al. 2019).

Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

CONTROL_FIELDS = {"category": "Business Category", "stars": "Review Stars"}
STARS = ("1.0", "2.0", "3.0", "4.0", "5.0")
#: Yelp-like marginal star distribution (5 most common, then 4, then 1; 2 and 3 rarest).
BASE_STAR_PROBS = (0.15, 0.09, 0.11, 0.22, 0.43)


@dataclass(frozen=True)
class CategorySpec:
    """What reviews of one business category talk about.

    `items`: what a customer gets (dishes, services); `staff`; `aspects`: places and features;
    `visit`: how a visit starts ("ordered", "booked"); `details`: category-specific sentences
    (may use {n}); `star_shift`: added to the base star log-probabilities (some categories are
    more polarised than others, as on Yelp).
    """

    name: str
    weight: float
    items: tuple[str, ...]
    staff: tuple[str, ...]
    aspects: tuple[str, ...]
    visit: tuple[str, ...]
    details: tuple[str, ...]
    star_shift: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)


def _c(name, weight, items, staff, aspects, visit, details, star_shift=(0.0,) * 5) -> CategorySpec:
    return CategorySpec(
        name, weight, tuple(items), tuple(staff), tuple(aspects), tuple(visit), tuple(details), star_shift
    )


PRIVATE_CATEGORIES: tuple[CategorySpec, ...] = (
    _c(
        "Restaurants",
        0.27,
        ["pasta", "steak", "burger", "salad", "soup", "dessert", "fries", "curry", "tacos", "roast chicken"],
        ["waiter", "chef", "host", "server", "manager"],
        ["dining room", "patio", "menu", "portions", "wine list", "table"],
        ["We ordered the", "I had the", "My husband got the", "We shared the"],
        [
            "We waited {n} minutes for a table.",
            "The portions were huge and we took half home.",
            "Reservations are a must on weekends.",
            "The specials change every week.",
        ],
    ),
    _c(
        "Bars",
        0.12,
        ["cocktails", "beer", "wine", "whiskey", "nachos", "wings", "margaritas", "sliders"],
        ["bartender", "bouncer", "server", "DJ"],
        ["dance floor", "terrace", "happy hour", "jukebox", "pool table"],
        ["We ordered the", "I had the", "We split the"],
        [
            "Happy hour runs until {n} and the drinks are half off.",
            "The music was loud and the place was packed.",
            "There is a trivia night every Wednesday.",
            "They have {n} beers on tap.",
        ],
        (0.0, 0.1, 0.2, 0.2, -0.2),
    ),
    _c(
        "Coffee & Tea",
        0.1,
        ["latte", "espresso", "green tea", "croissant", "muffin", "cold brew", "chai", "scone"],
        ["barista", "cashier"],
        ["seating", "wifi", "window seat", "line", "outlets"],
        ["I grabbed the", "I ordered the", "I picked up the"],
        [
            "It is a great spot to work on a laptop.",
            "The line was {n} people deep at eight in the morning.",
            "They roast their own beans.",
            "Oat milk costs extra.",
        ],
        (-0.3, -0.2, 0.0, 0.2, 0.2),
    ),
    _c(
        "Bakeries",
        0.08,
        ["sourdough", "cupcakes", "bagels", "pie", "cookies", "birthday cake", "cinnamon rolls", "baguette"],
        ["baker", "clerk"],
        ["display case", "counter", "shelves", "bread basket"],
        ["I picked up the", "We bought the", "I ordered the"],
        [
            "Everything is baked fresh every morning.",
            "They sell out of the best stuff by noon.",
            "I ordered a custom cake {n} days ahead.",
            "The whole block smells like fresh bread.",
        ],
        (-0.4, -0.2, 0.0, 0.1, 0.4),
    ),
    _c(
        "Pizza",
        0.09,
        [
            "pepperoni pizza",
            "crust",
            "garlic knots",
            "calzone",
            "margherita",
            "white pie",
            "meat lovers slice",
        ],
        ["delivery driver", "cook", "cashier"],
        ["brick oven", "booth", "takeout window", "slice counter"],
        ["We ordered the", "I got the", "We had the"],
        [
            "Delivery took {n} minutes.",
            "The cheese was stretchy and the sauce was sweet.",
            "They sell it by the slice at lunch.",
            "The pie came out of a wood fired oven.",
        ],
    ),
    _c(
        "Sushi Bars",
        0.07,
        ["salmon nigiri", "tuna roll", "miso soup", "sashimi", "edamame", "dragon roll", "omakase"],
        ["sushi chef", "server"],
        ["sushi bar", "conveyor belt", "booth", "tatami room"],
        ["We ordered the", "I tried the", "We went for the"],
        [
            "The fish is flown in {n} times a week.",
            "Sit at the bar and watch the chef work.",
            "The rice was seasoned just right.",
            "All you can eat is only at lunch.",
        ],
    ),
    _c(
        "Hair Salons",
        0.08,
        ["haircut", "color", "blowout", "highlights", "trim", "balayage", "perm"],
        ["stylist", "receptionist", "colorist"],
        ["chair", "waiting area", "mirror", "shampoo sink"],
        ["I booked the", "I came in for the", "I went for the"],
        [
            "My appointment ran {n} minutes late.",
            "She listened to exactly what I wanted.",
            "They offered me coffee while the color set.",
            "Booking online was simple.",
        ],
        (0.1, -0.1, -0.3, 0.0, 0.3),
    ),
    _c(
        "Gyms",
        0.07,
        ["classes", "weights", "treadmills", "yoga session", "spin class", "personal training", "sauna"],
        ["trainer", "front desk staff", "coach"],
        ["locker room", "showers", "gym floor", "studio", "parking lot"],
        ["I signed up for the", "I tried the", "I have been going for the"],
        [
            "The membership is {n} dollars a month.",
            "Cancelling the contract was a nightmare.",
            "It gets crowded after five.",
            "They wipe down the machines every hour.",
        ],
        (0.3, 0.1, 0.0, 0.0, -0.1),
    ),
    _c(
        "Dentists",
        0.06,
        ["cleaning", "filling", "x-rays", "whitening", "checkup", "crown", "root canal"],
        ["dentist", "hygienist", "receptionist"],
        ["waiting room", "office", "exam chair", "billing"],
        ["I came in for the", "I scheduled the", "I needed the"],
        [
            "They took my insurance without any trouble.",
            "The visit took {n} minutes.",
            "They explained every step before starting.",
            "They sent a reminder text the day before.",
        ],
        (0.2, -0.3, -0.4, -0.1, 0.4),
    ),
    _c(
        "Plumbing",
        0.06,
        ["leak repair", "water heater", "drain cleaning", "new faucet", "toilet repair", "sewer line"],
        ["plumber", "dispatcher", "technician"],
        ["estimate", "invoice", "kitchen sink", "basement"],
        ["I called them for the", "They came out for the", "I hired them for the"],
        [
            "They showed up within {n} hours.",
            "The quote was fair and there were no surprises.",
            "He put on shoe covers before coming in.",
            "They charged a {n} dollar trip fee.",
        ],
        (0.5, 0.0, -0.4, -0.2, 0.3),
    ),
)

PUBLIC_CATEGORIES: tuple[CategorySpec, ...] = (
    _c(
        "Hotels",
        0.25,
        ["room", "bed", "breakfast buffet", "pool", "suite", "room service"],
        ["concierge", "housekeeper", "desk clerk", "bellhop"],
        ["lobby", "hallway", "elevator", "view", "parking garage"],
        ["We booked the", "We stayed in the", "I reserved the"],
        [
            "Check in took {n} minutes.",
            "The walls were thin and we heard everything.",
            "The view from the {n}th floor was great.",
            "They let us check out late.",
        ],
    ),
    _c(
        "Auto Repair",
        0.2,
        ["oil change", "brakes", "tires", "alignment", "engine check", "transmission"],
        ["mechanic", "service advisor"],
        ["garage", "waiting room", "invoice", "lot"],
        ["I brought my car in for the", "I took the truck in for the", "I scheduled the"],
        [
            "They had the car ready in {n} hours.",
            "They showed me the worn parts.",
            "The quote matched the final bill.",
            "They offered a ride home.",
        ],
    ),
    _c(
        "Pet Services",
        0.15,
        ["grooming", "boarding", "nail trim", "bath", "dog walking", "daycare"],
        ["groomer", "vet tech", "walker"],
        ["kennel", "front desk", "play area", "lobby"],
        ["I dropped my dog off for the", "We booked the", "I brought the cat in for the"],
        [
            "They sent photos while he stayed {n} nights.",
            "My dog was happy to go back.",
            "They remembered her name.",
            "The yard is fenced and clean.",
        ],
    ),
    _c(
        "Museums",
        0.15,
        ["exhibit", "gallery", "tour", "sculptures", "gift shop", "audio guide"],
        ["guide", "docent", "guard"],
        ["hall", "entrance", "cafe", "garden"],
        ["We took the", "We paid for the", "I visited the"],
        [
            "We spent {n} hours there.",
            "Entry is free on the first Sunday.",
            "The kids loved the hands on section.",
            "Bags must be checked at the door.",
        ],
    ),
    _c(
        "Grocery",
        0.15,
        ["produce", "bakery aisle", "deli counter", "frozen section", "cheese selection", "meat counter"],
        ["cashier", "bagger", "stock clerk"],
        ["checkout", "parking lot", "aisles", "self checkout"],
        ["I stopped in for the", "I checked out the", "I went straight to the"],
        [
            "Only {n} registers were open.",
            "Prices are a bit higher than elsewhere.",
            "They have a good bulk section.",
            "The carts are always dirty.",
        ],
    ),
    _c(
        "Nail Salons",
        0.1,
        ["manicure", "pedicure", "gel polish", "acrylics", "nail art"],
        ["nail tech", "receptionist"],
        ["pedicure chair", "polish wall", "waiting area"],
        ["I came in for the", "I booked the", "We got the"],
        [
            "The polish lasted {n} days.",
            "They were fast but a bit rough.",
            "Walk ins are welcome.",
            "They sanitize the tools after every client.",
        ],
    ),
)


@dataclass(frozen=True)
class Sentiment:
    """How a review with a given star rating sounds."""

    adjectives: tuple[str, ...]
    openers: tuple[str, ...]
    closers: tuple[str, ...]
    verdicts: tuple[str, ...]  # e.g. "{Staff} was {adj}." style lines


SENTIMENT: dict[str, Sentiment] = {
    "1.0": Sentiment(
        ("terrible", "awful", "disgusting", "rude", "horrible", "filthy", "cold"),
        ("Where do I even start.", "This was the worst experience I have had in years.", "Stay away."),
        ("I will never come back.", "Avoid this place.", "What a waste of money.", "Zero stars if I could."),
        (
            "Nobody apologized.",
            "I asked for a refund and they laughed.",
            "I left angry and hungry for answers.",
        ),
    ),
    "2.0": Sentiment(
        ("disappointing", "slow", "bland", "overpriced", "sloppy", "mediocre"),
        ("I wanted to like this place.", "I had high hopes.", "Not what I expected."),
        ("Probably not coming back.", "Not worth it.", "I expected much more.", "Meh overall."),
        ("It was not terrible but it was not good either.", "Too many small problems added up."),
    ),
    "3.0": Sentiment(
        ("okay", "average", "decent", "fine", "ordinary", "hit or miss"),
        ("It was alright.", "Mixed feelings about this one.", "Solidly in the middle."),
        ("Might try again.", "Some good, some bad.", "Nothing special.", "It does the job."),
        ("Some things were great and some were not.", "It was about what you would expect for the price."),
    ),
    "4.0": Sentiment(
        ("good", "tasty", "friendly", "clean", "solid", "pleasant"),
        ("Really nice experience.", "Glad we tried this place.", "Pleasantly surprised."),
        ("I would come back.", "Pretty happy overall.", "Recommended.", "Worth a visit."),
        ("Just a few small things kept it from five stars.", "Service was quick and friendly."),
    ),
    "5.0": Sentiment(
        ("amazing", "perfect", "wonderful", "fantastic", "outstanding", "incredible"),
        ("Wow.", "I cannot say enough good things.", "Hands down the best in town."),
        ("Best in town!", "Absolutely love it!", "Five stars, no doubt!", "Cannot wait to return!"),
        ("Everything was perfect from start to finish.", "They went above and beyond for us."),
    ),
}
#: Sentences about the visit that do not depend on the codes (shared by every category and rating).
FILLER = (
    "We went on a Tuesday.",
    "It was busy that night.",
    "My friend recommended it.",
    "Parking was easy.",
    "We came with the whole family.",
    "I stopped by after work.",
    "It was my first visit.",
    "I have been here {n} times now.",
    "We found it on a map while driving around.",
    "It is close to my office.",
)
#: Sentence templates about one item / staff member / aspect with a star-dependent adjective.
TEMPLATES = (
    "The {item} {was} {adj}.",
    "Our {staff} was {adj}.",
    "The {aspect} {aspect_was} {adj}.",
    "{Visit} {item} and {it_was} {adj}.",
    "Honestly the {item} here {is} {adj}.",
    "The {staff} made the {item} {adj}.",
    "{Adj} {item}, {adj2} {aspect}.",
    "{Visit} {item}, and the {staff} was {adj}.",
    "I would call the {aspect} {adj}.",
)
#: 3 stars: contrasts between a positive and a negative adjective.
CONTRASTS = (
    "The {item} {was} {pos} but the {aspect} {aspect_was} {neg}.",
    "Our {staff} was {pos}, although the {item} {was} {neg}.",
    "{Pos} {item}, {neg} {aspect}.",
)
#: Probability that a sentence's adjectives come from a neighbouring star rating.
NEIGHBOUR_MOOD = 0.25
POSITIVE, NEGATIVE = SENTIMENT["4.0"].adjectives, SENTIMENT["2.0"].adjectives

#: Canaries: (template, repeats, category, stars). Secret: 4 digits separated by spaces (10^4 candidates).
CANARY_SPECS = (
    ("I left my gym bag in a hurry and my locker code is {secret} .", 1, "Gyms", "3.0"),
    ("They asked me to call back and my patient pin is {secret} .", 4, "Dentists", "2.0"),
    ("The wifi password they gave me at the counter is {secret} .", 16, "Coffee & Tea", "4.0"),
)
CANARY_ALPHABET = tuple("0123456789")
CANARY_LENGTH = 4
CANARY_SEPARATOR = " "


@dataclass
class DemoData:
    """The demo corpus: `dataset` (train / validation / test private, public), planted canaries, fields.

    `canaries` are JSON-ready dicts: name, template ("...{secret}..."), secret, text, prefix (the paper's
    control-code prompt), repeats, category, stars, alphabet, separator, length, space_size.
    """

    dataset: DatasetDict
    canaries: list[dict[str, Any]] = field(default_factory=list)
    control_fields: dict[str, str] = field(default_factory=lambda: dict(CONTROL_FIELDS))

    @property
    def domain(self) -> dict[str, list[str]]:
        """The public control-code domain (declared, not read off the private data)."""
        return {"category": [c.name for c in PRIVATE_CATEGORIES], "stars": list(STARS)}

    @property
    def public_domain(self) -> dict[str, list[str]]:
        """The control codes of the public split (shifted categories)."""
        return {"category": [c.name for c in PUBLIC_CATEGORIES], "stars": list(STARS)}

    def public_texts(self, fmt=None) -> list[str]:
        """The public pretraining texts: each shifted-category review after its control-code prompt (`fmt`'s,
        default the paper's format), each covered-language review (empty codes) as plain text."""
        fmt = fmt or _default_format()
        public = self.dataset["public"]
        return [fmt.format_training_text(r, r["text"]) if r["category"] else r["text"] for r in public]

    def audit_canaries(self, fmt=None) -> list:
        """The canaries as :class:`hf_dpkd.audit.Canary` objects, prefixed with `fmt`'s prompt
        (default: the paper's format over :data:`CONTROL_FIELDS`)."""
        from hf_dpkd.audit.canaries import Canary

        fmt = fmt or _default_format()
        return [
            Canary(
                secret=c["secret"],
                template=c["template"],
                prefix=fmt.format_prompt({"category": c["category"], "stars": c["stars"]}),
                alphabet=tuple(c["alphabet"]),
                separator=c["separator"],
                repeats=c["repeats"],
                name=c["name"],
            )
            for c in self.canaries
        ]


def _default_format():
    from hf_dpkd.synthetic.control_codes import ControlCodeFormat

    return ControlCodeFormat(fields=tuple(CONTROL_FIELDS.items()))


def _plural(noun: str) -> bool:
    return noun.endswith("s") and not noun.endswith("ss")


def _number(rng: random.Random) -> str:
    return str(rng.choice((2, 3, 4, 5, 10, 15, 20, 30, 45, 60)))


def _sentence(rng: random.Random, spec: CategorySpec, stars: str) -> str:
    """One sentence about an item, staff member or aspect of `spec`, in the sentiment of `stars`."""
    item, aspect = rng.choice(spec.items), rng.choice(spec.aspects)
    slots = {
        "item": item,
        "staff": rng.choice(spec.staff),
        "aspect": aspect,
        "was": "were" if _plural(item) else "was",
        "is": "are" if _plural(item) else "is",
        "it_was": "they were" if _plural(item) else "it was",
        "aspect_was": "were" if _plural(aspect) else "was",
    }
    if stars == "3.0" and rng.random() < 0.5:
        pos, neg = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        return rng.choice(CONTRASTS).format(pos=pos, neg=neg, Pos=pos.capitalize(), **slots)
    adjectives = SENTIMENT[_mood_of(rng, stars)].adjectives
    adj, adj2 = rng.choice(adjectives), rng.choice(adjectives)
    return rng.choice(TEMPLATES).format(
        adj=adj, adj2=adj2, Adj=adj.capitalize(), Visit=rng.choice(spec.visit), **slots
    )


def _mood_of(rng: random.Random, stars: str) -> str:
    """Mostly the review's own rating, sometimes a neighbouring one (real ratings are fuzzy)."""
    if rng.random() >= NEIGHBOUR_MOOD:
        return stars
    k = STARS.index(stars) + rng.choice((-1, 1))
    return STARS[min(max(k, 0), len(STARS) - 1)]


def make_review(rng: random.Random, spec: CategorySpec, stars: str) -> str:
    """A review of a `spec` business with `stars`: opener, 2-5 content sentences, details, filler, closer."""
    parts: list[str] = []
    if rng.random() < 0.6:
        parts.append(rng.choice(SENTIMENT[_mood_of(rng, stars)].openers))
    if rng.random() < 0.4:
        parts.append(rng.choice(FILLER).format(n=_number(rng)))
    # Unhappy reviewers write more, as on Yelp.
    low, high = (2, 5) if stars in ("1.0", "2.0") else (2, 4)
    for _ in range(rng.randint(low, high)):
        parts.append(_sentence(rng, spec, stars))
    if rng.random() < 0.7:
        parts.append(rng.choice(spec.details).format(n=_number(rng)))
    if rng.random() < 0.5:
        parts.append(rng.choice(SENTIMENT[_mood_of(rng, stars)].verdicts))
    parts.append(rng.choice(SENTIMENT[_mood_of(rng, stars)].closers))
    return " ".join(parts)


def _star_probs(spec: CategorySpec) -> np.ndarray:
    logits = np.log(np.array(BASE_STAR_PROBS)) + np.array(spec.star_shift)
    p = np.exp(logits)
    return p / p.sum()


def _sample(seed: list[int], categories: tuple[CategorySpec, ...], n: int) -> dict[str, list[str]]:
    """`n` reviews: codes drawn with numpy (category weights, per-category stars), texts with `random`."""
    codes_rng = np.random.default_rng(seed)
    weights = np.array([c.weight for c in categories])
    cats = codes_rng.choice(len(categories), size=n, p=weights / weights.sum())
    stars = np.empty(n, dtype=np.int64)
    for k, spec in enumerate(categories):
        mask = cats == k
        stars[mask] = codes_rng.choice(len(STARS), size=int(mask.sum()), p=_star_probs(spec))
    text_rng = random.Random(int(codes_rng.integers(2**63)))
    rows: dict[str, list[str]] = {"category": [], "stars": [], "text": []}
    for k, s in zip(cats.tolist(), stars.tolist()):
        rows["category"].append(categories[k].name)
        rows["stars"].append(STARS[s])
        rows["text"].append(make_review(text_rng, categories[k], STARS[s]))
    return rows


def _canaries(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"canaries-{seed}")  # own stream: the canaries do not shift the corpus
    fmt = _default_format()
    out = []
    for i, (template, repeats, category, stars) in enumerate(CANARY_SPECS):
        secret = CANARY_SEPARATOR.join(rng.choice(CANARY_ALPHABET) for _ in range(CANARY_LENGTH))
        out.append(
            {
                "name": f"canary_{i}_x{repeats}",
                "template": template,
                "secret": secret,
                "text": template.replace("{secret}", secret),
                "prefix": fmt.format_prompt({"category": category, "stars": stars}),
                "repeats": repeats,
                "category": category,
                "stars": stars,
                "alphabet": list(CANARY_ALPHABET),
                "separator": CANARY_SEPARATOR,
                "length": CANARY_LENGTH,
                "space_size": len(CANARY_ALPHABET) ** CANARY_LENGTH,
            }
        )
    return out


def _sample_language(seed: list[int], n: int) -> dict[str, list[str]]:
    """`n` reviews of the PRIVATE categories as plain text: uniform categories and stars, no control codes.

    What a web-scale pretraining corpus holds about a private domain: its language (words, phrasing), not
    its records, its label frequencies or the control-code format (the empty codes say "no prompt").
    """
    rng = np.random.default_rng(seed)
    cats = rng.integers(len(PRIVATE_CATEGORIES), size=n)
    stars = rng.integers(len(STARS), size=n)
    text_rng = random.Random(int(rng.integers(2**63)))
    texts = [
        make_review(text_rng, PRIVATE_CATEGORIES[k], STARS[s]) for k, s in zip(cats.tolist(), stars.tolist())
    ]
    return {"category": [""] * n, "stars": [""] * n, "text": texts}


#: Zipf exponent and cap of the number of reviews per demo user: most users write one or two, a few write dozens.
USER_ZIPF_A, USER_MAX_ROWS = 2.0, 40


def _assign_users(seed: list[int], n: int, prefix: str) -> list[str]:
    """A user id for each of `n` rows in random order: user sizes Zipf(2) capped at 40 (mean about 2.6 rows).

    Its own random stream: the users do not change a single review of the corpus."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(min(rng.zipf(USER_ZIPF_A), USER_MAX_ROWS)))
    sizes[-1] -= sum(sizes) - n
    owners = np.repeat(np.arange(len(sizes)), sizes)
    return [f"{prefix}-user-{u:05d}" for u in rng.permutation(owners).tolist()]


def make_demo_dataset(
    num_train: int = 4000,
    num_validation: int = 500,
    num_test: int = 500,
    num_public: int = 4000,
    seed: int = 0,
    plant_canaries: bool = True,
    public_coverage: float = 0.0,
) -> DemoData:
    """Generate the demo corpus deterministically from `seed` (same seed, same rows).

    `num_train` counts the ordinary reviews; the canary rows (1 + 4 + 16 = 21) are added to train on top.
    Every private split has a ``user_id`` column (for user-level DP, ``privacy_unit_column="user_id"``):
    users write 1 to 40 reviews each (Zipf), and each canary is planted by one user of its own across all
    its repeats, so at user level the 16-times canary is one protected unit.
    `public_coverage`: the share of the public split that covers the private domain's LANGUAGE (fresh
    reviews of the private categories, uniform categories and stars, as plain text without control codes,
    see :func:`_sample_language`); the rest is the shifted public categories with their codes.
    """
    if not 0.0 <= public_coverage <= 1.0:
        raise ValueError(
            f"public_coverage={public_coverage!r} must be in [0, 1] (the share of public texts in the private "
            "domain's language)."
        )
    for name, n in (
        ("num_train", num_train),
        ("num_validation", num_validation),
        ("num_test", num_test),
        ("num_public", num_public),
    ):
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"{name}={n!r} must be a positive integer (number of reviews in that split).")
    splits = {
        "train": _sample([seed, 0], PRIVATE_CATEGORIES, num_train),
        "validation": _sample([seed, 1], PRIVATE_CATEGORIES, num_validation),
        "test": _sample([seed, 2], PRIVATE_CATEGORIES, num_test),
        "public": _sample([seed, 3], PUBLIC_CATEGORIES, num_public - round(public_coverage * num_public)),
    }
    covered = round(public_coverage * num_public)
    if covered:
        language = _sample_language([seed, 5], covered)
        public = splits["public"]
        mixed = {k: public[k] + language[k] for k in public}
        order = np.random.default_rng([seed, 6]).permutation(num_public)
        splits["public"] = {k: [v[j] for j in order] for k, v in mixed.items()}
    for k, split in enumerate(("train", "validation", "test")):
        splits[split]["user_id"] = _assign_users([seed, 7, k], len(splits[split]["text"]), split)
    canaries = _canaries(seed) if plant_canaries else []
    train = splits["train"]
    for i, canary in enumerate(canaries):
        for _ in range(canary["repeats"]):
            train["category"].append(canary["category"])
            train["stars"].append(canary["stars"])
            train["text"].append(canary["text"])
            train["user_id"].append(f"train-canary-{i}")
    order = np.random.default_rng([seed, 4]).permutation(len(train["text"]))
    splits["train"] = {k: [v[j] for j in order] for k, v in train.items()}
    dataset = DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})
    return DemoData(dataset=dataset, canaries=canaries)
