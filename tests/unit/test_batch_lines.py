"""Batch file lines both ways (engines/oracle/batch_lines.py): the split under the limits,
and every shape of output line the OpenAI Batch API and `vllm run-batch` write."""

import json

import pytest

from reflection_assets.engines.oracle.batch_lines import BatchFileError, lines_by_id, read_line, read_lines, request_line, split_files
from reflection_assets.method.requests import OracleRequest, SamplingSettings

SAMPLING = SamplingSettings("openai", "gpt-4o-mini", 0.0, 64, 7)


def request(i: int, size: int = 10) -> OracleRequest:
    return OracleRequest((("user", f"{i} " + "x" * size),), SAMPLING, "v1")


def test_a_line_is_the_openai_batch_input_layout():
    line = json.loads(request_line(request(1)))
    assert line["custom_id"] == request(1).key and line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"] == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "1 " + "x" * 10}],
                            "temperature": 0.0, "max_tokens": 64, "seed": 7}


def test_files_split_by_lines_and_by_bytes():
    requests = [request(i) for i in range(10)]
    assert [len(f) for f in split_files(requests, max_requests=4)] == [4, 4, 2]
    width = len(request_line(requests[0]).encode())
    assert [len(f) for f in split_files(requests, max_requests=100, max_bytes=3 * width + 5)] == [3, 3, 3, 1]
    with pytest.raises(BatchFileError, match="over the"):
        split_files([request(0, size=500)], max_requests=10, max_bytes=100)


def completion(text="hi", model="gpt-4o-mini-2024-07-18"):
    return {"id": "c", "object": "chat.completion", "model": model, "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def test_output_lines_of_both_layouts():
    ok = read_line({"id": "b", "custom_id": "k", "response": {"status_code": 200, "body": completion()}, "error": None})
    assert ok.ok and ok.reply.text == "hi" and ok.reply.served_model == "gpt-4o-mini-2024-07-18"
    assert ok.reply.system_fingerprint == "fp_1" and ok.reply.prompt_tokens == 3
    server = read_line({"custom_id": "k", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}})
    assert not server.ok and server.transient and server.status == 500 and server.message == "HTTP 500: boom"
    refused = read_line({"custom_id": "k", "response": {"status_code": 400, "body": {"error": {"message": "too long"}}}})
    assert not refused.transient
    expired = read_line({"custom_id": "k", "response": None, "error": {"code": "batch_expired", "message": "late"}})
    assert expired.transient and expired.message == "batch_expired: late"
    vllm = read_line({"id": "vllm-1", "custom_id": "k", "response": None, "error": "CUDA out of memory"})
    assert not vllm.ok and vllm.message == "CUDA out of memory"
    no_status = read_line({"custom_id": "k", "response": {"body": completion("x")}})  # vLLM leaves it out
    assert no_status.ok


def test_a_reply_wins_over_a_failure_of_the_same_request():
    failed = read_line({"custom_id": "k", "response": None, "error": {"code": "e", "message": "m"}})
    ok = read_line({"custom_id": "k", "response": {"status_code": 200, "body": completion()}})
    assert lines_by_id([ok, failed])["k"].ok and lines_by_id([failed, ok])["k"].ok


def test_a_line_that_is_not_one_names_the_file_and_line():
    good = json.dumps({"custom_id": "k", "response": {"status_code": 200, "body": completion()}})
    with pytest.raises(BatchFileError, match=r"out.jsonl: line 2: expected an object with a `custom_id`"):
        read_lines(good + "\n" + json.dumps({"id": 1}) + "\n", "out.jsonl")
    with pytest.raises(BatchFileError, match=r"out.jsonl: line 3, column 1: not valid JSON"):
        read_lines(good + "\n\n}\n", "out.jsonl")
