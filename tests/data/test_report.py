"""`kernelkit data-bench`: runs the Loader over generated JPEGs and prints and writes the
per-stage rows."""

from __future__ import annotations

import json

from kernelkit import cli


def test_data_bench_prints_and_writes_the_stage_split(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = cli.main(["data-bench", "--images", "8", "--batch-size", "4", "--size", "32",
                   "--epochs", "2", "--model-ms", "5", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert r["images"] == 8 and r["batches"] == 2 and r["images_per_s"] > 0
        assert r["decode_cpu_ms_per_image"] > 0 and 0 <= r["wait_fraction"] <= 1
        assert r["consume_s"] >= 0.009  # two 5 ms model steps per epoch, one after each batch
    printed = capsys.readouterr().out
    assert "wait fraction" in printed and "preprocess" in printed


def test_data_bench_reads_a_folder_and_rejects_an_empty_one(tmp_path, capsys):
    from kernelkit.data import make_jpegs

    make_jpegs(3, sizes=[(60, 80)], directory=tmp_path / "imgs")
    assert cli.main(["data-bench", "--folder", str(tmp_path / "imgs"), "--batch-size", "2",
                     "--size", "16", "--epochs", "1"]) == 0
    (tmp_path / "empty").mkdir()
    assert cli.main(["data-bench", "--folder", str(tmp_path / "empty")]) == 2
    assert "no image files (.jpg .jpeg .png" in capsys.readouterr().out
