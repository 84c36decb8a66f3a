"""A test helper shared by the Ctrl-C tests (test_hardening_crash.py, test_hardening_probe.py): run Python source
in a child process, interrupt it with SIGINT once it says it has started, and time how long it takes to stop."""
import signal
import subprocess
import sys
import time


def interrupt_after_start(src, cwd, wait_s=0.3, timeout=120):
    """Runs the Python source `src` in a child (cwd outside the source tree, so it imports the installed package),
    reads its output until a line "start [seconds of one uninterrupted run]", sends SIGINT `wait_s` later (or a
    tenth of that run when it is shorter) and waits for the child to exit. Asserts it exited with 0. Returns (all
    its output, stdout and stderr together; seconds from SIGINT to exit; the run's seconds or None)."""
    proc = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd)
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if line.startswith("start"):
                break
        full = float(line.split()[1]) if len(line.split()) > 1 else None
        time.sleep(wait_s if full is None else min(wait_s, 0.1 * full))
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    return out, stopped, full
