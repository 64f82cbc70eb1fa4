"""Raw Amazon review dumps (McAuley's JSON lines, optionally gzipped) -> RecBole atomic files.

    python -m recbole_cllm4rec.data.amazon --reviews All_Beauty_5.json.gz [--meta meta_All_Beauty.json.gz] \
        --name amazon-all-beauty-18 --output dataset/ [--kcore 5]

Writes ``<output>/<name>/<name>.inter`` (user_id, item_id, rating, timestamp, review, summary) and, when
item metadata is given, ``<name>.item`` (item_id, title, brand, categories, description). Texts are
stored as whole ``token`` cells (RecBole keeps the exact string) and sanitised so RecBole's reader cannot
break on them: tabs, newlines and runs of whitespace become one space, and double quotes are replaced
by single ones (a cell starting with ``"`` makes pandas' C reader fail). Both the 2014 format
(``categories`` as lists of paths) and the 2018 format (``category`` as a flat list) are read; the 2014
metadata, a Python literal per line rather than JSON, is read too.

Copies are removed before the k-core: one review (the same user, timestamp and non-empty text) attached to several
items is one review of one product shown on its linked listings (the 2018 dumps copy a review to every variant
listing of a product), so it becomes one interaction, with the listing whose asin sorts first (the same listing for
every reviewer of that product). Of several reviews of one (user, item), the latest is kept.
"""

import argparse
import ast
import gzip
import html
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

CONVERSION_RULES = 2  # raised whenever a rule changes what a conversion writes: 2 counts a copied review once


def open_text(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_records(path):
    """JSON lines, or the Python-literal lines of the 2014 metadata dumps."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                try:
                    yield ast.literal_eval(line)
                except (ValueError, SyntaxError) as error:
                    raise ValueError(f"{path}:{number}: neither JSON nor a Python literal: {error}") from None


def sanitise(text):
    """One line of text that RecBole's tab-separated reader keeps intact."""
    if text is None:
        return ""
    if isinstance(text, (list, tuple)):
        text = " ".join(str(part) for part in text)
    text = html.unescape(str(text)).replace('"', "'")
    return " ".join(text.split())


def kcore(interactions, k):
    """Repeatedly drop users and items with fewer than ``k`` interactions."""
    while k > 1:
        user_counts = Counter(user for user, _ in interactions)
        item_counts = Counter(item for _, item in interactions)
        kept = {pair: value for pair, value in interactions.items()
                if user_counts[pair[0]] >= k and item_counts[pair[1]] >= k}
        if len(kept) == len(interactions):
            break
        interactions = kept
    return interactions


def drop_listing_copies(interactions):
    """One interaction per review: of the items a user's review (timestamp and text) was copied to, the first asin."""
    kept = {}
    for (user, item), value in sorted(interactions.items()):
        key = (user, value["timestamp"], value["review"]) if value["review"] else (user, item)
        kept.setdefault(key, ((user, item), value))
    return dict(kept.values())


def item_fields(record):
    categories = record.get("categories") or record.get("category") or []
    if categories and isinstance(categories[0], (list, tuple)):  # 2014: list of category paths
        categories = [name for path in categories for name in path]
    unique = list(dict.fromkeys(sanitise(name).replace(" ", "_") for name in categories if sanitise(name)))
    description = record.get("description") or ""
    return {
        "title": sanitise(record.get("title")),
        "brand": sanitise(record.get("brand")),
        "categories": " ".join(unique),
        "description": sanitise(description),
    }


def convert(reviews, output, name, meta=None, k=0):
    """Convert; returns a summary dict. Duplicate (user, item) reviews keep the latest one; a review copied to
    linked listings counts once."""
    interactions = {}
    for record in read_records(reviews):
        user, item = record.get("reviewerID"), record.get("asin")
        if not user or not item:
            continue
        timestamp = record.get("unixReviewTime") or 0
        previous = interactions.get((user, item))
        if previous is None or timestamp >= previous["timestamp"]:
            interactions[(user, item)] = {
                "rating": float(record.get("overall") or 0),
                "timestamp": int(timestamp),
                "review": sanitise(record.get("reviewText")),
                "summary": sanitise(record.get("summary")),
            }
    if not interactions:
        raise ValueError(f"{reviews} holds no review with both reviewerID and asin")
    copies = len(interactions)
    interactions = drop_listing_copies(interactions)
    copies -= len(interactions)
    interactions = kcore(interactions, k)
    if not interactions:
        raise ValueError(f"{reviews}: no interaction is left in the {k}-core once copied reviews count once")
    folder = Path(output) / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(interactions.items(), key=lambda entry: (entry[0][0], entry[1]["timestamp"], entry[0][1]))
    with open(folder / f"{name}.inter", "w", encoding="utf-8", newline="\n") as handle:
        handle.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token\tsummary:token\n")
        for (user, item), value in rows:
            handle.write(f"{user}\t{item}\t{value['rating']:g}\t{value['timestamp']}\t{value['review']}\t{value['summary']}\n")
    items = {item for _, item in interactions}
    written_items = 0
    if meta:
        metadata = defaultdict(dict)
        for record in read_records(meta):
            if record.get("asin") in items:
                metadata[record["asin"]] = item_fields(record)
        with open(folder / f"{name}.item", "w", encoding="utf-8", newline="\n") as handle:
            handle.write("item_id:token\ttitle:token\tbrand:token\tcategories:token_seq\tdescription:token\n")
            for item in sorted(items):
                fields = metadata.get(item, {"title": "", "brand": "", "categories": "", "description": ""})
                handle.write(f"{item}\t{fields['title']}\t{fields['brand']}\t{fields['categories']}\t{fields['description']}\n")
                written_items += bool(fields["title"] or fields["categories"])
    return {
        "folder": str(folder),
        "users": len({user for user, _ in interactions}),
        "items": len(items),
        "interactions": len(interactions),
        "listing_copies_removed": copies,
        "items_with_metadata": written_items,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", required=True, help="reviews JSON lines (.json or .json.gz)")
    parser.add_argument("--meta", help="item metadata JSON lines (.json or .json.gz), optional")
    parser.add_argument("--name", required=True, help="dataset name: files are <output>/<name>/<name>.inter|.item")
    parser.add_argument("--output", default="dataset", help="folder that holds RecBole datasets (default: dataset)")
    parser.add_argument("--kcore", type=int, default=0, help="keep only users and items with >= k interactions")
    arguments = parser.parse_args(argv)
    try:
        summary = convert(arguments.reviews, arguments.output, arguments.name, arguments.meta, arguments.kcore)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
