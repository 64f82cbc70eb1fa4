"""CLLM4Rec ablations under the benchmark protocol: what each part of the method contributes.

    python -m experiments.ablation --dataset=amazon-all-beauty-18 --profile=cpu \
        --content_lm=True --content_warmup_epochs=1 --layers=1 --output=results/ablations/amazon-all-beauty-18-components-cpu.md

Each variant is one full train / validate / test run through ``recbole_cllm4rec.benchmark.run`` (same split, seed and
protocol as the comparison tables), starting from the given configuration:

- ``full``: the configuration as given (the content LM must be on: the other variants switch parts off);
- ``no-content-lm``: ``content_lm: False``, no content corpus, content passes or mutual regularisation;
- ``no-mutual-reg``: ``reg_weight: 0``, both LMs train but nothing passes between them;
- ``no-pretraining``: ``pretrain_rounds: 0`` and ``content_warmup_epochs: 0``, finetuning starts from the
  initial ID embeddings;
- ``last-state``: ``user_state: last``, the item head reads the prompt's last hidden state (the paper's
  readout; the cpu profile reads the mean over the prompt);
- ``layers-K``: ``llm_num_layers: K``, one variant per ``--layers`` value (fewer backbone layers;
  0: no transformer block, the control for what the layers add).

``--full_record=FILE`` takes the ``full`` variant from a record ``run_benchmark.py`` already wrote (the
table's row) instead of training it again; it must come from the same config files and overrides.

Writes every record (full config, commit, machine) to the output's ``.json`` and a markdown table of the
test headline metrics with their change against ``full``. Re-running with ``--variants`` replaces only
those variants in an existing output.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path


from recbole_cllm4rec.benchmark import protocol, runs, tables
from recbole_cllm4rec.benchmark.settings import Settings

PROPERTIES_DIR = Path("properties")  # run from the checkout's root

VARIANTS = {
    "full": {},
    "no-content-lm": {"content_lm": False},
    "no-mutual-reg": {"reg_weight": 0.0},
    "no-pretraining": {"pretrain_rounds": 0, "content_warmup_epochs": 0},
    "last-state": {"user_state": "last"},
}


NOT_AFFECTING_RESULTS = ("show_progress",)


def model_arguments(arguments):
    return sorted(argument for argument in arguments
                  if argument.split("=", 1)[0].lstrip("-") not in NOT_AFFECTING_RESULTS)


def full_from_record(path, dataset, config_files, recbole_arguments, command):
    """The ``full`` variant from a benchmark record, refused unless it ran this dataset, these config files
    and these overrides."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    expected_files = [str(Path(file).resolve()) for file in
                      protocol.config_files_for("CLLM4Rec", dataset, PROPERTIES_DIR, config_files)]
    recorded_files = [str(Path(file).resolve()) for file in record["config_files"]]
    mismatches = [what for what, same in (
        ("model", record["model"] == "CLLM4Rec"),
        ("dataset", record["dataset"] == dataset),
        ("config files", recorded_files == expected_files),
        ("overrides", model_arguments(record["command_line_overrides"]) == model_arguments(recbole_arguments)),
    ) if not same]
    if mismatches:
        raise SystemExit(f"--full_record {path} does not match this ablation's {', '.join(mismatches)}: "
                         f"it ran {record['model']} on {record['dataset']} with {record['config_files']} "
                         f"and {record['command_line_overrides']}")
    return dict(record, variant="full", overrides={}, ablation_command=command,
                label="CLLM4Rec-full", full_record=str(path))


def variant_arguments(base_arguments, overrides):
    """``--key=value`` arguments: the base ones, with the variant's keys replaced (RecBole refuses a key
    given twice with different values)."""
    kept = [argument for argument in base_arguments if argument.split("=", 1)[0].lstrip("-") not in overrides]
    return kept + [f"--{key}={value}" for key, value in overrides.items()]


def markdown(records, dataset):
    headline = tables.headline_columns(records)
    full = next((record for record in records if record["variant"] == "full"), None)
    commands = " ; ".join(sorted({record["ablation_command"] for record in records}))
    lines = [f"# CLLM4Rec ablation on {dataset}", "", protocol.protocol_text(PROPERTIES_DIR, dataset), "",
             f"Command: `{commands}`", "",
             "| variant | overrides | " + " | ".join(headline) + " | epochs run | wall time (s) | machine |",
             "|---" * (len(headline) + 5) + "|"]
    for record in records:
        cells = []
        for metric in headline:
            value = record["test"][metric]
            change = ""
            if full is not None and record is not full and full["test"][metric]:
                change = f" ({(value / full['test'][metric] - 1) * 100:+.0f}%)"
            cells.append(f"{value:.4f}{change}")
        overrides = ", ".join(f"{key}={value}" for key, value in record["overrides"].items()) or "none"
        lines.append(f"| {record['variant']} | {overrides} | " + " | ".join(cells)
                     + f" | {record['epochs_run']} | {record['wall_time_s']:.0f} | {tables.machine_label(record)} |")
    commits = sorted({str(record["git_commit"])[:12] for record in records})
    lines += ["", f"Commit(s): {', '.join(commits)}. Every record, with its full configuration, is in the "
              "`.json` beside this file."]
    lines += [f"Note: {note}" for note in sorted({record["git_commit_note"] for record in records
                                                  if record.get("git_commit_note")})]
    return "\n".join(lines + [""])


def variant_order(record):
    """full, the switched-off parts, then layer counts from deep to shallow."""
    name = record["variant"]
    if name in VARIANTS:
        return (list(VARIANTS).index(name), 0)
    return (len(VARIANTS), -int(name.split("-")[1]))


def write_outputs(records, output, dataset):
    """The records as ``.json`` and their table as markdown, headed by every command that made a row."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    output.write_text(markdown(records, dataset), encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default="")
    parser.add_argument("--layers", default="", help="comma-separated layer counts, one variant each")
    parser.add_argument("--variants", default="", help="comma-separated subset of the variants to run")
    parser.add_argument("--output", required=True, help="markdown file; the records go to the same name .json")
    parser.add_argument("--full_record", default="", help="a run_benchmark.py record to use as the full variant")
    parser.add_argument("--merge", default="", help="comma-separated record files of earlier runs (say, one "
                        "process per variant) to combine into --output instead of running anything")
    arguments, recbole_arguments = parser.parse_known_args(argv)
    output = Path(arguments.output)
    if arguments.merge:
        merged = {}
        for path in arguments.merge.split(","):
            for record in json.loads(Path(path).read_text(encoding="utf-8")):
                merged[record["variant"]] = record
        records = sorted(merged.values(), key=variant_order)
        write_outputs(records, output, records[0]["dataset"])
        return

    variants = dict(VARIANTS)
    for layers in filter(None, arguments.layers.split(",")):
        variants[f"layers-{int(layers)}"] = {"llm_num_layers": int(layers)}
    chosen = [name.strip() for name in arguments.variants.split(",") if name.strip()] or list(variants)
    unknown = [name for name in chosen if name not in variants]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(variants)}")

    records_path = output.with_suffix(".json")
    records = json.loads(records_path.read_text(encoding="utf-8")) if records_path.exists() else []
    command = "python -m experiments.ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    config_files = protocol.split_config_files(arguments.config_files)
    if arguments.full_record:
        full = full_from_record(arguments.full_record, arguments.dataset, config_files, recbole_arguments, command)
        records = sorted([kept for kept in records if kept["variant"] != "full"] + [full], key=variant_order)
        chosen = [name for name in chosen if name != "full"]
        write_outputs(records, output, arguments.dataset)
    for name in chosen:
        overrides = variants[name]
        record = runs.run(Settings("CLLM4Rec", arguments.dataset, config_files=config_files,
                                   recbole_arguments=variant_arguments(recbole_arguments, overrides),
                                   label=f"CLLM4Rec-{name}"), write=False)
        record.update(variant=name, overrides=overrides, ablation_command=command)
        records = sorted([kept for kept in records if kept["variant"] != name] + [record], key=variant_order)
        write_outputs(records, output, arguments.dataset)
        print(f"{name}: " + ", ".join(f"{metric}={record['test'][metric]:.4f}" for metric in tables.headline_columns([record])),
              flush=True)


if __name__ == "__main__":
    main()
