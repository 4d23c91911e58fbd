/** What comes from the assistant itself: `config show`, the chat command line, the context view. */

import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { chatCommand, configShowCommand, parseConfigShow, renderContext } from '../src/info';
import { COMMANDS, menuEntries } from '../src/menu';
import { manifest } from './fakes';

const SERVER = { command: '/ws/.venv/bin/assistant', args: ['lsp', '--threads', '2'] };

describe('assistant config show', () => {
  it('reads the model, backend and log file from the JSON the CLI prints', () => {
    const stdout = JSON.stringify({
      config_file: '/home/dev/.config/assistant/config.toml',
      exists: false,
      log_file: '/home/dev/.local/state/assistant/assistant.log',
      settings: { model: 'qwen2.5-coder-0.5b', backend: 'auto', threads: null },
    });
    assert.deepEqual(parseConfigShow(stdout), {
      model: 'qwen2.5-coder-0.5b',
      backend: 'auto',
      logFile: '/home/dev/.local/state/assistant/assistant.log',
    });
    assert.deepEqual(configShowCommand(SERVER), {
      command: '/ws/.venv/bin/assistant',
      args: ['config', 'show', '--json'],
    });
  });

  it('gives nulls, not an exception, for output it cannot read', () => {
    assert.deepEqual(parseConfigShow('assistant: error: bad setting'), { model: null, backend: null, logFile: null });
    assert.deepEqual(parseConfigShow('[1, 2]'), { model: null, backend: null, logFile: null });
  });
});

describe('chatCommand', () => {
  it('runs the TUI from the same executable with the model and backend the editor uses', () => {
    assert.deepEqual(chatCommand(SERVER, { model: 'smollm2-135m', backend: 'llama' }), {
      command: '/ws/.venv/bin/assistant',
      args: ['tui', '--model', 'smollm2-135m', '--backend', 'llama'],
    });
    assert.deepEqual(chatCommand(SERVER, { model: '', backend: '' }).args, ['tui']);
  });
});

describe('renderContext', () => {
  const result = {
    crossFile: true,
    maxTokens: 512,
    kept: [
      { path: '/ws/shapes/box.py', score: 3.5, reason: 'imported by name', text: 'class Box:\n    ```odd```\n\n' },
    ],
    dropped: [{ path: '/ws/shapes/util.py', score: 0.25, reason: 'same package', text: 'def f(): ...' }],
  };

  it('lists kept snippets in code fences and dropped ones by path, relative to the workspace', () => {
    const md = renderContext(result, { file: '/ws/shapes/report.py', line: 5, character: 27 }, '/ws');
    assert.equal(
      md,
      [
        '# Context for shapes/report.py:6:28',
        '',
        '## 1 snippets in the prompt (budget 512 tokens)',
        '',
        '### shapes/box.py',
        '',
        'score 3.50: imported by name',
        '',
        '````python',
        'class Box:',
        '    ```odd```',
        '````',
        '',
        '## 1 snippets dropped for the budget',
        '',
        '- shapes/util.py (score 0.25: same package)',
        '',
      ].join('\n'),
    );
  });

  it('says so when cross-file context is off or the server has no document', () => {
    const off = renderContext({ crossFile: false, kept: [], dropped: [] }, { file: '/x/a.py', line: 0, character: 0 }, undefined);
    assert.match(off, /Cross-file context is off/);
    assert.match(off, /^# Context for \/x\/a\.py:1:1/);
    assert.match(renderContext(null, { file: '/x/a.py', line: 0, character: 0 }, undefined), /no context here/);
  });
});

describe('the status-bar menu', () => {
  it('offers to turn completions off when on, and on when off', () => {
    const on = menuEntries({ enabled: true, running: true, logFile: null });
    const off = menuEntries({ enabled: false, running: true, logFile: null });
    assert.match(on[0]!.label, /Turn completions off/);
    assert.match(off[0]!.label, /Turn completions on/);
    assert.equal(on[0]!.command, COMMANDS.toggle);
  });

  it('offers the context view only while the server runs, and names the log file', () => {
    const stopped = menuEntries({ enabled: true, running: false, logFile: '/l/assistant.log' });
    assert.equal(stopped.some((e) => e.command === COMMANDS.showContext), false);
    assert.equal(stopped.find((e) => e.command === COMMANDS.openLog)?.description, '/l/assistant.log');
    assert.deepEqual(
      menuEntries({ enabled: true, running: true, logFile: null }).map((e) => e.command),
      [COMMANDS.toggle, COMMANDS.showContext, COMMANDS.openLog, COMMANDS.restart, COMMANDS.chat],
    );
  });

  it('runs only commands package.json contributes, none named like a server command', () => {
    const contributed = new Set(manifest().contributes.commands.map((c) => c.command));
    // vscode-languageclient registers the server's executeCommand names as VS Code commands itself.
    const serverCommands = ['assistant.showContext', 'assistant.stats', 'assistant.documentState'];
    for (const command of Object.values(COMMANDS)) {
      assert.ok(contributed.has(command), `${command} is not in package.json`);
      assert.equal(serverCommands.includes(command), false, `${command} collides with a server command`);
    }
  });
});
