"""raysae.files: the exclusive lock that lets racing processes create one thing once."""

from __future__ import annotations

import subprocess
import sys
import time

from raysae.files import file_lock


def test_file_lock_makes_another_process_wait(tmp_path):
    lock = tmp_path / ".lock"
    waiter = (
        "import time; from raysae.files import file_lock\n"
        f"with file_lock({str(lock)!r}):\n    print(time.time())"
    )
    with file_lock(lock):
        proc = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        released = time.time()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and float(out) >= released  # it got the lock only once we let go
