"""Seconds per training batch of a RecBole sequential baseline on amazon-beauty, and the process's peak memory,
with or without glibc keeping freed memory (``cpu_keep_freed_memory``, applied as ``run_benchmark.py`` applies it):
the figures behind that setting in the baselines' model files. Each mode runs in its own process, since the malloc
setting is process-wide:

    OMP_NUM_THREADS=1 python -m experiments.baseline_step_time --model=SASRec --cpu_keep_freed_memory=False
    OMP_NUM_THREADS=1 python -m experiments.baseline_step_time --model=SASRec --cpu_keep_freed_memory=True
    OMP_NUM_THREADS=2 python -m experiments.baseline_step_time --model=BERT4Rec --cpu_keep_freed_memory=True --mask_ratio=0.6

Arguments other than --model, --dataset and --batches are RecBole ``--key=value`` overrides.
"""

import argparse
import os
import resource
from time import perf_counter


from recbole_cllm4rec.benchmark.protocol import build_untrained, protocol_config
from recbole_cllm4rec.benchmark.cpu_memory import keep_freed_memory_if_configured

WARMUP_BATCHES = 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--batches", type=int, default=9, help="timed batches, after the warm-up ones, at most")
    args, recbole_arguments = parser.parse_known_args()
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config, _ = protocol_config(args.model, args.dataset, config_dict={"show_progress": False},
                                recbole_arguments=recbole_arguments)
    kept = keep_freed_memory_if_configured(config)
    built = build_untrained(config)
    train_data, model = built.train_data, built.model
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    model.train()
    seconds = []
    for batch in train_data:
        started = perf_counter()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        seconds.append(perf_counter() - started)
        if len(seconds) == WARMUP_BATCHES + args.batches:
            break
    timed = seconds[WARMUP_BATCHES:] or seconds
    print(f"{args.model} on {args.dataset}, {torch.get_num_threads()} thread(s), keep_freed_memory={kept}, "
          f"overrides {recbole_arguments or 'none'}: {sum(timed) / len(timed):.3f} s a batch over {len(timed)} "
          f"batches of {len(train_data)} an epoch, last loss {loss.item():.4f}, "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
