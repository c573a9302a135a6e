"""The data stage through real S3 (SeaweedFS): two ranks meeting at object-store barriers give the
same documents as one rank on local files."""

import json
import threading

from test_data_processing import _outputs, _params, _run_ranks, _write_corpus

from zhinao.data.processing import run_data_processing
from zhinao.distributed import DistEnv


def test_two_ranks_over_s3_match_one_local_rank(s3_store, tmp_path):
    corpus = _write_corpus(tmp_path)
    _run_ranks(_params(), corpus, f"file://{tmp_path}/one", 1)
    for path in sorted((tmp_path / "corpus").iterdir()):
        s3_store.put_file(f"corpus/{path.name}", path)

    errors = []

    def rank(r):
        try:
            run_data_processing(
                _params(),
                corpus=s3_store.child("corpus"),
                output=s3_store.child("out"),
                dist=DistEnv(r, 2, r),
                run_id="s3",
            )
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(180) for t in threads]
    assert not errors, errors

    out = s3_store.child("out")
    docs = sorted(line for k in out.list("docs/") for line in out.get_bytes(k).decode().splitlines())
    rejects = sorted(
        (r["step"], r["reason"], r["file_index"], r["line"])
        for k in out.list("rejects/")
        for r in map(json.loads, out.get_bytes(k).decode().splitlines())
    )
    assert (docs, rejects) == _outputs(tmp_path / "one")
    assert out.list("_work/") == []
    assert json.loads(out.get_bytes("report/retention.json"))["world_size"] == 2
