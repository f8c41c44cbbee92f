"""Drives a command through a pseudo-terminal for the integration tests (`common::pty`).

argv[1] is a JSON document: {"argv": [...], "steps": [["expect", text] | ["send", text], ...],
"timeout": seconds, "size": [rows, columns] (optional)}. The command runs with the pty as its controlling terminal and its stdin,
stdout and stderr. Each `expect` waits (until the deadline) for its text after the previous
match; `send` types text. After the steps the output is read until the command exits. The whole
transcript goes to stdout; the exit status is the command's, or 124 (with the reason on stderr)
when an expectation was not met or the command did not exit in time.
"""

import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time

spec = json.loads(sys.argv[1])
deadline = time.monotonic() + float(spec.get("timeout", 120))
pid, fd = pty.fork()
if pid == 0:
    if "size" in spec:
        rows, columns = spec["size"]
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    os.execv(spec["argv"][0], spec["argv"])

transcript = b""


def read_some() -> bool:
    global transcript
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
    if ready:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the command closed the terminal (exited)
            return False
        if not data:
            return False
        transcript += data
    return True


def finish(code: int, reason: str = "") -> None:
    sys.stdout.write(transcript.decode("utf-8", "replace"))
    sys.stdout.flush()
    if reason:
        sys.stderr.write(reason + "\n")
    sys.exit(code)


position = 0
for kind, text in spec["steps"]:
    if kind == "send":
        os.write(fd, text.encode())
        continue
    wanted = text.encode()
    while wanted not in transcript[position:]:
        if not read_some():
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            finish(124, f"timed out or output ended waiting for {text!r}")
    position = transcript.index(wanted, position) + len(wanted)

while read_some():
    pass
if time.monotonic() >= deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    finish(124, "timed out waiting for the command to exit")
_, status = os.waitpid(pid, 0)
finish(os.waitstatus_to_exitcode(status))
