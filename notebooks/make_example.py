"""Write notebooks/example.ipynb from the cells below (no outputs), so it can be reviewed as code.

    python notebooks/make_example.py

Cell ids are fixed: tests/test_notebook.py finds the cells whose outputs it checks by id.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

CELLS: list[tuple[str, str, str]] = [
    # (kind, id, source)
    (
        "md",
        "intro",
        """\
# Enrich a DataFrame with an LLM, one line at a time

`import dfbatch` gives every pandas DataFrame and Series an `.llm` accessor:

* `df.llm.embed("column")` adds an embedding column (float32 vectors);
* `df.llm.complete("a prompt with {column} fields")` adds the model's answer for each row.

Both send as few requests as they can, go as fast as your rate limits allow (never
above them), retry what can be retried, and hand back a **new** DataFrame with your index, ready for
method chaining and `to_parquet`. Rows that fail don't stop the run: you get NA and the reason in an
`*_error` column.

This notebook runs against dfbatch's built-in OpenAI simulator, so it needs no API key and costs
nothing. The answers are placeholders, but the requests, limits and errors are real.""",
    ),
    (
        "code",
        "imports",
        """\
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import dfbatch  # registers the .llm accessor
from dfbatch.testing import Faults, Simulator""",
    ),
    (
        "md",
        "simulator-md",
        """\
## 1. Start the simulator

The simulator is a small OpenAI-compatible server on `127.0.0.1`, here with a limit of
6,000 requests a minute, some latency, and a 2% chance of a server error on each request (dfbatch
retries those). We point `base_url` at it; it needs no API key.

**With the real API**, leave `base_url` out and set the `OPENAI_API_KEY` environment variable
(or pass `api_key=`). Pass `rpm=` / `tpm=` with your account's limits, or leave them out and dfbatch
learns them from the server's rate-limit headers.

`cache=` keeps every answer so a re-run doesn't pay twice. Here it is a file in a temporary
folder, so each run of this notebook starts from scratch (`cache=False` turns it off).""",
    ),
    (
        "code",
        "simulator",
        """\
sim = Simulator(
    rpm=6_000,
    tpm=2_000_000,
    latency=("uniform", 0.05, 0.3),
    faults=Faults(error_5xx=0.02),
    shuffle_data=True,
).start()

workdir = Path(tempfile.mkdtemp(prefix="dfbatch-example-"))
llm_options = dict(base_url=sim.base_url, cache=workdir / "cache.sqlite")
print(f"dfbatch {dfbatch.__version__}, simulator at {sim.base_url}")""",
    ),
    (
        "md",
        "table-md",
        """\
## 2. Load a table

Usually `pd.read_csv(...)` or `pd.read_parquet(...)`; here we build 200 product reviews in code.
Like real tables it has holes: two reviews are missing and one is an empty string. One review
carries the simulator's marker `[[invalid-json]]`, which makes the "model" answer it with broken
JSON, so we can see what a failed row looks like.""",
    ),
    (
        "code",
        "table",
        """\
rng = np.random.default_rng(42)
n = 200
products = ["kettle", "headphones", "desk lamp", "backpack", "coffee grinder", "keyboard"]
openers = ["", "Honestly, ", "After a month: ", "Bought it as a gift. ", "Second one I own. "]
verdicts = [
    "works perfectly",
    "broke after a week",
    "is fine for the price",
    "exceeded my expectations",
    "arrived late but works",
    "is far too loud",
    "looks cheaper than in the photos",
]
endings = ["", " Would buy again.", " Returned it.", " Five stars from me.", " Meh."]

product = rng.choice(products, n)
reviews = pd.DataFrame(
    {
        "product": product,
        "stars": rng.integers(1, 6, n),
        "review": [
            f"{rng.choice(openers)}The {p} {rng.choice(verdicts)}.{rng.choice(endings)}"
            for p in product
        ],
    },
    index=pd.Index([f"R-{10_000 + i}" for i in range(n)], name="review_id"),
)
reviews.loc[["R-10017", "R-10133"], "review"] = None  # missing reviews
reviews.loc["R-10042", "review"] = ""  # an empty one
reviews.loc["R-10150", "review"] = "The kettle is great, but [[invalid-json]] happens."

reviews.head()""",
    ),
    (
        "md",
        "estimate-md",
        """\
## 2b. What will it cost? Ask before sending anything

`df.llm.estimate.embed(...)` and `df.llm.estimate.complete(...)` take exactly the arguments of
`embed` and `complete`, plan the run the same way (packing, dedupe, the cache) and send nothing:
rows to send, requests, input tokens (the same count the rate limiter uses), the output bound,
the cost from dfbatch's dated price table (low and high), and the shortest time your limits
allow. Every figure is also an attribute (`est.cost_usd_high`, `est.min_seconds`, ...).""",
    ),
    (
        "code",
        "estimate",
        """\
reviews.llm.estimate.embed("review", dimensions=256, rpm=6_000, tpm=2_000_000, **llm_options)""",
    ),
    (
        "md",
        "embed-md",
        """\
## 3. Embed a column

`embed` adds an `embedding` column: one float32 vector per row (NA where there is no text), and an
`embedding_error` column. `dimensions=256` asks the `text-embedding-3-*` models for shorter vectors.
Many rows go in each request, and a text that appears twice is sent once.

The progress bar shows rows done, requests and tokens a minute, retries, 429s and failed rows, and a
one-line summary follows it (`progress=False` turns both off).""",
    ),
    (
        "code",
        "embed",
        """\
embedded = reviews.llm.embed("review", dimensions=256, **llm_options)
embedded[["review", "embedding", "embedding_error"]].head()""",
    ),
    (
        "code",
        "embed-shape",
        """\
vectors = np.stack(embedded["embedding"].dropna().to_list())
print("matrix for scikit-learn & co.:", vectors.shape, vectors.dtype)
print("rows without a vector:", embedded["embedding"].isna().sum())""",
    ),
    (
        "md",
        "complete-md",
        """\
## 4. Ask the model about every row

`complete` takes a prompt template whose `{fields}` are column names (a name that isn't a column
fails at once, before any request). With a JSON schema as `response_format` each answer is parsed,
and `expand=True` gives one column per field. `output="label"` names the error column
`label_error`.

Everything returns a new DataFrame, so it chains. The embedding step runs again here, but its
vectors come from the cache: no requests.""",
    ),
    (
        "code",
        "complete",
        """\
schema = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "summary": {"type": "string"},
    },
    "required": ["sentiment", "summary"],
}

out = (
    reviews.llm.embed("review", dimensions=256, **llm_options)
    .llm.complete(
        "Classify this review of a {product} ({stars} stars): {review}",
        system="You label product reviews. Answer in JSON.",
        response_format=schema,
        expand=True,
        output="label",
        max_tokens=50,
        **llm_options,
    )
    .assign(review_length=lambda d: d["review"].str.len())
)
out[["product", "stars", "sentiment", "summary", "label_error"]].head()""",
    ),
    (
        "md",
        "failures-md",
        """\
## 5. Look at the failures

A failed row has NA in its output and the reason in its `*_error` column; the other rows are
unaffected. Rows whose review is missing were not sent at all: they get NA and no error.""",
    ),
    (
        "code",
        "failures",
        """\
out.loc[out["label_error"].notna(), ["review", "sentiment", "label_error"]]""",
    ),
    (
        "code",
        "embed-failures",
        """\
out.loc[out["embedding_error"].notna(), ["review", "embedding", "embedding_error"]]""",
    ),
    (
        "md",
        "summary-md",
        """\
The run's figures (requests, tokens, retries, 429s, time, failed rows, the money spent) are in
`out.attrs["dfbatch"]`, also printed as a summary under each progress bar.""",
    ),
    (
        "code",
        "summary",
        """\
out.attrs["dfbatch"]""",
    ),
    (
        "md",
        "budget-md",
        """\
## 5b. A budget that is never passed

`budget=` (USD) is a hard cap: before each request dfbatch reserves its worst case (its input
plus `max_tokens` of output) and settles it with the real cost when it answers. When the next
request could pass the budget, nothing more is sent: the rows left say "budget reached" in their
`*_error` column and the run ends normally. Here we allow a quarter of the high estimate.""",
    ),
    (
        "code",
        "budget",
        """\
prompt = "Translate to French: {review}"
est = reviews.llm.estimate.complete(prompt, max_tokens=40, **llm_options)
budget = est.cost_usd_high / 4
capped = reviews.llm.complete(prompt, max_tokens=40, budget=budget, **llm_options)
figures = capped.attrs["dfbatch"]
print(f"estimate: {est.cost_usd_low:.6f} to {est.cost_usd_high:.6f} USD; budget {budget:.6f} USD")
print(f"spent {figures['cost_usd']:.6f} USD; within budget:", figures["cost_usd"] <= budget)
print("rows stopped by the budget:", figures["rows_budget_reached"])""",
    ),
    (
        "md",
        "rerun-md",
        """\
Rows stopped by the budget are not cached, so a rerun with a higher budget sends only them
(identical prompts once): the rows answered before come from the cache.""",
    ),
    (
        "code",
        "rerun",
        """\
again = reviews.llm.complete(prompt, max_tokens=40, budget=budget * 8, **llm_options)
print("requests sent by the rerun:", again.attrs["dfbatch"]["requests"])
print("rows from the cache:", again.attrs["dfbatch"]["rows_from_cache"])
print("rows still stopped:", again.attrs["dfbatch"]["rows_budget_reached"])""",
    ),
    (
        "md",
        "report-md",
        """\
## 5c. The run report

`dfbatch.report(out)` shows a run's figures and plots them: requests per second and tokens per
minute against the limits over time (429s and retries marked), latency percentiles, and the
money spent. `.plot()` returns the matplotlib figure (`pip install "dfbatch[plot]"`), and
`.save("report.png")` or `.save("report.html")` writes it.""",
    ),
    (
        "code",
        "report",
        """\
dfbatch.report(again)""",
    ),
    (
        "md",
        "parquet-md",
        """\
## 6. Save to parquet and read it back

The embeddings are stored as a list of float32 column, and come back as float32 vectors with the
same values.""",
    ),
    (
        "code",
        "parquet",
        """\
path = workdir / "reviews.parquet"
out.to_parquet(path)
back = pd.read_parquet(path)

before, after = out["embedding"].dropna(), back["embedding"].dropna()
same_rows = before.index.equals(after.index)
all_float32 = all(v.dtype == np.float32 for v in after)
same_values = all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
print("same index:", back.index.equals(out.index))
print("vectors read back:", len(after), after.iloc[0].dtype, after.iloc[0].shape)
print("float32 and equal after the round trip:", same_rows and all_float32 and same_values)""",
    ),
    (
        "md",
        "stop-md",
        """\
## 7. Clean up

Stop the simulator and remove the temporary folder (with the cache and the parquet file).""",
    ),
    (
        "code",
        "stop",
        """\
sim.stop()
shutil.rmtree(workdir, ignore_errors=True)""",
    ),
]


def build() -> nbformat.NotebookNode:
    cells = []
    for kind, cell_id, source in CELLS:
        make = new_markdown_cell if kind == "md" else new_code_cell
        cell = make(source)
        cell.id = cell_id
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def main() -> None:
    path = HERE / "example.ipynb"
    nbformat.write(build(), path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
