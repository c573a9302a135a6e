"""The retention cascade: per-step counting, merging ranks, the Markdown table and the PNG."""

from zhinao.data.retention import Cascade, format_table, plot_cascade


def test_record_multi_row_steps_and_copies():
    c = Cascade(["input", "a", "b", "mix"])
    c.record(("input",), 100, 100, None)
    c.record(("a", "b"), 100, 80, None)  # passes both rows, text shortened in the last
    c.record(("a", "b"), 50, 50, "b", "dup:x")  # dropped at the second row
    c.record(("mix",), 80, 80, None, copies=3)
    c.record_bad_input(30, "malformed_json")
    rows = {r["step"]: r for r in c.to_rows()}
    assert rows["input"] == {
        "step": "input",
        "docs_in": 2,
        "docs_out": 1,
        "bytes_in": 130,
        "bytes_out": 100,
        "reasons": {"malformed_json": 1},
    }
    assert (rows["a"]["docs_in"], rows["a"]["docs_out"], rows["a"]["bytes_out"]) == (2, 2, 150)
    assert (rows["b"]["docs_out"], rows["b"]["bytes_out"], rows["b"]["reasons"]) == (1, 80, {"dup": 1})
    assert (rows["mix"]["docs_out"], rows["mix"]["bytes_out"]) == (3, 240)


def test_merge_format_and_plot(tmp_path):
    c = Cascade(["input", "rules"])
    c.record(("input",), 10, 10, None)
    c.record(("rules",), 10, 10, "rules", "too_short")
    rows = Cascade.merge([c.to_rows(), c.to_rows()])
    assert rows[1]["docs_in"] == 2 and rows[1]["docs_removed"] == 2 and rows[1]["docs_removed_pct"] == 100.0
    report = {
        "steps": rows,
        "mix": {
            "tokens_in": {"webpages": 10},
            "tokens_out": {"webpages": 20},
            "factors": {"webpages": 2.0},
            "targets": {"webpages": 1.0},
        },
    }
    table = format_table(report)
    assert "| rules | 2 | 0 | 2 | 100.0 |" in table and "| webpages | 10 | 100.00% | 2.00 | 20 | 100.00% |" in table
    plot_cascade(report, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
