"""A small, deterministic OpenAI-protocol chat server for the autointerp tests and benchmark.

It "explains" a feature by the most common ``<<marked>>`` text of the prompt, and answers a scoring
prompt per example: detection says 1 when the explanation's text occurs in the example, fuzzing says 1
when every marked span contains it. With ``logprobs`` each answer digit gets P(1) = 0.2 (no occurrence),
0.6 (one) or 0.8 (more), so AUROC is hand-computable too. A one-example prompt whose system prompt
asks for a "single digit" gets the bare digit (raysae's ``digit`` answer format). ``script`` holds faults for the next requests
("429", "500", "malformed", "slow", "400", "401"); ``fail_explain_if`` makes explainer prompts that
contain a string answer 500 for ever; ``latency_s`` delays every answer.
"""

from __future__ import annotations

import collections
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

P1 = {0: 0.2, 1: 0.6}
P1_MANY = 0.8


def p_one(count: int) -> float:
    return P1.get(count, P1_MANY)


@dataclass
class FakeState:
    latency_s: float = 0.0
    slow_s: float = 3.0
    script: list[str] = field(default_factory=list)
    fail_explain_if: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["kind"] == kind)


def _kind(messages: list[dict[str, str]]) -> str:
    system = messages[0]["content"] if messages else ""
    if "[EXPLANATION]" in system:
        return "explain"
    if "marked tokens are ones" in system:
        return "fuzzing"
    return "detection"


def explain_answer(user: str) -> str:
    spans = [s.strip().lower() for s in re.findall(r"<<(.*?)>>", user)]
    if not spans:
        return "I cannot tell."
    best = collections.Counter(spans).most_common()
    top = max(c for _, c in best)
    word = next(s for s in spans if dict(best)[s] == top)  # ties: the first seen
    return f"The marked tokens are all the same word.\n[EXPLANATION]: {word}"


def score_answer(kind: str, user: str) -> tuple[list[int], list[int]]:
    """(predictions, occurrence counts) of a scoring prompt."""
    lines = user.splitlines()
    explanation = next(line[len("Explanation: ") :] for line in lines if line.startswith("Explanation: "))
    word = explanation.strip().lower()
    preds, counts = [], []
    for line in lines:
        m = re.match(r"Example \d+: (.*)$", line)
        if not m:
            continue
        text = m.group(1).lower()
        if kind == "fuzzing":
            spans = re.findall(r"<<(.*?)>>", text)
            hit = bool(spans) and all(word in s for s in spans)
            n = sum(s.count(word) for s in spans) if hit else 0
        else:
            n = text.replace("<<", "").replace(">>", "").count(word)
            hit = n > 0
        preds.append(int(hit))
        counts.append(n)
    return preds, counts


def _logprobs(answer: str, counts: list[int]) -> list[dict[str, Any]]:
    out, k = [], 0
    for ch in answer:
        entry: dict[str, Any] = {"token": ch, "bytes": list(ch.encode()), "top_logprobs": []}
        if ch in "01":
            p = p_one(counts[k])
            k += 1
            entry["logprob"] = math.log(p if ch == "1" else 1 - p)
            entry["top_logprobs"] = [
                {"token": "1", "logprob": math.log(p), "bytes": [49]},
                {"token": "0", "logprob": math.log(1 - p), "bytes": [48]},
            ]
        else:
            entry["logprob"] = 0.0
        out.append(entry)
    return out


def make_handler(state: FakeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            messages = body.get("messages", [])
            kind = _kind(messages)
            user = messages[-1]["content"] if messages else ""
            with state.lock:
                fault = state.script.pop(0) if state.script else None
                state.requests.append({"kind": kind, "fault": fault, "body": body})
                state.auth.append(self.headers.get("Authorization", ""))
            if state.latency_s:
                time.sleep(state.latency_s)
            if fault == "slow":
                time.sleep(state.slow_s)
            if fault in ("429", "500", "400"):
                msg = {"error": {"message": f"injected {fault}", "type": "test"}}
                return self._send(int(fault), json.dumps(msg).encode())
            if fault == "401":  # a careless server that echoes the credentials it was sent
                auth = self.headers.get("Authorization", "")
                return self._send(401, json.dumps({"error": {"message": f"bad key {auth}"}}).encode())
            if fault == "malformed":
                return self._send(200, b'{"id": "x", "choices": [')
            if kind == "explain" and state.fail_explain_if and state.fail_explain_if in user:
                return self._send(500, b'{"error": {"message": "this feature always fails"}}')
            logprobs = None
            if kind == "explain":
                answer = explain_answer(user)
            else:
                preds, counts = score_answer(kind, user)
                digit = "single digit" in messages[0]["content"]
                answer = str(preds[0]) if digit else "[" + ", ".join(map(str, preds)) + "]"
                if body.get("logprobs"):
                    logprobs = {"content": _logprobs(answer, counts)}
            reply = {
                "id": f"chatcmpl-{len(state.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                        "logprobs": logprobs,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(user) // 4,
                    "completion_tokens": len(answer),
                    "total_tokens": len(user) // 4 + len(answer),
                },
            }
            self._send(200, json.dumps(reply).encode())

    return Handler


class FakeServer:
    """The server on 127.0.0.1 (free port) in a daemon thread; ``url`` is the API root."""

    def __init__(self, state: FakeState | None = None):
        self.state = state or FakeState()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
