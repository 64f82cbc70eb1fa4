"""A dataset's tables and chart, rebuilt from all its records: the main table (each baseline at its defaults and
tuned, CLLM4Rec and its controls), every other record beside it, a CSV of all, and the chart of the main rows."""

import csv
from pathlib import Path

from recbole_cllm4rec.benchmark.protocol import HEADLINE_METRICS, protocol_settings, protocol_text
from recbole_cllm4rec.benchmark.records import load_records, write_record


def publish_record(record, results_dir, properties_dir):
    """Write the record and rebuild its dataset's tables, where the row appears."""
    write_record(record, results_dir)
    rebuild_tables(record["dataset"], results_dir, properties_dir)


def metric_columns(records):
    """Every test metric, ordered by metric family then cutoff."""
    names = {name for record in records for name in record["test"]}
    return sorted(names, key=lambda name: (name.split("@")[0], int(name.split("@")[1]) if "@" in name else 0))




def headline_columns(records):
    """The paper's headline metrics where the dataset reports them; a small catalogue (top-k capped below
    40 or 100) adds recall and NDCG at its shortest list and its validation metric instead."""
    test = records[0]["test"]
    columns = [metric for metric in HEADLINE_METRICS if metric in test]
    if len(columns) < len(HEADLINE_METRICS):
        shortest = min(int(metric.split("@")[1]) for metric in test)
        columns += [f"recall@{shortest}", f"ndcg@{shortest}", records[0]["valid_metric"]]
    return list(dict.fromkeys(metric for metric in columns if metric in test))


def tuning_summary(tuning):
    """The table's 'tuned' cell: how many trials, and how many distinct configurations where fewer."""
    if not tuning:
        return "no (defaults)"
    distinct = tuning.get("n_distinct_configurations", tuning["n_trials"])
    repeated = f" ({distinct} distinct)" if distinct < tuning["n_trials"] else ""
    return f"yes, {tuning['n_trials']} trials{repeated}"


METHOD = "CLLM4Rec"
# CLLM4Rec's rows in a main table, by label: its current profile, its search's best, its controls, the paper's model
METHOD_ROWS = {
    METHOD: "CLLM4Rec",
    f"{METHOD}-tuned": "CLLM4Rec (tuned)",
    f"{METHOD}-no-transformer": "CLLM4Rec, no transformer blocks (control)",
    f"{METHOD}-random-init": "CLLM4Rec, randomly initialised backbone (control)",
    f"{METHOD}-paper": "CLLM4Rec, the paper's model",
}
SEED_SUFFIX = "-seed-"
SEED_COUNT = 3  # main tables and seed statistics: the protocol's seed and the next two


def base_label(label):
    """``EASE-tuned-seed-2021`` -> ``EASE-tuned``: the row a seed repetition belongs to."""
    return label.split(SEED_SUFFIX)[0] if SEED_SUFFIX in label else label


def is_main_row(record, protocol_seed):
    """A main table holds each baseline at its defaults and tuned, and CLLM4Rec's rows of ``METHOD_ROWS``, at the
    protocol's seed and the next ``SEED_COUNT - 1``."""
    if not protocol_seed <= record["seed"] < protocol_seed + SEED_COUNT:
        return False
    label = base_label(record["label"])
    if record.get("model") == METHOD:
        return label in METHOD_ROWS
    return label in (record.get("model"), f"{record.get('model')}-tuned")


def schedule_note(record):
    """A CLLM4Rec row trained on a fixed-length schedule says so: the cpu profile now follows validation."""
    config = record.get("config", {})
    decay = config.get("finetune_lr_decay")
    if record.get("model") != METHOD or decay in (None, "plateau") or "profile_applied" in config:
        return ""
    return f" [former cpu profile: {decay} decay over {config.get('epochs')} epochs]"


def display_name(record):
    label = base_label(record["label"])
    if label in METHOD_ROWS:
        return METHOD_ROWS[label] + schedule_note(record)
    if label.endswith("-tuned") and record.get("tuning"):
        return f"{label[:-len('-tuned')]} (tuned, {record['tuning']['n_trials']} trials)"
    return label


def seed_statistics(records, headline, protocol_seed):
    """``{base label: {metric: (mean, sd), 'seeds': [...]}}`` for the rows run at every one of the protocol's seed
    and the next ``SEED_COUNT - 1``: the same splits for every row, so the means compare."""
    import statistics

    seeds = set(range(protocol_seed, protocol_seed + SEED_COUNT))
    groups = {}
    for record in records:
        if record["seed"] in seeds:
            groups.setdefault(base_label(record["label"]), {})[record["seed"]] = record
    stats = {}
    for label, by_seed in groups.items():
        if set(by_seed) != seeds:
            continue
        stats[label] = {metric: (statistics.mean(r["test"][metric] for r in by_seed.values()),
                                 statistics.stdev(r["test"][metric] for r in by_seed.values())) for metric in headline}
        stats[label]["seeds"] = sorted(by_seed)
    return stats


def provenance_lines(records):
    lines = ["| row | config files and overrides | tuned | best validation | epochs run | wall time (s) | machine | "
             "peak memory (GiB) | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        overrides = ", ".join(record["config_files"] + record.get("command_line_overrides", []))
        lines.append(
            f"| {display_name(record)} | {overrides} | {tuning_summary(record.get('tuning'))} | {record['valid_metric']} = "
            f"{record['best_valid_score']:.4f} | {record.get('epochs_run', '')} | {record['wall_time_s']} | "
            f"{machine_label(record)} | {record['peak_memory_gib']} | {short_commit(record)} |")
    return lines


def rebuild_tables(dataset, results_dir, properties_dir):
    """Write ``<dataset>.md`` (the main table), ``<dataset>-variants.md`` (every other record), ``<dataset>.csv``
    (all records) and ``<dataset>.png`` (the main rows) from the dataset's JSON records."""
    records = load_records(dataset, results_dir)
    if not records:
        return
    headline = headline_columns(records)
    records.sort(key=lambda record: -record["test"].get(headline[0], 0))
    metrics = metric_columns(records)
    results_dir = Path(results_dir)
    protocol_seed = protocol_settings(properties_dir, dataset)[0]["seed"]
    for record in records:
        record.setdefault("seed", protocol_seed)
    with open(results_dir / f"{dataset}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *metrics, "seed", "table"])
        for record in records:
            writer.writerow([record["label"], *(record["test"].get(metric, "") for metric in metrics), record["seed"],
                             "main" if is_main_row(record, protocol_seed) else "variants"])
    main = [record for record in records if is_main_row(record, protocol_seed)]
    variants = [record for record in records if not is_main_row(record, protocol_seed)]
    if not main:  # nothing of the protocol's rows yet (e.g. only other seeds): one table of them all
        main, variants = records, []
    main_at_seed = [record for record in main if record["seed"] == protocol_seed] or main
    stats = seed_statistics(main, headline, protocol_seed)
    lines = [f"# {dataset}", "", protocol_text(properties_dir, dataset), "",
             f"Each baseline at RecBole's defaults and tuned, CLLM4Rec's current profile and its controls. Every "
             f"other record (earlier profiles, variants, probes) is in [{dataset}-variants.md]({dataset}-variants.md).",
             "", f"![headline metrics]({dataset}.png)", "", f"## Headline (test, seed {protocol_seed})", "",
             "| model | " + " | ".join(headline) + " |", "|---" * (len(headline) + 1) + "|"]
    best = {metric: max(record["test"].get(metric, -1) for record in main_at_seed) for metric in headline}
    for record in main_at_seed:
        cells = [format_metric(record["test"].get(metric), best[metric]) for metric in headline]
        lines.append(f"| {display_name(record)} | " + " | ".join(cells) + " |")
    if stats:
        lines += ["", "## Over seeds (test, mean ± sd)", "",
                  "Each seed also redraws the split, so rows are compared seed by seed; the means below are over the "
                  "same seeds for every row.", "",
                  "| model | seeds | " + " | ".join(headline) + " |", "|---" * (len(headline) + 2) + "|"]
        named = {base_label(record["label"]): record for record in main}
        for label, stat in sorted(stats.items(), key=lambda item: -item[1][headline[0]][0]):
            cells = [f"{stat[metric][0]:.4f} ± {stat[metric][1]:.4f}" for metric in headline]
            lines.append(f"| {display_name(named[label])} | {', '.join(map(str, stat['seeds']))} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## All test metrics", "", "| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for record in main_at_seed:
        lines.append(f"| {display_name(record)} | " + " | ".join(format_metric(record["test"].get(m)) for m in metrics) + " |")
    lines += ["", "## Provenance", "", *provenance_lines(main), "",
              f"Each row comes from `results/{dataset}/<label>.json` (full config, seed, machine), written by "
              f"`python run_benchmark.py --model=<model> --dataset={dataset}` with the files and overrides listed."]
    lines += [f"- {display_name(record)}: {record[key]}" for record in main
              for key in ("label_note", "git_commit_note", "tuning_note") if record.get(key)]
    lines.append("")
    (results_dir / f"{dataset}.md").write_text("\n".join(lines), encoding="utf-8")
    write_variants_table(dataset, variants, headline, results_dir)
    plot_headline(main_at_seed, results_dir / f"{dataset}.png", dataset, headline, stats)


def write_variants_table(dataset, records, headline, results_dir):
    """Every record that is not a main row: earlier profiles, variants, probes, other machines."""
    path = results_dir / f"{dataset}-variants.md"
    if not records:
        path.unlink(missing_ok=True)
        return
    lines = [f"# {dataset}: other records", "",
             f"Records beside the main table ([{dataset}.md]({dataset}.md)): earlier CLLM4Rec profiles, variants and "
             f"probes, and runs on other machines. Exploration only: configurations are chosen on validation, and "
             f"these rows are not a ranking. Rows of another seed than the protocol's are tested on another split.", "",
             "| row | seed | " + " | ".join(headline) + " | note |", "|---" * (len(headline) + 3) + "|"]
    for record in records:
        note = record.get("label_note") or (f"formerly `{record['former_label']}`" if record.get("former_label") else "")
        cells = [format_metric(record["test"].get(metric)) for metric in headline]
        lines.append(f"| {record['label']} | {record['seed']} | " + " | ".join(cells) + f" | {note} |")
    lines += ["", "## Provenance", "", *provenance_lines(records), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def short_commit(record):
    """The commit's first 12 digits, keeping ``-dirty``: a row run from uncommitted changes must say so."""
    commit, dirty, _ = (record["git_commit"] or "unknown").partition("-dirty")
    return f"`{commit[:12]}{dirty}`"


def machine_label(record):
    machine = record.get("machine", {})
    threads = machine.get("torch_threads")
    if machine.get("gpu"):
        label = machine["gpu"]
    else:
        label = f"CPU, {threads} thread{'s' if threads != 1 else ''}" if threads else "CPU"
    return label + (", bf16" if machine.get("precision") == "bf16" else "")


def format_metric(value, best=None):
    if value is None:
        return "–"
    return f"**{value:.4f}**" if value == best else f"{value:.4f}"


def plot_headline(records, path, dataset, headline=HEADLINE_METRICS, stats=None):
    """One panel per headline metric, rows in the table's order, the axis spanning the rows' range so the
    differences that decide the ranking show; CLLM4Rec's rows in their own colour, controls hatched, seed sd as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stats = stats or {}
    labels = [display_name(record) for record in records]
    positions = np.arange(len(records))[::-1]
    colours = ["tab:orange" if record.get("model") == METHOD else
               ("tab:blue" if record["label"].endswith("-tuned") else "lightsteelblue") for record in records]
    hatches = ["//" if "control" in label else "" for label in labels]
    figure, axes = plt.subplots(1, len(headline), figsize=(4.2 * len(headline) + 3, 0.36 * len(records) + 1.6),
                                sharey=True)
    for axis, metric in zip(np.atleast_1d(axes), headline):
        values = np.array([record["test"].get(metric, 0) for record in records])
        errors = [stats.get(base_label(record["label"]), {}).get(metric, (0, 0))[1] for record in records]
        bars = axis.barh(positions, values, xerr=errors, color=colours, edgecolor="black", linewidth=0.4,
                         error_kw={"elinewidth": 1, "capsize": 2})
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        shown = values[values > 0]
        low, high = (shown.min(), shown.max()) if len(shown) else (0, 1)
        axis.set_xlim(max(0, low - 0.15 * (high - low) - 1e-3), high + 0.08 * (high - low) + 1e-3)
        axis.set_title(metric)
        axis.grid(axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].set_yticks(positions, labels)
    figure.suptitle(f"{dataset}: test metrics (orange: CLLM4Rec, hatched: its controls; dark blue: tuned "
                    f"baselines; error bars: sd over seeds)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

