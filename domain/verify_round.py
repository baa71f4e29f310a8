"""A full verification round that can run in a process of its own (``python -m domain.verify_round``).

The server's verification status (``api/log_verifier.py``) runs its first, full round over a
large ledger here: a fresh interpreter reads the ledger through the store's picklable range
reader, verifies it, and writes back the result with its state bounded to the runs verified most
recently (``domain/verify_chains.py``). A plain child process rather than ``multiprocessing``:
its spawn and forkserver methods import the parent's main module again, which in a script that
builds the app without a ``__main__`` guard would start that script a second time.

Protocol: the parent writes a pickled ``FullRound`` to the child's stdin and reads one pickled
``VerifyResult`` (or ``TachographError``) from its stdout. Both ends are this code base, on one
machine, over a pipe only they hold.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from domain.errors import TachographError
from domain.verify import VerifyResult, verify_log
from domain.verify_scan import RangeReader


@dataclass(frozen=True)
class FullRound:
    """What a full round verifies against (picklable: it may run in a process of its own)."""

    reader: RangeReader
    notes: list[str]
    keys: list[str]
    origin: str | None
    approvals_from: int | None
    kept_runs: int | None  # bound the state to this many runs (None: the reader cannot look others up)

    def run(self, progress: Callable[[int], object] | None = None) -> VerifyResult:
        """Verify here; the passing state bounded to ``kept_runs``."""
        result = verify_log(self.reader, self.notes, self.keys, origin=self.origin, allow_unsigned_tail=True,
                            approvals_from=self.approvals_from, progress=progress)
        if result.state is not None and self.kept_runs is not None:
            result.state.chains.trim(self.kept_runs)
        return result

    def run_apart(self, stop: Callable[[], bool], poll_s: float = 0.1) -> VerifyResult:
        """Verify in a child process; killed, and ``TachographError`` raised, once ``stop()``."""
        proc = subprocess.Popen([sys.executable, "-m", "domain.verify_round"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        out: list[bytes] = []
        # written and read on a thread of its own (the round reads all of it before it answers):
        # ``communicate`` with a timeout sends nothing more of its input once retried, so a round
        # larger than a pipe's buffer (many checkpoints) would wait for the rest for ever
        talker = threading.Thread(target=_talk, args=(proc, pickle.dumps(self), out), daemon=True,
                                  name="tacho-verification-pipe")
        talker.start()
        try:
            while talker.is_alive():
                talker.join(poll_s)
                if talker.is_alive() and stop():
                    raise TachographError("the verification round was stopped")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            talker.join()
        if proc.returncode != 0 or not out or not out[0]:
            raise TachographError(f"the verification process ended (exit code {proc.returncode}) without its result")
        got = pickle.loads(out[0])
        if isinstance(got, BaseException):
            raise got
        if not isinstance(got, VerifyResult):
            raise TachographError(f"the verification process sent a {type(got).__name__}, not a result")
        return got


def _talk(proc: subprocess.Popen[bytes], payload: bytes, out: list[bytes]) -> None:
    """Send the round to the child and read its answer (until the child closes its stdout)."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:  # the child died first: its exit code says so
        pass
    out.append(proc.stdout.read())
    proc.stdout.close()


def main() -> None:
    """The child: one ``FullRound`` from stdin, its result (or what failed) to stdout."""
    args = pickle.load(sys.stdin.buffer)
    try:
        got: VerifyResult | TachographError = args.run()
    except Exception as e:  # the parent raises it as the round's failure
        got = e if isinstance(e, TachographError) else TachographError(f"{type(e).__name__}: {e}")
    sys.stdout.buffer.write(pickle.dumps(got))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
