/**
 * The extension's messages against the real `assistant lsp`, over stdio as VS Code runs it.
 *
 * VS Code cannot run here, so this speaks the protocol with vscode-languageserver-protocol (the
 * library under vscode-languageclient) and sends exactly what the extension builds: the
 * initializationOptions and didChangeConfiguration payloads from `configurationPayload`, the
 * stats and context commands, an inline completion request; progress and stats go through
 * `StatusController`. The server runs the bundled default model with default settings (a user's
 * config.toml and ASSISTANT_* variables are kept out). Skipped when no `assistant` executable is
 * found (set ASSISTANT_BIN, or install the project into the repository's .venv) or when
 * SKIP_SERVER_TESTS=1.
 */

import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';

import {
  createProtocolConnection,
  StreamMessageReader,
  StreamMessageWriter,
  type InitializeResult,
  type ProtocolConnection,
} from 'vscode-languageserver-protocol/node';

import { renderContext, type ContextResult } from '../src/info';
import { nodeHost, resolveServer, type ResolvedCommand } from '../src/launch';
import { configurationPayload } from '../src/settings';
import { StatusController, StatusModel, type ProgressValue, type ServerStats } from '../src/status';
import { settingsReader } from './fakes';

const REPO = path.resolve(__dirname, '..', '..', '..', '..');
const FIXTURE = path.join(REPO, 'tests', 'fixtures', 'workspaces', 'shapes');

function findServer(): ResolvedCommand | undefined {
  const configured = process.env.ASSISTANT_BIN ?? path.join(REPO, '.venv', 'bin', 'assistant');
  for (const candidate of [configured, 'assistant']) {
    try {
      return resolveServer({ path: candidate, args: ['lsp', '--threads', '2'] }, nodeHost(), REPO);
    } catch {
      // try the next one
    }
  }
  return undefined;
}

const server = process.env.SKIP_SERVER_TESTS === '1' ? undefined : findServer();
const skip =
  process.env.SKIP_SERVER_TESTS === '1'
    ? 'SKIP_SERVER_TESTS=1'
    : server === undefined
      ? 'no assistant executable (set ASSISTANT_BIN)'
      : false;

describe('against assistant lsp', { skip, timeout: 300_000 }, () => {
  let proc: ChildProcess;
  let conn: ProtocolConnection;
  let init: InitializeResult;
  let root: string;
  const messages: string[] = [];
  const progress: ProgressValue[] = [];
  const model = new StatusModel();
  const view = { text: '', tooltip: undefined as string | object | undefined };
  let controller: StatusController;

  const command = <R>(name: string, ...args: unknown[]): Promise<R> =>
    conn.sendRequest<R>('workspace/executeCommand', { command: name, arguments: args });

  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'assistant-vscode-'));
    fs.cpSync(FIXTURE, root, { recursive: true });
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ASSISTANT_')));
    env.ASSISTANT_CONFIG = path.join(root, '.no-config.toml');
    proc = spawn(server!.command, server!.args, { cwd: root, env, stdio: ['pipe', 'pipe', 'pipe'] });
    proc.stderr!.on('data', () => undefined);
    conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    conn.onNotification('window/showMessage', (p: { message: string }) => messages.push(p.message));
    conn.onRequest('window/workDoneProgress/create', () => null);
    controller = new StatusController(model, view, {
      sendRequest: <R>(method: string, param: unknown) => conn.sendRequest<R>(method, param),
    });
    conn.onNotification('$/progress', (p: { token: string; value: ProgressValue }) => {
      progress.push(p.value);
      controller.onProgress(p.value);
    });
    conn.listen();
    init = await conn.sendRequest<InitializeResult>('initialize', {
      processId: process.pid,
      rootUri: pathToFileURL(root).toString(),
      workspaceFolders: [{ uri: pathToFileURL(root).toString(), name: 'shapes' }],
      capabilities: {
        window: { workDoneProgress: true },
        textDocument: { inlineCompletion: { dynamicRegistration: true } },
        workspace: { configuration: false, workspaceFolders: true },
      },
      initializationOptions: configurationPayload(settingsReader({ 'completion.maxTokens': 24 })),
    });
    await conn.sendNotification('initialized', {});
    model.setServer('running');
  });

  after(async () => {
    try {
      await conn.sendRequest('shutdown');
      await conn.sendNotification('exit');
    } finally {
      conn.dispose();
      proc.kill();
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  async function waitIndexed(): Promise<ServerStats> {
    for (let i = 0; i < 600; i++) {
      const stats = await command<ServerStats>('assistant.stats');
      if (stats.indexed) {
        return stats;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('indexing never finished');
  }

  function open(file: string): string {
    const uri = pathToFileURL(path.join(root, file)).toString();
    void conn.sendNotification('textDocument/didOpen', {
      textDocument: { uri, languageId: 'python', version: 1, text: fs.readFileSync(path.join(root, file), 'utf8') },
    });
    return uri;
  }

  it('offers inline completion and the two commands the extension calls', () => {
    const caps = init.capabilities;
    assert.ok(caps.inlineCompletionProvider, 'no inlineCompletionProvider: VS Code would show no ghost text');
    const commands = caps.executeCommandProvider?.commands ?? [];
    assert.ok(commands.includes('assistant.stats') && commands.includes('assistant.showContext'), String(commands));
  });

  it('accepts the extension settings without a single complaint', async () => {
    await waitIndexed();
    await conn.sendNotification('workspace/didChangeConfiguration', {
      settings: configurationPayload(settingsReader({ model: '', 'completion.multiline': 'never', 'context.maxTokens': 512 })),
    });
    await command('assistant.stats'); // a round trip: the server has handled the notification
    assert.deepEqual(messages, []);
  });

  it('reports a bad value by its VS Code setting name, so silence above means acceptance', async () => {
    await conn.sendNotification('workspace/didChangeConfiguration', {
      settings: configurationPayload(settingsReader({ 'completion.multiline': 'sometimes' })),
    });
    await command('assistant.stats');
    assert.equal(messages.length, 1);
    assert.match(messages[0] ?? '', /assistant\.completion\.multiline/);
    messages.length = 0;
    await conn.sendNotification('workspace/didChangeConfiguration', {
      settings: configurationPayload(settingsReader({ 'completion.maxTokens': 24 })),
    });
  });

  it('drives the status bar from real $/progress and assistant.stats', async () => {
    const stats = await waitIndexed();
    assert.ok((stats.files ?? 0) >= 3, JSON.stringify(stats));
    assert.ok(progress.some((p) => p.kind === 'begin') && progress.some((p) => p.kind === 'end'), JSON.stringify(progress));
    await controller.refresh();
    assert.equal(model.indexing, null);
    assert.equal(typeof view.tooltip, 'string');
    assert.match(view.tooltip as string, new RegExp(`${stats.files} files indexed`));
  });

  it('answers nothing while completions are off', async () => {
    const uri = open('report.py');
    await conn.sendNotification('workspace/didChangeConfiguration', {
      settings: configurationPayload(settingsReader({ 'completion.enabled': false, 'completion.maxTokens': 24 })),
    });
    const line = fs.readFileSync(path.join(root, 'report.py'), 'utf8').split('\n')[5] ?? '';
    const result = await conn.sendRequest('textDocument/inlineCompletion', {
      textDocument: { uri },
      position: { line: 5, character: line.indexOf('box.') + 4 },
      context: { triggerKind: 2 },
    });
    assert.equal(result, null);
    await conn.sendNotification('workspace/didChangeConfiguration', {
      settings: configurationPayload(settingsReader({ 'completion.maxTokens': 24 })),
    });
  });

  it('shows the context for the cursor and completes there as ghost text', async () => {
    await waitIndexed();
    const uri = open('report.py');
    const line = fs.readFileSync(path.join(root, 'report.py'), 'utf8').split('\n')[5] ?? '';
    const position = { line: 5, character: line.indexOf('box.') + 4 };
    const ctx = await command<ContextResult>('assistant.showContext', uri, position);
    const md = renderContext(ctx, { file: path.join(root, 'report.py'), ...position }, root);
    assert.match(md, /diagonal_length_in_meters/);
    assert.match(md, /^# Context for report\.py:6:/);
    const result = await conn.sendRequest<{ items: { insertText: string; range?: unknown }[] } | null>(
      'textDocument/inlineCompletion',
      { textDocument: { uri }, position, context: { triggerKind: 2 } },
    );
    assert.ok(result !== null && result.items.length > 0, 'no completion');
    assert.match(result.items[0]?.insertText ?? '', /^diagonal_length_in_meters\(\)/);
    await controller.refresh();
    assert.match(view.text, / · \d+ ms$/);
    assert.deepEqual(messages, []);
  });
});
