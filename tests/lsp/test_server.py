"""The real language server over stdio (pytest-lsp), with the bundled coder model."""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

FIXTURE = Path(__file__).parents[1] / "fixtures" / "workspaces" / "shapes"
REPORT_LINE = 5
REPORT_COL = len('    print("diagonal:", box.')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws") / "shapes"
    shutil.copytree(FIXTURE, root)
    return root


@pytest.fixture(scope="module")
def server_env(cli_env: dict[str, str], qwen_path: Path) -> dict[str, str]:
    return cli_env


@pytest_lsp.fixture(
    scope="module",
    config=ClientServerConfig(server_command=[sys.executable, "-m", "assistant.cli", "lsp", "--threads", "2"]),
)
async def client(lsp_client: LanguageClient, workspace: Path, server_env: dict[str, str]):
    lsp_client.initialize_result = await lsp_client.initialize_session(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            root_uri=workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="shapes")],
            initialization_options={"assistant": {"completion": {"maxTokens": 24}}},
        )
    )
    yield
    await lsp_client.shutdown_session()


def _open(client: LanguageClient, path: Path, text: str | None = None, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="python", version=version,
                                             text=path.read_text() if text is None else text)))
    return uri


def _inline(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


def _send_inline(client: LanguageClient, params: types.InlineCompletionParams, msg_id: str | None = None):
    """Send the request now (the client's *_async helpers only send once awaited)."""
    return asyncio.wrap_future(client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params,
                                                            msg_id=msg_id))


async def _command(client: LanguageClient, name: str, *args):
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command=name, arguments=list(args)))


async def _wait_indexed(client: LanguageClient) -> dict:
    for _ in range(600):
        stats = await _command(client, "assistant.stats")
        if stats["indexed"]:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError("indexing never finished")


@pytest.mark.asyncio(loop_scope="module")
async def test_capabilities_and_indexing_progress(client: LanguageClient) -> None:
    """The server offers inline and classic completion and reports workspace indexing through $/progress."""
    caps = client.initialize_result.capabilities
    assert caps.inline_completion_provider and caps.completion_provider
    stats = await _wait_indexed(client)
    assert stats["files"] >= 3
    reports = [r for rs in client.progress_reports.values() for r in rs]
    assert any(isinstance(r, types.WorkDoneProgressBegin) for r in reports)
    assert any(isinstance(r, types.WorkDoneProgressEnd) for r in reports)


@pytest.mark.asyncio(loop_scope="module")
async def test_inline_completion_uses_a_definition_from_another_file(client: LanguageClient, workspace: Path) -> None:
    """The completion calls a method that is defined only in another file, found through the index."""
    await _wait_indexed(client)
    uri = _open(client, workspace / "report.py")
    ctx = await _command(client, "assistant.showContext", uri, {"line": REPORT_LINE, "character": REPORT_COL})
    assert any("diagonal_length_in_meters" in s["text"] for s in ctx["kept"]), ctx
    result = await client.text_document_inline_completion_async(_inline(uri, REPORT_LINE, REPORT_COL))
    assert result is not None and result.items
    assert result.items[0].insert_text.startswith("diagonal_length_in_meters()")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_file_changed_on_disk_is_seen_by_the_next_completion(client: LanguageClient, workspace: Path) -> None:
    """A definition added to a file outside the editor shows up in the next request's context."""
    await _wait_indexed(client)
    (workspace / "shapes" / "units.py").write_text(
        "def millimetres_to_furlongs(value_mm: float) -> float:\n    return value_mm / 201168.0\n")
    uri = _open(client, workspace / "convert.py", "from shapes.units import millimetres_to_furlongs\n\n"
                "def show(x):\n    return millimetres_to_furlongs(x)\n")
    for _ in range(200):
        ctx = await _command(client, "assistant.showContext", uri, {"line": 3, "character": 11})
        if any("201168.0" in s["text"] for s in ctx["kept"]):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the new file never reached the context: {ctx}")


@pytest.mark.asyncio(loop_scope="module")
async def test_classic_completion_item(client: LanguageClient, workspace: Path) -> None:
    """Clients without inline support get the same text as a completion item edit at the cursor."""
    uri = _open(client, workspace / "report.py")
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=REPORT_LINE, character=REPORT_COL)))
    assert result is not None and len(result.items) == 1
    item = result.items[0]
    assert item.text_edit.new_text.startswith("diagonal_length_in_meters()")
    assert item.text_edit.range.start == types.Position(line=REPORT_LINE, character=REPORT_COL)


@pytest.mark.asyncio(loop_scope="module")
async def test_fifty_requests_forty_nine_cancelled(client: LanguageClient, workspace: Path) -> None:
    """Of 50 queued requests with 49 cancelled, each is answered once and only the last runs the model."""
    # a buffer of its own, so no earlier suggestion for it can answer from the typed-through cache
    uri = _open(client, workspace / "burst.py", (workspace / "report.py").read_text())
    before = await _command(client, "assistant.stats")
    ids = [f"burst-{i}" for i in range(50)]
    futures = [_send_inline(client, _inline(uri, REPORT_LINE, REPORT_COL), msg_id) for msg_id in ids]
    for msg_id in ids[:49]:
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert len(results) == 50
    last = results[-1]
    assert not isinstance(last, BaseException) and last is not None and last.items
    for r in results[:49]:
        assert r is None or isinstance(r, BaseException), r
    after = await _command(client, "assistant.stats")
    requested = after["requested"] - before["requested"]
    assert requested <= 50
    assert after["finished"] - before["finished"] == 1
    # the cancelled ones were dropped from the queue or stopped mid-way: at most one other started
    assert after["started"] - before["started"] <= 2


@pytest.mark.asyncio(loop_scope="module")
async def test_a_stale_answer_is_never_returned(client: LanguageClient, workspace: Path) -> None:
    """An answer computed for a version the document has left is dropped (None)."""
    path = workspace / "stale.py"
    text = "def fibonacci(n):\n    "
    uri = _open(client, path, text)
    pending = _send_inline(client, _inline(uri, 1, 4))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=1, character=4), end=types.Position(line=1, character=4)),
            text="if")]))
    assert await pending is None


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_setting_is_shown_and_default_applies(client: LanguageClient, workspace: Path) -> None:
    """A bad settings value reaches the user through window/showMessage and does not stop completions."""
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"assistant": {"completion": {"multiline": "sometimes", "maxTokens": 24}}}))
    for _ in range(100):
        if any("completion.multiline" in m.message for m in client.messages):
            break
        await asyncio.sleep(0.02)
    assert any("'assistant.completion.multiline' = 'sometimes'" in m.message for m in client.messages)
    uri = _open(client, workspace / "report.py")
    result = await client.text_document_inline_completion_async(_inline(uri, REPORT_LINE, REPORT_COL))
    assert result is not None and result.items


@pytest.mark.asyncio(loop_scope="module")
async def test_malformed_frames_keep_the_server_up(client: LanguageClient) -> None:
    """Garbage on the wire (bad JSON, bad headers) does not stop the server answering."""
    stdin = client._server.stdin
    stdin.write(b"Content-Length: 9\r\n\r\n{not json")
    stdin.write(b'Content-Length: 24\r\n\r\n{"jsonrpc": "2.0", "id":')
    stdin.write(b"Content-Length: 2\r\n\r\n[]")
    await stdin.drain()
    stats = await asyncio.wait_for(_command(client, "assistant.stats"), 30)
    assert "requested" in stats


@pytest.mark.asyncio(loop_scope="module")
async def test_ten_megabyte_file(client: LanguageClient, workspace: Path) -> None:
    """A 10 MB buffer opens and still gets a completion at its end."""
    line = "values.append(compute_total(items, tax_rate=0.2))  # keep a running list\n"
    text = "values = []\n" + line * (10_000_000 // len(line)) + "values."
    uri = _open(client, workspace / "big.py", text)
    last = text.count("\n")
    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(_inline(uri, last, len("values."))), 120)
    assert result is not None and result.items[0].insert_text.startswith("append(")


PIECES = ["a", "b", " ", "\n", "\r\n", "é", "🙂", "世", "\t"]


def _position(text: str, offset: int) -> types.Position:
    """An LSP position (UTF-16 columns; lines end at \\n) of a code point offset."""
    before = text[:offset]
    line = before.count("\n")
    col_text = before[before.rfind("\n") + 1 :]
    return types.Position(line=line, character=len(col_text.encode("utf-16-le")) // 2)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_incremental_sync_matches_the_client(client: LanguageClient, workspace: Path, seed: int) -> None:
    """After each random incremental edit (emoji, CRLF, CJK, tabs), the server's text equals the client's."""
    rng = random.Random(seed)
    text = "start\r\n🙂 x\n"
    uri = _open(client, workspace / f"sync{seed}.py", text)
    for version in range(2, 42):
        # cut points never split a CRLF pair: editors don't, and LSP lines end at either char
        cuts = [i for i in range(len(text) + 1) if not (0 < i < len(text) and text[i - 1 : i + 1] == "\r\n")]
        a = rng.choice(cuts)
        b = rng.choice([c for c in cuts if c >= a and c - a < 8])
        new = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 5)))
        change = types.TextDocumentContentChangePartial(
            range=types.Range(start=_position(text, a), end=_position(text, b)), text=new)
        text = text[:a] + new + text[b:]
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=[change]))
        got = await _command(client, "assistant.documentState", uri)
        assert got == {"version": version, "text": text}
