"""The pure fan-out of an Ablation into TrainingPipelines, and the spec's validation."""

import pytest

from zhinao_k8s.api.ablation import parse_ablation
from zhinao_k8s.api.load import SpecError
from zhinao_k8s.examples import example_text
from zhinao_k8s.render.ablation_runs import expand_runs, prep_uri, root_uri
from zhinao_k8s.render.names import LABEL_RECIPE
from zhinao_k8s.render.pytorchjob import render_pipeline

MINIMAL = """
apiVersion: zhinao.ai/v1alpha1
kind: Ablation
metadata: {name: abl}
spec:
  storage: {uri: file:///data}
  base: {corpus: file:///data/base}
  corpus: file:///data/raw
  recipes:
    - {name: don, data: {}}
    - {name: doff, data: {minhash: {enabled: false}}}
    - {name: ext, dataset: file:///data/ext}
"""


def test_defaults_are_the_reports_setup():
    ab = parse_ablation(MINIMAL)
    spec = ab.spec
    assert spec.experimental_share == 0.5 and spec.seeds == 3
    assert spec.proxy.model_size == "1.8b" and spec.proxy.tokens == 100_000_000_000
    # 4096 x 4 x 2 x 64 GPUs = 2.1M tokens per step: about 47.7K steps, as the report's loss plots
    assert spec.proxy.tokens_per_step == 2_097_152 and spec.proxy.max_steps == 47_683
    assert spec.evaluations.valid_loss.every_steps == 500


@pytest.mark.parametrize(
    "recipe,index,name,seed",
    [
        ("don", 0, "abl-don-s0", 0),
        ("don", 2, "abl-don-s2", 2),
        ("doff", 1, "abl-doff-s1", 1001),
        ("ext", 0, "abl-ext-s0", 2000),
    ],
)
def test_one_pipeline_per_recipe_and_seed_with_deterministic_names_and_distinct_seeds(recipe, index, name, seed):
    ab = parse_ablation(MINIMAL)
    runs = {(r.recipe, r.index): r for r in expand_runs(ab)}
    assert len(runs) == 9
    run = runs[(recipe, index)]
    assert run.name == name and run.seed == seed
    stage = run.pipeline.spec.stages[0]
    assert stage.kind == "pretrain" and stage.params.seed == seed
    assert stage.inputs == {
        "tokenizer": "file:///data/abl/prep/tokenizer",
        "tokens": f"file:///data/abl/prep/recipes/{recipe}/train",
        "valid": "file:///data/abl/prep/valid",
    }
    assert run.output == f"file:///data/{name}/pretrain"
    assert run.pipeline.metadata.labels[LABEL_RECIPE] == recipe
    assert prep_uri(ab) == "file:///data/abl/prep" and root_uri(ab) == "file:///data/abl"


def test_the_valid_loss_is_computed_in_the_loop_and_only_the_latest_checkpoint_kept():
    ab = parse_ablation(example_text("ablation-demo"))
    params = expand_runs(ab)[0].pipeline.spec.stages[0].params
    assert (params.max_steps, params.eval_every, params.checkpoint_every, params.keep_checkpoints) == (300, 100, 100, 1)
    assert (params.model_size, params.seq_len, params.micro_batch_size) == ("tiny", 128, 8)
    assert len(expand_runs(ab)) == 12


def test_the_runs_render_to_pytorchjobs():
    objects = [o for r in expand_runs(parse_ablation(MINIMAL)) for o in render_pipeline(r.pipeline)]
    jobs = [o for o in objects if o["kind"] == "PyTorchJob"]
    assert [j["metadata"]["name"] for j in jobs[:2]] == [
        "abl-don-s0-pretrain",
        "abl-don-s1-pretrain",
    ]  # no SFT by default
    worker = jobs[0]["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 7  # 8 pods: Master + 7 Workers


@pytest.mark.parametrize(
    "patch,problem",
    [
        ("    - {name: don, data: {}}\n", "spec: recipe names used twice: don"),
        ("    - {name: x, data: {}, dataset: file:///d}\n", "set either data"),
        ("    - {name: Bad_Name}\n", "must be a DNS label"),
    ],
)
def test_invalid_recipes_are_reported_with_their_path(patch, problem):
    with pytest.raises(SpecError) as err:
        parse_ablation(MINIMAL + patch)
    assert any(problem in line for line in err.value.problems), err.value.problems


def test_run_names_must_fit_a_pipeline_name_and_the_budget_must_cover_warmup():
    with pytest.raises(SpecError) as err:
        parse_ablation(
            MINIMAL.replace("name: abl}", "name: a-very-long-ablation-name-for-sure}").replace(
                "{name: ext,", "{name: extension-data,"
            )
        )
    assert any("run names" in p for p in err.value.problems)
    with pytest.raises(SpecError) as err:
        parse_ablation(
            MINIMAL
            + "  proxy: {tokens: 1000, seqLen: 128, microBatchSize: 1, gradAccumSteps: 1, replicas: 1, nprocPerNode: 1}\n"
        )
    assert any("warmupSteps" in p for p in err.value.problems)
