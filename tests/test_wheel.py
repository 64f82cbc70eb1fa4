"""The package as a user installs it: a wheel in a fresh environment, used from a directory outside the checkout."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml
from conftest import PROJECT_ROOT, cllm4rec_config
from synthetic import write_planted_dataset


def run(command, **kwargs):
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert completed.returncode == 0, (command, completed.stdout[-1500:], completed.stderr[-3000:])
    return completed


def installed_environment(tmp_path):
    """A new virtual environment holding the wheel built from the checkout's tracked sources; the third-party
    dependencies come from this test's environment (a path entry, so its editable install is not seen)."""
    source = tmp_path / "source"
    tracked = run(["git", "ls-files", "pyproject.toml", "README.md", "recbole_cllm4rec"], cwd=PROJECT_ROOT).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "wheels"), str(source)])
    wheel = next((tmp_path / "wheels").glob("recbole_cllm4rec-*.whl"))
    environment = tmp_path / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(environment)])
    python = environment / "bin" / "python"
    site_packages = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site_packages),
         str(wheel)])
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site_packages


def test_the_installed_wheel_trains_cllm4rec_and_runs_the_benchmark_from_another_directory(tmp_path, tiny_llama):
    python, site_packages = installed_environment(tmp_path)
    work = tmp_path / "work"
    write_planted_dataset(work / "dataset", "tiny", n_users=40, n_items=24, items_per_user=6, with_reviews=True)
    settings = cllm4rec_config(work / "dataset", work, tiny_llama, epochs=1, pretrain_rounds=1)
    for key in ("data_path", "checkpoint_dir"):  # RecBole's defaults: dataset/ and saved/ of the working directory
        settings.pop(key)
    script = ("import json, sys, recbole_cllm4rec\n"
              "from recbole.quick_start import run_recbole\n"
              "print(recbole_cllm4rec.__file__)\n"
              "result = run_recbole(model='CLLM4Rec', dataset='tiny', config_dict=json.loads(sys.argv[1]))\n"
              "print(json.dumps(result['test_result']))\n")
    completed = run([str(python), "-c", script, json.dumps(settings)], cwd=work)
    package_file, test_result = completed.stdout.strip().splitlines()[-2:]
    assert Path(package_file).is_relative_to(site_packages)  # the wheel's copy, not the checkout's
    assert 0 <= json.loads(test_result)["ndcg@10"] <= 1
    assert any((work / "saved").glob("CLLM4Rec-tiny-*.pth"))

    protocol = yaml.safe_load((PROJECT_ROOT / "properties" / "overall.yaml").read_text())
    protocol.update({"topk": [5, 10], "valid_metric": "NDCG@10"})
    (work / "properties" / "dataset").mkdir(parents=True)
    (work / "properties" / "overall.yaml").write_text(yaml.safe_dump(protocol))
    (work / "properties" / "dataset" / "tiny.yaml").write_text(
        yaml.safe_dump({"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}))
    run([str(python), "-m", "recbole_cllm4rec.benchmark", "--model=Pop", "--dataset=tiny", "--label=Pop",
         "--epochs=1"], cwd=work)
    assert json.loads((work / "results" / "tiny" / "Pop.json").read_text())["model"] == "Pop"
    assert (work / "results" / "tiny.md").is_file()
    assert not [path for path in site_packages.rglob("*") if path.name in ("results", "saved", "dataset")]

    missing = subprocess.run([str(python), "-m", "recbole_cllm4rec.benchmark", "--model=Pop", "--dataset=ghost"],
                             capture_output=True, text=True, cwd=work)
    assert missing.returncode == 2 and f"looked for {work / 'dataset' / 'ghost' / 'ghost.inter'}" in missing.stderr
