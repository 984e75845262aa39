"""Peak anonymous memory of a command, per stage: ``python benchmarks/memprobe.py OUT.tsv -- CMD ...``.

Samples ``RssAnon`` (what the machine must really hold; file-backed pages excluded) of the command
and its children every 0.5 s from ``/proc/PID/status``, tags each sample with the last
``llm-tflite: ...`` stage line the command printed on stderr (run it with ``-v`` or without ``-q``),
writes the samples to OUT.tsv and prints the peak per stage and overall, with wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def rss_anon(pid: int) -> int:
    """RssAnon of ``pid`` and its descendants, in bytes (0 for a process that is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def main(argv: list[str]) -> int:
    out, command = argv[0], argv[argv.index("--") + 1:]
    env = {**os.environ, "LLM_TFLITE_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    stage, peaks, lines = ["start"], {}, []

    def read():
        for line in process.stderr:
            lines.append(line)
            if line.startswith("llm-tflite: "):
                stage[0] = line.strip().removeprefix("llm-tflite: ")[:60]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(out, "w") as f:
        f.write("t_s\trss_anon_gib\tstage\n")
        while process.poll() is None:
            rss = rss_anon(process.pid)
            peaks[stage[0]] = max(peaks.get(stage[0], 0), rss)
            f.write(f"{time.monotonic() - start:.1f}\t{rss / 2**30:.3f}\t{stage[0]}\n")
            f.flush()
            time.sleep(0.5)
    reader.join(5)
    for name, peak in peaks.items():
        print(f"{peak / 2**30:7.2f} GiB  {name}")
    print(f"exit {process.returncode}, {time.monotonic() - start:.0f} s, peak RssAnon "
          f"{max(peaks.values(), default=0) / 2**30:.2f} GiB")
    if process.returncode:
        sys.stderr.write("".join(lines[-20:]))
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
