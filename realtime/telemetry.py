"""Timing helpers: per-stage timers, smoothed rates, and the end-of-run summary."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
import time
from array import array

import numpy as np

STAGES = ("decode", "resize", "wait", "infer", "render", "write", "latency")
# CPU time of the calling thread in the stages that do their work on it; the machine bound
# of the benchmark adds them up (inference is timed single-threaded there instead, because a
# runtime's own worker threads are not the caller's).
CPU_STAGES = ("decode_cpu", "resize_cpu", "render_cpu", "write_cpu")


def linux_libc() -> ctypes.CDLL | None:
    """The C library on Linux (for prctl and mallopt), None elsewhere or when it cannot load."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def name_os_thread(name: str) -> None:
    """Give the calling thread its name at the OS level too (Linux: 15 characters), so `top -H`,
    py-spy and /proc/PID/task show which pipeline stage burns the CPU; a no-op elsewhere."""
    libc = linux_libc()
    if libc is not None:
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def keep_frame_memory(frame_bytes: int = 32 << 20) -> bool:
    """Let glibc keep freed frame-sized buffers mapped for the next frame.

    With glibc's defaults a video run often hands freed frames, resized copies and colour
    maps back to the kernel and faults zero-filled pages in again for the next frame: ~1,000
    page faults a 960x540 H.264 frame, 10 % of the machine in the kernel, and overlay CPU
    doubled (5.1 against 2.6 ms). A large top pad and trim threshold, and an mmap threshold
    above frame size, keep those pages. Returns whether the allocator took the settings (a
    no-op off glibc: macOS, Windows, musl).
    """
    libc = linux_libc()
    mallopt = getattr(libc, "mallopt", None)  # musl has no mallopt
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc caps the mmap threshold at 32 MB on 64-bit systems; mallopt returns 1 on success.
    taken = [mallopt(M_MMAP_THRESHOLD, frame_bytes), mallopt(M_TRIM_THRESHOLD, 4 * frame_bytes),
             mallopt(M_TOP_PAD, frame_bytes)]
    return all(value == 1 for value in taken)


# Every this many outputs the recorder notes each thread's CPU time (a read of /proc per thread,
# ~0.2 ms for the pipeline's ~15 threads: ~0.01 ms an output). A long run keeps at most
# THREAD_SAMPLES_KEPT of them: past that, every other one goes and the interval doubles.
THREAD_SAMPLE_EVERY = 16
THREAD_SAMPLES_KEPT = 128


def threads_cpu_ns() -> dict[int, tuple[str, int]]:
    """Each thread of this process: id → (OS name, CPU nanoseconds so far), from Linux's
    /proc/self/task (the runtimes' and FFmpeg's threads included); {} elsewhere."""
    threads: dict[int, tuple[str, int]] = {}
    try:
        ids = os.listdir("/proc/self/task")
    except OSError:
        return threads
    for tid in ids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm, \
                    open(f"/proc/self/task/{tid}/schedstat") as schedstat:
                threads[int(tid)] = (comm.read().strip(), int(schedstat.read().split()[0]))
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return threads


# A snapshot is retried when the process spent more CPU than this while it was read: other
# threads ran meanwhile (the reader was preempted on a busy machine), so the per-thread counts
# and the process total would disagree by that much.
SNAPSHOT_SLACK_S = 0.001


def threads_snapshot(tries: int = 3) -> tuple[float, dict[int, tuple[str, int]]]:
    """The process's CPU seconds and every thread's CPU (threads_cpu_ns), read together: the
    total is the midpoint of readings taken just before and after the threads, and of up to
    `tries` reads the one with the smallest gap between them is kept."""
    best_gap, best = float("inf"), (0.0, {})
    for _ in range(tries):
        before = time.process_time()
        threads = threads_cpu_ns()
        after = time.process_time()
        if after - before < best_gap:
            best_gap, best = after - before, ((before + after) / 2, threads)
        if best_gap <= SNAPSHOT_SLACK_S:
            break
    return best


def thread_role(tid: int, name: str) -> str:
    """The group a thread's CPU is reported under: the pipeline's own threads by name
    (rs-inference x N summed), FFmpeg's by codec (av:h264:df0, df1 → av:h264:df), the main
    thread, and the rest (a runtime's or library's unnamed workers)."""
    if tid == os.getpid():
        return "main"
    if name.startswith("rs-") or name.startswith("av:"):
        return re.sub(r"\d+$", "", name)
    return "unnamed (runtime, library)"


class StageTimer:
    """`with timer:` measures one stage; `timer.ms` holds the last duration in milliseconds
    and `timer.cpu_ms` the CPU time this thread spent in it."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.cpu_ms = 0.0
        self._start = 0.0
        self._cpu_start = 0.0

    def __enter__(self) -> "StageTimer":
        self._start = time.perf_counter()
        self._cpu_start = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._start) * 1000.0
        self.cpu_ms = (time.thread_time() - self._cpu_start) * 1000.0


class RateMeter:
    """Events per second, smoothed (EWMA of the interval) so the HUD does not flicker.
    Owned by one thread; others only read the float it publishes."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing
        self.fps = 0.0
        self._last: float | None = None
        self._interval: float | None = None

    def tick(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        if self._last is not None:
            interval = max(now - self._last, 1e-9)
            self._interval = interval if self._interval is None else (
                self._interval + self.smoothing * (interval - self._interval))
            self.fps = 1.0 / self._interval
        self._last = now
        return self.fps


class RunRecorder:
    """Per-frame stage times in compact arrays (an hour at 30 FPS is ~7 MB)."""

    def __init__(self) -> None:
        self.values = {stage: array("f") for stage in (*STAGES, *CPU_STAGES)}
        self.frames = 0
        self.started = time.perf_counter()
        # Every output's wall clock and the whole process's CPU time then (every thread, the
        # runtimes' and FFmpeg's included): what a frame costs once start-up is over.
        self.output_times = array("d")
        self.output_cpu = array("d")
        # (output index, process CPU seconds, every thread's CPU), every `thread_every` outputs.
        self.thread_samples: list[tuple[int, float, dict[int, tuple[str, int]]]] = []
        self.thread_every = THREAD_SAMPLE_EVERY

    def add(self, timings: dict[str, float]) -> None:
        self.output_times.append(time.perf_counter())
        self.output_cpu.append(time.process_time())
        if self.frames % self.thread_every == 0:
            self.thread_samples.append((self.frames, *threads_snapshot()))
            if len(self.thread_samples) > THREAD_SAMPLES_KEPT:  # bounded memory on long runs
                self.thread_samples = self.thread_samples[::2]
                self.thread_every *= 2
        self.frames += 1
        for stage, values in self.values.items():
            values.append(timings.get(stage, 0.0))

    def rate_between(self, first: int, last: int) -> tuple[float | None, float | None]:
        """Outputs per second and process CPU ms an output between outputs `first` and
        `last` (indices); None for both without an interval of time between them."""
        intervals = last - first
        span = self.output_times[last] - self.output_times[first] if intervals > 0 else 0.0
        if span <= 0:
            return None, None
        return intervals / span, (self.output_cpu[last] - self.output_cpu[first]) * 1000 / intervals

    def summary(self, dropped: int, corrupt: int, reopened: int = 0) -> dict:
        """JSON-ready summary: counts, throughput and p50/p95 per stage (ms)."""
        wall = (self.output_times[-1] if self.frames else self.started) - self.started
        # Throughput between the first and the last output excludes start-up; with one
        # frame there is no interval, so fall back to wall time.
        fps, cpu_ms = self.rate_between(0, self.frames - 1) if self.frames > 1 else (None, None)
        if fps is None:
            fps = self.frames / wall if wall > 0 else 0.0
        stages = {}
        for stage, values in self.values.items():
            data = np.frombuffer(values, dtype=np.float32) if len(values) else np.zeros(1, np.float32)
            stages[stage] = {"p50": float(np.percentile(data, 50)), "p95": float(np.percentile(data, 95)),
                             "mean": float(data.mean())}
        return {"frames": self.frames, "dropped": dropped, "corrupt": corrupt, "reopened": reopened,
                "seconds": wall, "fps": fps, "process_cpu_ms_per_frame": cpu_ms,
                **self.steady_state(), "stages_ms": stages}

    def steady_state(self, trim: float = 0.1) -> dict:
        """Throughput and process CPU a frame with the first and last `trim` of the outputs
        left out: the rate once the queues have filled and before they drain, which is what
        a long recording or a live stream runs at (None with fewer than 20 outputs)."""
        steady_fps = steady_cpu_ms = None
        if self.frames >= 20:
            skipped = int(self.frames * trim)
            steady_fps, steady_cpu_ms = self.rate_between(skipped, self.frames - 1 - skipped)
        return {"steady_fps": steady_fps, "steady_process_cpu_ms_per_frame": steady_cpu_ms,
                **self.threads_cpu(trim)}

    def threads_cpu(self, trim: float = 0.1) -> dict:
        """CPU ms an output spent by each group of threads (thread_role) over the steady
        state, between the thread samples nearest inside it, and the process's CPU over the
        same outputs. Every sample in between counts, so a thread that started or ended inside
        the window (FFmpeg's decoder threads, new at each --loop pass or stream reconnect) is
        reported under its own name up to its last sample; what no sample saw (the rest of an
        ended thread's time, a thread too brief to be sampled) is "ended threads".
        {} without two samples in the window (short runs, not Linux)."""
        first, last = int(self.frames * trim), self.frames - 1 - int(self.frames * trim)
        inside = [(index, process_s, sample) for index, process_s, sample in self.thread_samples
                  if first <= index <= last and sample]
        if len(inside) < 2:
            return {}
        start, end = inside[0][0], inside[-1][0]
        outputs = end - start
        # Per thread: its role, its CPU at the window's start (0 if it began later) and last seen.
        seen: dict[int, tuple[str, int, int]] = {}
        finished: list[tuple[str, int, int]] = []
        for index, _, sample in inside:
            for tid, (name, ns) in sample.items():
                role, known = thread_role(tid, name), seen.get(tid)
                if known and (known[0] != role or ns < known[2]):
                    finished.append(seen.pop(tid))  # the id was reused by a new thread
                    known = None
                seen[tid] = (role, known[1] if known else (ns if index == start else 0), ns)
        groups: dict[str, float] = {}
        for role, at_start, last_seen in [*seen.values(), *finished]:
            groups[role] = groups.get(role, 0.0) + (last_seen - at_start) / 1e6 / outputs
        # The process's CPU read with the same samples, so that live threads and ended ones add
        # up to it.
        process_ms = (inside[-1][1] - inside[0][1]) * 1000 / outputs
        groups["ended threads"] = max(0.0, process_ms - sum(groups.values()))
        return {"threads_cpu_ms_per_frame": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
                "threads_window": [start, end], "threads_window_process_cpu_ms_per_frame": process_ms}


def format_threads_cpu(threads: dict[str, float]) -> str:
    """One line: CPU ms a frame by group of threads (RunRecorder.threads_cpu), largest first."""
    return "CPU ms a frame by thread (steady state): " + ", ".join(
        f"{name} {ms:.2f}" for name, ms in threads.items())


def format_summary(summary: dict) -> str:
    """The table printed on exit."""
    lines = [f"frames {summary['frames']}  dropped {summary['dropped']}  corrupt {summary['corrupt']}  "
             f"time {summary['seconds']:.2f} s  throughput {summary['fps']:.1f} FPS",
             f"{'stage':<10}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}"]
    for stage, stats in summary["stages_ms"].items():
        name = "end-to-end" if stage == "latency" else stage.replace("_cpu", " CPU")
        lines.append(f"{name:<10}{stats['p50']:>9.2f}{stats['p95']:>9.2f}{stats['mean']:>9.2f}")
    if summary.get("threads_cpu_ms_per_frame"):
        lines.append(format_threads_cpu(summary["threads_cpu_ms_per_frame"]))
    return "\n".join(lines)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (None where the OS does not report it).

    Linux's VmHWM starts afresh at exec; ru_maxrss would include the parent's peak when the
    run was started from a big process (a benchmark holding decoded frames, say).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
