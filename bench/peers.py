"""edgesched beside a peer server, MLServer, on the same job: prints one JSON object.

The same TFLite models (okay_nabu and face_detection_short_range) are served by

- ``edgesched``: ``edgesched serve --http-port`` (board ``none``: no emulated service time),
- ``mlserver_pw0``: MLServer 1.7.1 with ``parallel_workers=0`` (inference in the server's own
  event loop),
- ``mlserver_default``: MLServer at its default ``parallel_workers`` (1: a worker process),
- ``floor``: no server at all, a canned answer: an asyncio (uvloop) HTTP/1.1 server that reads
  each request without parsing it and writes the answer's JSON prepared in advance. Its figures
  are what the client, the socket and the wake-ups cost on their own, the floor under the
  others' (it is not in the ratios),
- ``bare``: the least a Python Open Inference Protocol server does, the same asyncio server
  parsing each request (orjson), setting the inputs, invoking and writing every output back as
  JSON (orjson), with nothing of a scheduler: no queue, no decision, no accounting, no checks.
  Its ratios (``bare_ratios``, against the same MLServer setting as edgesched's) say what the
  goals ask of a Python server on this machine, and ``scheduler_cpu_us_per_request`` what
  edgesched's own work costs on top (its okay_nabu CPU per request less the bare server's,
  one at a time),

MLServer through the runtime in bench/mlserver_runtime.py (ai_edge_litert, one thread, like the
daemon), its settings otherwise at their defaults except ``debug=false`` (no per-request access
log line; the daemon runs at log level warning). All four listen on TCP 127.0.0.1 and are
reached by the same client, ``tritonclient.http`` with JSON tensors (MLServer's REST side rejects
the binary tensor extension). They run side by side for the whole bench and are measured in
turn, ``--rounds`` times over (edgesched, mlserver_pw0, mlserver_default, floor, edgesched, ...);
the figures pool the rounds.

Per model and server:

- ``p50_us``/``p99_us``: round trips of one client sending requests one at a time;
  ``overhead_p50_us``: ``p50_us`` less ``bare_p50_us``, the model's set_tensor + invoke +
  get_tensor in this process (same interpreter settings, same run).
- ``cpu_us_per_request``: CPU time (user + system) of the server's whole process tree (psutil:
  MLServer's workers included) over the one-at-a-time run, divided by its requests;
  ``cpu_us_per_request_loaded``: the same over the throughput run.
- ``throughput_rps``: answered requests per second with ``--clients`` client processes (one
  keep-alive connection each), the median of the rounds (``throughput_rps_rounds``).
- ``outputs_match``: the server's first answer equals the bare invoke's outputs.

Ratios (edgesched over MLServer's better setting on each figure, okay_nabu unless named):
``peer_throughput_ratio`` (throughput, higher is better for edgesched),
``peer_overhead_ratio`` (p50 overhead, lower is better), ``peer_face_json_cpu_ratio``
(face_detection server CPU per request over JSON, lower is better); ``compared_with`` names
the MLServer setting each used. ``edgesched_code`` records the commit and uncommitted changes
of the tree the daemon ran from.

MLServer runs from its own venv (its uvloop pin conflicts with the test environment)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]'

The bench itself and the daemon run with the interpreter that runs this file (``--edgesched-python``
to choose another); both venvs hold the editable install of this tree.

Usage: python bench/peers.py [--rounds 4] [--requests 300] [--face-requests 60] [--seconds 2]
       [--clients 4] [--bench-venv .venv-bench]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MODELS_DIR = ROOT / "edgesched" / "models"
NABU = "okay_nabu"
FACE = "face_detection_short_range"
MODELS = (NABU, FACE)
READY_LIMIT_S = 120.0
CLIENT_LIMIT_S = 120.0  # a client that has not started or answered by then has failed
INSTALL_HINT = "python3 -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]'"


# ------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelJob:
    """One model's request (same input for every server) and its bare outputs."""

    name: str
    inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    bare_outputs: dict[str, np.ndarray]
    bare_s: list[float] = field(default_factory=list)


def _interpreter(name: str) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(MODELS_DIR / f"{name}.tflite"), num_threads=1)
    interp.allocate_tensors()
    return interp


def model_job(name: str, bare_runs: int) -> ModelJob:
    """The request for ``name`` (zeros for int8 audio, seeded noise for images) and the bare
    invoke: set_tensor + invoke + get_tensor timed ``bare_runs`` times after a warm-up."""
    interp = _interpreter(name)
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    for d in interp.get_input_details():
        shape, dtype = tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"])
        inputs[d["name"]] = (rng.random(shape, dtype=np.float32).astype(dtype)
                             if dtype.kind == "f" else np.zeros(shape, dtype))
    outs = interp.get_output_details()

    def run() -> dict[str, np.ndarray]:
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], inputs[d["name"]])
        interp.invoke()
        return {d["name"]: interp.get_tensor(d["index"]) for d in outs}

    for _ in range(20):
        first = run()
    bare: list[float] = []
    for _ in range(bare_runs):
        t0 = time.perf_counter()
        run()
        bare.append(time.perf_counter() - t0)
    return ModelJob(name, inputs, tuple(d["name"] for d in outs), first, bare)


# ------------------------------------------------------------------------------ client
def _client(port: int) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=30.0,
                                            network_timeout=120.0)


def _request(job: ModelJob) -> tuple[list[Any], list[Any]]:
    """tritonclient inputs and requested outputs, JSON tensors both ways."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, arr in job.inputs.items():
        inp = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=False)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in job.output_names]
    return inputs, outputs


def _infer(client: Any, job: ModelJob, inputs: list[Any], outputs: list[Any]) -> Any:
    return client.infer(job.name, inputs, outputs=outputs)


def check_outputs(port: int, job: ModelJob) -> bool:
    """Whether the server's answer equals the bare invoke's outputs."""
    client = _client(port)
    try:
        res = _infer(client, job, *_request(job))
        return all(np.allclose(np.asarray(res.as_numpy(n), dtype=np.float64).reshape(ref.shape),
                               ref.astype(np.float64), rtol=1e-5, atol=1e-5)
                   for n, ref in job.bare_outputs.items())
    finally:
        client.close()


def latency(port: int, job: ModelJob, n: int, cpu: Callable[[], float]) -> tuple[list[float], float]:
    """``n`` round trips in seconds (after 10 warm-ups) and the server's CPU seconds over them."""
    client = _client(port)
    try:
        inputs, outputs = _request(job)
        for _ in range(10):
            _infer(client, job, inputs, outputs)
        out: list[float] = []
        cpu0 = cpu()
        for _ in range(n):
            t0 = time.perf_counter()
            _infer(client, job, inputs, outputs)
            out.append(time.perf_counter() - t0)
        return out, cpu() - cpu0
    finally:
        client.close()


def _client_proc(port: int, job: ModelJob, seconds: float, barrier: Any, q: Any) -> None:
    """Puts its request count on ``q``, or the text of what went wrong."""
    client = None
    try:
        client = _client(port)
        inputs, outputs = _request(job)
        for _ in range(5):  # connect and warm up
            _infer(client, job, inputs, outputs)
        barrier.wait(CLIENT_LIMIT_S)  # every client starts together
        done = 0
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            _infer(client, job, inputs, outputs)
            done += 1
        q.put(done)
    except Exception as exc:
        q.put(f"{type(exc).__name__}: {exc}")
        barrier.abort()
    finally:
        if client is not None:
            client.close()


def throughput(port: int, job: ModelJob, clients: int, seconds: float,
               cpu: Callable[[], float]) -> tuple[float, int, float]:
    """(requests/s, requests, server CPU seconds) of ``clients`` processes for ``seconds``.
    The CPU is read when the clients pass the barrier and when the last has answered. Exits the
    bench with the reason when a client fails."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    barrier = ctx.Barrier(clients + 1)
    procs = [ctx.Process(target=_client_proc, args=(port, job, seconds, barrier, q))
             for _ in range(clients)]
    for p in procs:
        p.start()
    counts: list[Any] = []
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: its
            barrier.wait(CLIENT_LIMIT_S)  # reason is on the queue
        cpu0 = cpu()
        for _ in procs:
            counts.append(q.get(timeout=CLIENT_LIMIT_S + seconds))
        cpu1 = cpu()
    except queue.Empty:
        counts.append(f"no answer from a client in {CLIENT_LIMIT_S + seconds:.0f} s")
    finally:
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
    failed = [c for c in counts if not isinstance(c, int)]
    if failed or len(counts) != clients:
        raise SystemExit(f"a {job.name} client on port {port} failed: {failed[0] if failed else '?'}")
    total = sum(counts)
    return total / seconds, total, cpu1 - cpu0


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants now alive."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    about: dict[str, Any]

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server, then SIGKILL it and whatever of its tree is left."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for k in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                k.kill()


def wait_ready(server: Server) -> None:
    """Until the server and both models answer ready over HTTP; exits the bench if not."""
    limit = time.monotonic() + READY_LIMIT_S
    while time.monotonic() < limit:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.proc.returncode} at start; its "
                             f"log: {_tail(server.log)}")
        try:
            client = _client(server.port)
            try:
                if client.is_server_ready() and all(client.is_model_ready(m) for m in MODELS):
                    return
            finally:
                client.close()
        except Exception:
            pass
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"{server.name} did not become ready in {READY_LIMIT_S:.0f} s; its log: "
                     f"{_tail(server.log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return "(none)"


def floor_answer(job: ModelJob) -> bytes:
    """The JSON answer to ``job``'s request as a server sends it: the bare invoke's outputs,
    FP32 values in their shortest float32 form (orjson's numpy support), as short as any
    server's."""
    import orjson

    outs = [{"name": n, "datatype": np_datatype(a), "shape": list(a.shape), "data": a.ravel()}
            for n, a in job.bare_outputs.items()]
    return bytes(orjson.dumps({"model_name": job.name, "model_version": "1", "outputs": outs},
                              option=orjson.OPT_SERIALIZE_NUMPY))


def np_datatype(arr: np.ndarray) -> str:
    from mlserver_runtime import DATATYPES

    return DATATYPES[arr.dtype]


def _respond(port: int, answer: Callable[[str, bytes | None], bytes], body: bool) -> None:
    """An HTTP/1.1 keep-alive responder on 127.0.0.1:``port`` (asyncio, uvloop when installed):
    reads each request's head and ``Content-Length`` bytes of body and writes a 200 whose JSON
    body is ``answer(path, request body)`` (the body is None, not copied, unless ``body``)."""
    import asyncio

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                length = 0
                for line in head[1:]:
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value)
                if len(self.buf) < end + 4 + length:
                    return
                raw = bytes(self.buf[end + 4:end + 4 + length]) if body else None
                del self.buf[:end + 4 + length]
                out = answer(head[0].split(" ")[1], raw)
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\n\r\n" % len(out) + out)

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def serve_floor(port: int, answers_path: str) -> None:
    """The floor server: reads each request (headers and ``Content-Length`` bytes of body,
    unparsed) and writes a canned answer: the answer to ``POST /v2/models/NAME/infer`` from
    ``answers_path`` (JSON: name -> answer text), an empty 200 to anything else (the ready
    checks)."""
    answers = {f"/v2/models/{name}/infer": text.encode()
               for name, text in json.loads(Path(answers_path).read_text()).items()}
    _respond(port, lambda path, _: answers.get(path, b""), body=False)


def serve_bare(port: int) -> None:
    """The bare server: the least an Open Inference Protocol server in Python does per request,
    with nothing of a scheduler. ``POST /v2/models/NAME/infer`` with JSON tensors is parsed
    (orjson), its inputs set, the model invoked (ai_edge_litert, one thread, interpreters made
    at start) and every output written back as JSON (orjson's numpy support); no checks beyond
    what numpy and the interpreter do, no queue, no accounting. Anything else gets an empty 200
    (the ready checks)."""
    import orjson
    from mlserver_runtime import DATATYPES, DTYPES

    models = {}
    for name in MODELS:
        interp = _interpreter(name)
        ins = {d["name"]: (d["index"], np.dtype(d["dtype"])) for d in interp.get_input_details()}
        outs = [(d["name"], d["index"]) for d in interp.get_output_details()]
        models[f"/v2/models/{name}/infer"] = (name, interp, ins, outs)

    def answer(path: str, body: bytes | None) -> bytes:
        model = models.get(path)
        if model is None or body is None:
            return b""
        name, interp, ins, outs = model
        for item in orjson.loads(body)["inputs"]:
            index, dtype = ins[item["name"]]
            arr = np.asarray(item["data"], dtype=DTYPES[item["datatype"]]).astype(dtype, copy=False)
            interp.set_tensor(index, arr.reshape(item["shape"]))
        interp.invoke()
        results = []
        for oname, index in outs:
            arr = interp.get_tensor(index)
            results.append({"name": oname, "datatype": DATATYPES[arr.dtype],
                            "shape": list(arr.shape), "data": arr.ravel()})
        return orjson.dumps({"model_name": name, "model_version": "1", "outputs": results},
                            option=orjson.OPT_SERIALIZE_NUMPY)

    _respond(port, answer, body=True)


def _start_here(home: Path, name: str, call: str, about: dict[str, Any]) -> Server:
    """A server of this file, ``peers.CALL`` with the port, in its own process."""
    port = free_port()
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import peers; "
            f"peers.{call.format(port=port)}")
    log = home / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=home)
    server = Server(name, port, proc, log, about)
    wait_ready(server)
    return server


def start_floor(home: Path, jobs: dict[str, ModelJob]) -> Server:
    answers = home / "floor-answers.json"
    answers.write_text(json.dumps({m: floor_answer(j).decode() for m, j in jobs.items()}),
                       encoding="utf-8")
    return _start_here(home, "floor", f"serve_floor({{port}}, {str(answers)!r})",
                       {"what": "canned answers, requests unparsed"})


def start_bare(home: Path) -> Server:
    return _start_here(home, "bare", "serve_bare({port})",
                       {"what": "parse (orjson), invoke, answer (orjson); nothing else"})


def start_edgesched(home: Path, python: str) -> Server:
    port = free_port()
    cfg = home / "edgesched.toml"
    cfg.write_text("[queue]\nmax_count = 1024\n", encoding="utf-8")
    log = home / "edgesched.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [python, "-m", "edgesched", "serve", "--config", str(cfg),
             "--socket", str(home / "edgesched.sock"), "--http-port", str(port),
             "--board", "none", "--policy", "schedutil", "--runtime-dir", str(home / "run"),
             "--state-dir", str(home / "state"), "--log-level", "warning"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=home)
    server = Server("edgesched", port, proc, log, {"python": python, "board": "none"})
    wait_ready(server)
    return server


def start_mlserver(home: Path, venv: Path, name: str, parallel_workers: int | None) -> Server:
    """MLServer serving both models from a repository written under ``home / name``."""
    repo = home / name
    repo.mkdir()
    port = free_port()
    settings: dict[str, Any] = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                                "metrics_port": free_port(), "debug": False,
                                "metrics_dir": str(repo / ".metrics"),
                                "environments_dir": str(repo / ".envs")}
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (repo / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    for model in MODELS:
        (repo / model).mkdir()
        (repo / model / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_runtime.TFLiteRuntime",
            "parameters": {"uri": str(MODELS_DIR / f"{model}.tflite")}}, indent=1),
            encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p)
    log = repo / "mlserver.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(repo)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=repo, env=env)
    about = {"parallel_workers": parallel_workers if parallel_workers is not None else "default",
             "debug": False}
    server = Server(name, port, proc, log, about)
    wait_ready(server)
    return server


def _venv_versions(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('mlserver', 'uvloop', 'orjson', 'uvicorn', 'fastapi')}))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         check=False, timeout=60)
    try:
        return dict(json.loads(out.stdout))
    except ValueError:
        return {}


def _code_state() -> dict[str, Any]:
    """The commit of the tree the daemon ran from and how far the work tree differs from it."""
    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT,
                                 timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    stat = git("diff", "--shortstat")
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": stat or None}


# ------------------------------------------------------------------------------ figures
def _us(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1e6, q)), 1)


def _best(rows: dict[str, dict[str, Any]], key: str, highest: bool) -> tuple[str, float]:
    peers = {n: float(r[key]) for n, r in rows.items() if n.startswith("mlserver")}
    name = (max if highest else min)(peers, key=peers.__getitem__)
    return name, peers[name]


def _ratios(nabu: dict[str, Any], face: dict[str, Any], name: str, tp: float, ov: float,
            cpu: float) -> tuple[float, float | None, float]:
    """``name``'s throughput, p50 overhead and face JSON CPU over the peer's figures."""
    return (round(nabu[name]["throughput_rps"] / tp, 3),
            round(nabu[name]["overhead_p50_us"] / ov, 3) if ov > 0 else None,
            round(face[name]["cpu_us_per_request"] / cpu, 3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300,
                    help="one-at-a-time requests per round and server, okay_nabu")
    ap.add_argument("--face-requests", type=int, default=60,
                    help="the same for face_detection_short_range (about 1 MB of JSON each)")
    ap.add_argument("--seconds", type=float, default=2.0, help="throughput run per round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bench-venv", type=Path, default=ROOT / ".venv-bench")
    ap.add_argument("--edgesched-python", default=sys.executable)
    args = ap.parse_args()
    if os.sep in args.edgesched_python:  # absolute (the servers start in a temporary folder);
        args.edgesched_python = os.path.abspath(args.edgesched_python)  # a venv's link kept
    venv = args.bench_venv.resolve()
    if not (venv / "bin" / "mlserver").exists():
        print(f"peers: no MLServer at {venv}/bin/mlserver; install the bench venv from the "
              f"repository's folder: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if min(args.rounds, args.requests, args.face_requests, args.clients) < 1 or args.seconds <= 0:
        print("peers: --rounds, --requests, --face-requests, --clients and --seconds must be "
              "positive", file=sys.stderr)
        return 2
    n_for = {NABU: args.requests, FACE: args.face_requests}
    jobs = {m: model_job(m, max(200, n_for[m])) for m in MODELS}
    lat: dict[str, dict[str, list[float]]] = {}
    cpu_seq: dict[str, dict[str, list[float]]] = {}
    rps: dict[str, dict[str, list[float]]] = {}
    cpu_load: dict[str, dict[str, list[float]]] = {}
    match: dict[str, dict[str, bool]] = {}
    code = _code_state()  # before the daemon starts: the code it imports
    with tempfile.TemporaryDirectory(prefix="edgesched-peers-") as tmp:
        home = Path(tmp)
        servers: list[Server] = []
        try:
            servers.append(start_edgesched(home, args.edgesched_python))
            servers.append(start_mlserver(home, venv, "mlserver_pw0", 0))
            servers.append(start_mlserver(home, venv, "mlserver_default", None))
            servers.append(start_floor(home, jobs))
            servers.append(start_bare(home))
            for m in MODELS:
                for d in (lat, cpu_seq, rps, cpu_load, match):
                    d[m] = {}
                for s in servers:
                    match[m][s.name] = check_outputs(s.port, jobs[m])
                    for d in (lat, cpu_seq, rps, cpu_load):
                        d[m][s.name] = []
            for _ in range(args.rounds):
                for s in servers:  # A B C A B C ...
                    for m in MODELS:
                        samples, used = latency(s.port, jobs[m], n_for[m], s.cpu_s)
                        lat[m][s.name] += samples
                        cpu_seq[m][s.name].append(used / len(samples))
                        rate, done, used = throughput(s.port, jobs[m], args.clients, args.seconds,
                                                      s.cpu_s)
                        rps[m][s.name].append(rate)
                        cpu_load[m][s.name].append(used / max(done, 1))
        finally:
            for s in servers:
                s.stop()
        about = {s.name: {**s.about, "port": s.port} for s in servers}
    models: dict[str, Any] = {}
    for m in MODELS:
        bare_p50 = _us(jobs[m].bare_s, 50)
        rows: dict[str, dict[str, Any]] = {}
        for name in lat[m]:
            p50 = _us(lat[m][name], 50)
            rows[name] = {
                "p50_us": p50, "p99_us": _us(lat[m][name], 99),
                "overhead_p50_us": round(p50 - bare_p50, 1),
                "throughput_rps": round(float(np.median(rps[m][name])), 1),
                "throughput_rps_rounds": [round(r, 1) for r in rps[m][name]],
                "cpu_us_per_request": round(1e6 * float(np.mean(cpu_seq[m][name])), 1),
                "cpu_us_per_request_loaded": round(1e6 * float(np.mean(cpu_load[m][name])), 1),
                "outputs_match": match[m][name],
            }
        models[m] = {"bare_p50_us": bare_p50, "requests_per_round": n_for[m], **rows}
    nabu = {k: v for k, v in models[NABU].items() if isinstance(v, dict)}
    face = {k: v for k, v in models[FACE].items() if isinstance(v, dict)}
    tp_peer, tp = _best(nabu, "throughput_rps", highest=True)
    ov_peer, ov = _best(nabu, "overhead_p50_us", highest=False)
    cpu_peer, cpu = _best(face, "cpu_us_per_request", highest=False)
    t_ratio, o_ratio, c_ratio = _ratios(nabu, face, "edgesched", tp, ov, cpu)
    bare = dict(zip(("throughput", "overhead", "face_json_cpu"),
                    _ratios(nabu, face, "bare", tp, ov, cpu), strict=True))
    print(json.dumps({
        "models": models,
        "peer_throughput_ratio": t_ratio, "peer_overhead_ratio": o_ratio,
        "peer_face_json_cpu_ratio": c_ratio,
        "compared_with": {"throughput": tp_peer, "overhead": ov_peer, "face_json_cpu": cpu_peer},
        "bare_ratios": bare,
        "scheduler_cpu_us_per_request": round(nabu["edgesched"]["cpu_us_per_request"]
                                              - nabu["bare"]["cpu_us_per_request"], 1),
        "acceptance": {"throughput_ratio_ge_3": t_ratio >= 3.0,
                       "overhead_ratio_le_one_third": o_ratio is not None and o_ratio <= 1 / 3,
                       "face_json_cpu_ratio_le_half": c_ratio <= 0.5},
        "servers": about, "mlserver_venv": _venv_versions(venv), "edgesched_code": code,
        "run": {"rounds": args.rounds, "seconds": args.seconds, "clients": args.clients,
                "client": "tritonclient.http, JSON tensors, TCP 127.0.0.1", "cpus": os.cpu_count(),
                "python": sys.version.split()[0]},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
