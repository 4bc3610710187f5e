"""Compare training runs by their logs: the evaluations they share, side by side, as Markdown.

    python -m training.compare runs/nw1000/log.jsonl training/checkpoints/holdout1000-log.jsonl \
        --names unweighted weighted --metrics val_miou holdout_miou --mean-from 100

Each log is the `log.jsonl` that `training.train` appends to (one line an epoch, evaluations on
the epochs `--eval-every` picks). A resumed run may have logged an epoch twice; its last line
counts. mIoU and IoU values print in percent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.tool import run_tool


class LogError(ValueError):
    """A log that cannot be compared, in one line."""


def read_log(path: Path) -> dict[int, dict]:
    """Epoch -> that epoch's last logged line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise LogError(f"cannot read {path}: {error.strerror or error}") from None
    entries: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[int(entry["epoch"])] = entry
        except (ValueError, KeyError, TypeError):
            raise LogError(f"{path}:{number} is not a training.train log line "
                            "(expected JSON with an 'epoch')") from None
    return entries


def shared_evaluations(logs: list[dict[int, dict]], metrics: list[str]) -> list[int]:
    """The epochs at which every log has every metric."""
    epochs = set.intersection(*({e for e, entry in log.items() if all(m in entry for m in metrics)}
                                for log in logs))
    return sorted(epochs)


def markdown_table(logs: list[dict[int, dict]], names: list[str], metrics: list[str],
                   mean_from: int = 0) -> str:
    """One row per shared evaluation epoch and a mean row over those at or after `mean_from`;
    each cell lists the runs' values in `names` order."""
    epochs = shared_evaluations(logs, metrics)
    if not epochs:
        raise LogError("the logs share no epoch at which all of " + ", ".join(metrics)
                        + " were evaluated")
    runs = " / ".join(names)
    rows = ["| epoch | " + " | ".join(f"{metric}: {runs}" for metric in metrics) + " |",
            "|---" * (len(metrics) + 1) + "|"]
    for epoch in epochs:
        cells = [" / ".join(f"{100 * log[epoch][metric]:.2f}" for log in logs) for metric in metrics]
        rows.append(f"| {epoch} | " + " | ".join(cells) + " |")
    averaged = [e for e in epochs if e >= mean_from]
    if len(averaged) > 1:
        means = [" / ".join(f"{100 * sum(log[e][metric] for e in averaged) / len(averaged):.2f}"
                            for log in logs) for metric in metrics]
        rows.append(f"| mean of {averaged[0]}–{averaged[-1]} ({len(averaged)}) | "
                    + " | ".join(means) + " |")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    try:
        return compare(args)
    except LogError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def compare(args: argparse.Namespace) -> int:
    """Print each log's span and the table of their shared evaluations."""
    names = args.names or [path.parent.name if path.name == "log.jsonl" else path.stem
                           for path in args.logs]
    if len(names) != len(args.logs):
        raise LogError(f"--names gives {len(names)} names for {len(args.logs)} logs")
    logs = [read_log(path) for path in args.logs]
    for name, log in zip(names, logs):
        print(f"{name}: epochs {min(log, default=0)}–{max(log, default=0)}")
    print(markdown_table(logs, names, args.metrics, args.mean_from))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, nargs="+", help="log.jsonl files written by training.train")
    parser.add_argument("--names", nargs="+", default=None, help="a column name per log")
    parser.add_argument("--metrics", nargs="+", default=["val_miou", "holdout_miou"],
                        help="logged keys, e.g. val_miou holdout_miou val_road_iou ema_val_miou")
    parser.add_argument("--mean-from", type=int, default=0, metavar="EPOCH",
                        help="average the shared evaluations from this epoch on")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
