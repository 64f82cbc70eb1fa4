"""Make the shared datasets visible in the git-ignored ``dataset/`` folder, and build the converted ones.

    python -m recbole_cllm4rec.data.setup_datasets --shared ../shared/datasets --dataset-dir dataset

- ``amazon-beauty``: a symlink to the shared atomic files (never copied into the repository);
- ``amazon-all-beauty-18``: converted from the shared raw 2018 All_Beauty 5-core reviews;
- ``ml-100k``: a symlink to the copy inside the installed ``recbole`` package (``dataset_example/ml-100k``).
A missing shared folder is reported and skipped: a user may supply their own copies instead. A converted dataset
is built again when the converter's rules changed since it was built (``conversion.json`` beside it says which).
"""

import argparse
import json
import os
from pathlib import Path

from recbole_cllm4rec.data.amazon import CONVERSION_RULES, convert

LINKED = ["amazon-beauty"]
CONVERTED = {"amazon-all-beauty-18": "raw/All_Beauty_5.json.gz"}
BUNDLED_WITH_RECBOLE = ["ml-100k"]


def recbole_example_dataset(name):
    """The folder of a dataset the ``recbole`` wheel ships (``recbole/dataset_example/<name>``)."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    return Path(spec.origin).parent / "dataset_example" / name


def link(source, target):
    if target.exists() or target.is_symlink():
        print(f"{target}: already present, left as it is")
    elif source.is_dir():
        os.symlink(os.path.relpath(source.resolve(), target.parent.resolve()), target)
        print(f"{target} -> {source}")
    else:
        print(f"{source} not found: supply {target.name} yourself (see dataset/README.md)")


def setup(shared, dataset_dir):
    shared, dataset_dir = Path(shared), Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link(shared / name, dataset_dir / name)
    for name in BUNDLED_WITH_RECBOLE:
        link(recbole_example_dataset(name), dataset_dir / name)
    for name, raw in CONVERTED.items():
        source = shared / raw
        stamp = dataset_dir / name / "conversion.json"
        built_with = json.loads(stamp.read_text())["rules"] if stamp.is_file() else None
        if (dataset_dir / name / f"{name}.inter").is_file() and built_with == CONVERSION_RULES:
            print(f"{dataset_dir / name}: already converted")
        elif source.is_file():
            summary = convert(source, dataset_dir, name)
            stamp.write_text(json.dumps({"rules": CONVERSION_RULES, "source": str(source), **summary}, indent=1) + "\n")
            print(f"{dataset_dir / name}: converted from {source}: {summary}")
        else:
            print(f"{source} not found: {name} not built")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", required=True, help="the folder holding the shared datasets")
    parser.add_argument("--dataset-dir", default="dataset", help="RecBole's data_path (default: ./dataset)")
    arguments = parser.parse_args(argv)
    setup(arguments.shared, arguments.dataset_dir)


if __name__ == "__main__":
    main()
