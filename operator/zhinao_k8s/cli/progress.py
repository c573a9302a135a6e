"""Live view of a local pipeline run: one row per stage, a step bar for the running stage."""

import json
import threading
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from zhinao.artifacts import metrics_key
from zhinao_k8s.api.v1alpha1 import TrainingPipeline


def last_record(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = [line for line in f.read().splitlines() if line.strip()]
        for line in reversed(lines):
            record = json.loads(line)
            if record.get("event", "step") == "step":
                return record
    except (OSError, ValueError):
        pass
    return None


class RunDisplay:
    """A runner listener that renders stage states and training progress with rich."""

    def __init__(self, pipeline: TrainingPipeline, workdir: Path, console: Console | None = None):
        self.pipeline = pipeline
        self.workdir = workdir
        self.console = console or Console(stderr=True)
        self.state = {s.name: "pending" for s in pipeline.spec.stages}
        self.detail = {s.name: "" for s in pipeline.spec.stages}
        self.started: dict[str, float] = {}
        self.current: str | None = None
        self.current_job: str | None = None
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None
        self._stop = threading.Event()
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self):
        self._live.__enter__()
        threading.Thread(target=self._poll, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._live.update(self._render())
        self._live.__exit__(*exc)

    def __call__(self, event: str, data: dict) -> None:
        if event == "stage":
            self.current, self.current_job = data["stage"], data["job"]
            self.state[self.current] = "running"
            self.started[self.current] = time.time()
            total = getattr(self.pipeline.stage(self.current).params, "max_steps", None)
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(self.current, total=total, info="") if total else None
        elif event == "restarting":
            self.state[self.current] = "restarting"
            self.detail[self.current] = data["reason"]
        elif event == "started" and self.current and self.state[self.current] == "restarting":
            self.state[self.current] = "running"
        elif event == "succeeded":
            self.state[self.current] = "succeeded"
            self.detail[self.current] = f"{time.time() - self.started[self.current]:.0f}s"
            if self.task is not None:
                self.progress.update(self.task, completed=self.progress.tasks[0].total)
        elif event == "failed":
            self.state[self.current] = "failed"
            self.detail[self.current] = data["reason"]
        self._live.update(self._render())

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            if self.task is None or not self.current_job:
                continue
            path = self.workdir / "scratch" / self.current_job / "master-0" / metrics_key(0)
            record = last_record(path)
            if record:
                info = f"loss {record['loss']:.3f}  {record.get('tokens_per_second') or 0:,.0f} tok/s/rank"
                self.progress.update(self.task, completed=record["step"], info=info)

    def _render(self):
        table = Table(title=f"pipeline {self.pipeline.metadata.name}", expand=False)
        for col in ("stage", "kind", "replicas", "state", "detail"):
            table.add_column(col)
        colors = {"succeeded": "green", "failed": "red", "running": "cyan", "restarting": "yellow"}
        for s in self.pipeline.spec.stages:
            st = self.state[s.name]
            table.add_row(
                s.name,
                s.kind,
                f"{s.replicas}x{s.nproc_per_node}",
                f"[{colors.get(st, 'dim')}]{st}[/]",
                self.detail[s.name],
            )
        return Group(table, self.progress)
