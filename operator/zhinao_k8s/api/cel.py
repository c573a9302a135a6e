"""The CRDs' CEL `x-kubernetes-validations`: the rules of api/rules.py and the spec models that the
API server can apply at admission, so a bad pipeline is refused by `kubectl apply` instead of being
marked Failed by the operator.

Schema keywords already carry what they can (the stage name's `pattern`, `maxLength`, `maxItems`);
CEL adds what needs more than one field: the pipeline name as a DNS-1035 label (metadata takes no
schema), the Service names the training operator derives, unique stage names, stage references,
and params that belong to another kind. Whether a reference names an *earlier* stage is left to
the models (the operator refuses it in status): CEL has no portable list index.
"""

from zhinao_k8s.api import rules
from zhinao_k8s.api.v1alpha1 import STAGE_CLASSES


def _rule(rule: str, message: str) -> dict:
    return {"rule": rule, "message": message}


def name_rules(max_name: int, why: str) -> list[dict]:
    """Rules on `metadata.name` of any zhinao.ai object whose name becomes part of job names."""
    return [
        _rule(f"size(self.metadata.name) <= {max_name}", f"metadata.name must be at most {max_name} characters: {why}"),
        _rule(
            f"self.metadata.name.matches('{rules.DNS_1035_LABEL}')",
            f"metadata.name {rules.PATTERN_REASONS[rules.DNS_1035_LABEL]}",
        ),
    ]


def replica_names_rule() -> dict:
    """`<pipeline>-<stage>-worker-<replicas-2>` (or `-master-0`, as long) fits a DNS label."""
    digits = "(has(s.replicas) && s.replicas > 1 ? size(string(s.replicas - 2)) : 1)"
    fixed = len("-") + len("-worker-")
    return _rule(
        f"self.spec.stages.all(s, size(self.metadata.name) + size(s.name) + {fixed} + {digits} <= {rules.MAX_LABEL})",
        f"the training operator names each replica's Service <pipeline>-<stage>-worker-<i>, which must be at most "
        f"{rules.MAX_LABEL} characters: shorten metadata.name or the stage names",
    )


def stages_rules() -> list[dict]:
    """Rules on the `spec.stages` list (`self` is the list)."""
    return [
        _rule("self.all(s, self.exists_one(t, t.name == s.name))", "stage names must be unique"),
        _rule(
            "self.all(s, !has(s.inputs) || s.inputs.all(k, !s.inputs[k].startsWith('stage://') || "
            "self.exists(t, t.name != s.name && 'stage://' + t.name == s.inputs[k])))",
            "every stage://<name> input must name another stage of the pipeline",
        ),
    ]


def params_fields(stage_class: type) -> list[str]:
    """The wire names of a stage kind's params."""
    params = stage_class.model_fields["params"].annotation
    return list(params.model_json_schema(by_alias=True)["properties"])


def stage_rules() -> list[dict]:
    """Rules on one stage (`self` is the stage): its params hold no field of another kind only."""
    out = []
    every = sorted({f for cls in STAGE_CLASSES for f in params_fields(cls)})
    for cls in STAGE_CLASSES:
        kind = cls.model_fields["kind"].annotation.__args__[0]
        own = params_fields(cls)
        foreign = [f for f in every if f not in own]
        if not foreign:
            continue
        used = " || ".join(f"has(self.params.{f})" for f in foreign)
        out.append(
            _rule(
                f"self.kind != '{kind}' || !has(self.params) || !({used})",
                f"params of a {kind} stage may only set: {', '.join(own)}",
            )
        )
    return out


def pipeline_rules() -> list[dict]:
    """Rules on the TrainingPipeline object itself (`self` is the object)."""
    return [replica_names_rule()]


def add_stage_rules(spec_schema: dict) -> None:
    """Put the list and per-stage rules into a generated PipelineSpec schema."""
    stages = spec_schema["properties"]["stages"]
    stages["x-kubernetes-validations"] = stages_rules()
    stages["items"]["x-kubernetes-validations"] = stage_rules()
