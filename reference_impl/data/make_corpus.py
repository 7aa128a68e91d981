"""Write the bundled training corpus: English prose about invented places.

The text is made by a small seeded grammar (towns, rivers, weather, trades and
the people who keep them), so it is ours to ship, needs no network, and comes
out byte for byte the same on every run:

    python reference_impl/data/make_corpus.py            # writes corpus.txt
    python reference_impl/data/make_corpus.py --check    # exit 1 if it differs

A character model learns spelling, common words and sentence shape from it in
a few hundred steps, which is all the reference trainer needs.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
from pathlib import Path

SEED = 20240611
TARGET_BYTES = 250_000
OUT_PATH = Path(__file__).resolve().parent / "corpus.txt"

# Word lists kept compact: a grammar reads better as prose than as one item a line.
# fmt: off
ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gl", "h", "k", "l", "m", "n", "p", "r", "s", "st",
          "t", "th", "v", "w", "y"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "ie"]
CODAS = ["", "n", "r", "l", "m", "s", "th", "nd", "rk", "ll", "st"]
PLACE_ENDS = ["ford", "haven", "mere", "holt", "wick", "stead", "moor", "by", "ton", "gate",
              "marsh", "crag"]
FIRST_NAMES = ["Ada", "Bran", "Cora", "Dunstan", "Elsa", "Fenn", "Greta", "Hollis", "Ines", "Jory",
               "Kestrel", "Lorne", "Maud", "Nils", "Orla", "Piet", "Quill", "Rowan", "Sabine",
               "Tobin", "Una", "Vesna", "Wren", "Yara", "Anselm", "Brigid", "Cato", "Dagny",
               "Eamon", "Freya", "Gideon", "Hester"]

TRADES = {
    "weaver": ("looms", "wool", "cloth", "the dye vats"),
    "potter": ("wheels", "clay", "jars", "the kiln"),
    "smith": ("anvils", "iron", "nails", "the forge"),
    "baker": ("ovens", "flour", "loaves", "the bakehouse"),
    "fisher": ("nets", "bait", "herring", "the quay"),
    "miller": ("millstones", "barley", "meal", "the mill race"),
    "carpenter": ("saws", "oak", "beams", "the timber yard"),
    "brewer": ("barrels", "hops", "ale", "the malt house"),
    "tanner": ("pits", "hides", "leather", "the tannery"),
    "chandler": ("wicks", "tallow", "candles", "the shop"),
    "cooper": ("staves", "ash", "casks", "the workshop"),
    "shepherd": ("crooks", "flocks", "fleeces", "the high pasture"),
    "ropemaker": ("walks", "hemp", "rope", "the long shed"),
    "glassblower": ("pipes", "sand", "bottles", "the furnace"),
    "beekeeper": ("hives", "wax", "honey", "the orchard"),
    "salt boiler": ("pans", "brine", "salt", "the shore"),
}

SEASONS = {
    "spring": {
        "weather": [
            "a soft rain fell most mornings",
            "the wind turned mild and smelled of wet earth",
            "fog lay on the fields until noon",
            "the first swallows came back over the river",
            "late frost caught the blossom twice",
        ],
        "work": [
            "sowing the lower fields",
            "mending the winter damage",
            "lambing in the sheds",
            "clearing the ditches",
            "planting beans along the walls",
        ],
    },
    "summer": {
        "weather": [
            "the days were long and dry",
            "thunder rolled over the hills in the evenings",
            "the heat pressed down on the roofs",
            "the river ran low and clear",
            "a warm wind came up from the south every afternoon",
        ],
        "work": [
            "cutting hay",
            "drying fish on the racks",
            "shearing the flocks",
            "carting stone for the new wall",
            "bringing the bees down from the heath",
        ],
    },
    "autumn": {
        "weather": [
            "gales stripped the orchards",
            "the mornings were cold and bright",
            "rain came in long grey sheets off the sea",
            "mist hung over the water meadows",
            "the first geese went over, calling",
        ],
        "work": [
            "gathering apples",
            "threshing in the barns",
            "salting meat for the winter",
            "pressing cider",
            "stacking wood under the eaves",
        ],
    },
    "winter": {
        "weather": [
            "snow closed the high road for a week",
            "the river froze at the edges",
            "a hard wind blew without rest",
            "ice hung from every gutter",
            "the nights were long and very still",
        ],
        "work": [
            "repairing tools by the fire",
            "carving spoons and bowls",
            "spinning yarn",
            "tending the animals in the byres",
            "telling old stories in the hall",
        ],
    },
}

ADJECTIVES = ["quiet", "busy", "old", "narrow", "crowded", "windy", "steep", "green", "muddy",
              "bright", "sleepy", "stubborn", "proud", "small", "grey", "cheerful"]
FEATURES = [
    "a stone bridge",
    "a market square",
    "a ruined tower",
    "a long harbour wall",
    "a chapel with a copper roof",
    "three windmills",
    "a covered well",
    "a ferry landing",
    "an inn called the Lantern",
    "a ring of standing stones",
    "a toll gate",
    "a grain store on stilts",
    "a library of forty books",
    "a clock that runs slow",
]
GOODS_VERBS = ["sold", "traded", "carried", "stored", "counted", "weighed", "packed", "priced"]
FEELINGS = ["pleased", "worried", "tired", "curious", "doubtful", "glad", "restless", "patient"]
SAYINGS = [
    "A full barn is a quiet barn.",
    "Never trust a calm sea in the month of gales.",
    "Mend the roof while the sun is out.",
    "The river keeps its own accounts.",
    "Bread and rope are never wasted.",
    "Ask the miller about the weather and the fisher about the price.",
    "An honest scale is worth a strong wall.",
    "Slow oxen plough straight furrows.",
]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
           "twenty", "forty", "a hundred"]
# fmt: on


def make_name(rng: random.Random, ends: list[str] | None = None) -> str:
    """Return a pronounceable invented name, optionally with a place suffix."""
    syllables = rng.choice([1, 2, 2, 3])
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))
    word += rng.choice(CODAS)
    if ends is not None:
        word += rng.choice(ends)
    return word.capitalize()


class World:
    """Invented towns, rivers and people, fixed once from the seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rivers = [make_name(rng) for _ in range(8)]
        self.towns = []
        for _ in range(24):
            self.towns.append(
                {
                    "name": make_name(rng, PLACE_ENDS),
                    "river": rng.choice(self.rivers),
                    "adjective": rng.choice(ADJECTIVES),
                    "feature": rng.choice(FEATURES),
                    "trades": rng.sample(sorted(TRADES), 3),
                    "people": [
                        (rng.choice(FIRST_NAMES), make_name(rng), trade)
                        for trade in rng.sample(sorted(TRADES), 4)
                    ],
                }
            )


def describe_town(rng: random.Random, town: dict, world: World) -> list[str]:
    """Opening sentences of a chapter: where the town is and what it lives on."""
    name, river = town["name"], town["river"]
    neighbour = rng.choice([t for t in world.towns if t is not town])["name"]
    a, b, c = town["trades"]
    return [
        f"{name} is a {town['adjective']} town on the river {river}, "
        f"{rng.choice(NUMBERS)} miles from {neighbour}.",
        f"It has {town['feature']}, and most of its people live by the work of the "
        f"{a}, the {b} and the {c}.",
        rng.choice(
            [
                f"Travellers say the road into {name} is the worst in the valley.",
                f"On clear days you can see the smoke of {neighbour} from the hill above it.",
                f"The oldest house in {name} is said to be older than the river's name.",
                f"Nobody in {name} remembers who built {town['feature']}.",
            ]
        ),
    ]


def trade_sentence(rng: random.Random, person: tuple[str, str, str], town: dict) -> str:
    """One sentence about a person at their trade."""
    first, family, trade = person
    tools, material, product, place = TRADES[trade]
    count = rng.choice(NUMBERS)
    return rng.choice(
        [
            f"{first} {family}, the {trade}, worked at {place} from first light, "
            f"and by evening had {count} {product} ready.",
            f"The {trade} {first} {family} bought {material} from the boats and "
            f"{rng.choice(GOODS_VERBS)} {product} at the market.",
            f"{first} kept the {tools} in good order, because a {trade} with bad {tools} "
            f"makes poor {product}.",
            f"When the {material} was late, {first} {family} was {rng.choice(FEELINGS)} "
            f"and walked down to {place} to wait for it.",
            f"At {place}, {first} showed an apprentice how to judge {material} by its weight "
            f"and smell.",
        ]
    )


def season_paragraph(rng: random.Random, town: dict, season: str) -> list[str]:
    """Weather and seasonal work for one season in one town."""
    info = SEASONS[season]
    weather = rng.sample(info["weather"], 2)
    work = rng.sample(info["work"], 2)
    sentences = [
        f"In {season}, {weather[0]}, and {weather[1]}.",
        f"The people of {town['name']} spent those weeks {work[0]} and {work[1]}.",
    ]
    for person in rng.sample(town["people"], 2):
        sentences.append(trade_sentence(rng, person, town))
    return sentences


def dialogue(rng: random.Random, town: dict) -> list[str]:
    """A short exchange between two townspeople."""
    (f1, _, t1), (f2, _, t2) = rng.sample(town["people"], 2)
    season = rng.choice(sorted(SEASONS))
    return [
        f'"Will the {t1}s have enough before {season}?" asked {f2}.',
        f'"If the river stays kind," said {f1}. "{rng.choice(SAYINGS)}"',
        f"{f2} the {t2} laughed at that, but did not argue.",
    ]


def journey(rng: random.Random, world: World, town: dict) -> list[str]:
    """A trip from this town to another, with the goods carried."""
    other = rng.choice([t for t in world.towns if t is not town])
    first, family, trade = rng.choice(town["people"])
    product = TRADES[trade][2]
    days = rng.choice(["one day", "two days", "three days", "a week"])
    return [
        f"Once, {first} {family} took a cart of {product} to {other['name']}, "
        f"{days} along the {other['river']}.",
        rng.choice(
            [
                f"The road was {rng.choice(ADJECTIVES)} and the ferry was late, "
                f"but the {product} arrived dry.",
                f"In {other['name']} the price was better than at home, "
                f"and {first} came back {rng.choice(FEELINGS)}.",
                f"At {other['feature']} in {other['name']}, {first} met a {rng.choice(sorted(TRADES))} "
                f"who wanted {product} in exchange for news.",
            ]
        ),
    ]


def chapter(rng: random.Random, world: World, number: int) -> str:
    """One chapter: a town, its seasons, a conversation and a journey."""
    town = rng.choice(world.towns)
    paragraphs = [describe_town(rng, town, world)]
    for season in rng.sample(sorted(SEASONS), 2):
        paragraphs.append(season_paragraph(rng, town, season))
    if rng.random() < 0.7:
        paragraphs.append(dialogue(rng, town))
    if rng.random() < 0.6:
        paragraphs.append(journey(rng, world, town))
    body = "\n\n".join(textwrap.fill(" ".join(p), width=78) for p in paragraphs)
    return f"Chapter {number}. {town['name']}\n\n{body}\n"


def make_corpus(seed: int = SEED, target_bytes: int = TARGET_BYTES) -> str:
    """Return the whole corpus text; the same seed gives the same text."""
    rng = random.Random(seed)
    world = World(rng)
    chapters: list[str] = []
    size = 0
    while size < target_bytes:
        text = chapter(rng, world, len(chapters) + 1)
        chapters.append(text)
        size += len(text.encode("utf-8")) + 1
    return "\n".join(chapters)


def main() -> int:
    """Write corpus.txt, or with --check report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = make_corpus()
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print("corpus up to date" if same else f"{args.out} differs from the generator")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
