"""Training and scoring throughput of CLLM4Rec against the raw frozen backbone, on the same batch shapes.

    python -m experiments.throughput --dataset=amazon-beauty [--profile=cpu] \
        [--batches=8] [--output=results/notes/performance.md]

For each training step kind (collaborative, content, finetuning) it takes the first ``--batches``
length-bucketed batches the trainer would use, and measures:
- plugin: real (non-padding) tokens per second of the full training step (embedding assembly, forward,
  loss, backward, Adam step);
- raw body: the frozen backbone's transformer alone (no LM head), forward + backward to its input
  embeddings, on dense batches of the same [batch, length] shapes (every token real);
- raw LM: the frozen backbone as the causal LM it is, trained the way Hugging Face trains it: body, its own
  vocabulary head and its own next-token loss on every position, forward + backward to the input embeddings,
  same shapes. This is the backbone's own limit for a language-modelling step, the reference for the
  content step, whose work is exactly that (its main text's tokens through the vocabulary head);
- raw step: the least work the step itself needs, written the plain way: the raw body forward + backward
  on the same shapes, then the step's own head as one matrix product on exactly the positions the plugin
  scores, with its cross-entropy, backward through the head (into its weight where the plugin trains it:
  the item table) and the body. Collaborative: the n_items-way item head on every main-text position;
  content: the frozen vocabulary head on every main-text position; recommendation: the item head on one
  state per prompt. Whatever the plugin adds on top (padding, ID-embedding assembly, gathers, the layer
  mix, the regulariser, Adam, repeated work) shows as a ratio below 1. With few layers the item head costs
  as much as the body, so the ratio to the bare body is capped by arithmetic, not by overhead.
The plugin's figure includes everything the raw body leaves out (ID-embedding assembly, its output heads,
the loss, the optimizer), so a ratio near 1 means nearly all the time goes to the backbone itself.
The ratio plugin/raw is the share of the hardware limit the plugin reaches. Scoring is measured in
users per second of ``full_sort_predict``. Every figure is steady state: each batch shape runs once untimed
before it is timed, on a GPU (kernel choice per new shape) and on a CPU (first-touch allocation of buffers of
a new size), and the plugin's timed steps use the optimizer its warm-up steps created, as the trainer keeps one
optimizer per stage (a fresh Adam allocates and zeroes its moments, 2 x 20 M floats for the cpu profile's
tables, on its first step). Peak memory is the process's maximum resident set size, and
on a GPU also the device's peak allocation. On a GPU every timing waits for the device to finish.
``--breakdown`` adds, per step kind, the torch ops the plugin step spends its extra time in against the raw
step (``torch.profiler`` self CPU time per batch).
"""

import argparse
import contextlib
import functools
import resource
import statistics
import sys
from time import perf_counter

import torch


from recbole_cllm4rec.benchmark.protocol import build_cllm4rec
from recbole_cllm4rec.corpus import bucket_batches, pad_documents
from recbole_cllm4rec.trainer import id_table_adam


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_per_second(model, steps, warm_up=False):
    """``steps``: (tokens, run) pairs, ``run()`` one forward + backward; with ``warm_up`` each runs once
    untimed first (a GPU picks kernels per new shape)."""
    total_tokens, elapsed = 0, 0.0
    for tokens, run in steps:
        for repeat in range(1 + int(warm_up)):
            synchronize(model.device)
            started = perf_counter()
            run()
            synchronize(model.device)
            if warm_up and repeat == 0:
                continue
            elapsed += perf_counter() - started
            total_tokens += tokens
    return total_tokens / elapsed


@contextlib.contextmanager
def bare_backbone(model):
    """The raw references measure the frozen backbone alone: with ``model`` in eval mode the plugin's own
    ``llm_dropout`` hooks on the backbone's branches stay off (they run only while the plugin trains)."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def random_inputs(model, batch_size, length):
    hidden_size = model.backbone.get_input_embeddings().weight.shape[1]
    return (torch.randn(batch_size, length, hidden_size, device=model.device) * 0.1).requires_grad_(True)


def raw_backbone_rate(model, shapes, warm_up=False, with_lm_head=False):
    """Tokens per second of forward+backward through the frozen transformer on dense batches (with
    ``with_lm_head``: the whole causal LM with its own head and next-token loss on random labels)."""
    backbone = model.backbone
    vocab_size = backbone.get_output_embeddings().weight.shape[0]

    def step(inputs, labels):
        with model.autocast():
            if with_lm_head:
                loss = backbone(inputs_embeds=inputs, labels=labels, use_cache=False).loss
            else:
                hidden = backbone.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state
                loss = hidden.float().square().mean()
        loss.backward()

    steps = []
    for batch_size, length in shapes:
        inputs = random_inputs(model, batch_size, length)
        labels = torch.randint(vocab_size, (batch_size, length), device=model.device)
        steps.append((batch_size * length, functools.partial(step, inputs, labels)))
    with bare_backbone(model):
        return tokens_per_second(model, steps, warm_up)


def raw_step_rate(model, kind, target_masks, warm_up=False):
    """Tokens per second of the plain body + head step on dense batches whose [B, L] shapes and scored
    positions are ``target_masks`` (recommendation: one state per row, the last position)."""
    with bare_backbone(model):
        return tokens_per_second(model, raw_steps(model, kind, target_masks), warm_up)


def raw_steps(model, kind, target_masks):
    """(tokens, run) pairs of the raw step, one per batch: inputs, labels and head made up front."""
    backbone = model.backbone
    if kind == "content":
        head = backbone.get_output_embeddings().weight.detach()
    else:
        hidden_size = backbone.get_input_embeddings().weight.shape[1]
        head = (torch.randn(model.n_items, hidden_size, device=model.device) * 0.02).requires_grad_(True)

    def step(inputs, target_mask, labels):
        with model.autocast():
            hidden = backbone.base_model(inputs_embeds=inputs, use_cache=False).last_hidden_state
            logits = hidden[target_mask] @ head.t()
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    steps = []
    for target_mask in target_masks:
        if kind == "recommendation":
            target_mask = torch.zeros_like(target_mask)
            target_mask[:, -1] = True
        target_mask = target_mask.to(model.device)
        labels = torch.randint(head.shape[0], (int(target_mask.sum()),), device=model.device)
        inputs = random_inputs(model, *target_mask.shape)
        steps.append((target_mask.numel(), functools.partial(step, inputs, target_mask, labels)))
    return steps


def plugin_rate(model, kind, documents, batches, held_out=None, optimizer=None):
    optimizer = optimizer or id_table_adam(model, 1e-4, lazy_users=model.user_table_updates == "lazy")  # the trainer's
    model.train()
    real_tokens, elapsed, shapes, target_masks = 0, 0.0, [], []
    for batch in batches:
        chosen = [documents[k] for k in batch]
        target_masks.append(pad_documents(chosen)[2])
        targets = [held_out[k] for k in batch] if kind == "recommendation" else None
        synchronize(model.device)
        started = perf_counter()
        language_loss, regularization, _ = model.document_loss(kind, chosen, targets)  # the trainer's step
        optimizer.zero_grad(set_to_none=True)
        (language_loss + regularization).backward()
        optimizer.step()
        model.constrain_id_embeddings()
        synchronize(model.device)
        elapsed += perf_counter() - started
        lengths = [len(document.tokens) for document in chosen]
        real_tokens += sum(lengths)
        shapes.append((len(chosen), max(lengths)))
    return real_tokens / elapsed, shapes, target_masks, real_tokens / sum(b * l for b, l in shapes)


def step_breakdown(model, kind, documents, batches, held_out, optimizer, target_masks, rows=12):
    """Where the plugin step's time goes against its raw step's: ``torch.profiler``'s self CPU time of each
    torch op, in ms per batch, for one plugin pass over ``batches`` and one raw pass over the same shapes, the
    ``rows`` ops the plugin spends most extra time in first, then the totals. CPU time: on a GPU it
    measures the host side only."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as plugin_trace:
        plugin_rate(model, kind, documents, batches, held_out, optimizer)
    steps = raw_steps(model, kind, target_masks)
    with bare_backbone(model), profile(activities=[ProfilerActivity.CPU]) as raw_trace:
        tokens_per_second(model, steps)

    def per_batch(trace):
        return {event.key: event.self_cpu_time_total / 1e3 / len(batches) for event in trace.key_averages()}

    plugin, raw = per_batch(plugin_trace), per_batch(raw_trace)
    ops = sorted(set(plugin) | set(raw), key=lambda op: raw.get(op, 0.0) - plugin.get(op, 0.0))[:rows]
    return [(op, plugin.get(op, 0.0), raw.get(op, 0.0)) for op in ops] + [
        ("total", sum(plugin.values()), sum(raw.values()))]


def schedule_tokens(model, config):
    """Real tokens one full run of ``config``'s schedule computes: training passes (forward + backward) and
    validation scoring (forward only, every ``eval_step`` epochs, all epochs assumed to run)."""
    corpus, generator = model.corpus, torch.Generator().manual_seed(0)
    per_pass = {"collaborative": sum(len(d.tokens) for d in corpus.collaborative_documents())}
    per_pass["content"] = sum(len(d.tokens) for d in corpus.sampled_content_documents(generator)) if corpus.has_content else 0
    documents, _ = corpus.recommendation_documents(range(1, len(corpus.user_histories)), generator)
    per_pass["recommendation"] = sum(len(d.tokens) for d in documents)
    scoring = sum(len(corpus.scoring_document(user).tokens) for user in range(1, len(corpus.user_histories)))
    content_passes = (config["content_warmup_epochs"] + config["pretrain_rounds"]) if corpus.has_content else 0
    if corpus.has_content and config["finetune_content_passes"]:
        content_passes += config["epochs"]
    training = (config["pretrain_rounds"] * per_pass["collaborative"] + content_passes * per_pass["content"]
                + config["epochs"] * per_pass["recommendation"])
    validations = config["epochs"] // max(config["eval_step"], 1)
    return per_pass, training, scoring * (validations + 1)  # + the test pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--scoring_users", type=int, default=2048)
    parser.add_argument("--breakdown", action="store_true", help="also profile one plugin pass and one raw step "
                        "pass per step kind and list the ops the plugin spends its extra time in")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved plugin / reference rounds; medians "
                        "are reported (the figures drift with the machine's other load)")
    parser.add_argument("--output", default=None, help="append the figures to this markdown file")
    arguments, recbole_arguments = parser.parse_known_args(argv)

    config, model, _, _ = build_cllm4rec(arguments.dataset, arguments.config_files, recbole_arguments=recbole_arguments)
    corpus, generator = model.corpus, torch.Generator().manual_seed(0)
    budget = config["train_batch_tokens"]

    per_pass, training_tokens, scoring_tokens = schedule_tokens(model, config)
    print("tokens per pass: " + ", ".join(f"{kind} {count:,}" for kind, count in per_pass.items())
          + f"; whole schedule: {training_tokens:,} training tokens, {scoring_tokens:,} scoring tokens", flush=True)

    rows, breakdowns = [], {}
    kinds = [("collaborative", corpus.collaborative_documents(), None)]
    if corpus.has_content:
        kinds.append(("content", corpus.sampled_content_documents(generator), None))
    users = range(1, len(corpus.user_histories))
    documents, held_out = corpus.recommendation_documents(users, generator)
    kinds.append(("recommendation", documents, held_out))
    for kind, documents, targets in kinds:
        batches = bucket_batches([len(d.tokens) for d in documents], budget, generator)[: arguments.batches]
        optimizer = id_table_adam(model, 1e-4, lazy_users=config["user_table_updates"] == "lazy")
        plugin_rate(model, kind, documents, batches, targets, optimizer)  # warm-up: every shape, Adam's moments
        rounds = []
        for round_index in range(arguments.rounds):
            rate, shapes, target_masks, density = plugin_rate(model, kind, documents, batches, targets, optimizer)
            warm_up = round_index == 0
            rounds.append((rate, raw_backbone_rate(model, shapes, warm_up),
                           raw_backbone_rate(model, shapes, warm_up, with_lm_head=True),
                           raw_step_rate(model, kind, target_masks, warm_up)))
            print(f"{kind:>15} round {round_index + 1}: " + ", ".join(f"{name} {value:.0f}" for name, value in
                  zip(("plugin", "raw body", "raw LM", "raw step"), rounds[-1])) + " tok/s", flush=True)
        rate, raw, raw_lm, raw_step = (statistics.median(figures) for figures in zip(*rounds))
        ratios = [statistics.median(figures[0] / figures[k] for figures in rounds) for k in (1, 2, 3)]
        rows.append((kind, rate, raw, raw_lm, raw_step, density, ratios))
        if arguments.breakdown:
            breakdowns[kind] = step_breakdown(model, kind, documents, batches, targets, optimizer, target_masks)
            for op, plugin_ms, raw_ms in breakdowns[kind]:
                print(f"{kind:>15} {op[:48]:>48}: plugin {plugin_ms:7.1f} ms, raw step {raw_ms:7.1f} ms per batch")
        print(f"{kind:>15}: plugin {rate:8.0f} real tok/s, raw body {raw:8.0f} tok/s (ratio {ratios[0]:.2f}), "
              f"raw LM {raw_lm:8.0f} tok/s (ratio {ratios[1]:.2f}), raw step {raw_step:8.0f} tok/s "
              f"(ratio {ratios[2]:.2f}), real/padded {density:.3f}", flush=True)

    scoring_users = list(range(1, min(arguments.scoring_users, len(corpus.user_histories) - 1) + 1))
    model.eval()
    model.full_sort_predict({model.USER_ID: torch.tensor(scoring_users[:256], device=model.device)})  # warm-up
    synchronize(model.device)
    started = perf_counter()
    model.full_sort_predict({model.USER_ID: torch.tensor(scoring_users, device=model.device)})
    synchronize(model.device)
    users_per_second = len(scoring_users) / (perf_counter() - started)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak = f"{peak_gib:.2f} GiB"
    if model.device.type == "cuda":
        peak += f", GPU {torch.cuda.max_memory_allocated(model.device) / 2**30:.2f} GiB"
    print(f"full ranking: {users_per_second:.0f} users/s over {len(scoring_users)} users; peak memory {peak}")

    if arguments.output:
        command = "python -m experiments.throughput " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [f"### {arguments.dataset}, {config['llm_path']} ({model.backbone.config.num_hidden_layers} layers), "
                 f"mixed precision {model.mixed_precision}, {torch.get_num_threads()} threads, "
                 f"{torch.cuda.get_device_name(model.device) if model.device.type == 'cuda' else 'CPU'}, "
                 f"train_batch_tokens {budget}", "", f"Command: `{command}`", "",
                 "| step | plugin real tok/s | raw body tok/s | ratio to body | raw LM tok/s | ratio to LM "
                 "| raw step tok/s | ratio to raw step | real / padded tokens |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {kind} | {rate:.0f} | {raw:.0f} | {ratios[0]:.2f} | {raw_lm:.0f} | {ratios[1]:.2f} "
                  f"| {raw_step:.0f} | {ratios[2]:.2f} | {density:.3f} |"
                  for kind, rate, raw, raw_lm, raw_step, density, ratios in rows]
        lines += ["", f"Medians over {arguments.rounds} rounds; each round measures the plugin and then the three "
                  "references, and each ratio is the median of the rounds' own ratios."]
        lines += ["", f"Full ranking: {users_per_second:.0f} users/s ({len(scoring_users)} users). "
                  f"Peak memory (max RSS): {peak}.", "",
                  "Tokens per pass: " + ", ".join(f"{kind} {count:,}" for kind, count in per_pass.items())
                  + f". The whole schedule of this config: {training_tokens:,} training tokens and {scoring_tokens:,} "
                  "scoring tokens (every epoch run, validation every `eval_step`, plus the test pass).", ""]
        for kind, breakdown in breakdowns.items():
            lines += [f"Where the {kind} step's time goes (`torch.profiler` self CPU time, ms per batch, the ops with "
                      "the most extra time in the plugin first):", "", "| op | plugin | raw step | extra |",
                      "|---|---|---|---|"]
            lines += [f"| {op} | {plugin_ms:.1f} | {raw_ms:.1f} | {plugin_ms - raw_ms:+.1f} |"
                      for op, plugin_ms, raw_ms in breakdown] + [""]
        with open(arguments.output, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
