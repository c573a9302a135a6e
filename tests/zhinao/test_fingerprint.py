"""Stage output fingerprints: the same run resumes, a different one is refused naming what
differs, --overwrite starts a new run in the output while the published one stays readable
(zhinao.publication publishes the new run when it has finished)."""

import json

import pytest

from zhinao.config.kinds import STAGE_KINDS
from zhinao.config.runtime import StageRuntime
from zhinao.fingerprint import FINGERPRINT_KEY, OutputMismatch, check_or_record, differences, stage_fingerprint
from zhinao.publication import generation_of, publish
from zhinao.storage import FileStore


def runtime(tmp_path, **params) -> StageRuntime:
    return StageRuntime(
        pipeline="p",
        stage="pt",
        kind="pretrain",
        params={"lr": 3e-3, "seed": 1, **params},
        inputs={"corpus": f"file://{tmp_path / 'corpus'}"},
        output=f"file://{tmp_path / 'out'}",
    )


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "one"}\n')
    return tmp_path / "corpus"


def test_same_fingerprint_resumes_and_a_changed_param_is_refused_by_name(tmp_path, corpus):
    out = FileStore(tmp_path / "out")
    assert check_or_record(out, stage_fingerprint(runtime(tmp_path)), overwrite=False) == "new"
    out.put_bytes("checkpoints/latest", b"step-30")
    assert check_or_record(out, stage_fingerprint(runtime(tmp_path)), overwrite=False) == "resume"
    with pytest.raises(OutputMismatch) as err:
        check_or_record(out, stage_fingerprint(runtime(tmp_path, lr=1e-3, seed=2)), overwrite=False)
    assert "params.lr: 0.003 -> 0.001; params.seed: 1 -> 2" in str(err.value)
    assert "--overwrite" in str(err.value) and out.get_bytes("checkpoints/latest") == b"step-30"


def test_a_changed_corpus_is_refused(tmp_path, corpus):
    out = FileStore(tmp_path / "out")
    check_or_record(out, stage_fingerprint(runtime(tmp_path)), overwrite=False)
    (corpus / "a.jsonl").write_text('{"text": "one, then more"}\n')
    with pytest.raises(OutputMismatch, match="inputs.corpus: changed"):
        check_or_record(out, stage_fingerprint(runtime(tmp_path)), overwrite=False)


def test_overwrite_drops_unpublished_runs_and_keeps_the_published_one_readable(tmp_path, corpus):
    out = FileStore(tmp_path / "out")
    old = stage_fingerprint(runtime(tmp_path))
    check_or_record(out, old, overwrite=False)
    out.put_bytes(f"_gen/{generation_of(old)}/summary.json", b"{}")
    publish(out, generation_of(old), old)
    out.put_bytes("_gen/0123456789abcdef/docs/part-0.jsonl", b"a killed run that never published")
    out.put_bytes("_lease.json", b"{}")
    new = stage_fingerprint(runtime(tmp_path, lr=1e-3))
    assert check_or_record(out, new, overwrite=True) == "overwritten"
    assert out.list() == [
        "_fingerprint.json",
        f"_gen/{generation_of(old)}/summary.json",
        "_lease.json",
        "_published.json",
    ]
    assert json.loads(out.get_bytes(FINGERPRINT_KEY)) == new


def test_an_output_without_a_fingerprint_is_not_taken_for_this_run(tmp_path, corpus):
    out = FileStore(tmp_path / "out")
    out.put_bytes("docs/part-0.jsonl", b"someone else's")
    with pytest.raises(OutputMismatch, match="holds 1 objects of a run that recorded no fingerprint"):
        check_or_record(out, stage_fingerprint(runtime(tmp_path)), overwrite=False)


def test_an_upstream_stage_is_known_by_its_fingerprint(tmp_path, corpus):
    up = FileStore(tmp_path / "up")
    up.put_bytes(FINGERPRINT_KEY, b'{"params": {"vocabSize": 512}}')
    rt = runtime(tmp_path).model_copy(update={"inputs": {"tokenizer": up.uri}})
    before = stage_fingerprint(rt)
    up.put_bytes("metrics/rank-0.jsonl", b"more lines")  # the same run going on: same input
    assert stage_fingerprint(rt) == before
    up.put_bytes(FINGERPRINT_KEY, b'{"params": {"vocabSize": 600}}')
    assert differences(before, stage_fingerprint(rt)) == ["inputs.tokenizer: changed"]


def test_a_downstream_stage_sees_the_upstream_change_only_once_it_is_published(tmp_path, corpus):
    up = FileStore(tmp_path / "up")
    first = {"params": {"vocabSize": 512}}
    up.put_bytes(FINGERPRINT_KEY, json.dumps(first).encode())
    up.put_bytes(f"_gen/{generation_of(first)}/summary.json", b"{}")
    publish(up, generation_of(first), first)
    rt = runtime(tmp_path).model_copy(update={"inputs": {"tokenizer": up.uri}})
    before = stage_fingerprint(rt)
    second = {"params": {"vocabSize": 600}}
    up.put_bytes(FINGERPRINT_KEY, json.dumps(second).encode())  # an overwrite under way
    assert stage_fingerprint(rt) == before
    up.put_bytes(f"_gen/{generation_of(second)}/summary.json", b"{}")
    publish(up, generation_of(second), second)
    assert differences(before, stage_fingerprint(rt)) == ["inputs.tokenizer: changed"]


def test_a_layout_field_is_left_out_so_another_sequence_parallel_split_resumes(tmp_path, corpus):
    def longctx(**params) -> StageRuntime:
        return StageRuntime(
            pipeline="p", stage="lc", kind="longctx", params={"lr": 2e-5, **params}, inputs={}, output="file:///x"
        )

    assert stage_fingerprint(longctx(sequenceParallel=2)) == stage_fingerprint(longctx(sequenceParallel=1))
    assert stage_fingerprint(longctx(sequence_parallel=4)) == stage_fingerprint(longctx())
    assert stage_fingerprint(longctx(seqLen=512)) != stage_fingerprint(longctx())


@pytest.mark.parametrize("kind", STAGE_KINDS, ids=lambda k: k.kind)
def test_every_layout_field_names_a_field_of_its_params(kind):
    """A misspelled name would fail every fingerprint of the kind (a KeyError) at the run's start."""
    assert set(kind.params.LAYOUT_FIELDS) <= set(kind.params.model_fields)
