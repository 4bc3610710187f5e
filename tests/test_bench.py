"""The benchmark runs end to end on a tiny model and a short generated video (no speed checks)."""

from __future__ import annotations

import json

import pytest

from realtime import bench


def test_bench_writes_json_table_and_chart(assets, tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib ([train] extra)")
    out = tmp_path / "bench.json"
    args = bench.parse_args(["--video", str(assets["video"]), "--model", str(assets["tiny"]),
                             "--runs", "20", "--warmup", "2", "--frames", "20", "--json", str(out),
                             "--backend", "onnxruntime", "--backend", "openvino",
                             "--pipeline-runs", "2"])
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    # One row per runtime asked for, measured in the same run.
    assert [row["backend"] for row in report["results"]] == ["onnxruntime", "openvino"]
    row = report["results"][0]
    for key in ("engine_fps", "pipeline_fps", "naive_fps", "decode_fps"):
        assert row[key] > 0, key
    assert row["pipeline_frames"] == row["naive_frames"] == 20
    # Two pipeline runs, the slower of the two (the lower median) reported.
    assert len(row["pipeline_fps_runs"]) == 2 and row["pipeline_fps"] == min(row["pipeline_fps_runs"])
    assert row["engine_runs"] == 20 and row["engine_ms_p95"] >= row["engine_ms_p50"]
    assert set(row["pipeline_stages_ms"]) >= {"decode", "infer", "render", "write", "latency"}
    assert set(row["pipeline_stage_cpu_ms"]) == {"decode_cpu", "resize_cpu", "render_cpu", "write_cpu"}
    assert row["cpu_ms_per_frame"] > row["engine_1thread_ms"] > 0 and 0 < row["pipeline_vs_bound"]
    assert row["pipeline_process_cpu_ms_per_frame"] > 0 and 0 < row["pipeline_cpu_utilisation"]
    assert out.with_suffix(".md").read_text().startswith("| model |")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
