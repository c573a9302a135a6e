"""charts/zhinao-pipeline with the real helm: lint every ci/ scenario, validate every object (Kubernetes
1.35 schemas, the PyTorchJob CRD, our TrainingPipeline CRD and pydantic models), hold every pod to the
security policy, and check the chart's PyTorchJobs against the Python renderer.

The chart/renderer contract: with `operator.enabled=false` the chart renders PyTorchJobs from a
template that mirrors operator/zhinao_k8s/render/pytorchjob.py. For the same values, rendering the
chart's TrainingPipeline with `render_pytorchjob()` must give the same jobs: name, namespace, the
renderer's labels, and the whole `spec` (replica specs, command/args, env, ports, resources,
securityContext, volumes, init containers, pod annotations), and each stage's spec ConfigMap. The one
value compared by meaning, not text, is the stage spec (`stage.json`): the chart cannot fill in the
params' defaults, so its params must validate to the same params the renderer writes (the trainer
validates them with the same models). The one
intended difference: `spec.suspend` becomes `runPolicy.suspend: true` on the chart's jobs, which is
what the operator patches onto a running job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from helm_render import CHARTS, ci_values, helm, pod_policy_problems, pod_specs, render, validate_object
from pydantic import TypeAdapter
from schemas import crd_json_schema

from zhinao_k8s.api.load import parse_pipeline
from zhinao_k8s.api.v1alpha1 import Stage
from zhinao_k8s.render.pytorchjob import render_pytorchjob, stage_configmap

CHART = "zhinao-pipeline"
CHART_DIR = CHARTS / CHART
SCENARIOS = ci_values(CHART)
NS = "ml"
METRICS = ("zhinao_tokens_per_second", "zhinao_train_loss", "zhinao_mfu", "zhinao_reward_mean")
CANARY = "AKIAZHINAOCANARY0001"  # a fake credential: it must never reach rendered output


PIPELINE_SCHEMA = crd_json_schema(str(CHARTS.parent / "manifests" / "crds" / "zhinao.ai_trainingpipelines.yaml"))


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def render_values(
    tmp_path: Path, values: dict, *extra: str, kinds: tuple[str, ...] = ("TrainingPipeline", "PyTorchJob")
) -> list[dict]:
    """Render with these values; only the objects of `kinds`."""
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return [o for o in render(CHART, path, *extra, namespace=NS) if o["kind"] in kinds]


def refused(*args: str) -> str:
    out = helm("template", "rel", str(CHART_DIR), "-n", NS, *args, check=False)
    assert out.returncode != 0, f"helm accepted {args}:\n{out.stdout[:2000]}"
    assert CANARY not in out.stdout + out.stderr
    return out.stderr


# --- lint, validity and policy, per scenario ----------------------------------------------------


def test_there_are_the_scenarios() -> None:
    assert {p.name for p in SCENARIOS} >= {
        "default-values.yaml",
        "gpu-cluster-values.yaml",
        "operator-values.yaml",
        "plain-values.yaml",
        "plain-single-stage-values.yaml",
        "monitoring-values.yaml",
    }


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda p: p.name if p else "no-values")
def test_lint_strict(values: Path | None) -> None:
    helm("lint", "--strict", str(CHART_DIR), *(["-f", str(values)] if values else []))


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_every_object_is_valid_and_every_pod_follows_the_policy(values: Path) -> None:
    objs = render(CHART, values, namespace=NS)
    assert objs
    problems = []
    for obj in objs:
        validate_object(obj, PIPELINE_SCHEMA)
        if obj["kind"] == "TrainingPipeline":
            parsed = parse_pipeline(yaml.safe_dump(obj), str(values.name))  # the operator's own models
            assert parsed.metadata.namespace == NS
        for where, spec in pod_specs(obj):
            problems += pod_policy_problems(where, spec)
            for c in spec["containers"]:
                for env in c["env"]:
                    if env["name"].startswith("AWS_") and env["name"] != "AWS_REGION":
                        assert set(env) == {"name", "valueFrom"} and "secretKeyRef" in env["valueFrom"], env
    assert not problems, "\n".join(problems)
    assert not [o for o in objs if o["kind"] == "Secret"], "the chart must not create Secrets"


def test_default_install_is_one_trainingpipeline() -> None:
    kinds = by_kind(render(CHART, namespace=NS))
    assert set(kinds) == {"TrainingPipeline"}
    (tp,) = kinds["TrainingPipeline"]
    assert tp["metadata"]["name"] == "rel" and tp["metadata"]["namespace"] == NS
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert tp["spec"] == values["pipeline"]  # the spec is the values, verbatim
    assert [s.name for s in parse_pipeline(yaml.safe_dump(tp)).spec.stages] == ["tokenizer", "pretrain"]


def test_operator_scenario_keeps_name_labels_and_retry_policy() -> None:
    (tp,) = by_kind(render(CHART, CHART_DIR / "ci" / "operator-values.yaml", namespace=NS))["TrainingPipeline"]
    assert tp["metadata"]["name"] == "zhinao-1p8b"
    assert tp["metadata"]["labels"]["team"] == "ml-platform"
    pipeline = parse_pipeline(yaml.safe_dump(tp))
    assert pipeline.spec.retry_policy.max_retries == 2
    assert pipeline.stage("pretrain").resources.gpu == 8


def test_plain_scenario_renders_the_listed_stages_with_minio() -> None:
    kinds = by_kind(render(CHART, CHART_DIR / "ci" / "plain-values.yaml", namespace=NS))
    assert set(kinds) == {"ConfigMap", "PyTorchJob"}
    jobs = {j["metadata"]["name"]: j for j in kinds["PyTorchJob"]}
    assert list(jobs) == ["zhinao-1p8b-tokenizer", "zhinao-1p8b-pretrain"]
    pretrain = jobs["zhinao-1p8b-pretrain"]["spec"]
    assert pretrain["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert pretrain["runPolicy"]["backoffLimit"] == 0  # an explicit 0 is kept, not defaulted to 3
    pod = pretrain["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["ZHINAO_S3_ENDPOINT"]["value"] == "http://minio.storage.svc:9000"
    assert [c["name"] for c in pod["initContainers"]] == ["wait-inputs"]  # pretrain reads the tokenizer
    configmaps = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}
    runtime = json.loads(configmaps["zhinao-1p8b-pretrain-spec"]["data"]["stage.json"])
    assert runtime["inputs"]["tokenizer"] == "s3://zhinao/runs/zhinao-1p8b/tokenizer"
    assert runtime["upstream"] == ["tokenizer"]


def test_plain_mode_creates_only_the_listed_stages(tmp_path: Path) -> None:
    objs = render(CHART, CHART_DIR / "ci" / "plain-values.yaml", "--set", "jobs.stages={tokenizer}", namespace=NS)
    assert [o["metadata"]["name"] for o in objs] == ["zhinao-1p8b-tokenizer-spec", "zhinao-1p8b-tokenizer"]


# --- the contract: chart PyTorchJobs == render_pytorchjob() ---------------------------------------


def _semantic_stage_spec(configmap: dict) -> dict:
    """The stage spec a ConfigMap carries, by meaning: params validated by the stage's model."""
    runtime = json.loads(configmap["data"]["stage.json"])
    stage = TypeAdapter(Stage).validate_python(
        {"name": runtime["stage"], "kind": runtime["kind"], "inputs": runtime["inputs"], "params": runtime["params"]}
    )
    return {**runtime, "params": stage.params.to_wire()}


CONTRACT_CASES = {
    "defaults-of-values.yaml": {},
    "everything-left-to-the-models": {
        "pipeline": {
            "image": None,
            "imagePullPolicy": None,
            "storage": None,
            "metrics": None,
            "retryPolicy": None,
            "suspend": None,
            "stages": [{"name": "only", "kind": "tokenizer", "inputs": {"corpus": "s3://bucket/corpus"}}],
        }
    },
    "chained-outputs-gpu-workers": {
        "pipeline": {
            "storage": {
                "uri": "s3://bucket/root//",
                "region": "eu-west-1",
                "credentials": {"secretRef": {"name": "s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}},
            },
            "metrics": {"port": 9500},
            "stages": [
                {
                    "name": "tok",
                    "kind": "tokenizer",
                    "output": "s3://bucket/tok-out",
                    "inputs": {"corpus": "s3://bucket/corpus"},
                    "params": {"vocabSize": 512},
                },
                {
                    "name": "pt",
                    "kind": "pretrain",
                    "replicas": 3,
                    "nprocPerNode": 4,
                    "backoffLimit": 0,
                    "resources": {"cpu": "16", "memory": "64Gi", "gpu": 4},
                    "image": "registry.local/trainer:dev",
                    "inputs": {"tokenizer": "stage://tok", "corpus": "s3://bucket/corpus"},
                    "params": {"lr": 1.0e-4, "adamEps": 1.0e-8, "warmupSteps": 5, "maxSteps": 50, "modelSize": "0.5b"},
                },
                {"name": "pt2", "kind": "pretrain", "inputs": {"tokenizer": "stage://tok", "tokens": "stage://pt"}},
            ],
        }
    },
    **{p.name: yaml.safe_load(p.read_text()) or {} for p in SCENARIOS},
}


@pytest.mark.parametrize("case", list(CONTRACT_CASES), ids=str)
def test_chart_pytorchjobs_equal_the_python_renderer(case: str, tmp_path: Path) -> None:
    values = copy.deepcopy(CONTRACT_CASES[case])
    values.pop("jobs", None)
    values["operator"] = {"enabled": True}
    (tp,) = render_values(tmp_path, values)
    pipeline = parse_pipeline(yaml.safe_dump(tp), case)
    names = [s.name for s in pipeline.spec.stages]

    values["operator"] = {"enabled": False}
    values["jobs"] = {"stages": names}
    chart_objects = render_values(tmp_path, values, kinds=("ConfigMap", "PyTorchJob"))
    chart_maps = [o for o in chart_objects if o["kind"] == "ConfigMap" and "stage.json" in o.get("data", {})]
    chart_jobs = [o for o in chart_objects if o["kind"] == "PyTorchJob"]
    assert [j["metadata"]["name"] for j in chart_jobs] == [f"{pipeline.metadata.name}-{n}" for n in names]

    for stage, chart_map, chart_job in zip(pipeline.spec.stages, chart_maps, chart_jobs):
        want_map = stage_configmap(pipeline, stage)
        assert chart_map["metadata"]["name"] == want_map["metadata"]["name"]
        assert want_map["metadata"]["labels"].items() <= chart_map["metadata"]["labels"].items()
        assert _semantic_stage_spec(chart_map) == _semantic_stage_spec(want_map)
        want = render_pytorchjob(pipeline, stage)
        if pipeline.spec.suspend:
            want["spec"]["runPolicy"]["suspend"] = True
        assert chart_job["apiVersion"] == want["apiVersion"] and chart_job["kind"] == want["kind"]
        assert chart_job["metadata"]["name"] == want["metadata"]["name"]
        assert chart_job["metadata"]["namespace"] == want["metadata"]["namespace"] == NS
        assert want["metadata"]["labels"].items() <= chart_job["metadata"]["labels"].items()
        assert chart_job["spec"] == want["spec"]


def test_the_contract_test_notices_a_difference(tmp_path: Path) -> None:
    """The comparison is not vacuous: a changed renderer output is caught."""
    (tp,) = render_values(tmp_path, {})
    pipeline = parse_pipeline(yaml.safe_dump(tp))
    plain = {"operator": {"enabled": False}, "jobs": {"stages": ["tokenizer"]}}
    chart_map = render_values(tmp_path, plain, kinds=("ConfigMap",))[0]
    want = stage_configmap(pipeline, pipeline.stage("tokenizer"))
    assert _semantic_stage_spec(chart_map) == _semantic_stage_spec(want)
    want["data"]["stage.json"] = want["data"]["stage.json"].replace('"vocabSize":8192', '"vocabSize":8193')
    assert _semantic_stage_spec(chart_map) != _semantic_stage_spec(want)


# --- credentials --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "pipeline.storage.credentials.accessKeyId",
        "pipeline.storage.credentials.secretAccessKey",
        "pipeline.storage.credentials.secretRef.secretAccessKey",
        "pipeline.storage.accessKey",
        "pipeline.storage.password",
        "minio.rootPassword",
        "minio.auth.rootPassword",
        "auth.secretKey",
    ],
)
def test_inline_credentials_are_refused_and_never_rendered(path: str) -> None:
    err = refused("--set", f"{path}={CANARY}")
    assert "additional properties" in err.lower() or "additionalproperties" in err.lower(), err


def test_secret_reference_reaches_every_replica_by_name_only(tmp_path: Path) -> None:
    values = {
        "operator": {"enabled": False},
        "jobs": {"stages": ["tokenizer", "pretrain"]},
        "pipeline": {
            "storage": {
                "credentials": {"secretRef": {"name": "team-s3", "accessKeyIdKey": "id", "secretAccessKeyKey": CANARY}}
            }
        },
    }
    jobs = render_values(tmp_path, values)
    refs = set()
    for job in jobs:
        for _, spec in pod_specs(job):
            for env in spec["containers"][0]["env"]:
                if "valueFrom" in env:
                    ref = env["valueFrom"]["secretKeyRef"]
                    refs.add((env["name"], ref["name"], ref["key"]))
    # The key *name* is what the Secret calls it; nothing but names travels.
    assert refs == {("AWS_ACCESS_KEY_ID", "team-s3", "id"), ("AWS_SECRET_ACCESS_KEY", "team-s3", CANARY)}


# --- monitoring ---------------------------------------------------------------------------------


def test_podmonitor_selects_the_training_pods_and_every_local_rank() -> None:
    kinds = by_kind(render(CHART, CHART_DIR / "ci" / "monitoring-values.yaml", namespace=NS))
    (pm,) = kinds["PodMonitor"]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = pm["spec"]["selector"]["matchLabels"]
    tp = kinds["TrainingPipeline"][0]
    pipeline = parse_pipeline(yaml.safe_dump(tp))
    job = render_pytorchjob(pipeline, pipeline.spec.stages[0])
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in pod["spec"]["containers"][0]["ports"]
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"] * 4  # nprocPerNode: 4
    assert [e["relabelings"][0]["replacement"] for e in endpoints[1:]] == ["${1}:9401", "${1}:9402", "${1}:9403"]


def test_podmonitor_off_by_default_and_refused_without_metrics() -> None:
    assert "PodMonitor" not in by_kind(render(CHART, namespace=NS))
    err = refused("--set", "monitoring.podMonitor.enabled=true", "--set", "pipeline.metrics.enabled=false")
    assert "pipeline.metrics.enabled" in err


def test_grafana_dashboard_configmap() -> None:
    kinds = by_kind(render(CHART, CHART_DIR / "ci" / "monitoring-values.yaml", namespace=NS))
    (cm,) = kinds["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["zhinao-training.json"])
    exprs = {p["title"]: p["targets"][0]["expr"] for p in dashboard["panels"]}
    for metric in METRICS:
        (expr,) = [e for e in exprs.values() if metric + "{" in e]
        assert "by (pipeline, stage)" in expr, expr  # one series per stage
        assert 'stage=~"$stage"' in expr and 'pipeline=~"$pipeline"' in expr
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pipeline", "stage"}
    assert {p["gridPos"]["y"] for p in dashboard["panels"]} == {0, 8}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]) == 4


def test_dashboard_metric_names_exist_in_docs() -> None:
    docs = (CHARTS.parent / "docs" / "metrics.md").read_text()
    for metric in METRICS:
        assert f"`{metric}`" in docs, metric


# --- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "replicas=2"], "additional properties"),
        (["--set", "pipeline.stages[0].name=x", "--set", "pipeline.stages[0].kind=no-such-kind"], "oneof"),
        (["--set", "name=Not_A_Label"], "name"),
        (["--set", "name=" + "a" * 41], "name"),
        (["--set", "pipeline.storage.endpoint=null"], "endpoint is required"),
        (["--set", "operator.enabled=false"], "list the stages to create in jobs.stages"),
        (["--set", "operator.enabled=false", "--set", "jobs.stages={nope}"], "not a stage of the pipeline"),
        (["--set", "jobs.stages={tokenizer}"], "only applies with operator.enabled=false"),
        (["--set", "pipeline.storage.credentials.secretRef.name=null"], "secretref"),
        (["--set", "monitoring.dashboard.enabled=yes"], "boolean"),
    ],
)
def test_bad_values_are_refused(args: list[str], message: str) -> None:
    assert message.lower() in refused(*args).lower()


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "a", "kind": "tokenizer"}, {"name": "a", "kind": "pretrain"}], "is used twice"),
        (
            [
                {"name": "a", "kind": "pretrain", "inputs": {"tokenizer": "stage://b"}},
                {"name": "b", "kind": "tokenizer"},
            ],
            "not an earlier stage",
        ),
        ([{"name": "Upper", "kind": "tokenizer"}], "does not match pattern"),
        ([{"name": "a", "kind": "tokenizer", "replicas": 0}], "minimum"),
        ([{"name": "a", "kind": "tokenizer", "resources": {"cpu": 8}}], "string"),
        ([{"name": "a", "kind": "pretrain", "params": {"learningRate": 1}}], "oneof"),
    ],
)
def test_specs_the_models_reject_are_refused(stages: list[dict], message: str, tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"pipeline": {"stages": stages}}))
    assert message in refused("-f", str(path)).lower()


# --- docs and generated schema ------------------------------------------------------------------


def test_every_leaf_value_is_documented() -> None:
    """Each key whose value is not a non-empty map has a `# --` comment on the line above (helm-docs);
    list items (stages) are documented at their list's key."""
    text = (CHART_DIR / "values.yaml").read_text()
    lines = text.splitlines()
    undocumented = []

    def walk(node: yaml.MappingNode, path: str) -> None:
        for key, value in node.value:
            here = f"{path}.{key.value}".lstrip(".")
            if isinstance(value, yaml.MappingNode) and value.value and value.flow_style is False:
                walk(value, here)
            elif not lines[key.start_mark.line - 1].lstrip().startswith("# --"):
                undocumented.append(here)

    walk(yaml.compose(text), "")
    assert not undocumented, undocumented


def test_values_schema_pipeline_is_the_models_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    pipeline = schema["properties"]["pipeline"]
    assert pipeline["additionalProperties"] is False and pipeline["required"] == ["stages"]
    assert set(pipeline["properties"]) == {
        "image",
        "imagePullPolicy",
        "storage",
        "metrics",
        "stages",
        "retryPolicy",
        "scheduling",
        "suspend",
        "memoryPlan",
    }
    assert schema["definitions"]["Credentials"]["properties"].keys() == {"secretRef"}
    assert schema["definitions"]["SecretRef"]["additionalProperties"] is False
    assert "#/$defs/" not in json.dumps(schema)
    assert '"title"' not in json.dumps([schema["definitions"], schema["properties"]])


def test_chart_declares_no_dependency_helm_would_need_to_download() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert "dependencies" not in chart
    assert not (CHART_DIR / "charts").exists()


def test_notes_show_how_to_follow_the_pipeline_and_the_next_plain_stage() -> None:
    out = helm("install", "rel", str(CHART_DIR), "--dry-run=client", "-n", NS).stdout
    assert "zhinao-k8s status rel -n ml" in out
    assert "kubectl -n ml create secret generic zhinao-s3" in out
    out = helm(
        "install",
        "rel",
        str(CHART_DIR),
        "--dry-run=client",
        "-n",
        NS,
        "-f",
        str(CHART_DIR / "ci" / "plain-values.yaml"),
        "--set",
        "jobs.stages={tokenizer}",
    ).stdout
    assert "pytorchjob/zhinao-1p8b-tokenizer" in out
    assert "--set 'jobs.stages={tokenizer,pretrain}'" in out
    assert "helm install minio minio/minio -n storage" in out
