/** Status-bar text from settings, `$/progress` and `assistant.stats`, through a fake client. */

import * as assert from 'node:assert/strict';
import { describe, it, mock } from 'node:test';

import { shortModel, StatusController, StatusModel, type ServerStats } from '../src/status';
import { FakeClient } from './fakes';

function running(settings = { model: '', backend: '', enabled: true }): StatusModel {
  const model = new StatusModel();
  model.setSettings(settings);
  model.defaultModel = 'qwen2.5-coder-0.5b';
  model.defaultBackend = 'auto';
  model.setServer('running');
  return model;
}

const STATS: ServerStats = {
  requested: 5, started: 4, finished: 3, cancelled: 1, failed: 0, last_latency_ms: 212.4, indexed: true, files: 17,
};

describe('StatusModel', () => {
  it('shows the assistant starting before the server runs', () => {
    assert.equal(new StatusModel().text(), '$(loading~spin) assistant');
  });

  it('shows model, backend and the last latency once stats arrive', () => {
    const model = running();
    model.applyStats(STATS);
    assert.equal(model.text(), '$(hubot) qwen2.5-coder-0.5b · auto · 212 ms');
    assert.match(model.tooltip(), /17 files indexed/);
    assert.match(model.tooltip(), /3 answered, 1 cancelled, 0 failed of 5 asked/);
  });

  it('prefers the VS Code settings over the assistant settings, a .gguf path by its name', () => {
    const model = running({ model: '/models/deepseek-coder-1.3b.Q4_K_M.gguf', backend: 'llama', enabled: true });
    assert.equal(model.text(), '$(hubot) deepseek-coder-1.3b.Q4_K_M · llama');
    assert.equal(shortModel('C:\\models\\x.GGUF'), 'x');
  });

  it('follows indexing progress from begin through report to end', () => {
    const model = running();
    model.applyStats(STATS);
    model.applyProgress({ kind: 'begin', title: 'assistant: indexing', percentage: 0 });
    assert.equal(model.text(), '$(sync~spin) qwen2.5-coder-0.5b · auto · indexing 0%');
    model.applyProgress({ kind: 'report', message: '42/100 files', percentage: 42 });
    assert.equal(model.text(), '$(sync~spin) qwen2.5-coder-0.5b · auto · indexing 42%');
    assert.match(model.tooltip(), /indexing the workspace: 42\/100 files/);
    model.applyProgress({ kind: 'report', message: '43/100 files' });
    assert.equal(model.indexing?.percentage, 42);
    model.applyProgress({ kind: 'end', message: '100 files indexed' });
    assert.equal(model.text(), '$(hubot) qwen2.5-coder-0.5b · auto · 212 ms');
  });

  it('shows indexing from stats alone when the progress notifications were missed', () => {
    const model = running();
    model.applyStats({ ...STATS, indexed: false });
    assert.equal(model.text(), '$(sync~spin) qwen2.5-coder-0.5b · auto · indexing');
    model.applyStats(STATS);
    assert.equal(model.indexing, null);
  });

  it('says off when completions are turned off', () => {
    const model = running({ model: '', backend: '', enabled: false });
    assert.equal(model.text(), '$(circle-slash) qwen2.5-coder-0.5b · auto · off');
    assert.match(model.tooltip(), /completions off/);
  });

  it('shows a failed server with the reason in the tooltip', () => {
    const model = running();
    model.setServer('failed', "'assistant' is not on PATH");
    assert.equal(model.text(), '$(error) assistant');
    assert.match(model.tooltip(), /server failed: 'assistant' is not on PATH/);
  });
});

describe('StatusController', () => {
  it('asks the server for assistant.stats through workspace/executeCommand and renders the answer', async () => {
    const client = new FakeClient(() => STATS);
    const view = { text: '', tooltip: undefined as string | object | undefined };
    const controller = new StatusController(running(), view, client);
    await controller.refresh();
    assert.deepEqual(client.calls, [
      { method: 'workspace/executeCommand', param: { command: 'assistant.stats', arguments: [] } },
    ]);
    assert.equal(view.text, '$(hubot) qwen2.5-coder-0.5b · auto · 212 ms');
  });

  it('keeps the last figures and logs when the request fails', async () => {
    let fail = false;
    const client = new FakeClient(() => {
      if (fail) {
        throw new Error('connection closed');
      }
      return STATS;
    });
    const logged: string[] = [];
    const view = { text: '', tooltip: undefined as string | object | undefined };
    const controller = new StatusController(running(), view, client, (m) => logged.push(m));
    await controller.refresh();
    fail = true;
    await controller.refresh();
    assert.equal(view.text, '$(hubot) qwen2.5-coder-0.5b · auto · 212 ms');
    assert.deepEqual(logged, ['assistant.stats failed: connection closed']);
  });

  it('sends nothing while the server is not running', async () => {
    const client = new FakeClient(() => STATS);
    const model = new StatusModel();
    const controller = new StatusController(model, { text: '', tooltip: undefined }, client);
    await controller.refresh();
    model.setServer('stopped');
    await controller.refresh();
    assert.equal(client.calls.length, 0);
  });

  it('renders progress at once and reads the stats when indexing ends', async () => {
    const client = new FakeClient(() => ({ ...STATS, last_latency_ms: null }));
    const view = { text: '', tooltip: undefined as string | object | undefined };
    const controller = new StatusController(running(), view, client);
    controller.onProgress({ kind: 'report', message: '1/4 files', percentage: 25 });
    assert.equal(view.text, '$(sync~spin) qwen2.5-coder-0.5b · auto · indexing 25%');
    assert.equal(client.calls.length, 0);
    controller.onProgress({ kind: 'end', message: '4 files indexed' });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(client.calls.length, 1);
    assert.equal(view.text, '$(hubot) qwen2.5-coder-0.5b · auto');
  });

  it('folds a burst of answered completions into one stats request', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const client = new FakeClient(() => STATS);
      const controller = new StatusController(running(), { text: '', tooltip: undefined }, client);
      controller.refreshSoon(300);
      controller.refreshSoon(300);
      mock.timers.tick(299);
      controller.refreshSoon(300);
      assert.equal(client.calls.length, 0);
      mock.timers.tick(1);
      assert.equal(client.calls.length, 1);
      controller.refreshSoon(300);
      mock.timers.tick(300);
      assert.equal(client.calls.length, 2);
      controller.dispose();
    } finally {
      mock.timers.reset();
    }
  });
});
