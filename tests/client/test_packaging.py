"""The Python SDK as its own distribution: ``pip install ./clients/python`` in a fresh
virtual environment pulls only websockets, and the SDK works against a real server.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import venv
from pathlib import Path

import pytest

from tests.client.conftest import create_conversation, history
from tests.support.server import ParleyServer

REPO = Path(__file__).resolve().parent.parent.parent

SCRIPT = """
import asyncio, sys
from parley.client import ChatClient, LocalErrorCode

async def main(url: str, token: str, cid: str) -> None:
    async with ChatClient(url, token=token) as client:
        record = await client.send_message(cid, "from a fresh venv")
        print(record["status"], record["id"], LocalErrorCode.BAD_FRAME)

asyncio.run(main(*sys.argv[1:]))
"""


async def run(*args: str, timeout: float = 300) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode()
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_sdk_installs_alone_and_talks_to_a_server(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    await asyncio.to_thread(venv.create, env, with_pip=True)
    python = str(env / "bin" / "python")
    # From a copy, as a fresh checkout is: pip builds in the source tree, and a build/ left
    # there by an earlier install must not leak into the wheel.
    source = tmp_path / "parley-client"
    shutil.copytree(REPO / "clients" / "python", source, ignore=shutil.ignore_patterns("build"))
    await run(python, "-m", "pip", "install", "-q", str(source))
    listed = await run(python, "-m", "pip", "list", "--format=freeze")
    names = {line.split("==")[0].lower() for line in listed.split() if "==" in line}
    assert names - {"pip", "setuptools", "wheel"} == {"parley-client", "websockets"}, listed
    # Only the SDK: none of the server's modules or dependencies came along.
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('parley.protocol', 'msgspec', 'aiohttp') if u.find_spec(m)])"
    )
    assert (await run(python, "-c", probe)).strip() == "[]"

    with ParleyServer(tmp_path / "srv") as srv:
        conv = await create_conversation(srv, "alice", ["alice", "bob"])
        script = tmp_path / "hello.py"
        script.write_text(SCRIPT, encoding="utf-8")
        out = await run(python, str(script), srv.ws_url(), srv.token("alice"), str(conv["id"]))
        status, mid, local = out.split()
        assert status == "sent" and local == "BAD_FRAME"
        stored = await history(srv, "bob", str(conv["id"]))
        assert [(m["id"], m["content"]) for m in stored] == [(mid, "from a fresh venv")]
    assert sys.prefix != str(env)
