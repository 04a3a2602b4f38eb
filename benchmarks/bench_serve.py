"""facegpt-serve under load: N concurrent chat requests against a real server on 127.0.0.1.

Starts ``facegpt-serve`` (``python -m minigpt4.serve.cli``) as a subprocess on a free localhost port with the tiny
model (random weights written on the fly) or the ``make demo`` model, waits for ``/health``, sends one warm-up
request, then ``-n`` requests from ``-c`` client threads (each: one image as a data URL + a question). A 503 (queue
full) is retried after its ``Retry-After``. Prints requests/s, p50/p95/max latency and the answer token rate, and
exits 1 if any request was lost (no 200 before the time limit).

    python benchmarks/bench_serve.py --model tiny -n 32 -c 8
    python benchmarks/bench_serve.py --model tiny -n 32 -c 8 --max-batch 1    # queued only, no batching
    python benchmarks/bench_serve.py --model demo --ckpt demo_output/runs/demo_smollm2/<run>/checkpoint_best.pth

Traffic goes to 127.0.0.1 only; request count (<= 1000), concurrency (<= 64) and total time are bounded. Not a test.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"tiny": REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml",
           "demo": REPO / "eval_configs" / "demo_smollm2_eval.yaml"}
HOST = "127.0.0.1"
MAX_REQUESTS, MAX_CONCURRENCY = 1000, 64
QUESTION = "How old is this person, and what is the expression?"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--ckpt", help="demo model checkpoint (default: the newest under demo_output/runs/); "
                        "'none': the demo architecture untrained (speed only, the answers mean nothing)")
    parser.add_argument("-n", "--requests", type=int, default=32)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--max-queue", type=int, default=16, help="the server's --max-queue")
    parser.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch (1: no batching)")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds for the whole load phase")
    parser.add_argument("--startup-timeout", type=float, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"-n must be in 1..{MAX_REQUESTS} and -c in 1..{MAX_CONCURRENCY}")
    return args


def model_options(args: argparse.Namespace, work: Path) -> List[str]:
    """``--options`` that make the chosen config runnable here."""
    if args.model == "tiny":
        from minigpt4.tools.tiny_llm import write_tiny_llama

        return [f"model.llama_model={write_tiny_llama(work / 'tiny_llama')}"]
    from minigpt4.models.llm import smollm2_gguf_path

    ckpt = args.ckpt or newest_demo_checkpoint()
    return [f"model.llama_model={smollm2_gguf_path()}", "model.ckpt=null" if ckpt == "none" else f"model.ckpt={ckpt}"]


def newest_demo_checkpoint() -> str:
    found = sorted((REPO / "demo_output" / "runs").glob("demo_smollm2/*/checkpoint_*.pth"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("bench_serve: no demo checkpoint under demo_output/runs/demo_smollm2/: run `make demo` or pass --ckpt")
    return str(found[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(args: argparse.Namespace, options: List[str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minigpt4.serve.cli", "--cfg-path", str(CONFIGS[args.model]), "--options", *options,
           "--host", HOST, "--port", str(port), "--model-name", "bench", "--max-queue", str(args.max_queue),
           "--max-batch", str(args.max_batch),
           "--max-tokens-cap", str(max(args.max_tokens, 1)), "--device", args.device, "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


def http(method: str, url: str, body: Optional[bytes] = None, timeout: float = 300) -> Tuple[int, Dict, Any]:
    """``(status, headers, parsed JSON)``; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def wait_healthy(base: str, server: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"bench_serve: the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http("GET", base + "/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"bench_serve: the server was not up after {timeout:.0f} s")


def request_body(max_tokens: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"model": "bench", "max_tokens": max_tokens, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": QUESTION}]}]}).encode()


def one_request(base: str, body: bytes, deadline: float, retries: List[int]) -> Optional[Tuple[float, int]]:
    """``(seconds, completion tokens)`` of one request (503s retried after Retry-After), None if it was lost."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            status, headers, payload = http("POST", base + "/v1/chat/completions", body,
                                            timeout=max(1.0, deadline - time.monotonic()))
        except OSError:
            return None
        if status == 200:
            return time.monotonic() - start, int(payload["usage"]["completion_tokens"])
        if status != 503:
            print(f"request failed: {status} {payload}", file=sys.stderr)
            return None
        retries.append(1)
        time.sleep(float(headers.get("Retry-After", headers.get("retry-after", "1"))))
    return None


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_load(base: str, args: argparse.Namespace) -> Dict[str, Any]:
    body = request_body(args.max_tokens)
    retries: List[int] = []
    warm = one_request(base, body, time.monotonic() + args.time_limit, retries)
    if warm is None:
        sys.exit("bench_serve: the warm-up request failed")
    deadline = time.monotonic() + args.time_limit
    start = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda _: one_request(base, body, deadline, retries), range(args.requests)))
    wall = time.monotonic() - start
    done = [r for r in results if r is not None]
    latencies = [r[0] for r in done]
    tokens = sum(r[1] for r in done)
    return {"model": args.model, "requests": args.requests, "concurrency": args.concurrency,
            "max_batch": args.max_batch,
            "max_tokens": args.max_tokens, "ok": len(done), "lost": args.requests - len(done),
            "retries_503": len(retries), "wall_s": round(wall, 2),
            "requests_per_s": round(len(done) / wall, 2) if wall else 0.0,
            "p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
            "p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1) if wall else 0.0,
            "mean_s": round(statistics.mean(latencies), 3) if latencies else None}


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        work = Path(tmp)
        port, log = free_port(), work / "server.log"
        server = start_server(args, model_options(args, work), port, log)
        base = f"http://{HOST}:{port}"
        try:
            started = time.monotonic()
            wait_healthy(base, server, args.startup_timeout, log)
            print(f"server up in {time.monotonic() - started:.1f} s ({args.model} model, {args.device})")
            stats = run_load(base, args)
        finally:
            stop_server(server)
    print(f"{stats['ok']}/{stats['requests']} requests ok ({stats['lost']} lost, {stats['retries_503']} 503 retries) "
          f"in {stats['wall_s']} s with {stats['concurrency']} clients: {stats['requests_per_s']} requests/s, "
          f"latency p50 {stats['p50_s']} s, p95 {stats['p95_s']} s, max {stats['max_s']} s; "
          f"{stats['tokens_per_s']} answer tokens/s")
    print(json.dumps(stats))
    return 1 if stats["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
