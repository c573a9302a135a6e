"""`python -m zhinao_k8s.jobs.ablation_step prepare|evaluate` for real on a file:// store: the data and
the report it writes, and one readable line (no traceback) for a bad spec or unfinished runs."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from ablation_specs import cpu_proxy

from zhinao.artifacts import StageOutput
from zhinao.data.demo_corpus import real_documents
from zhinao_k8s.api.ablation import Ablation
from zhinao_k8s.jobs.ablation_step import EXIT_FAILED, EXIT_SPEC, main
from zhinao_k8s.render.ablation import ENV_ABLATION_SPEC
from zhinao_k8s.render.ablation_runs import expand_runs
from zhinao_k8s.runner.ablation import threads, train_runs


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> Ablation:
    """2 recipes x 1 seed of the tiny proxy, 10 steps of 4 x 32 tokens, on 120 real documents."""
    root = tmp_path_factory.mktemp("ablation-job")
    (root / "corpus").mkdir()
    docs = real_documents(120, random.Random(0))
    (root / "corpus" / "part-00000.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    corpus = f"file://{root}/corpus"
    return Ablation.model_validate(
        {
            "metadata": {"name": "abl"},
            "spec": {
                "storage": {"uri": f"file://{root}/store"},
                "base": {"corpus": corpus},
                "recipes": [{"name": "a", "dataset": corpus}, {"name": "b", "dataset": corpus}],
                "seeds": 1,
                "proxy": cpu_proxy(tokens=1280, seq_len=32, micro_batch=4),
                "tokenizer": {"vocabSize": 512},
                "evaluations": {
                    "validLoss": {"everySteps": 5, "heldOutShare": 0.2, "maxSequences": 16},
                    "benchmarks": {"itemsPerTask": 4},
                },
            },
        }
    )


def env_of(ablation: Ablation, workdir: Path) -> dict[str, str]:
    return {ENV_ABLATION_SPEC: json.dumps(ablation.to_wire()), "ZHINAO_WORKDIR": str(workdir)}


def store(ablation: Ablation) -> Path:
    return Path(ablation.spec.storage.uri.removeprefix("file://")) / "abl"


def test_prepare_evaluate_and_their_readable_failures(ablation: Ablation, tmp_path: Path, capsys) -> None:
    # prepare, as the PyTorchJob runs it: a fresh interpreter, the spec in the env var only.
    env = {**os.environ, **env_of(ablation, tmp_path / "prepare"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "zhinao_k8s.jobs.ablation_step", "prepare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["recipes"].keys() == {"a", "b"} and summary["valid_sequences"] > 0
    prep = store(ablation) / "prep"
    assert json.loads((prep / "done.json").read_text()) == summary
    assert (prep / "tokenizer" / "tokenizer" / "tokenizer.json").is_file()
    assert (prep / "recipes" / "a" / "train" / "docs" / "part-00000.jsonl").is_file()
    for recipe in ("a", "b"):  # the mixture is tokenized here, once per recipe, into the runs' stream format
        index = StageOutput.at(f"file://{prep}/recipes/{recipe}/train").read_tokens_index()
        assert index.seq_len == 32 and index.sequences == summary["recipes"][recipe]["train_sequences"] > 0

    # evaluate before the runs have trained: one line naming them, exit 1
    assert main(["evaluate"], env_of(ablation, tmp_path / "eval")) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == "ablation evaluate failed: runs not finished (a stage published nothing yet): abl-a-s0, abl-b-s0\n"

    with threads(1):
        train_runs(ablation, workdir=tmp_path / "train", in_process=True)
        assert main(["evaluate"], env_of(ablation, tmp_path / "eval")) == 0
    report_md = store(ablation) / "report" / "report.md"
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"report": f"file://{report_md}"}
    report = json.loads((report_md.parent / "report.json").read_text())
    assert report["ablation"] == "abl" and report["recipes"] == ["a", "b"] and len(report["runs"]) == 2
    assert "valid_loss" in report["metrics"]
    for run in expand_runs(ablation):  # the valid curve came from the loop: only the checkpoint to resume is left
        checkpoints = Path(run.output.removeprefix("file://")) / "checkpoints"
        assert not StageOutput.at(run.output).has_tokens()  # the run read the preparation's shards, tokenized nothing
        assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step-00000010"]
        result = json.loads((store(ablation) / "runs" / f"{run.name}.json").read_text())
        assert [p["step"] for p in result["valid_curve"]] == [5, 10]


def test_a_bad_or_missing_spec_is_one_line_and_exit_2(ablation: Ablation, tmp_path: Path) -> None:
    bad = ablation.to_wire()
    bad["spec"]["experimentalShare"] = 1.5
    env = {**os.environ, ENV_ABLATION_SPEC: json.dumps(bad)}
    out = subprocess.run(
        [sys.executable, "-m", "zhinao_k8s.jobs.ablation_step", "prepare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == EXIT_SPEC
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"ablation prepare: invalid spec {ENV_ABLATION_SPEC}: spec.experimentalShare: must be < 1")


def test_without_the_env_var_it_says_where_it_belongs(capsys) -> None:
    assert main(["prepare"], {}) == EXIT_SPEC
    assert "ZHINAO_ABLATION_SPEC: not set: this runs in an Ablation's PyTorchJob" in capsys.readouterr().err
