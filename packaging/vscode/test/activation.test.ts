/**
 * `activate()` with a fake `vscode` module: the wiring in src/extension.ts, up to the point
 * where a real VS Code would be needed to run the language client. The server path points at a
 * file that does not exist, so activation takes the path a user without `assistant` meets.
 */

import * as assert from 'node:assert/strict';
import * as Module from 'node:module';
import { after, before, describe, it } from 'node:test';

import { manifest, settingsReader } from './fakes';

type Listener = (e: { affectsConfiguration(section: string): boolean }) => unknown;

function fakeVscode(user: Record<string, unknown>) {
  const record = {
    commands: new Map<string, (...args: unknown[]) => unknown>(),
    executed: [] as string[],
    errors: [] as string[],
    picks: [] as { label: string; command: string }[][],
    configListeners: [] as Listener[],
    output: [] as string[],
    outputShown: 0,
  };
  const item = { text: '', tooltip: undefined as unknown, command: '', name: '', show() {}, dispose() {} };
  class EventEmitter {
    event = () => ({ dispose() {} });
    fire() {}
    dispose() {}
  }
  const vscode = {
    StatusBarAlignment: { Left: 1, Right: 2 },
    ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
    ViewColumn: { Beside: -2 },
    EventEmitter,
    Uri: { parse: (s: string) => ({ scheme: s.split(':')[0], toString: () => s }) },
    window: {
      createOutputChannel: () => ({
        appendLine: (m: string) => record.output.push(m),
        show: () => (record.outputShown += 1),
        dispose() {},
      }),
      createStatusBarItem: () => item,
      showErrorMessage: (m: string) => {
        record.errors.push(m);
        return Promise.resolve(undefined);
      },
      showQuickPick: (items: { label: string; command: string }[]) => {
        record.picks.push(items);
        return Promise.resolve(items.find((i) => i.command === 'assistant.openLog'));
      },
    },
    workspace: {
      workspaceFolders: [{ uri: { fsPath: '/nonexistent-ws' } }],
      getConfiguration: () => settingsReader(user),
      registerTextDocumentContentProvider: () => ({ dispose() {} }),
      onDidChangeConfiguration: (l: Listener) => {
        record.configListeners.push(l);
        return { dispose() {} };
      },
    },
    commands: {
      registerCommand: (id: string, fn: (...args: unknown[]) => unknown) => {
        record.commands.set(id, fn);
        return { dispose: () => record.commands.delete(id) };
      },
      executeCommand: async (id: string, ...args: unknown[]) => {
        record.executed.push(id);
        const own = record.commands.get(id);
        return own === undefined ? undefined : await own(...args);
      },
    },
  };
  // Anything vscode-languageclient touches while loading (base classes such as CompletionItem).
  const proxy = new Proxy<Record<string, unknown>>(vscode, {
    get: (target, key: string) => (key in target ? target[key] : class {}),
  });
  return { proxy, record, item, vscode };
}

describe('activate with a fake vscode', () => {
  const user: Record<string, unknown> = { 'server.path': '/nonexistent/bin/assistant' };
  const fake = fakeVscode(user);
  const loader = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
  const load = loader._load;
  const context = { subscriptions: [] as { dispose(): unknown }[] };
  let ext: { activate(c: unknown): Promise<void>; deactivate(): Promise<void> };

  before(async () => {
    loader._load = function (request: string, ...rest: unknown[]) {
      return request === 'vscode' ? fake.proxy : load.call(this, request, ...rest);
    };
    ext = await import('../src/extension');
    await ext.activate(context);
  });

  after(async () => {
    await ext.deactivate();
    for (const d of context.subscriptions) {
      d.dispose();
    }
    loader._load = load;
  });

  it('registers exactly the commands package.json contributes', () => {
    const contributed = manifest().contributes.commands.map((c) => c.command).sort();
    assert.deepEqual([...fake.record.commands.keys()].sort(), contributed);
  });

  it('tells the user the server cannot be found, in the status bar and in a message', () => {
    assert.equal(fake.item.text, '$(error) assistant');
    assert.equal(fake.item.command, 'assistant.menu');
    assert.match(String(fake.item.tooltip), /server failed: .*\/nonexistent\/bin\/assistant is not an executable file/);
    assert.equal(fake.record.errors.length, 1);
    assert.match(fake.record.errors[0] ?? '', /^assistant: assistant\.server\.path/);
  });

  it('applies a settings change to the menu without a restart', async () => {
    user['completion.enabled'] = false;
    for (const l of fake.record.configListeners) {
      await l({ affectsConfiguration: (s) => s === 'assistant' || s === 'assistant.completion.enabled' });
    }
    await fake.vscode.commands.executeCommand('assistant.menu');
    const labels = (fake.record.picks.at(-1) ?? []).map((p) => p.label);
    assert.match(labels[0] ?? '', /Turn completions on/);
    // the fake picks "Open the log": with no log file known, the server output is shown
    assert.deepEqual(fake.record.executed, ['assistant.menu', 'assistant.openLog']);
    assert.equal(fake.record.outputShown, 1);
  });
});
