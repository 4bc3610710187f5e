"""Lower a model to FP16 or calibrated INT8 (Q/DQ) ONNX, and report what it costs in accuracy.

    python -m calibration --onnx engines/models/roadseg.onnx --precision int8 \\
        --calib ../shared/data/camvid/train --out roadseg.int8.onnx --report ../shared/data/camvid
    python -m calibration --onnx engines/models/roadseg.onnx --precision fp16 --out roadseg.fp16.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import onnx

from calibration.report import accuracy_report, format_report
from engines import openvino_backend
from engines.base import EngineError
from engines.contract import read_contract, record_accuracy
from engines.files import OutputError, check_writable
from engines.frames import sample_frames
from engines.lowering import ACTIVATION_FORMS, CALIBRATION_METHODS, lower_precision
from engines.tool import run_tool

log = logging.getLogger("calibration")


def report_runtimes() -> list[str]:
    """Every installed CPU runtime: `--backend auto` lets an INT8 model compete on a runtime
    only where its metadata records the accuracy it costs there, so a report on ONNX Runtime
    alone would quietly keep OpenVINO from running the INT8 model."""
    return ["onnxruntime", *(["openvino"] if openvino_backend.available() else [])]


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[calibration] %(message)s")
    try:
        # Outputs are checked before minutes of calibration, not after.
        check_writable(args.out, "--out")
        if args.report_json:
            check_writable(args.report_json, "--report-json")
        frames = None
        if args.precision == "int8" and args.calib:
            input_size, _ = read_contract(args.onnx)
            frames = sample_frames(args.calib, args.calib_frames, input_size)
        out, facts = lower_precision(args.onnx, args.precision, args.out, frames, args.method,
                                     args.cache_dir, args.exclude or [], args.activations)
    except (EngineError, OutputError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("wrote %s (%s)", out, facts)
    if args.report:
        runtimes = tuple(args.runtimes or report_runtimes())
        report = accuracy_report(args.onnx, {args.precision: out}, args.report, args.split,
                                 args.limit, runtimes)
        print(format_report(report))
        # The lowered model carries its own accuracy cost (read by --backend auto).
        lowered = onnx.load(str(out))
        record_accuracy(lowered, {
            "split": f"CamVid {report['split']}", "frames": report["frames"],
            "reference": "ONNX Runtime fp32",
            "delta_miou_points": {row["runtime"]: round(row["delta_miou_points"], 3)
                                  for row in report["results"].values()
                                  if row["precision"] == args.precision}})
        onnx.save(lowered, str(out))
        if args.report_json:
            args.report_json.write_text(json.dumps(report, indent=2))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 contract ONNX")
    parser.add_argument("--precision", choices=["fp16", "int8"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib", default=None, help="video, image folder or quoted glob (int8)")
    parser.add_argument("--calib-frames", type=int, default=100)
    parser.add_argument("--method", choices=CALIBRATION_METHODS, default="percentile")
    parser.add_argument("--activations", choices=ACTIVATION_FORMS, default="s8",
                        help="int8 activation form: s8 (symmetric; TensorRT, OpenVINO) or u8 "
                             "(asymmetric; what ONNX Runtime's x86 int8 kernels run fast)")
    parser.add_argument("--runtimes", nargs="+", default=None,
                        choices=["onnxruntime", "openvino"],
                        help="CPU runtimes the accuracy report runs the lowered model on "
                             "(default: every one installed)")
    parser.add_argument("--exclude", nargs="*",
                        help="node names, or shell-style patterns of them (\"*/stem/*\"), to keep in float")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="calibration cache (activation ranges; default $ROADSEG_CACHE/calibration, "
                             "~/.cache/roadseg/calibration); reused when nothing changed")
    parser.add_argument("--report", type=Path, default=None, metavar="CAMVID_DIR",
                        help="compare against the FP32 model on these labelled frames")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--report-json", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
