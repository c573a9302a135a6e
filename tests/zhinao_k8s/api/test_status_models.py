"""api/status.py: reading a status back from the wire, and the columns `list` shows."""

from zhinao_k8s.api.status import PipelineStatus, StageStatus, printer_fields, read_status


def test_read_status_round_trip_and_tolerance() -> None:
    st = PipelineStatus(phase="Running", current_stage="a", stages=[StageStatus(name="a", phase="Running", attempt=1)])
    wire = st.to_wire()
    assert wire["currentStage"] == "a" and wire["stages"][0]["phase"] == "Running"
    # kopf keeps its own bookkeeping in status; it must not break reading ours.
    assert read_status({**wire, "kopf": {"progress": {}}}) == st
    assert read_status(None) == PipelineStatus()
    assert read_status({"phase": "NotAPhase"}) == PipelineStatus()


def test_printer_fields() -> None:
    assert printer_fields({"phase": "Running", "currentStage": "sft", "progress": "1/3"}) == {
        "phase": "Running",
        "stage": "sft",
        "progress": "1/3",
    }
    assert printer_fields(None) == {"phase": "Pending", "stage": "", "progress": ""}
