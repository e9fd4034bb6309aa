"""Drive a program in a pseudo-terminal as a person would: keys in, screen text out.

The screen is a pyte terminal emulator fed with everything the program writes,
so tests read what a user would see.  Waits poll the screen until the text
appears (or the timeout passes); nothing here relies on fixed sleeps alone.

    term = PtyTerm([sys.executable, "netsnoop.py", str(pid)], cols=80, rows=24)
    term.wait_for("tcp")
    term.send(":set 6\\r")
    term.wait_for("6s")
    term.send("q")
    assert term.wait_exit() == 0
"""
import fcntl
import os
import select
import signal
import struct
import subprocess
import tempfile
import termios
import time

import pyte

# What xterm sends in keypad-transmit mode (curses turns it on with keypad(True)).
KEYS = {
    "up": "\x1bOA", "down": "\x1bOB", "right": "\x1bOC", "left": "\x1bOD",
    "home": "\x1bOH", "end": "\x1bOF", "pgup": "\x1b[5~", "pgdn": "\x1b[6~",
    "tab": "\t", "btab": "\x1b[Z", "enter": "\r", "esc": "\x1b", "ctrl-d": "\x04",
    "ctrl-c": "\x03", "backspace": "\x7f",
}


class Screen(pyte.Screen):
    """pyte's screen plus what ncurses sends an xterm-256color and pyte lacks:
    REP (CSI n b, repeat the last character), SU and SD (CSI n S / CSI n T,
    scroll the region up or down)."""

    last_char = " "

    def draw(self, data):
        if data:
            self.last_char = data[-1]
        super().draw(data)

    def repeat_last(self, count=1, *rest, **kw):
        self.draw(self.last_char * max(1, count))

    def _at_top_margin(self, action, count):
        y, x = self.cursor.y, self.cursor.x
        top = self.margins.top if self.margins else 0
        self.cursor.y = top
        action(max(1, count))
        self.cursor.y, self.cursor.x = y, x

    def scroll_up(self, count=1, *rest, **kw):
        self._at_top_margin(self.delete_lines, count)

    def scroll_down(self, count=1, *rest, **kw):
        self._at_top_margin(self.insert_lines, count)


class ByteStream(pyte.ByteStream):
    csi = dict(pyte.ByteStream.csi, b="repeat_last", S="scroll_up", T="scroll_down")


def set_winsize(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _child_setup(uid):
    """In the child (after setsid): the pty becomes its controlling terminal, like a
    login shell's; then, if asked, it becomes user `uid`."""
    def setup():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return setup


class PtyTerm(object):
    """A program on a pty of rows x cols, its screen emulated by pyte; stderr kept apart."""

    def __init__(self, argv, cols=80, rows=24, env=None, term="xterm-256color", uid=None):
        self.master, self.slave = os.openpty()
        set_winsize(self.slave, rows, cols)
        self.screen = Screen(cols, rows)
        self.stream = ByteStream(self.screen)
        self.raw = bytearray()
        self.stderr_file = tempfile.TemporaryFile()
        full_env = dict(os.environ)
        full_env.pop("LINES", None)
        full_env.pop("COLUMNS", None)
        full_env.update({"TERM": term, "LC_ALL": "C.UTF-8"})
        if term is None:
            full_env.pop("TERM")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv, stdin=self.slave, stdout=self.slave, stderr=self.stderr_file,
            env=full_env, start_new_session=True, preexec_fn=_child_setup(uid),
            close_fds=True)
        self.returncode = None

    # --- output ---------------------------------------------------------------
    def pump(self, timeout=0.05):
        """Feed whatever the program wrote within `timeout` to the emulator."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw.extend(data)
            self.stream.feed(data)
            timeout = 0.0
            deadline = time.monotonic()

    def text(self):
        return "\n".join(line.rstrip() for line in self.screen.display)

    def line(self, n):
        return self.screen.display[n].rstrip()

    def wait_for(self, what, timeout=10.0):
        """Poll until `what` (a string, or a predicate of the screen text) shows; -> text."""
        check = what if callable(what) else (lambda text: what in text)
        deadline = time.monotonic() + timeout
        while True:
            self.pump(0.05)
            text = self.text()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %r; screen:\n%s\nstderr: %s"
                                     % (what, text, self.stderr()))
            if self.proc.poll() is not None:
                self.pump(0.05)
                text = self.text()
                if check(text):
                    return text
                raise AssertionError("program exited (%s) while waiting for %r; screen:\n%s"
                                     "\nstderr: %s" % (self.proc.returncode, what, text,
                                                       self.stderr()))

    def wait_gone(self, what, timeout=10.0):
        return self.wait_for(lambda text: what not in text, timeout)

    # --- input ----------------------------------------------------------------
    def send(self, keys):
        os.write(self.master, keys.encode("utf-8"))

    def key(self, name):
        self.send(KEYS[name])

    def resize(self, rows, cols):
        """As a terminal window does: new size on the tty, SIGWINCH to the program."""
        self.screen.resize(rows, cols)
        set_winsize(self.slave, rows, cols)
        self.proc.send_signal(signal.SIGWINCH)

    # --- the end --------------------------------------------------------------
    def wait_exit(self, timeout=10.0):
        """Keep draining the pty (so the program never blocks writing) until it exits."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("program still running; screen:\n%s" % self.text())
            self.pump(0.05)
        self.pump(0.05)
        self.returncode = self.proc.returncode
        return self.returncode

    def stderr(self):
        # pread: the child shares this file's offset; seeking would make it overwrite
        fd = self.stderr_file.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def tty_modes(self):
        """(echo, canonical) of the pty now: a restored terminal has both on."""
        lflag = termios.tcgetattr(self.slave)[3]
        return bool(lflag & termios.ECHO), bool(lflag & termios.ICANON)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stderr_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
