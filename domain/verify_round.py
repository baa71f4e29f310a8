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
        payload: bytes | None = pickle.dumps(self)
        out = b""
        try:
            while True:
                try:
                    out, _ = proc.communicate(payload, timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    payload = None  # sent (communicate keeps what is left of it)
                    if stop():
                        raise TachographError("the verification round was stopped") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode != 0 or not out:
            raise TachographError(f"the verification process ended (exit code {proc.returncode}) without its result")
        got = pickle.loads(out)
        if isinstance(got, BaseException):
            raise got
        if not isinstance(got, VerifyResult):
            raise TachographError(f"the verification process sent a {type(got).__name__}, not a result")
        return got


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
