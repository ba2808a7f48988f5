"""The Hub datasets the loaders know by name, and the PUBLIC domain of their control codes.

Kept apart from the loading code because it is public knowledge about each dataset's schema (its star
ratings, CPC section names, DBpedia classes), never read off the records: the pipeline builds its
control-code distribution over it without spending privacy budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CPC_SECTIONS = {
    "a": "Human Necessities",
    "b": "Performing Operations; Transporting",
    "c": "Chemistry; Metallurgy",
    "d": "Textiles; Paper",
    "e": "Fixed Constructions",
    "f": "Mechanical Engineering; Lighting; Heating; Weapons; Blasting",
    "g": "Physics",
    "h": "Electricity",
    "y": "General Tagging of New or Cross-Sectional Technology",
}
#: Star ratings as the loaders write them ("1.0".."5.0", as in Yue et al.'s Yelp CSV).
YELP_STARS = ("1.0", "2.0", "3.0", "4.0", "5.0")
#: The ten business categories of Yue et al.'s Yelp release (label1 = "Business Category: <name>").
YELP_CATEGORIES = (
    "Arts & Entertainment",
    "Bars",
    "Beauty & Spas",
    "Event Planning & Services",
    "Grocery",
    "Health & Medical",
    "Home & Garden",
    "Hotels & Travel",
    "Restaurants",
    "Shopping",
)
#: The ClassLabel names of ``fancyzhx/dbpedia_14``, in label order.
DBPEDIA_CLASSES = (
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
)
#: Fields of the local Yelp release of Yue et al. (recognised by column and "<Label>: " prefix): their domain.
YUE_YELP_FIELDS = {
    ("label1", "Business Category"): YELP_CATEGORIES,
    ("label2", "Review Stars"): YELP_STARS,
}


@dataclass(frozen=True)
class KnownDataset:
    """A Hub dataset with its text column, control fields [(column, display label)] and their public domain.

    `domain` maps each control column to every value it can take: public knowledge (the dataset's schema),
    not read off the records.
    """

    hub_id: str
    text_column: str
    fields: tuple[tuple[str, str], ...]
    description: str
    domain: dict[str, tuple[str, ...]] = field(default_factory=dict)


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "yelp_review_full": KnownDataset(
        "Yelp/yelp_review_full",
        "text",
        (("stars", "Review Stars"),),
        "Yelp reviews, star rating as the code",
        {"stars": YELP_STARS},
    ),
    "big_patent": KnownDataset(
        "NortheasternUniversity/big_patent",
        "abstract",
        (("cpc_section", "Section"),),
        "US patent abstracts, CPC section name as the code",
        {"cpc_section": tuple(CPC_SECTIONS.values())},
    ),
    "dbpedia_14": KnownDataset(
        "fancyzhx/dbpedia_14",
        "content",
        (("category", "Category"),),
        "DBpedia abstracts, class name as the code",
        {"category": DBPEDIA_CLASSES},
    ),
}
ALIASES = {"yelp": "yelp_review_full", "dbpedia": "dbpedia_14"}


def known_dataset_names() -> list[str]:
    """Names `load_private_dataset` accepts besides paths (aliases included)."""
    return ["demo", *sorted([*KNOWN_DATASETS, *ALIASES])]


def declared_domain(
    name_or_path: str,
    fields: Sequence[tuple[str, str]],
    *,
    hub_kwargs: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """The public control-code domain {column: [values]} the loaders know for `fields` of `name_or_path`.

    `fields` are the (column, label) pairs :func:`load_private_dataset` returned. A known dataset gives the
    values of its own control columns (Big Patent: the names of the sections loaded, ``hub_kwargs`` as
    given to the loader); a local folder in the Yelp format of Yue et al. (``label1`` "Business Category",
    ``label2`` "Review Stars") gives its ten categories and five star ratings. Columns the loaders know
    nothing about are absent: their domain must be declared by the user (``--control_domain``) or it is
    read off the private data, which is NOT private. The values never depend on the records.
    """
    name = ALIASES.get(name_or_path, name_or_path)
    known: dict[str, tuple[str, ...]]
    if name in KNOWN_DATASETS:
        known = dict(KNOWN_DATASETS[name].domain)
        if name == "big_patent":
            sections = (hub_kwargs or {}).get("sections", list(CPC_SECTIONS))
            known["cpc_section"] = tuple(CPC_SECTIONS[s] for s in sections if s in CPC_SECTIONS)
    else:
        known = {
            column: YUE_YELP_FIELDS[(column, label)]
            for column, label in fields
            if (column, label) in YUE_YELP_FIELDS
        }
    return {column: list(known[column]) for column, _ in fields if column in known}
