"""The demo: enrich a DataFrame on the built-in simulator, no API key needed.

    python -m dfbatch.demo [--rows 1000] [--rpm 6000]

It starts the OpenAI simulator on 127.0.0.1 with a 6,000 RPM limit enforced over 1-second
windows and some server faults, then embeds and classifies a table of product reviews with
progress bars, and prints the result and the run's summary.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path

import pandas as pd

import dfbatch  # noqa: F401  (registers .llm)
from dfbatch.testing import Faults, Simulator

PRODUCTS = ["kettle", "headphones", "desk lamp", "backpack", "coffee grinder", "keyboard"]
OPINIONS = [
    "works perfectly",
    "broke after a week",
    "is fine for the price",
    "exceeded my expectations",
    "arrived late but works",
    "is too loud",
]


def reviews(rows: int, seed: int = 0) -> pd.DataFrame:
    """A table like the ones our users bring: an id, some text, a few NA cells."""
    rng = random.Random(seed)
    text = [f"The {rng.choice(PRODUCTS)} {rng.choice(OPINIONS)}. Review #{i}." for i in range(rows)]
    for i in range(7, rows, 97):  # real tables have holes
        text[i] = None  # type: ignore[call-overload]
    return pd.DataFrame(
        {"review": text, "stars": [rng.randint(1, 5) for _ in range(rows)]},
        index=pd.RangeIndex(10_000, 10_000 + rows, name="review_id"),
    )


SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "product": {"type": "string"},
    },
    "required": ["sentiment", "product"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows in the table (1000)")
    parser.add_argument("--rpm", type=int, default=6000, help="the simulator's RPM limit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pd.set_option("display.width", 120)
    pd.set_option("display.max_colwidth", 40)

    df = reviews(args.rows)
    faults = Faults(error_5xx=0.02, reset=0.005, non_json=0.005)
    with (
        Simulator(
            rpm=args.rpm,
            tpm=2_000_000,
            faults=faults,
            latency=("uniform", 0.05, 0.3),
            shuffle_data=True,
        ) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(
            f"Simulator at {sim.base_url}: {args.rpm:,} RPM over 1-second windows, "
            "2% 5xx, 0.5% resets, 0.5% non-JSON pages.\n"
        )
        options = {"base_url": sim.base_url, "rpm": args.rpm, "cache": Path(tmp) / "cache.sqlite"}
        out = df.llm.embed("review", dimensions=256, batch_size=64, **options).llm.complete(
            "Classify this review: {review}",
            system="Answer in JSON.",
            response_format=SCHEMA,
            expand=True,
            output="label",
            max_tokens=50,
            **options,
        )
        print()
        shown = out[["review", "stars", "embedding", "sentiment", "label_error"]].head(10)
        shown = shown.assign(
            embedding=shown["embedding"].map(
                lambda v: None if v is None else f"float32[{v.shape[0]}] {v[0]:+.3f} {v[1]:+.3f} .."
            )
        )
        print(shown.to_string())
        print(
            f"\n{len(out):,} rows; embedding: {out['embedding'].notna().sum():,} vectors of "
            f"{out['embedding'].dropna().iloc[0].shape[0]} float32; "
            f"rows not sent (NA review): {out['review'].isna().sum()}"
        )
        print("run figures (out.attrs['dfbatch']):", out.attrs["dfbatch"])
        path = Path(tmp) / "reviews.parquet"
        out.to_parquet(path)
        back = pd.read_parquet(path)
        print(
            f"saved to parquet and read back: {back.shape[0]:,} rows, embedding dtype "
            f"{back['embedding'].dropna().iloc[0].dtype}"
        )


if __name__ == "__main__":
    main()
