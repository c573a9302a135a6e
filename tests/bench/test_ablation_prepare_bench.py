"""bench/ablation_prepare.py at toy size: the prepare job on 1 rank and on 2 (fresh processes, gloo)
prepares the same files, and each rank reports its time, memory and phases."""

from scripts import load_script


def test_one_and_two_ranks_prepare_the_same_files_and_report_their_figures(tmp_path):
    bench = load_script("bench/ablation_prepare.py")
    result = bench.measure(0.25, tmp_path, seq_len=256)
    assert result["outputs_equal"] and result["files_compared"] > 10
    assert sorted(result["runs"]) == ["1", "2"]
    for world_size, run in result["runs"].items():
        assert len(run["ranks"]) == int(world_size) and run["job_wall_s"] > 0
        for rank in run["ranks"]:
            assert rank["exit"] == 0 and rank["wall_s"] > 0 and rank["cpu_s"] > 0
            assert rank["peak_rss_mib"] >= rank["rss_at_start_mib"] > 0
    ranks_of_two = result["runs"]["2"]["ranks"]
    assert (
        ranks_of_two[0]["phases_s"]["tokenizer"] > 0 and "tokenizer" not in ranks_of_two[1]["phases_s"]
    )  # rank 0 alone
    assert all(rank["phases_s"]["pack"] > 0 and rank["phases_s"]["measure"] > 0 for rank in ranks_of_two)  # every rank
    for rank in ranks_of_two:
        assert set(rank["phase_peak_rss_mib"]) == set(rank["phases_s"])
        assert max(rank["phase_peak_rss_mib"].values()) <= rank["peak_rss_mib"]
    assert all(r["train_sequences"] > 0 for r in result["summary"]["recipes"].values())
    assert "| 0.25 | 2 |" in bench.table([result])
