"""Every bad input the CLI can be given, through the real `zhinao-k8s` app: each is refused with its
exit code and a line naming the field or the file, and no traceback (issue 16's table).

Specs and Secret files run in process (typer's CliRunner); data files go through `zhinao-k8s run`
with a real data stage (marked slow), whose retention report must list each bad file.
"""

import base64
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from zhinao.artifacts import StageOutput
from zhinao.publication import writing_store
from zhinao.storage import FileStore
from zhinao_k8s.cli.app import app
from zhinao_k8s.examples import example_text

BASE = {
    "apiVersion": "zhinao.ai/v1alpha1",
    "kind": "TrainingPipeline",
    "metadata": {"name": "demo"},
    "spec": {
        "storage": {
            "uri": "s3://zhinao/runs",
            "endpoint": "http://minio:9000",
            "credentials": {"secretRef": {"name": "s3"}},
        },
        "stages": [
            {"name": "data", "kind": "data", "inputs": {"corpus": "s3://zhinao/corpus"}},
            {"name": "tok", "kind": "tokenizer", "inputs": {"corpus": "stage://data"}},
            {
                "name": "pt",
                "kind": "pretrain",
                "replicas": 2,
                "inputs": {"tokenizer": "stage://tok", "corpus": "stage://data"},
            },
            {
                "name": "lc",
                "kind": "longctx",
                "replicas": 2,
                "inputs": {"model": "stage://pt", "corpus": "stage://data"},
                "params": {"sequenceParallel": 2, "seqLen": 1024},
            },
            {"name": "sft", "kind": "sft", "inputs": {"model": "stage://pt", "data": "s3://zhinao/sft"}},
            {"name": "rm", "kind": "reward", "inputs": {"model": "stage://sft", "preferences": "s3://zhinao/prefs"}},
            {
                "name": "rl",
                "kind": "rlhf",
                "inputs": {"policy": "stage://sft", "reward": "stage://rm", "prompts": "s3://zhinao/prompts"},
            },
        ],
    },
}
DELETE = object()
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"  # must never be echoed


def spec(**changes) -> str:
    """BASE with `path=value` changes (`spec__stages__2__replicas=True`); DELETE removes the key."""
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        keys = [int(k) if k.isdigit() else k for k in path.split("__")]
        node = doc
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return yaml.safe_dump(doc, sort_keys=False)


def stage(i: int, key: str, value) -> dict:
    return {f"spec__stages__{i}__{key}": value}


@dataclass
class Case:
    id: str
    text: str | bytes
    expect: list[str]
    """Substrings of the output, the first naming the field or the file."""
    command: str = "validate"
    code: int = 2
    secret: str | bytes | None = None
    """A Secret manifest for `run --secret`, which then gets a valid spec."""
    absent: list[str] = field(default_factory=lambda: [SECRET])


BASE_TEXT = spec()
LONG = "a" * 40

SPEC_CASES = [
    # --- resource quantities, types, numbers
    Case("negative cpu", spec(**stage(0, "resources", {"cpu": "-4"})), ["spec.stages[0].resources.cpu:", "quantity"]),
    Case("dots as cpu", spec(**stage(0, "resources", {"cpu": "..."})), ["spec.stages[0].resources.cpu:", "quantity"]),
    Case(
        "zero memory", spec(**stage(0, "resources", {"memory": "0Gi"})), ["resources.memory: must be greater than zero"]
    ),
    Case("memory in GB", spec(**stage(0, "resources", {"memory": "8GB"})), ["spec.stages[0].resources.memory:"]),
    Case(
        "cpu as a number",
        spec(**stage(0, "resources", {"cpu": 4})),
        ["spec.stages[0].resources.cpu:", "not an integer"],
    ),
    Case("too many GPUs", spec(**stage(2, "resources", {"gpu": 17})), ["spec.stages[2].resources.gpu: must be <= 16"]),
    Case("replicas true", spec(**stage(2, "replicas", True)), ["spec.stages[2].replicas:", "not a boolean"]),
    Case("replicas as a string", spec(**stage(2, "replicas", "2")), ["spec.stages[2].replicas:", "not a string"]),
    Case("replicas fractional", spec(**stage(2, "replicas", 2.5)), ["spec.stages[2].replicas:"]),
    Case("replicas zero", spec(**stage(2, "replicas", 0)), ["spec.stages[2].replicas: must be >= 1"]),
    Case("backoffLimit as a string", spec(**stage(0, "backoffLimit", "3")), ["spec.stages[0].backoffLimit:"]),
    Case("lr infinite", spec(**stage(2, "params", {"lr": float("inf")})), ["spec.stages[2].params.lr:", "finite"]),
    Case("lr not a number", spec(**stage(2, "params", {"lr": float("nan")})), ["spec.stages[2].params.lr:", "finite"]),
    Case("lr negative", spec(**stage(2, "params", {"lr": -1})), ["spec.stages[2].params.lr: must be > 0"]),
    Case(
        "seqLen unbounded",
        spec(**stage(2, "params", {"seqLen": 100_000_000})),
        ["spec.stages[2].params.seqLen: must be <= 1048576"],
    ),
    Case(
        "microBatchSize unbounded",
        spec(**stage(2, "params", {"microBatchSize": 100_000})),
        ["spec.stages[2].params.microBatchSize: must be <="],
    ),
    Case(
        "sft maxLen unbounded",
        spec(**stage(4, "params", {"maxLen": 10_000_000})),
        ["spec.stages[4].params.maxLen: must be <="],
    ),
    Case(
        "warmup longer than training",
        spec(**stage(2, "params", {"warmupSteps": 500})),
        ["spec.stages[2].params", "warmupSteps (500) must be < maxSteps"],
    ),
    Case(
        "negative mix target",
        spec(**stage(0, "params", {"mix": {"targets": {"webpages": -0.5}}})),
        ["spec.stages[0].params.mix.targets.webpages: must be >= 0"],
    ),
    Case(
        "sequenceParallel does not divide the world",
        spec(**stage(3, "params", {"sequenceParallel": 4, "seqLen": 1024})),
        ["spec.stages[3].params.sequenceParallel: must divide the world size"],
    ),
    Case("metrics port privileged", spec(spec__metrics={"port": 80}), ["spec.metrics.port: must be >= 1024"]),
    Case("negative retries", spec(spec__retryPolicy={"maxRetries": -1}), ["spec.retryPolicy.maxRetries: must be >= 0"]),
    Case("unknown pull policy", spec(spec__imagePullPolicy="Sometimes"), ["spec.imagePullPolicy:"]),
    Case(
        "duplicate key",
        BASE_TEXT.replace("replicas: 2\n", "replicas: 2\n    replicas: 1000\n", 1),
        ["spec.stages[2].replicas: duplicate key"],
    ),
    # --- names
    Case("name starts with a digit", spec(metadata__name="7b-run"), ["metadata.name:", "DNS-1035"]),
    Case("name with capitals", spec(metadata__name="Has_Caps"), ["metadata.name:", "DNS-1035"]),
    Case("name too long", spec(metadata__name=LONG + "b"), ["metadata.name:", "at most 40"]),
    Case("name missing", spec(metadata__name=DELETE), ["metadata.name: required field is missing"]),
    Case(
        "Service name over 63 characters",
        spec(metadata__name=LONG, **stage(6, "name", "r" * 20)),
        ["spec.stages[6].name:", "Service named", "70 characters"],
    ),
    Case(
        "replica count makes the Service name too long",
        spec(metadata__name=LONG, **stage(6, "name", "r" * 12), **stage(6, "replicas", 102)),
        ["spec.stages[6].name:", "worker-100"],
    ),
    Case("namespace not a DNS label", spec(metadata__namespace="Team_A"), ["metadata.namespace:", "DNS-1123"]),
    Case("namespace too long", spec(metadata__namespace="n" * 64), ["metadata.namespace:", "at most 63"]),
    Case("label value with a space", spec(metadata__labels={"team": "a b"}), ["metadata.labels.team: label value"]),
    Case("label key too long", spec(metadata__labels={"k" * 64: "v"}), ["metadata.labels.", "label key"]),
    Case("label value not a string", spec(metadata__labels={"team": 1}), ["metadata.labels.team:"]),
    Case("stage name with capitals", spec(**stage(6, "name", "Rl")), ["spec.stages[6].name:", "DNS-1123"]),
    Case("stage name too long", spec(**stage(6, "name", "r" * 21)), ["spec.stages[6].name:", "at most 20"]),
    Case("duplicate stage names", spec(**stage(6, "name", "rm")), ["spec.stages[6].name: 'rm' is already stages[5]"]),
    Case("image with spaces", spec(spec__image="my image"), ["spec.image:", "image reference"]),
    Case(
        "stage image in capitals",
        spec(**stage(0, "image", "Registry/Trainer:dev")),
        ["spec.stages[0].image:", "image reference"],
    ),
    # --- storage, endpoint and URIs
    Case("s3 without endpoint", spec(spec__storage__endpoint=DELETE), ["spec.storage: endpoint is required"]),
    Case("storage uri with ..", spec(spec__storage__uri="s3://zhinao/../x"), ["spec.storage.uri:", "'..'"]),
    Case(
        "storage uri with credentials",
        spec(spec__storage__uri=f"s3://AKIA:{SECRET}@zhinao/runs"),
        ["spec.storage.uri:", "credentials"],
    ),
    Case("storage file:/// empty path", spec(spec__storage__uri="file:///"), ["spec.storage.uri:", "empty path"]),
    Case("storage file:// empty path", spec(spec__storage__uri="file://"), ["spec.storage.uri:", "empty path"]),
    Case("bucket with capitals", spec(spec__storage__uri="s3://Bad_Bucket/x"), ["spec.storage.uri:", "bucket name"]),
    Case("bucket too short", spec(spec__storage__uri="s3://ab/x"), ["spec.storage.uri:", "3 to 63"]),
    Case("bucket is an IP", spec(spec__storage__uri="s3://192.168.1.1/x"), ["spec.storage.uri:", "IP address"]),
    Case("bucket with ..", spec(spec__storage__uri="s3://zh..ao/x"), ["spec.storage.uri:", "bucket name"]),
    Case(
        "storage uri without scheme",
        spec(spec__storage__uri="zhinao/runs"),
        ["spec.storage.uri:", "must start with s3:// or file://"],
    ),
    Case("storage uri gs://", spec(spec__storage__uri="gs://zhinao/runs"), ["spec.storage.uri:", "must start with"]),
    Case(
        "storage uri with a newline", spec(spec__storage__uri="s3://zhinao/ru\nns"), ["spec.storage.uri:", "whitespace"]
    ),
    Case(
        "endpoint with credentials",
        spec(spec__storage__endpoint=f"http://AKIA:{SECRET}@minio:9000"),
        ["spec.storage.endpoint:", "credentials"],
    ),
    Case(
        "render: endpoint with credentials",
        spec(spec__storage__endpoint=f"http://AKIA:{SECRET}@minio:9000"),
        ["spec.storage.endpoint:", "credentials"],
        command="render",
    ),
    Case(
        "endpoint without scheme", spec(spec__storage__endpoint="minio:9000"), ["spec.storage.endpoint:", "http://host"]
    ),
    Case("endpoint ftp", spec(spec__storage__endpoint="ftp://minio"), ["spec.storage.endpoint:"]),
    Case(
        "endpoint bad port", spec(spec__storage__endpoint="http://minio:port"), ["spec.storage.endpoint:", "not a URL"]
    ),
    Case(
        "endpoint with a query",
        spec(spec__storage__endpoint=f"http://minio:9000/?X-Amz-Signature={SECRET}"),
        ["spec.storage.endpoint:", "query"],
    ),
    Case(
        "input with credentials",
        spec(**stage(0, "inputs", {"corpus": f"s3://AKIA:{SECRET}@zhinao/corpus"})),
        ["spec.stages[0].inputs.corpus:", "credentials"],
    ),
    Case(
        "input without scheme",
        spec(**stage(0, "inputs", {"corpus": "zhinao/corpus"})),
        ["spec.stages[0].inputs.corpus:", "must start with"],
    ),
    Case(
        "input with ..",
        spec(**stage(0, "inputs", {"corpus": "s3://zhinao/a/../b"})),
        ["spec.stages[0].inputs.corpus:", "'..'"],
    ),
    Case(
        "input file:///",
        spec(**stage(0, "inputs", {"corpus": "file:///"})),
        ["spec.stages[0].inputs.corpus:", "empty path"],
    ),
    Case(
        "input URI too long",
        spec(**stage(0, "inputs", {"corpus": "s3://zhinao/" + "x" * 1100})),
        ["spec.stages[0].inputs.corpus:", "at most 1024"],
    ),
    Case(
        "stage reference to a bad name",
        spec(**stage(1, "inputs", {"corpus": "stage://Data"})),
        ["spec.stages[1].inputs.corpus:", "must name a stage"],
    ),
    Case(
        "output with credentials",
        spec(**stage(4, "output", f"s3://u:{SECRET}@zhinao/out")),
        ["spec.stages[4].output:", "credentials"],
    ),
    Case("output file:///", spec(**stage(4, "output", "file:///")), ["spec.stages[4].output:", "empty path"]),
    # --- what the stages read and write
    Case(
        "two stages write one output",
        spec(**stage(4, "output", "s3://zhinao/x"), **stage(5, "output", "s3://zhinao/x")),
        ["spec.stages[5].output:", "overlaps the output of spec.stages[4]"],
    ),
    Case(
        "output inside another stage's output",
        spec(**stage(5, "output", "s3://zhinao/runs/demo/sft/rm")),
        ["spec.stages[5].output:", "overlaps the output of spec.stages[4]"],
    ),
    Case(
        "output equals an input",
        spec(**stage(0, "output", "s3://zhinao/corpus")),
        ["spec.stages[0].inputs.corpus: overlaps this stage's own output"],
    ),
    Case(
        "output inside an input",
        spec(**stage(0, "output", "s3://zhinao/corpus/clean")),
        ["spec.stages[0].inputs.corpus: overlaps"],
    ),
    Case(
        "data stage without corpus",
        spec(**stage(0, "inputs", {})),
        ["spec.stages[0].inputs: a data stage needs input 'corpus'"],
    ),
    Case(
        "tokenizer without corpus",
        spec(**stage(1, "inputs", {})),
        ["spec.stages[1].inputs: a tokenizer stage needs input 'corpus'"],
    ),
    Case(
        "pretrain without tokenizer",
        spec(**stage(2, "inputs", {"corpus": "stage://data"})),
        ["spec.stages[2].inputs: a pretrain stage needs input 'tokenizer'"],
    ),
    Case(
        "longctx without model",
        spec(**stage(3, "inputs", {"corpus": "stage://data"})),
        ["spec.stages[3].inputs: a longctx stage needs input 'model'"],
    ),
    Case(
        "sft without data",
        spec(**stage(4, "inputs", {"model": "stage://pt"})),
        ["spec.stages[4].inputs: a sft stage needs input 'data'"],
    ),
    Case(
        "reward without preferences",
        spec(**stage(5, "inputs", {"model": "stage://sft"})),
        ["spec.stages[5].inputs: a reward stage needs input 'preferences'"],
    ),
    Case(
        "remax without prompts",
        spec(**stage(6, "inputs", {"policy": "stage://sft", "reward": "stage://rm"})),
        ["spec.stages[6].inputs: a rlhf stage needs input 'prompts'"],
    ),
    Case(
        "remax with a reward weight but no reward model",
        spec(**stage(6, "inputs", {"policy": "stage://sft", "prompts": "s3://zhinao/p"})),
        ["spec.stages[6].inputs: a rlhf stage needs input 'reward'"],
    ),
    Case(
        "dpo without preferences",
        spec(**stage(6, "params", {"algorithm": "dpo"})),
        ["spec.stages[6].inputs: a rlhf stage needs input 'preferences'"],
    ),
    Case(
        "misspelt input name",
        spec(**stage(2, "inputs", {"tokeniser": "stage://tok"})),
        ["spec.stages[2].inputs.tokeniser: a pretrain stage has no input 'tokeniser'"],
    ),
    Case(
        "too many inputs",
        spec(**stage(6, "inputs", {f"i{k}": "s3://zhinao/x" for k in range(17)})),
        ["spec.stages[6].inputs:", "at most 16"],
    ),
    Case(
        "reference to a later stage",
        spec(**stage(1, "inputs", {"corpus": "stage://pt"})),
        ["spec.stages[1].inputs.corpus: 'stage://pt' is not an earlier stage"],
    ),
    Case(
        "reference to no stage",
        spec(**stage(1, "inputs", {"corpus": "stage://nope"})),
        ["spec.stages[1].inputs.corpus: 'stage://nope' is not an earlier stage"],
    ),
    Case(
        "reference to itself",
        spec(**stage(1, "inputs", {"corpus": "stage://tok"})),
        ["spec.stages[1].inputs.corpus: 'stage://tok' is not an earlier stage"],
    ),
    # --- document structure
    Case(
        "another kind's params",
        spec(**stage(1, "params", {"seqLen": 128})),
        ["spec.stages[1].params.seqLen: unknown field"],
    ),
    Case("unknown kind", spec(**stage(1, "kind", "sft2")), ["spec.stages[1]: unknown kind 'sft2'"]),
    Case("missing kind", spec(**stage(1, "kind", DELETE)), ["spec.stages[1]: required field 'kind' is missing"]),
    Case("no stages", spec(spec__stages=[]), ["spec.stages:", "at least 1"]),
    Case(
        "too many stages",
        spec(
            spec__stages=[
                {"name": f"s{k}", "kind": "data", "inputs": {"corpus": f"s3://zhinao/c{k}"}} for k in range(33)
            ]
        ),
        ["spec.stages:", "at most 32"],
    ),
    Case("unknown field", spec(spec__bogus=1), ["spec.bogus: unknown field"]),
    Case("wrong apiVersion", spec(apiVersion="zhinao.ai/v1"), ["apiVersion:"]),
    Case("wrong kind", spec(kind="PyTorchJob"), ["kind:", "TrainingPipeline"]),
    Case(
        "secretRef without name",
        spec(spec__storage__credentials={"secretRef": {}}),
        ["spec.storage.credentials.secretRef.name: required field is missing"],
    ),
    Case("run: bad spec never starts", spec(**stage(2, "replicas", True)), ["spec.stages[2].replicas:"], command="run"),
    # --- hostile and malformed files
    Case("empty file", "", ["document must be a mapping"]),
    Case("a list", "- a\n- b\n", ["document must be a mapping"]),
    Case("a scalar", "hello\n", ["document must be a mapping"]),
    Case("broken YAML", "spec:\n  stages: [\n", ["not valid YAML"]),
    Case("bad indentation", "metadata:\n  name: a\n name: b\n", ["line 3: not valid YAML"]),
    Case("two documents", BASE_TEXT + "---\n" + BASE_TEXT, ["not valid YAML", "another document"]),
    Case("broken JSON", json.dumps(BASE)[:-2], ["not valid YAML"]),
    Case("Latin-1 file", BASE_TEXT.replace("name: demo", "name: café").encode("latin-1"), ["not UTF-8 text", "offset"]),
    Case("binary file", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)), ["binary file", "NUL byte"]),
    Case("UTF-16 file", BASE_TEXT.encode("utf-16"), ["binary file"]),
    Case("over 256 KiB", BASE_TEXT + "# " + "x" * 300_000 + "\n", ["at most 262,144"]),
    Case("recursive alias", "a: &a [*a]\n", ["an alias refers to a value that contains it"]),
    Case("nested 100 deep", "a: " + "[" * 100 + "]" * 100 + "\n", ["line 1: nested deeper than 32"]),
    Case("nested 10,000 deep", "[" * 10_000 + "]" * 10_000, ["line 1:", "nest"]),  # libyaml stops at 1,000
    Case("merge key of a non-mapping", "a: &x 1\nb:\n  <<: *x\n", ["not valid YAML"]),
]


def ablation(change) -> str:
    doc = yaml.safe_load(example_text("ablation-demo"))
    change(doc)
    return yaml.safe_dump(doc)


SPEC_CASES += [
    Case(
        "ablation: proxy cpu negative",
        ablation(lambda d: d["spec"].setdefault("proxy", {}).update(cpu="-4")),
        ["spec.proxy.cpu:", "quantity"],
        command="ablation render",
    ),
    Case(
        "ablation: name starts with a digit",
        ablation(lambda d: d["metadata"].update(name="1abl")),
        ["metadata.name:", "DNS-1035"],
        command="ablation render",
    ),
    Case(
        "ablation: proxy replicas unbounded",
        ablation(lambda d: d["spec"].setdefault("proxy", {}).update(replicas=5000)),
        ["spec.proxy.replicas: must be <= 1024"],
        command="ablation render",
    ),
]


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ['a0: &a0 "lol"']
    for k in range(1, levels + 1):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


SPEC_CASES.append(Case("alias bomb", billion_laughs(), ["aliases expand to more than"]))

SECRET_B64 = base64.b64encode(SECRET.encode()).decode()


def secret_doc(**over) -> str:
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "data": {"AWS_ACCESS_KEY_ID": SECRET_B64}}
    doc.update(over)
    return yaml.safe_dump({k: v for k, v in doc.items() if v is not DELETE})


SECRET_CASES = [
    Case("secret file is a list", "", ["document 1: must be a mapping", "list"], secret="- a\n- b\n"),
    Case(
        "secret value not base64",
        "",
        ["data.AWS_SECRET_ACCESS_KEY: not valid base64"],
        secret=secret_doc(data={"AWS_SECRET_ACCESS_KEY": SECRET + "!!"}),
    ),
    Case(
        "secret value not UTF-8",
        "",
        ["data.AWS_SECRET_ACCESS_KEY: decodes to bytes that are not UTF-8"],
        secret=secret_doc(data={"AWS_SECRET_ACCESS_KEY": base64.b64encode(b"\xff\xfe" + SECRET.encode()).decode()}),
    ),
    Case("secret data a list", "", ["data: must be a mapping"], secret=secret_doc(data=["a"])),
    Case(
        "secret stringData a number",
        "",
        ["stringData.AWS_SECRET_ACCESS_KEY: the value must be a string"],
        secret=secret_doc(stringData={"AWS_SECRET_ACCESS_KEY": 12345}),
    ),
    Case("secret without a name", "", ["metadata.name: required field is missing"], secret=secret_doc(metadata={})),
    Case(
        "no Secret in the file",
        "",
        ["holds no document of kind Secret"],
        secret="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    ),
    Case("empty secret file", "", ["holds no document of kind Secret"], secret=""),
    Case(
        "secret file not UTF-8",
        "",
        ["not UTF-8 text"],
        secret="kind: Secret\nmetadata: {name: s3}\nstringData: {k: caf\xe9}\n".encode("latin-1"),
    ),
    Case("secret file broken YAML", "", ["not valid YAML"], secret="kind: Secret\ndata: {a: [\n"),
    Case("secret file binary", "", ["binary file"], secret=b"\0\x01\x02"),
]

RUNNABLE = yaml.safe_dump(
    {
        "apiVersion": "zhinao.ai/v1alpha1",
        "kind": "TrainingPipeline",
        "metadata": {"name": "never-runs"},
        "spec": {
            "storage": {"uri": "file:///nonexistent/store"},
            "stages": [
                {"name": "data", "kind": "data", "backoffLimit": 0, "inputs": {"corpus": "file:///nonexistent/c"}}
            ],
        },
    }
)


def invoke(tmp_path: Path, case: Case):
    path = tmp_path / "spec.yaml"
    text = RUNNABLE if case.secret is not None else case.text
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = [*case.command.split(), str(path)]
    if case.command == "run" or case.secret is not None:
        args = ["run", str(path), "--workdir", str(tmp_path / "w")]
    if case.secret is not None:
        secret = tmp_path / "secret.yaml"
        secret.write_bytes(case.secret if isinstance(case.secret, bytes) else case.secret.encode())
        args += ["--secret", str(secret)]
    t0 = time.process_time()  # CPU seconds: what the input costs, not how busy the machine is
    result = CliRunner().invoke(app, args)
    return result, time.process_time() - t0, (secret if case.secret is not None else path)


def check(result, case: Case, named: Path) -> str:
    out = result.output
    assert result.exit_code == case.code, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    assert str(named) in out  # the file
    for part in case.expect:
        assert part in out, f"{part!r} not in:\n{out}"
    for secret in case.absent:
        assert secret not in out and SECRET_B64 not in out
    return out


@pytest.mark.parametrize("case", SPEC_CASES + SECRET_CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_per_problem(case: Case, tmp_path: Path) -> None:
    result, seconds, named = invoke(tmp_path, case)
    out = check(result, case, named)
    assert seconds < 1.0, f"took {seconds:.2f} CPU seconds"
    problems = [line for line in out.splitlines() if line.startswith("  ")]
    assert 1 <= len(problems) <= 2, out  # one line per problem (the two-stage overlap cases name both)


def test_the_base_spec_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE_TEXT)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_at_least_80_cases() -> None:
    assert len(SPEC_CASES) + len(SECRET_CASES) + len(DATA_FILES) + len(PATH_CASES) >= 80


PATH_CASES = ["missing", "directory"]


@pytest.mark.parametrize("what", PATH_CASES)
def test_unreadable_spec_path_names_the_file(what: str, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    if what == "directory":
        path.mkdir()
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "cannot read file" in result.output and str(path) in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("output", "code", "expect"),
    [
        ("gs://bucket/x", 2, "OUTPUT: 'gs://bucket/x' must start with"),
        ("file:///nonexistent/out", 1, "no report/retention.json"),
    ],
)
def test_data_report_of_a_bad_output(output: str, code: int, expect: str) -> None:
    result = CliRunner().invoke(app, ["data", "report", output])
    assert result.exit_code == code and expect in result.output, result.output
    assert "Traceback" not in result.output


# --- data files: through `zhinao-k8s run` with a real data stage ---------------------------------


def _lines(n: int = 50) -> bytes:
    return b"".join(
        json.dumps({"text": f"Line {i} of a document that will be damaged."}).encode() + b"\n" for i in range(n)
    )


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def _bz2(data: bytes) -> bytes:
    import bz2

    return bz2.compress(data)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _parquet_without_text() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"body": ["x"]}), buf)
    return buf.getvalue()


DATA_FILES = {
    # name: (content, reason in the report)
    "trunc.jsonl.gz": (lambda: _half(_gzip(_lines(2000))), "truncated"),
    "plain-text.jsonl.gz": (lambda: _lines(), "not_gzip"),
    "trunc.jsonl.zst": (lambda: _half(_zstd(_lines(2000))), "truncated"),
    "plain-text.jsonl.zst": (lambda: _lines(), "not_zstd"),
    "trunc.jsonl.bz2": (lambda: _half(_bz2(_lines(2000))), "truncated"),
    "plain-text.jsonl.bz2": (lambda: _lines(), "not_bz2"),
    "garbage.parquet": (lambda: b"PAR1 not really", "not_parquet"),
    "no-text.parquet": (_parquet_without_text, "no_text_column"),
    "notes.txt": (lambda: b"a README, not input\n", "not an input format"),
    "table.csv": (lambda: b"text\nhello\n", "not an input format"),
}


def _run(spec_path: Path, workdir: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "zhinao_k8s", "run", str(spec_path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _data_spec(tmp: Path, name: str, corpus: Path) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "zhinao.ai/v1alpha1",
                "kind": "TrainingPipeline",
                "metadata": {"name": name},
                "spec": {
                    "storage": {"uri": f"file://{tmp / 'store'}"},
                    "stages": [
                        {
                            "name": "data",
                            "kind": "data",
                            "backoffLimit": 0,
                            "inputs": {"corpus": f"file://{corpus}"},
                            "params": {"mix": {"enabled": False}},
                        }
                    ],
                },
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def damaged_corpus_run(tmp_path_factory) -> dict:
    """One data stage over good documents plus every damaged file: it succeeds and reports them."""
    from zhinao.data.demo_corpus import build_demo_corpus

    tmp = tmp_path_factory.mktemp("damaged")
    build_demo_corpus(f"file://{tmp / 'in'}", n_docs=150)
    corpus = tmp / "in" / "corpus"
    for name, (content, _) in DATA_FILES.items():
        (corpus / name).write_bytes(content())
    result = _run(_data_spec(tmp, "damaged", corpus), tmp / "w")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    published = StageOutput.at(f"file://{tmp / 'store' / 'damaged' / 'data'}").store
    report = json.loads(published.get_bytes("report/retention.json"))
    return {"report": report, "md": published.get_bytes("report/retention.md").decode()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DATA_FILES))
def test_bad_data_file_is_listed_in_the_report(name: str, damaged_corpus_run: dict) -> None:
    files = damaged_corpus_run["report"]["files"]
    listed = {f["file"]: f["reason"] for f in files["rejected"] + files["skipped"]}
    assert listed.get(name) == DATA_FILES[name][1], files
    assert name in damaged_corpus_run["md"]
    assert damaged_corpus_run["report"]["docs_written"] > 0


@pytest.mark.slow
def test_a_corpus_of_only_bad_files_fails_the_stage_with_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("plain-text.jsonl.gz", "plain-text.jsonl.zst", "garbage.parquet"):
        (corpus / name).write_bytes(DATA_FILES[name][0]())
    (corpus / "bad-lines.ndjson").write_bytes(b"{not json\n\xff\xfe\n[1, 2]\n")
    result = _run(_data_spec(tmp_path, "allbad", corpus), tmp_path / "w")
    assert result.returncode == 1
    log = (tmp_path / "w" / "logs" / "allbad-data" / "master-0.log").read_text()
    assert "data stage: the data stage kept 0 documents" in log and "allowEmpty" in log, log
    # torchrun reports the failed child with a traceback of its own; none may come from our code
    assert "zhinao/data/" not in log and "zhinao/stages/" not in log and "EmptyCorpus" not in log, log
    unpublished = writing_store(FileStore(tmp_path / "store" / "allbad" / "data"))  # a failed run publishes nothing
    assert not StageOutput(FileStore(tmp_path / "store" / "allbad" / "data")).is_finished()
    report = json.loads(unpublished.get_bytes("report/retention.json"))
    assert {f["file"] for f in report["files"]["rejected"]} == {
        "plain-text.jsonl.gz",
        "plain-text.jsonl.zst",
        "garbage.parquet",
    }
