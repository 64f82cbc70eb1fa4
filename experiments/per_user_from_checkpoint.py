"""Per-user test metrics for a record made before runs kept them, from the run's own best checkpoint.

    python -m experiments.per_user_from_checkpoint --record=results/ml-100k/RecVAE.json --checkpoint=saved/RecVAE-....pth

Loads the checkpoint with RecBole's ``load_data_and_model`` (the same split, by the same seed), evaluates it on the
test set as the run did, refuses unless every test metric equals the record's, and writes
``<label>.users.csv.gz`` beside the record, naming it in the record. General (non-sequential) models only.
"""

import argparse
import json
from pathlib import Path

import recbole_cllm4rec  # noqa: F401  (registers CLLM4Rec with RecBole)
from recbole_cllm4rec.benchmark.per_user import collect_per_user, write_per_user


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", required=True)
    parser.add_argument("--checkpoint", required=True)
    arguments = parser.parse_args(argv)
    from recbole.quick_start import load_data_and_model
    from recbole.utils import get_trainer

    record_path = Path(arguments.record)
    record = json.loads(record_path.read_text(encoding="utf-8"))
    config, model, _, train_data, _, test_data = load_data_and_model(arguments.checkpoint)
    if config["model"] != record["model"] or config["seed"] != record["seed"]:
        raise SystemExit(f"{arguments.checkpoint} is {config['model']} at seed {config['seed']}, the record "
                         f"{record['model']} at seed {record['seed']}")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    with collect_per_user(trainer, train_data._dataset, config["topk"]) as rows:
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    differing = {key: (value, record["test"].get(key)) for key, value in result.items()
                 if round(float(value), 4) != round(record["test"].get(key, -1), 4)}
    if differing:
        raise SystemExit(f"the checkpoint does not reproduce the record's test metrics: {differing}")
    path = record_path.with_name(f"{record['label']}.users.csv.gz")
    write_per_user(path, rows, train_data._dataset)
    record["per_user_file"] = path.name
    record["per_user_note"] = ("recomputed from the run's best checkpoint by experiments/per_user_from_checkpoint.py; "
                               "its test metrics equal the record's")
    record_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{path}: {len(rows)} users")


if __name__ == "__main__":
    main()
