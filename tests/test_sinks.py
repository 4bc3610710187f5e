"""Each sink on its own: H.264 decoded back frame for frame, the PNG folder, the metrics file."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from realtime.sinks import ImageFolderSink, MetricsSink, SinkError, VideoSink, open_sink


def frames(count: int = 30, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    width, height = size
    out = []
    for index in range(count):
        image = np.zeros((height, width, 3), np.uint8)
        cv2.rectangle(image, (index * 8, 40), (index * 8 + 60, 140), (40, 200, 90), -1)
        cv2.putText(image, str(index), (20, 220), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        out.append(image)
    return out


@pytest.mark.parametrize("suffix,codec", [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"),
                                          (".avi", "mjpeg")])
def test_video_decodes_back_frame_for_frame(tmp_path, suffix, codec):
    originals = frames()
    sink = open_sink(tmp_path / f"v{suffix}", fps=30.0)
    assert isinstance(sink, VideoSink)
    for image in originals:
        sink.write_frame(image, None)
    sink.close()
    with av.open(str(tmp_path / f"v{suffix}")) as container:
        assert container.streams.video[0].codec_context.name == codec
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == len(originals)
    for index, image in enumerate(decoded):
        # Each decoded frame is closest to its own original (order kept) and close to it.
        errors = [np.abs(image.astype(int) - o).mean() for o in originals]
        assert int(np.argmin(errors)) == index
        assert cv2.PSNR(image, originals[index]) > 30


def test_png_folder_names_frames_after_the_inputs(tmp_path):
    sink = open_sink(f"{tmp_path}/pngs/", fps=30.0)
    assert isinstance(sink, ImageFolderSink)
    for index, image in enumerate(frames(3)):
        sink.write_frame(image, f"scene_{index}.jpg" if index < 2 else None)
    sink.close()
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == ["frame_000002.png", "scene_0.png", "scene_1.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "pngs" / "scene_1.png")), frames(3)[1])


def test_metrics_lines_are_whole_and_ordered(tmp_path):
    sink = open_sink(tmp_path / "m.jsonl", fps=30.0)
    assert isinstance(sink, MetricsSink)
    for index in range(5):
        sink.write_record({"index": index, "latency_ms": 1.5})
    sink.close()
    assert [json.loads(line)["index"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == list(range(5))


def test_unknown_container_and_file_as_folder_are_refused(tmp_path):
    with pytest.raises(SinkError, match="unsupported container"):
        open_sink(tmp_path / "v.webm", fps=30.0)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SinkError, match="is a file"):
        ImageFolderSink(tmp_path / "taken")
