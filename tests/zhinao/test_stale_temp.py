"""Temporary files of a killed writer are removed on the next start (`sweep_stale_temp`, called by
`python -m zhinao` before its stage runs); a live writer's files are never touched. And a failing
stage process leaves its reason, one line, in the termination log."""

import os
import signal
import socket
import subprocess
import sys
import time

from zhinao.config.runtime import StageRuntime
from zhinao.storage import STALE_TEMP_SECONDS, FileStore, sweep_stale_temp

WRITE_FROM_FIFO = """
import sys
from zhinao.storage import FileStore
FileStore(sys.argv[1]).put_file("shards/part-0.jsonl", sys.argv[2])  # blocks on the FIFO
"""


def killed_writer_leftover(tmp_path):
    """Start a FileStore upload that blocks mid-copy, SIGKILL it: its temporary file stays behind."""
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITE_FROM_FIFO, str(tmp_path / "out"), str(fifo)], env=env)
    with open(fifo, "wb") as feed:
        feed.write(b'{"text": "half a shard"}\n')
        feed.flush()
        deadline = time.time() + 60
        while not list((tmp_path / "out").rglob("*.zhinao-tmp-*")) and time.time() < deadline:
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    (leftover,) = (tmp_path / "out").rglob("*.zhinao-tmp-*")
    return leftover


def test_a_killed_writers_temp_file_is_swept_and_a_live_ones_is_kept(tmp_path):
    leftover = killed_writer_leftover(tmp_path)
    live = leftover.with_name(f".part-1.jsonl.zhinao-tmp-{os.getpid()}@{socket.gethostname()}-{'a' * 12}")
    live.write_bytes(b"being written")
    assert FileStore(tmp_path / "out").list() == []  # neither is an object
    assert sweep_stale_temp(tmp_path / "out") == [leftover]
    assert not leftover.exists() and live.exists()


def test_another_hosts_temp_file_is_swept_only_once_untouched_for_long(tmp_path):
    other = tmp_path / f".x.zhinao-tmp-7@other-host-{'b' * 12}"
    other.write_bytes(b"")
    assert sweep_stale_temp(tmp_path) == []
    assert sweep_stale_temp(tmp_path, now=time.time() + STALE_TEMP_SECONDS + 1) == [other]


def test_a_stage_process_sweeps_its_output_at_start_and_leaves_its_reason(tmp_path):
    leftover = killed_writer_leftover(tmp_path)
    rt = StageRuntime(pipeline="p", stage="s", kind="no-such-kind", output=f"file://{tmp_path / 'out'}")
    (tmp_path / "stage.json").write_text(rt.to_json())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "ZHINAO_STAGE_SPEC_FILE": str(tmp_path / "stage.json"),
        "ZHINAO_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "RANK": "0",
    }
    out = subprocess.run([sys.executable, "-m", "zhinao"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert not leftover.exists(), "the killed writer's temporary file was swept at start"
    assert f"removed {leftover}, left by a killed writer" in out.stderr
    assert (
        (tmp_path / "termination-log").read_text().startswith("rank 0: SystemExit: unknown stage kind 'no-such-kind'")
    )
