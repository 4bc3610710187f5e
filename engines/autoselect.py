"""`--backend auto`: run a model with whichever installed runtime and precision is fastest on
this CPU, measured rather than guessed from CPU flags.

Why measured: on an Intel Xeon with AMX, OpenVINO's bf16 ran the default model in 3.7 ms and
ONNX Runtime FP32 in 11.3; on a Xeon with AVX512-BF16 but no AMX the same bf16 hint took 25.9 ms,
slower than ONNX Runtime FP32 (23.4), while OpenVINO's INT8 took 9.5. No flag rule got both right.

Every backend that opens the file offers what it can run it as (`Backend.offers`: the file in
each precision it supports, and an INT8 sibling `X.int8.onnx`). With more than one offer, each
is opened, warmed up and timed single-threaded (a pipeline on a CPU runs its calls one core
each, and the benchmark's machine bound counts single-thread milliseconds), in interleaved
rounds so that machine noise hits all alike; the fastest wins. An INT8 sibling competes only
when the accuracy cost recorded in its metadata for that runtime is within
`INT8_BUDGET_POINTS`, and one that loses accuracy wins only when it is more than `TIE_SHARE`
faster than the best way to run the file itself. The result is cached per model content, CPU
and runtime versions under the cache root, so later runs start at once; delete the file to
measure again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, EngineError
from engines.contract import INT8_BUDGET_POINTS, accuracy_within_budget
from engines.files import cache_root, file_sha256, write_atomically

ROUNDS = 5  # interleaved rounds; the median of each offer's calls is compared
CALLS_PER_ROUND = 4
WARMUP_CALLS = 3
TIE_SHARE = 0.05  # a stand-in that loses accuracy must be faster than the file by more than this
RUNTIME_PACKAGES = ("onnxruntime", "openvino", "torch", "tensorrt")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Offer:
    """One way to run a model: a backend, the file it opens, and the precision asked of it
    ("auto": the file's own)."""

    backend: str
    path: Path
    precision: str = "auto"


@dataclass(frozen=True)
class Choice:
    """What --backend auto runs, and the sentence that says why."""

    backend: str
    path: Path
    precision: str
    reason: str


def collect_offers(path: Path, backends: dict[str, Backend], precision: str,
                   stand_ins: bool) -> list[Offer]:
    """Every backend's offers for this file; `precision` other than auto keeps the offers of
    that precision, and `stand_ins=False` keeps only the file itself."""
    offers = []
    for spec in backends.values():
        if spec.offers is None or Path(path).suffix.lower() not in (*spec.suffixes, *spec.also_opens):
            continue
        for file, offered_precision in spec.offers(Path(path)):
            offer = Offer(spec.name, Path(file), offered_precision)
            if not stand_ins and offer.path != Path(path):
                continue
            own = offer.precision == "auto" and offer.path == Path(path) and precision in spec.precisions
            if precision != "auto" and offer.precision != precision and not own:
                continue
            offers.append(offer)
    return offers


def cpu_facts() -> list[str]:
    """The first processor's model name and instruction-set flags from /proc/cpuinfo (the
    first describes them all); empty where there is no such file."""
    facts = []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "flags", "Features")):
                    facts.append(line.split(":", 1)[1].strip())
                if line.strip() == "":
                    break
    except OSError:
        pass
    return facts


def cpu_signature() -> str:
    """The processor as far as speed goes: model name, instruction-set flags and core count
    (virtual machines often report a generic model name, so the flags matter)."""
    facts = [platform.machine(), platform.processor(), str(os.cpu_count()), *cpu_facts()]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def int8_may_saturate() -> bool:
    """True on an x86 CPU known to lack VNNI: its 8-bit dot products add pairs of products in
    16 bits, which can saturate, so INT8 labels drift further from FP32 there (OpenVINO's
    "saturation issue"; ONNX Runtime's u8s8 kernels share it). False where the flags are unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = " ".join(cpu_facts()).split()
    return bool(flags) and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def runtime_versions() -> dict[str, str]:
    """Installed versions of the runtimes, read from package metadata (nothing imported)."""
    versions = {}
    for package in RUNTIME_PACKAGES:
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            continue
    return versions


def cache_path(offers: list[Offer], labels: dict[str, Any] | None) -> Path:
    """Where the measurement of these offers is kept: one file per model content, offer list,
    labels, CPU and runtime versions."""
    key = {"files": {str(o.path): file_sha256(o.path) for o in offers},
           "offers": [[o.backend, o.precision, o.path.name] for o in offers],
           "labels": labels, "cpu": cpu_signature(), "runtimes": runtime_versions()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return cache_root() / "auto" / f"{Path(offers[0].path).stem}-{digest[:16]}.json"


def open_offer(offer: Offer, path: Path, backends: dict[str, Backend],
               labels: dict[str, Any] | None, row: dict[str, Any]) -> Any | None:
    """The offer's engine, single-threaded and warmed up, or None with `row["note"]` saying
    why it cannot compete (it does not open or run, or it is a stand-in for `path` without a
    recorded accuracy within budget)."""
    spec = backends[offer.backend]
    engine = None
    try:
        engine = spec.open(offer.path, labels, **spec.select_options({"threads": 1,
                                                                      "precision": offer.precision}))
        row["precision"] = engine.info.precision
        if offer.path != Path(path):
            delta = accuracy_within_budget({"lowering": engine.info.details.get("lowering", {})},
                                           offer.backend)
            if delta is None:
                row["note"] = f"no recorded accuracy within {INT8_BUDGET_POINTS} mIoU points"
                engine.close()
                return None
            row["delta_miou_points"] = delta
        height, width = engine.info.input_size
        for _ in range(WARMUP_CALLS):
            engine.infer(np.zeros((1, height, width, 3), np.uint8))
        return engine
    except (EngineError, RuntimeError) as error:  # a runtime that cannot run it sits this out
        row["note"] = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        if engine is not None:
            engine.close()
        return None


def measure(path: Path, offers: list[Offer], backends: dict[str, Backend],
            labels: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Open every offer, then time single-thread calls in interleaved rounds; one row per
    offer, with `ms` (median) or None and a note."""
    rows = [{**asdict(o), "path": str(o.path), "asked": o.precision, "ms": None} for o in offers]
    opened = [(row, open_offer(offer, path, backends, labels, row))
              for offer, row in zip(offers, rows, strict=True)]
    contenders = [(row, engine) for row, engine in opened if engine is not None]
    times: dict[int, list[float]] = {id(row): [] for row, _ in contenders}
    try:
        # Interleaved rounds: every engine a few calls per round, so drift hits all alike.
        for _ in range(ROUNDS):
            for row, engine in contenders:
                height, width = engine.info.input_size
                blank = np.zeros((1, height, width, 3), np.uint8)
                for _ in range(CALLS_PER_ROUND):
                    started = time.perf_counter()
                    engine.infer(blank)
                    times[id(row)].append((time.perf_counter() - started) * 1000)
    finally:
        for _, engine in contenders:
            engine.close()
    for row, _ in contenders:
        row["ms"] = round(float(np.median(times[id(row)])), 3)
    return rows


def pick(timed: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The fastest timed row, unless it is a stand-in that loses accuracy and the file itself
    runs within TIE_SHARE of it: then the file's fastest way wins (a tie within the timing's
    noise should not cost mIoU; on an AMX Xeon OpenVINO's bf16 and INT8 timed 2-6 % apart)."""
    fastest = min(timed, key=lambda row: row["ms"])
    if fastest["path"] == str(path) or fastest.get("delta_miou_points", 0.0) >= 0:
        return fastest
    own = [row for row in timed if row["path"] == str(path)]
    if own:
        own_fastest = min(own, key=lambda row: row["ms"])
        if own_fastest["ms"] <= fastest["ms"] * (1 + TIE_SHARE):
            return own_fastest
    return fastest


def missing_runtimes(path: Path, backends: dict[str, Backend]) -> str:
    """For the runtimes that could run this file but are not installed, what installing each
    would add, each line led by "; " ("" when none)."""
    suffix = Path(path).suffix.lower()
    hints = [spec.missing() for spec in backends.values()
             if spec.missing is not None and suffix in (*spec.suffixes, *spec.also_opens)]
    return "".join(f"; {hint}" for hint in hints if hint)


def choose(path: Path, backends: dict[str, Backend], precision: str = "auto",
           labels: dict[str, Any] | None = None, stand_ins: bool = True) -> Choice | None:
    """The fastest offer for this file (measured once, then cached), or None when no backend
    offers anything for it (the caller falls back to the suffix's backend)."""
    offers = collect_offers(path, backends, precision, stand_ins)
    if not offers:
        return None
    absent = missing_runtimes(path, backends)
    if len(offers) == 1:
        only = offers[0]
        return Choice(only.backend, only.path, only.precision,
                      "the only runtime installed for it" + absent)
    cached = cache_path(offers, labels)
    rows = None
    if cached.is_file():
        try:
            rows = json.loads(cached.read_text())["offers"]
        except (OSError, ValueError, KeyError):
            rows = None  # a damaged cache is measured again
    fresh = rows is None
    if fresh:
        log.info("timing %d ways to run %s on this CPU (once: the fastest is kept in %s)",
                 len(offers), Path(path).name, cached)
        rows = measure(path, offers, backends, labels)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cached, json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "offers": rows}, indent=2))
        except OSError:
            pass  # an unwritable cache only costs the measurement next time
    timed = [row for row in rows if row.get("ms") is not None]
    if not timed:
        first = offers[0]
        return Choice(first.backend, first.path, first.precision,
                      "no runtime could be timed; the first offered" + absent)
    best = pick(timed, path)
    others = ", ".join(f"{r['backend']} {r['precision']} {r['ms']:.1f}" for r in timed if r is not best)
    fastest = min(timed, key=lambda row: row["ms"])
    headline = (f"fastest on this CPU: {best['ms']:.1f} ms" if best is fastest else
                f"within {TIE_SHARE:.0%} of the fastest without its accuracy loss: {best['ms']:.1f} ms")
    reason = (f"{headline} a single-thread call{f' vs {others}' if others else ''}; "
              f"{'measured now' if fresh else 'measured before'}, kept in {cached}")
    if best["path"] != str(path):
        delta = best["delta_miou_points"]  # against FP32 at calibration; can be a small gain
        verb = "loses" if delta <= 0 else "gains"
        reason += f"; {Path(best['path']).name} {verb} {abs(delta):.2f} mIoU points"
    # The precision asked of the backend is the offer's ("auto" lets the file decide).
    return Choice(best["backend"], Path(best["path"]), best["asked"], reason + absent)
