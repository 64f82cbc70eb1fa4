"""Test metrics of several models over several seeds, side by side: one table per headline metric.

    python -m experiments.seed_table --output=results/notes/amazon-beauty-seeds.md \
        --family="EASE-tuned=results/amazon-beauty/EASE-tuned.json,results/amazon-beauty/EASE-tuned-seed-2021.json" \
        --family="CLLM4Rec=results/amazon-beauty/CLLM4Rec.json,results/amazon-beauty/CLLM4Rec-seed-2021.json"

The seed also draws RecBole's random split, so runs compare only at the same seed: each row is one seed, each
column one family of records (a model and configuration run at several seeds); below them each family's mean over
the seeds it has, and its mean difference from the first family over the seeds both have (the comparison that
holds the split fixed). A family without a record at a seed shows a blank there.
"""

import argparse
import json
import statistics
from pathlib import Path


from recbole_cllm4rec.benchmark.protocol import HEADLINE_METRICS
from recbole_cllm4rec.benchmark.tables import short_commit


def load_family(text):
    name, _, paths = text.partition("=")
    if not name or not paths:
        raise SystemExit(f"--family takes NAME=RECORD[,RECORD...], got {text!r}")
    by_seed = {}
    for path in paths.split(","):
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if record["seed"] in by_seed:
            raise SystemExit(f"{name}: two records at seed {record['seed']} ({path})")
        by_seed[record["seed"]] = record
    return name, by_seed


def table(families, metric):
    seeds = sorted({seed for _, by_seed in families for seed in by_seed})
    lines = [f"| seed | {' | '.join(name for name, _ in families)} |", "|---" * (len(families) + 1) + "|"]
    for seed in seeds:
        cells = [f"{by_seed[seed]['test'][metric]:.4f}" if seed in by_seed else "" for _, by_seed in families]
        lines.append(f"| {seed} | {' | '.join(cells)} |")
    means = [f"{statistics.mean(record['test'][metric] for record in by_seed.values()):.4f} ({len(by_seed)})"
             for _, by_seed in families]
    lines.append(f"| mean (seeds) | {' | '.join(means)} |")
    base_name, base = families[0]
    differences = [""]
    for _, by_seed in families[1:]:
        shared = [seed for seed in by_seed if seed in base]
        differences.append(f"{statistics.mean(by_seed[s]['test'][metric] - base[s]['test'][metric] for s in shared):+.4f} "
                           f"({len(shared)})" if shared else "")
    lines.append(f"| mean difference from {base_name} at the same seeds | {' | '.join(differences)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", required=True, help="NAME=RECORD[,RECORD...]")
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="Test metrics over seeds")
    arguments = parser.parse_args(argv)
    families = [load_family(text) for text in arguments.family]
    sources = "\n".join(f"- {name}: " + ", ".join(f"seed {seed} `{record['label']}` ({record['machine'].get('gpu') or 'CPU'}, "
                                                   f"commit {short_commit(record)})"
                                                   for seed, record in sorted(by_seed.items()))
                        for name, by_seed in families)
    command = "python -m experiments.seed_table " + " ".join(f"'--family={text}'" for text in arguments.family) + \
        f" --output={arguments.output}" + (
        f" '--title={arguments.title}'" if arguments.title != parser.get_default("title") else "")
    about = ("Each seed also draws RecBole's random split, so the families compare only within a row; the last row "
             f"of each table is the mean difference from {families[0][0]} over the seeds both have.")
    parts = [f"# {arguments.title}", about, f"Command: `{command}`", "Records:\n" + sources]
    parts += [f"### test {metric}\n\n{table(families, metric)}" for metric in HEADLINE_METRICS]
    Path(arguments.output).write_text("\n\n".join(parts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
