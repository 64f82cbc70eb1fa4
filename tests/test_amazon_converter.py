"""Raw Amazon review dumps -> atomic files that RecBole reads back intact."""

import gzip
import json
from pathlib import Path

import pytest
from conftest import protocol
from recbole.config import Config
from recbole.data import create_dataset

from recbole_cllm4rec.corpus import feature_texts
from recbole_cllm4rec.data.amazon import convert, main

SHARED_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raw" / "All_Beauty_5.json.gz"
NASTY = '"Quoted" start,\ttab and\nnewline &amp; entity'


def write_raw(folder):
    reviews, meta = folder / "reviews.json.gz", folder / "meta.json"
    rows = []
    for user in range(6):
        for item in range(5):
            if (user + item) % 6 == 5:
                continue
            rows.append({"reviewerID": f"U{user}", "asin": f"A{item}", "overall": 1 + (user + item) % 5,
                         "unixReviewTime": 1000 + 10 * item + user, "reviewText": NASTY if user == 0 else f"review {user} {item}",
                         "summary": "ok"})
    rows.append({"reviewerID": "LONELY", "asin": "A0", "overall": 5, "unixReviewTime": 5, "reviewText": "x"})
    rows.append(dict(rows[0], reviewText="older duplicate", unixReviewTime=1))
    with gzip.open(reviews, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(row) for row in rows) + "\n")
    # 2014-style metadata: Python literals and nested category paths
    meta.write_text("\n".join(
        repr({"asin": f"A{item}", "title": f'"Best" item\t{item}', "brand": "Acme",
              "categories": [["Beauty", "Skin Care"], ["Beauty", "Face"]], "description": "line1\nline2"})
        for item in range(5)) + "\n", encoding="utf-8")
    return reviews, meta


def test_convert_kcore_and_sanitise(tmp_path):
    reviews, meta = write_raw(tmp_path)
    summary = convert(reviews, tmp_path / "out", "toy", meta=meta, k=3)
    assert summary["users"] == 6 and summary["items"] == 5  # LONELY removed by the 3-core
    inter = (tmp_path / "out" / "toy" / "toy.inter").read_text().splitlines()
    assert inter[0].split("\t") == ["user_id:token", "item_id:token", "rating:float", "timestamp:float",
                                    "review:token", "summary:token"]
    assert all(len(line.split("\t")) == 6 for line in inter)
    assert not any("LONELY" in line or "older duplicate" in line for line in inter)
    item = (tmp_path / "out" / "toy" / "toy.item").read_text().splitlines()
    assert item[1].split("\t")[:4] == ["A0", "'Best' item 0", "Acme", "Beauty Skin_Care Face"]

    config = Config(model="BPR", dataset="toy", config_dict=protocol(
        tmp_path / "out", tmp_path, load_col={"inter": ["user_id", "item_id", "rating", "timestamp", "review"],
                                              "item": ["item_id", "title", "categories", "description"]}))
    dataset = create_dataset(config)
    dataset.build()  # features become tensors
    texts = feature_texts(dataset, dataset.inter_feat, "review")
    assert "'Quoted' start, tab and newline & entity" in texts
    assert feature_texts(dataset, dataset.item_feat, "categories", list_field=True)[1] == "Beauty, Skin Care, Face"
    assert feature_texts(dataset, dataset.item_feat, "description")[1] == "line1 line2"


def test_a_review_copied_to_linked_listings_is_one_interaction(tmp_path):
    reviews = tmp_path / "reviews.json"
    rows = [{"reviewerID": user, "asin": asin, "overall": 5, "unixReviewTime": 100 + n, "reviewText": f"{user} loves it"}
            for n, user in enumerate(["U1", "U2"]) for asin in ("B2", "B1", "B3")]  # one review, three listings
    rows += [{"reviewerID": "U1", "asin": "B9", "overall": 4, "unixReviewTime": 100, "reviewText": "another product"},
             {"reviewerID": "U1", "asin": "B8", "overall": 4, "unixReviewTime": 100, "reviewText": ""},
             {"reviewerID": "U1", "asin": "B7", "overall": 4, "unixReviewTime": 100, "reviewText": ""}]
    reviews.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    summary = convert(reviews, tmp_path / "out", "copies")
    inter = [line.split("\t")[:2] for line in (tmp_path / "out" / "copies" / "copies.inter").read_text().splitlines()[1:]]
    # each copied review on the first listing for both reviewers; a distinct text, and empty texts, stay apart
    assert sorted(inter) == [["U1", "B1"], ["U1", "B7"], ["U1", "B8"], ["U1", "B9"], ["U2", "B1"]]
    assert summary["listing_copies_removed"] == 4
    with pytest.raises(ValueError, match="no interaction is left in the 3-core"):
        convert(reviews, tmp_path / "out", "copies-3", k=3)


def test_command_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--reviews", str(tmp_path / "missing.json.gz"), "--name", "x", "--output", str(tmp_path)])
    assert exit_info.value.code == 2 and "No such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json\n")
    with pytest.raises(SystemExit):
        main(["--reviews", str(bad), "--name", "x", "--output", str(tmp_path)])
    assert "neither JSON nor a Python literal" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_RAW.is_file(), reason="shared raw Amazon file not present")
def test_shared_all_beauty_file(tmp_path):
    summary = convert(SHARED_RAW, tmp_path, "amazon-all-beauty-18")
    # the dump copies each review to a product's linked listings: 4,092 (user, item) rows hold 1,280 reviews
    assert (summary["users"], summary["items"], summary["interactions"]) == (991, 61, 1280)
    assert summary["listing_copies_removed"] == 4092 - 1280


def test_setup_builds_a_converted_dataset_again_when_the_rules_changed(tmp_path, capsys):
    from recbole_cllm4rec.data import setup_datasets

    (tmp_path / "shared" / "raw").mkdir(parents=True)
    reviews, _ = write_raw(tmp_path)
    reviews.rename(tmp_path / "shared" / "raw" / "All_Beauty_5.json.gz")
    setup_datasets.setup(tmp_path / "shared", tmp_path / "dataset")
    stamp = tmp_path / "dataset" / "amazon-all-beauty-18" / "conversion.json"
    assert json.loads(stamp.read_text())["rules"] == setup_datasets.CONVERSION_RULES
    capsys.readouterr()
    setup_datasets.setup(tmp_path / "shared", tmp_path / "dataset")
    assert "amazon-all-beauty-18: already converted" in capsys.readouterr().out
    stamp.write_text(json.dumps({"rules": setup_datasets.CONVERSION_RULES - 1}))  # built by an older converter
    setup_datasets.setup(tmp_path / "shared", tmp_path / "dataset")
    assert "amazon-all-beauty-18: converted from" in capsys.readouterr().out
