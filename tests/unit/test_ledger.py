"""The ledger's segments: written whole, read up to a torn end, replayed in write order,
compressed without losing a line, and a lost store refused instead of silently remade."""

import gzip
import json
import subprocess
import sys

import pytest

from reflection_assets.engines.store import ledger as ledger_module
from reflection_assets.engines.store.ledger import Ledger, read_ledger, read_segment, seal, segment_paths
from reflection_assets.engines.store.storage import Database, DamagedStore


def test_put_delete_and_the_order_of_writes(tmp_path):
    ledger = Ledger(tmp_path / "l")
    ledger.put("registry.datasets", [{"name": "a", "source": "/x"}])
    ledger.put("registry.datasets", [{"name": "a", "source": "/y"}, {"name": "b", "source": "/z"}])
    ledger.put("training.adapter_records", [{"adapter_id": "x", "record_id": str(i)} for i in range(3)])
    ledger.delete("training.adapter_records", {"adapter_id": "x"})
    ledger.put("training.adapter_records", [{"adapter_id": "x", "record_id": "9"}])
    ledger.put("somewhere.else", [{"k": 1}])  # a table of a newer version: kept, not restored
    state = read_ledger(ledger.folder)
    assert {r["name"]: r["source"] for r in state.rows("registry.datasets")} == {"a": "/y", "b": "/z"}
    assert [r["record_id"] for r in state.rows("training.adapter_records")] == ["9"]
    assert state.segments == 1 and state.live  # this process still holds it
    ledger.close()
    assert [p.name.endswith(".jsonl.gz") for p in segment_paths(ledger.folder)] == [True]
    assert read_ledger(ledger.folder).tables == state.tables


def test_a_torn_plain_line_and_a_torn_compressed_member(tmp_path):
    plain = tmp_path / "a.jsonl"
    lines = [json.dumps({"t": "oracle.replies", "op": "put", "rows": [{"request_key": str(i)}], "at": i}) for i in range(50)]
    plain.write_text("\n".join(lines) + "\n" + lines[0][:20])
    segment = read_segment(plain)
    assert len(segment.events) == 50 and "unfinished line" in segment.torn
    damaged = tmp_path / "d.jsonl"  # a line damaged on disk: the lines after it still count
    damaged.write_text("\n".join([*lines[:10], "\x00garbage", *lines[10:]]) + "\n")
    assert len(read_segment(damaged).events) == 50
    assert read_segment(damaged).torn == "1 lines are not JSON (line 11 first) and are skipped"
    compressed = seal(plain)
    assert not plain.exists() and len(read_segment(compressed).events) == 50
    data = compressed.read_bytes()
    cut = tmp_path / "b.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    torn = read_segment(cut)
    assert 0 < len(torn.events) < 50 and "cut short" in torn.torn
    assert [e["rows"][0]["request_key"] for e in torn.events] == [str(i) for i in range(len(torn.events))]
    # Two members (a segment appended to after a seal would make one): both read.
    both = tmp_path / "c.jsonl.gz"
    both.write_bytes(gzip.compress(b"\n".join(x.encode() for x in lines[:10]) + b"\n")
                     + gzip.compress(b"\n".join(x.encode() for x in lines[10:]) + b"\n"))
    assert len(read_segment(both).events) == 50


def test_segments_rotate_and_a_seal_cut_short_keeps_one_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "ROTATE_BYTES", 2000)
    ledger = Ledger(tmp_path / "l")
    for i in range(100):
        ledger.reply({"request_key": f"k{i}", "reply_text": "x" * 50})
    ledger.close()
    paths = segment_paths(ledger.folder)
    assert len(paths) > 3 and all(p.name.endswith(".gz") for p in paths)
    assert len(read_ledger(ledger.folder).rows("oracle.replies")) == 100
    # A seal killed between its rename and its unlink leaves both: the plain one is skipped.
    leftover = paths[0].with_name(paths[0].name[: -len(".gz")])
    leftover.write_bytes(gzip.decompress(paths[0].read_bytes()))
    assert leftover not in segment_paths(ledger.folder)
    assert len(read_ledger(ledger.folder).rows("oracle.replies")) == 100


def test_a_process_whose_client_failed_leaves_its_segment_to_replay(tmp_path):
    ledger = Ledger(tmp_path / "l")
    ledger.client_started()
    ledger.reply({"request_key": "k"})
    ledger.client_finished(stored=False)
    ledger.close()
    [path] = segment_paths(ledger.folder)
    assert path.name.endswith(".jsonl")  # plain: the next oracle client stores it, then seals it


def test_a_killed_writer_leaves_every_line_it_wrote(tmp_path):
    folder = tmp_path / "l"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from reflection_assets.engines.store.ledger import Ledger\n"
        f"ledger = Ledger(Path({str(folder)!r}))\n"
        "for i in range(200):\n"
        "    ledger.reply({'request_key': str(i)})\n"
        "os._exit(0)  # no atexit: as after SIGKILL\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    [path] = segment_paths(folder)
    assert path.name.endswith(".jsonl") and not ledger_module.is_live(path)
    assert len(read_segment(path).events) == 200


def test_a_lost_store_is_not_remade_empty_beside_a_ledger(tmp_path):
    db = Database(tmp_path / "db.duckdb")
    with db.transaction() as con:
        con.execute("SELECT 1")
    db.ledger().put("registry.datasets", [{"name": "a", "source": "/x"}])
    db.ledger().close()  # as when the process that wrote it has ended
    (tmp_path / "db.duckdb").unlink()
    with pytest.raises(DamagedStore, match="missing.*reflection rebuild"):
        with db.connect():
            pass
    assert not (tmp_path / "db.duckdb").exists()


def test_a_forked_child_writes_its_own_segment_and_leaves_the_parents_alone(tmp_path):
    import os

    ledger = ledger_module.ledger_for(tmp_path / "db.duckdb")
    ledger.put("registry.datasets", [{"name": "parent", "source": "/p"}])
    pid = os.fork()
    if pid == 0:  # the child: writes, then exits as a process does (atexit seals its own)
        ledger.put("registry.datasets", [{"name": "child", "source": "/c"}])
        ledger_module._close_all()
        os._exit(0)
    os.waitpid(pid, 0)
    ledger.put("registry.datasets", [{"name": "parent2", "source": "/p2"}])
    paths = segment_paths(ledger.folder)
    assert len(paths) == 2 and sum(p.name.endswith(".gz") for p in paths) == 1  # the child's, sealed
    assert {r["name"] for r in read_ledger(ledger.folder).rows("registry.datasets")} == {"parent", "child", "parent2"}
