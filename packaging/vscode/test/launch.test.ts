/** Server command resolution: PATH lookup, configured paths, arguments, the client's Executable. */

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';

import { clientOptions, serverOptions } from '../src/client';
import { createMiddleware } from '../src/middleware';
import { nodeHost, resolveServer, ServerNotFound, which } from '../src/launch';
import { configurationPayload } from '../src/settings';
import { fakeHost, settingsReader } from './fakes';

const LSP = { path: 'assistant', args: ['lsp'] };

describe('resolveServer on PATH', () => {
  it('takes the first executable called assistant along PATH', () => {
    const host = fakeHost({
      env: { PATH: '/usr/local/bin:/home/dev/.local/bin:/usr/bin' },
      executables: ['/home/dev/.local/bin/assistant', '/usr/bin/assistant'],
    });
    assert.deepEqual(resolveServer(LSP, host, '/ws'), { command: '/home/dev/.local/bin/assistant', args: ['lsp'] });
    assert.deepEqual(host.probed, ['/usr/local/bin/assistant', '/home/dev/.local/bin/assistant']);
  });

  it('says PATH and the setting to change when assistant is not found', () => {
    const host = fakeHost({ env: { PATH: '/usr/bin' } });
    assert.throws(() => resolveServer(LSP, host, '/ws'), (e: unknown) => {
      assert.ok(e instanceof ServerNotFound);
      assert.match(e.message, /'assistant' is not on PATH/);
      assert.match(e.message, /assistant\.server\.path/);
      return true;
    });
  });

  it('finds assistant.exe through PATHEXT and a `Path` variable on Windows', () => {
    const host = fakeHost({
      platform: 'win32',
      env: { Path: 'C:\\Windows;C:\\venv\\Scripts', PATHEXT: '.COM;.EXE' },
      executables: ['C:\\venv\\Scripts\\assistant.EXE'],
    });
    assert.equal(which('assistant', host), 'C:\\venv\\Scripts\\assistant.EXE');
  });

  it('copies the configured arguments rather than sharing the settings array', () => {
    const host = fakeHost({ env: { PATH: '/bin' }, executables: ['/bin/assistant'] });
    const launch = { path: 'assistant', args: ['lsp', '--model', 'smollm2-135m'] };
    const resolved = resolveServer(launch, host, undefined);
    assert.deepEqual(resolved.args, ['lsp', '--model', 'smollm2-135m']);
    assert.notEqual(resolved.args, launch.args);
  });
});

describe('resolveServer with a configured path', () => {
  it('uses an absolute path as it is', () => {
    const host = fakeHost({ env: { PATH: '' }, executables: ['/opt/assistant/bin/assistant'] });
    assert.equal(resolveServer({ path: '/opt/assistant/bin/assistant', args: ['lsp'] }, host, '/ws').command,
      '/opt/assistant/bin/assistant');
  });

  it('expands ~ and ${workspaceFolder}', () => {
    const host = fakeHost({ executables: ['/home/dev/venv/bin/assistant', '/ws/.venv/bin/assistant'] });
    assert.equal(resolveServer({ path: '~/venv/bin/assistant', args: [] }, host, '/ws').command,
      '/home/dev/venv/bin/assistant');
    assert.equal(resolveServer({ path: '${workspaceFolder}/.venv/bin/assistant', args: [] }, host, '/ws').command,
      '/ws/.venv/bin/assistant');
  });

  it('takes a relative path from the workspace root', () => {
    const host = fakeHost({ executables: ['/ws/.venv/bin/assistant'] });
    assert.equal(resolveServer({ path: '.venv/bin/assistant', args: [] }, host, '/ws').command,
      '/ws/.venv/bin/assistant');
  });

  it('refuses a relative path or ${workspaceFolder} when no folder is open', () => {
    const host = fakeHost({ executables: ['/ws/.venv/bin/assistant'] });
    assert.throws(() => resolveServer({ path: '.venv/bin/assistant', args: [] }, host, undefined), /no folder is open/);
    assert.throws(() => resolveServer({ path: '${workspaceFolder}/a', args: [] }, host, undefined), /no folder is open/);
  });

  it('names the file when the configured path is not executable', () => {
    const host = fakeHost({});
    assert.throws(() => resolveServer({ path: '/opt/nothing/assistant', args: [] }, host, '/ws'),
      /\/opt\/nothing\/assistant is not an executable file/);
  });
});

describe('nodeHost', { skip: process.platform === 'win32' ? 'POSIX permissions' : false }, () => {
  it('finds a real executable on PATH and skips a file without the execute bit', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'assistant-path-'));
    try {
      const first = path.join(dir, 'a');
      const second = path.join(dir, 'b');
      fs.mkdirSync(first);
      fs.mkdirSync(second);
      fs.writeFileSync(path.join(first, 'assistant'), '#!/bin/sh\n', { mode: 0o644 });
      fs.writeFileSync(path.join(second, 'assistant'), '#!/bin/sh\n', { mode: 0o755 });
      const host = { ...nodeHost(), env: { PATH: `${first}${path.delimiter}${second}` } };
      assert.deepEqual(resolveServer(LSP, host, undefined), { command: path.join(second, 'assistant'), args: ['lsp'] });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the language client options', () => {
  it('starts the executable on stdio without the --stdio flag assistant lsp would refuse', () => {
    const exe = serverOptions({ command: '/bin/assistant', args: ['lsp'] }, '/ws');
    assert.deepEqual(exe, { command: '/bin/assistant', args: ['lsp'], options: { cwd: '/ws' } });
    assert.equal('transport' in exe, false);
  });

  it('reads the settings again at every start for initializationOptions', () => {
    let model = 'first.gguf';
    const options = clientOptions({
      settings: () => configurationPayload(settingsReader({ model })),
      middleware: createMiddleware({ enabled: () => true, answered: () => undefined, progress: () => undefined }),
    });
    const init = options.initializationOptions as () => { assistant: { model: string } };
    assert.equal(init().assistant.model, 'first.gguf');
    model = 'second.gguf';
    assert.equal(init().assistant.model, 'second.gguf');
    assert.equal(options.synchronize, undefined);
  });
});
