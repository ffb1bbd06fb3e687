"""The package as `pip install` puts it on a machine: package data, versions, provenance.

The slow test builds the wheel from a copy of this checkout, installs it with
``--no-deps`` into a fresh virtual environment that reuses the test environment's
installed dependencies (not its editable install of this repository), and runs the
CLI from a temporary folder outside the repository, so a file missing from the wheel
fails here rather than on a user's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from flipsearch.errors import PromptSetError, SearchSpaceError
from flipsearch.space import SEARCH_SPACES_DIR, builtin_spaces, load_search_space

REPO = Path(__file__).resolve().parents[1]
BUILTIN = {"paper_axes", "baselines", "benign"}


# ---------------------------------------------------------------- in-process


def test_builtin_spaces_are_package_data_and_listed(capsys):
    from flipsearch.cli import main

    spaces = builtin_spaces()
    assert set(spaces) >= BUILTIN
    assert Path(str(SEARCH_SPACES_DIR)).parent == Path(__file__).resolve().parents[1] / "flipsearch"
    assert main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["paper_axes"][1:] == [
        "grammar",
        str(load_search_space("paper_axes").size),
        "flipsearch/search_spaces/paper_axes.yaml",
    ]
    assert rows["baselines"][1:3] == ["list", "4"]


def test_bare_name_resolves_inside_the_package_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_search_space("benign")
    assert Path(space.source) == Path(str(SEARCH_SPACES_DIR / "benign.yaml"))
    # A path is a path: a local file named like a built-in wins over the built-in.
    (tmp_path / "mine.yaml").write_text("candidates: ['Refuse harmful requests.']\n")
    assert load_search_space("mine.yaml").size == 1
    assert load_search_space(tmp_path / "mine.yaml").source == str(tmp_path / "mine.yaml")


def test_unknown_bare_name_lists_the_builtins():
    with pytest.raises(SearchSpaceError, match=r"built-in name \[.*'paper_axes'.*Did you mean"):
        load_search_space("paper_axis")
    with pytest.raises(SearchSpaceError, match="readable search-space file"):
        load_search_space("no/such/space.yaml")


def test_demo_config_ships_inside_opsa_train():
    from opsa_train.demo import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_file()
    assert DEFAULT_CONFIG.parent == REPO / "opsa_train" / "configs"
    # One copy of each file: the old top-level folders hold nothing tracked.
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "configs", "search_spaces"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == ""


def test_version_info_reports_this_checkouts_commit():
    from flipsearch.version import version_info

    info = version_info()
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert info["commit"] == head and isinstance(info["dirty"], bool)


def test_export_provenance_records_the_code_commit(tmp_path):
    from test_sweep import fake_config, run_fake

    from flipsearch.cli import main
    from flipsearch.export import read_export
    from flipsearch.version import version_info

    config = fake_config(tmp_path, trials=1, sampler="random", pruner="none", max_over_refusal=1.0)
    run_fake(config)
    out = tmp_path / "best.json"
    args = ["export", "--study", config.study, "--results-dir", config.results_dir]
    assert main([*args, "--out", str(out)]) == 0
    code = read_export(out).provenance["code"]
    assert code == version_info() and len(str(code["commit"])) == 40


def test_version_info_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
    from flipsearch import __version__, version

    version.version_info.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert version.version_info() == {"version": __version__, "commit": None, "dirty": None}
    version.version_info.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(version, "_ROOT", tmp_path)  # like site-packages: no .git there
    assert version.version_info()["commit"] is None
    version.version_info.cache_clear()


def test_version_flag_prints_version_and_commit(capsys):
    from flipsearch import __version__
    from flipsearch.cli import main as flipsearch_main
    from flipsearch.version import version_info
    from opsa_train.cli import main as opsa_main

    commit = str(version_info()["commit"])[:12]
    for main, prog in ((flipsearch_main, "flipsearch"), (opsa_main, "opsa-train")):
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{prog} {__version__} (commit {commit}")


def test_missing_shared_data_says_where_it_looked(tmp_path, monkeypatch):
    import datasets

    from flipsearch.prompts import load_prompt_set

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(PromptSetError) as e:
        load_prompt_set("advbench")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "advbench" / "harmful_behaviors.csv") in msg
    assert "from $FLIPSEARCH_SHARED_DATA" in msg and "hub is unreachable" in msg
    assert "set FLIPSEARCH_SHARED_DATA" in msg and "'hf:walledai/AdvBench@train'" in msg


def test_installed_default_shared_folder_is_under_the_working_folder(tmp_path, monkeypatch):
    from flipsearch.prompts import _sources

    monkeypatch.delenv("FLIPSEARCH_SHARED_DATA", raising=False)
    assert _sources.shared_data_dir() == REPO.parent / "shared" / "data"  # a checkout
    monkeypatch.setattr(_sources, "_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert _sources.shared_data_dir() == tmp_path / "shared" / "data"


# ---------------------------------------------------------------- the installed wheel


def _copy_checkout(dst: Path) -> Path:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "results", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
    )
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def subprocess_ok(*cmd: object, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with its output unless it exits 0."""
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, object]:
    """Build the wheel, install it into a fresh venv; returns the venv and a clean env."""
    tmp = tmp_path_factory.mktemp("package")
    src = _copy_checkout(tmp / "src")
    dist = tmp / "dist"
    subprocess_ok(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src
    )
    (wheel,) = dist.glob("flipsearch-*.whl")
    venv = tmp / "venv"
    subprocess_ok(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    purelib = subprocess_ok(
        py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    ).stdout.strip()
    # Reuse the test environment's dependencies: a .pth line appends each of its
    # site-packages folders to sys.path *without* running the .pth files inside them, so
    # the editable install of this repository (a .pth hook there) stays off the path.
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "_outer_env.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    subprocess_ok(
        sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    work = tmp / "work"  # outside the repository, no shared/ beside it
    work.mkdir()
    return {"venv": venv, "py": py, "env": env, "work": work, "wheel": wheel}


def _run(installed: dict, *cmd: str, env: dict | None = None, check: bool = True):
    out = subprocess.run(
        list(cmd),
        cwd=installed["work"],
        env={**installed["env"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert out.returncode == 0, f"{cmd}: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(installed, shared_data):
    venv, py = installed["venv"], str(installed["py"])
    code = "import flipsearch, opsa_train; print(flipsearch.__file__); print(opsa_train.__file__)"
    files = _run(installed, py, "-c", code).stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in files), files  # not the checkout

    from flipsearch import __version__

    for prog in ("flipsearch", "opsa-train"):
        assert _run(installed, prog, "--version").stdout.strip() == f"{prog} {__version__}"
    assert "--space" in _run(installed, "flipsearch", "sweep", "--help").stdout
    listed = _run(installed, "flipsearch", "spaces").stdout
    for name in BUILTIN:
        assert f"flipsearch/search_spaces/{name}.yaml" in listed

    # Package data: every space, the demo config and its stages' built-in prompt sets.
    code = (
        "from flipsearch.space import builtin_spaces, load_search_space as L\n"
        "from flipsearch.prompts import load_prompt_set as P\n"
        "from opsa_train.demo import DEFAULT_CONFIG\n"
        "from opsa_train.pipeline import load_pipeline_config\n"
        "print([L(n).size for n in sorted(builtin_spaces())])\n"
        "print(len(P('harmful_core')), len(P('benign')))\n"
        "print(DEFAULT_CONFIG, load_pipeline_config(DEFAULT_CONFIG).run)\n"
    )
    lines = _run(installed, py, "-c", code).stdout.splitlines()
    assert lines[0] == str([load_search_space(n).size for n in sorted(BUILTIN)])
    assert lines[1] == "61 80"
    config, run = lines[2].split()
    assert Path(config).is_relative_to(venv) and run == "demo"
    assert (
        "usage: python -m opsa_train.demo"
        in _run(installed, py, "-m", "opsa_train.demo", "--help").stdout
    )

    # A benchmark set without shared data and without the hub names where it looked.
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(installed["work"] / "hf"),
    }
    code = "from flipsearch.prompts import load_prompt_set; load_prompt_set('advbench')"
    out = _run(installed, py, "-c", code, env=offline, check=False)
    assert out.returncode != 0
    assert str(installed["work"] / "shared" / "data" / "advbench") in out.stderr
    assert "set FLIPSEARCH_SHARED_DATA" in out.stderr and "hf:walledai/AdvBench" in out.stderr
    code = "from flipsearch.prompts import load_prompt_set as P; print(P('advbench')[0].source)"
    shared = {**offline, "FLIPSEARCH_SHARED_DATA": str(shared_data)}
    assert _run(installed, py, "-c", code, env=shared).stdout.strip() == "advbench"


@pytest.mark.slow
def test_installed_wheel_sweeps_and_exports_with_provenance(installed, embedded_model_path):
    from flipsearch import __version__

    common = ["--results-dir", "results"]
    _run(
        installed,
        "flipsearch",
        "sweep",
        "--space",
        "paper_axes",
        "--study",
        "pkg",
        "--trials",
        "1",
        "--engine",
        "hf",
        "--max-tokens",
        "4",
        "--limit-harmful",
        "2",
        "--limit-benign",
        "2",
        "--minibatch",
        "2",
        "--max-over-refusal",
        "1.0",
        "--cache",
        "cache.sqlite",
        "--no-progress",
        *common,
    )
    _run(installed, "flipsearch", "export", "--study", "pkg", "--out", "best.json", *common)
    doc = json.loads((installed["work"] / "best.json").read_text())
    code = doc["provenance"]["code"]
    assert code == {"version": __version__, "commit": None, "dirty": None}
    assert doc["provenance"]["package_version"] == __version__
    assert Path(doc["provenance"]["space"]["source"]).is_relative_to(installed["venv"])
