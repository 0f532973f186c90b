"""py-spy on a benchmark's server process: record while a phase runs, then say where the busy time went.

py-spy is a development tool, not a dependency of the project: ``.venv/bin/pip install py-spy``. Without
it ``record`` returns None and the benchmarks print their figures without a profile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

GENERIC = re.compile(r"asyncio/|runpy|coldchain/cli|__main__|uvicorn/server|uvicorn/_compat|hub/runtime|threading\.py")
"""Frames every stack passes through: left out of the inclusive table, which would otherwise start with them."""
IDLE = re.compile(r"select|epoll|poll|wait \(|sleep|get \(queue|_loop \(paho")
"""Leaf frames of a thread that waits (event loop, queues, conditions, paho's select): not cost."""


def record(
    pid: int, seconds: float, out: Path, rate: int = 100, *, gil_only: bool = False
) -> subprocess.Popen[bytes] | None:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (all threads, raw stacks to ``out``); None without py-spy.

    ``gil_only`` samples only the thread holding the GIL: with two busy threads, where the GIL goes
    (what limits the process) rather than where each thread spends its time, SQLite included.
    """
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        print("  (py-spy not installed: no profile)")
        return None
    command = [binary, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate)]
    command += ["--nonblocking", "--threads", "-f", "raw", "-o", str(out)] + (["--gil"] if gil_only else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(raw: Path, top: int = 15) -> None:
    """Busy samples per thread, then the top functions by inclusive and by own share, all threads together."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        thread, *frames = stack.split(";")
        frames = [re.sub(r"/.*/(site-packages|lib/python3\.\d+|main)/", "", frame) for frame in frames]
        if not frames or IDLE.search(frames[-1]):
            continue
        total += samples
        threads[re.sub(r"^thread \(\w+\): ", "", thread).strip('"')] += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            if not GENERIC.search(frame):
                inclusive[frame] += samples
    print(f"  py-spy, busy samples only: {total}")
    if not total:
        return
    print("  by thread")
    for thread, samples in threads.most_common():
        print(f"    {100 * samples / total:5.1f} %  {thread}")
    for title, table in (("inclusive", inclusive), ("own", own)):
        print(f"  top {top} by {title} share of busy samples")
        for frame, samples in table.most_common(top):
            print(f"    {100 * samples / total:5.1f} %  {frame[:150]}")
