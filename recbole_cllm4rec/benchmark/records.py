"""Run records: where they live, what they say about the code and the machine, and never replacing one by
accident."""

import functools
import json
import os
import platform
import subprocess
from pathlib import Path

import recbole_cllm4rec
from recbole_cllm4rec.benchmark.protocol import BenchmarkError

def refuse_to_replace(results_dir, dataset, label, what="a record"):
    """A row already in ``results/`` is replaced only when the command says so."""
    path = record_path(results_dir, dataset, label)
    if path.exists():
        raise BenchmarkError(
            f"{path} already holds {what} for '{label}': pass --label=<new name> for a new row, or --overwrite "
            f"to replace it."
        )


def json_safe(value):
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@functools.lru_cache(maxsize=None)
def git_commit():
    """The commit of the code this process loaded: HEAD of the checkout the package is imported from, with
    ``-dirty`` when tracked code or configuration differs from it (``results/`` left out: every run rewrites the
    tables there); None for an installed package. ``$RECBOLE_CLLM4REC_GIT_COMMIT``, where set, wins: a copy of
    the tree on another machine may carry no .git, or a stale one. Read once per process: a long process runs
    the code it loaded, whatever is committed meanwhile."""
    stated = os.environ.get("RECBOLE_CLLM4REC_GIT_COMMIT")
    if stated:
        return stated
    package = Path(recbole_cllm4rec.__file__).parent

    def git(*arguments, cwd=package):
        return subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # tracked: a checkout, not a wheel inside some repository
        top = git("rev-parse", "--show-toplevel")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", cwd=top)
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_description(config):
    import torch

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(config["device"]),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere): CLLM4Rec's ``mixed_precision:
    auto`` turns bf16 on where the CPU has bf16 units, so the same config computes differently on another CPU."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# ----- records and tables ----------------------------------------------------------------------------------
def record_path(results_dir, dataset, label):
    return Path(results_dir) / dataset / f"{label}.json"


def per_user_path(results_dir, dataset, label):
    return Path(results_dir) / dataset / f"{label}.users.csv.gz"


def write_record(record, results_dir):
    path = record_path(results_dir, record["dataset"], record["label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def load_records(dataset, results_dir):
    folder = Path(results_dir) / dataset
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))]


