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

import json
import random
from dataclasses import dataclass, field
from importlib import resources
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


@dataclass(frozen=True)
class Sentiment:
    """How a review with a given star rating sounds."""

    adjectives: tuple[str, ...]
    openers: tuple[str, ...]
    closers: tuple[str, ...]
    verdicts: tuple[str, ...]  # e.g. "{Staff} was {adj}." style lines


#: The corpus's words, package data next to this module: each category's :class:`CategorySpec` fields (no
#: ``star_shift``: none), each star rating's :class:`Sentiment`, and the filler sentences about the visit,
#: which do not depend on the codes (shared by every category and rating).
WORDS_FILE = "demo_words.json"


def _load_words() -> dict[str, Any]:
    return json.loads(resources.files("hf_dpkd.data").joinpath(WORDS_FILE).read_text(encoding="utf-8"))


def _tuples(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


_WORDS = _load_words()
PRIVATE_CATEGORIES: tuple[CategorySpec, ...] = tuple(
    CategorySpec(**_tuples(c)) for c in _WORDS["private_categories"]
)
PUBLIC_CATEGORIES: tuple[CategorySpec, ...] = tuple(
    CategorySpec(**_tuples(c)) for c in _WORDS["public_categories"]
)
SENTIMENT: dict[str, Sentiment] = {stars: Sentiment(**_tuples(s)) for stars, s in _WORDS["sentiment"].items()}
FILLER: tuple[str, ...] = tuple(_WORDS["filler"])

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
