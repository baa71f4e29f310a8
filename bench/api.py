"""HTTP API benchmark: ingest events/s (batches of 500), OTLP spans/s, timeline latency under load.

Baselines measured in the same run: the same events through ``ledger.append`` in process (for
``POST /v1/events``), and MLflow's own OTLP trace endpoint on the same protobuf payload (for
``POST /v1/traces``) when an ``mlflow`` executable is found (``--mlflow PATH``, ``$TACHO_BENCH_MLFLOW``
or on ``PATH``); it is skipped with a note otherwise. Each throughput is the median of
``--repeat`` rounds, each round on a fresh data dir and server.

Usage: ``.venv/bin/python bench/api.py [--events 20000] [--spans 2000] [--repeat 3] [--rate 100]
[--seconds 10] [--mlflow PATH] [--mlflow-repeat 1]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# run as a script, this file would shadow the ``api`` package: import from the repository root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from api.bootstrap import build_ledger
from api.keys_store import KeyStore
from api.settings import Settings
from domain.ports import Incoming, Source
from domain.workload import Workload
from tachograph.contract.canonical import dumps

BATCH = 500


def app_from_env():  # type: ignore[no-untyped-def]
    """The app over ``TACHO_DATA_DIR`` (for ``uvicorn --factory``)."""
    from api.app import create_app

    return create_app(Settings())


def _events(n: int) -> list[bytes]:
    out: list[bytes] = []
    runs = max(1, n // 12)
    for ev in Workload(seed=11, runs=runs).events():
        out.append(dumps(ev))
        if len(out) >= n:
            break
    return out


def _otlp_batches(n_spans: int) -> tuple[list[bytes], int]:
    """OTLP ExportTraceServiceRequest bodies of ``BATCH`` spans: agent runs of 4 GenAI spans each."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    kept: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            kept.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("bench")
    for i in range(max(1, n_spans // 4)):
        with tracer.start_as_current_span("invoke_agent triage") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            root.set_attribute("gen_ai.agent.name", "triage-agent")
            with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.provider.name", "openai")
                chat.set_attribute("gen_ai.request.model", "gpt-4.1-mini")
                chat.set_attribute("gen_ai.usage.input_tokens", 100 + i % 50)
                chat.set_attribute("gen_ai.usage.output_tokens", 20 + i % 7)
            with tracer.start_as_current_span("execute_tool kb.search") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "kb.search")
            with tracer.start_as_current_span("chat gpt-4.1-mini") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.provider.name", "openai")
                chat.set_attribute("gen_ai.request.model", "gpt-4.1-mini")
                chat.set_attribute("gen_ai.usage.input_tokens", 300)
                chat.set_attribute("gen_ai.usage.output_tokens", 40)
    provider.shutdown()
    # whole traces per request: a run's spans arrive together, as an SDK batch exporter sends them
    bodies = [encode_spans(kept[i:i + BATCH]).SerializeToString() for i in range(0, len(kept), BATCH)]
    return bodies, len(kept)


def baseline(events: list[bytes]) -> float:
    """Events/s through ledger.append in process."""
    with tempfile.TemporaryDirectory() as d:
        ledger = build_ledger(Settings(data_dir=Path(d)))
        t = time.perf_counter()
        for i in range(0, len(events), BATCH):
            ledger.append([Incoming(r, Source(kind="bench")) for r in events[i:i + BATCH]])
        took = time.perf_counter() - t
        ledger.store.close()
    return len(events) / took


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, server: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@contextmanager
def tachograph() -> Iterator[tuple[str, str, str]]:
    """A uvicorn Tachograph API over a fresh data dir: (url, publisher secret, auditor secret)."""
    data = Path(tempfile.mkdtemp(prefix="tacho-bench-"))
    keys = KeyStore(data / "keys" / "apikeys.db", time.time)
    pub = keys.create("acme", "publisher")[1]
    aud = keys.create("acme", "auditor")[1]
    port = _free_port()
    env = {**os.environ, "TACHO_DATA_DIR": str(data)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.api:app_from_env", "--factory", "--port", str(port),
         "--log-level", "warning", "--no-access-log"], env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{url}/healthz", server, "the API server")
        yield url, pub, aud
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def mlflow_server(exe: str) -> Iterator[str]:
    """An MLflow tracking server (SQLite backend) over a fresh directory: its URL."""
    data = Path(tempfile.mkdtemp(prefix="tacho-bench-mlflow-"))
    port = _free_port()
    server = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{data}/mlflow.db",
         "--default-artifact-root", str(data / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=data, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(f"{url}/health", server, "mlflow server", timeout=240)  # ~20 s: creates its tables
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
        shutil.rmtree(data, ignore_errors=True)


def post_all(url: str, path: str, bodies: list[bytes], headers: dict[str, str], count: int) -> float:
    """Items/s posting ``bodies`` one after another on one connection (every answer must be 2xx)."""
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        t = time.perf_counter()
        for body in bodies:
            r = c.post(path, content=body)
            if r.status_code >= 300:
                raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")
            if r.headers.get("content-type", "").startswith("application/x-protobuf"):
                _no_rejected_spans(r.content)
        return count / (time.perf_counter() - t)


def _no_rejected_spans(body: bytes) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp = ExportTraceServiceResponse.FromString(body)
    if resp.partial_success.rejected_spans:
        raise RuntimeError(f"spans rejected: {resp.partial_success.error_message}")


def _reader(url: str, secret: str, runs: list[str], rate: float, seconds: float, q: mp.Queue[tuple[list[float], int]]) -> None:
    lat: list[float] = []
    errors = 0
    rng = random.Random(3)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as c:
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            due = start + n / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            t = time.perf_counter()
            r = c.get(f"/v1/runs/{rng.choice(runs)}/timeline")
            lat.append(time.perf_counter() - t)
            errors += r.status_code != 200
            n += 1
    q.put((lat, errors))


def _find_mlflow(given: str | None) -> str | None:
    exe = given or os.environ.get("TACHO_BENCH_MLFLOW") or shutil.which("mlflow")
    return exe if exe and Path(exe).exists() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--spans", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mlflow", help="path of an `mlflow` executable (e.g. in its own venv)")
    ap.add_argument("--mlflow-repeat", type=int, default=1, help="MLflow rounds (it is slow)")
    args = ap.parse_args()
    events = _events(args.events)
    bodies = [b"[" + b",".join(events[i:i + BATCH]) + b"]" for i in range(0, len(events), BATCH)]
    ev_headers = {"Content-Type": "application/json"}

    bases: list[float] = []
    https: list[float] = []
    lat: list[float] = []
    errors = 0
    for n in range(args.repeat):
        bases.append(baseline(events))
        with tachograph() as (url, pub, aud):
            https.append(post_all(url, "/v1/events", bodies,
                                  {**ev_headers, "Authorization": f"Bearer {pub}"}, len(events)))
            if n == args.repeat - 1:
                runs = sorted({e.split(b'"run_id":"')[1].split(b'"')[0].decode() for e in events})
                q: mp.Queue[tuple[list[float], int]] = mp.Queue()
                p = mp.Process(target=_reader, args=(url, aud, runs, args.rate, args.seconds, q))
                p.start()
                lat, errors = q.get()
                p.join()

    spans, n_spans = _otlp_batches(args.spans)
    otlp_h = {"Content-Type": "application/x-protobuf"}
    tacho_otlp: list[float] = []
    for _ in range(args.repeat):
        with tachograph() as (url, pub, _aud):
            tacho_otlp.append(post_all(url, "/v1/traces", spans,
                                       {**otlp_h, "Authorization": f"Bearer {pub}"}, n_spans))
    mlflow_exe = _find_mlflow(args.mlflow)
    mlflow_rates: list[float] = []
    if mlflow_exe:
        for _ in range(args.mlflow_repeat):
            with mlflow_server(mlflow_exe) as url:
                mlflow_rates.append(post_all(url, "/v1/traces", spans,
                                             {**otlp_h, "x-mlflow-experiment-id": "0"}, n_spans))

    base, http_rate = statistics.median(bases), statistics.median(https)
    lat.sort()
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    print(f"events: {len(events)} in batches of {BATCH}; median of {args.repeat} rounds")
    print(f"baseline ledger.append in process: {base:,.0f} events/s "
          f"(rounds: {', '.join(f'{b:,.0f}' for b in bases)})")
    ratio = statistics.median(h / b for h, b in zip(https, bases, strict=True))
    print(f"HTTP POST /v1/events:              {http_rate:,.0f} events/s "
          f"(median per-round ratio {ratio:.2f} of baseline; target 10,000; "
          f"rounds: {', '.join(f'{h:,.0f}' for h in https)})")
    otlp = statistics.median(tacho_otlp)
    print(f"OTLP POST /v1/traces ({n_spans} spans, protobuf, {BATCH} per request): "
          f"Tachograph {otlp:,.0f} spans/s")
    if mlflow_rates:
        ml = statistics.median(mlflow_rates)
        print(f"  MLflow {mlflow_exe} /v1/traces, same payload: {ml:,.0f} spans/s "
              f"(Tachograph is {otlp / ml:.1f}x)")
    else:
        print("  MLflow comparison skipped: no `mlflow` executable found (give --mlflow PATH; "
              "install it in its own venv: python3 -m venv /tmp/mlflow-venv && "
              "/tmp/mlflow-venv/bin/pip install mlflow)")
    print(f"timeline reads at {args.rate:g} req/s for {args.seconds:g}s from a second process: "
          f"{len(lat)} requests, {errors} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 < 50 ms)")


if __name__ == "__main__":
    main()
