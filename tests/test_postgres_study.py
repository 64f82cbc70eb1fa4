"""Several search workers on one study in a real PostgreSQL server: Optuna's RDB storage as the distributed engine."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT
from test_tuning import SPACE

POSTGRES_BIN = Path("/usr/lib/postgresql")


def postgres_binaries():
    """Debian's postgresql package puts its server programs under /usr/lib/postgresql/<version>/bin."""
    found = sorted(POSTGRES_BIN.glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own on 127.0.0.1 (trust authentication, a fresh data folder), stopped after."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server programs (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver comes with the dev extra: pip install -e '.[dev]'")
    as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    data = Path(tempfile.mkdtemp(prefix="recbole-cllm4rec-pg-"))  # outside pytest's folders, which only root may enter
    if as_server_user:
        shutil.chown(data, "postgres")
    subprocess.run([*as_server_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync"], check=True, capture_output=True)
    port = free_port()
    subprocess.run([*as_server_user, str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "server.log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_server_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_one_postgres_study_share_the_trials(data_root, tmp_path, postgres_url):
    root = tmp_path / "project"
    (root / "properties" / "dataset").mkdir(parents=True)
    (root / "properties" / "hyper").mkdir()
    protocol = yaml.safe_load((PROJECT_ROOT / "properties" / "overall.yaml").read_text())
    protocol.update({"topk": [5, 10], "valid_metric": "NDCG@10", "data_path": str(data_root)})
    (root / "properties" / "overall.yaml").write_text(yaml.safe_dump(protocol))
    (root / "properties" / "dataset" / "tiny.yaml").write_text(
        yaml.safe_dump({"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}))
    (root / "properties" / "hyper" / "BPR.yaml").write_text(yaml.safe_dump(SPACE))
    command = [sys.executable, "-m", "recbole_cllm4rec.benchmark", "--model=BPR", "--dataset=tiny", "--tune",
               "--n_trials=6", f"--storage={postgres_url}", "--epochs=3"]
    workers = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outcomes = [(worker.wait(timeout=600), worker.stderr.read()) for worker in workers]
    # the last worker to finish writes the outputs; one that ends while the other still runs says so (exit 3)
    assert sorted(code for code, _ in outcomes) in ([0, 0], [0, 3]), [text[-1500:] for _, text in outcomes]

    output = root / "results" / "tiny" / "tuning" / "BPR"
    trials = json.loads((output / "trials.json").read_text())["trials"]
    numbers = [trial["number"] for trial in trials]
    assert len(numbers) == len(set(numbers))  # none repeated
    judged = [trial for trial in trials if trial["state"] in ("COMPLETE", "PRUNED")]
    assert len(judged) == 6  # every trial counted once, none lost, and no more than asked
    workers_seen = {(trial["user_attrs"]["worker"]["host"], trial["user_attrs"]["worker"]["pid"]) for trial in judged}
    assert len(workers_seen) == 2  # both workers took trials from the one study
    records = sorted(path.name for path in (root / "results" / "tiny").glob("*.json"))
    assert records == ["BPR-tuned.json"]
    assert json.loads((root / "results" / "tiny" / "BPR-tuned.json").read_text())["tuning"]["n_trials"] == 6
