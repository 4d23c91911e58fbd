/** Settings mapping: `assistant.*` in VS Code to the server's section `assistant`. */

import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { changeAction, configurationPayload, serverLaunch, START_KEYS, toServerSettings } from '../src/settings';
import { manifest, settingsReader } from './fakes';

const SERVER_DEFAULTS = {
  model: null,
  backend: null,
  context: { crossFile: true, maxTokens: 1024 },
  completion: { maxTokens: 96, multiline: 'auto', enabled: true },
};

describe('toServerSettings', () => {
  it('maps the defaults package.json declares to the defaults of lsp/config.py', () => {
    assert.deepEqual(toServerSettings(settingsReader()), SERVER_DEFAULTS);
  });

  it('maps every user value to its nested key', () => {
    const cfg = settingsReader({
      model: '~/models/coder.gguf',
      backend: 'llama',
      'context.crossFile': false,
      'context.maxTokens': 0,
      'completion.maxTokens': 32,
      'completion.multiline': 'never',
      'completion.enabled': false,
    });
    assert.deepEqual(toServerSettings(cfg), {
      model: '~/models/coder.gguf',
      backend: 'llama',
      context: { crossFile: false, maxTokens: 0 },
      completion: { maxTokens: 32, multiline: 'never', enabled: false },
    });
  });

  it('sends a cleared model or backend as null, so the server drops the value it held', () => {
    const payload = toServerSettings(settingsReader({ model: '   ', backend: '' }));
    assert.equal(payload.model, null);
    assert.equal(payload.backend, null);
    assert.ok('model' in payload && 'backend' in payload);
  });

  it('falls back to the default for a value of the wrong type', () => {
    const payload = toServerSettings(
      settingsReader({ 'context.maxTokens': '2048', 'completion.enabled': 'yes', 'completion.maxTokens': 1.5 }),
    );
    assert.equal(payload.context.maxTokens, 1024);
    assert.equal(payload.completion.enabled, true);
    assert.equal(payload.completion.maxTokens, 96);
  });

  it('never sends the server.* settings, which only start the server', () => {
    const payload = configurationPayload(settingsReader({ 'server.path': '/opt/assistant', 'server.args': ['lsp'] }));
    assert.deepEqual(Object.keys(payload), ['assistant']);
    assert.equal(JSON.stringify(payload).includes('server'), false);
  });

  it('covers every setting package.json declares, either sent or used to start the server', () => {
    const declared = Object.keys(manifest().contributes.configuration.properties).map((k) =>
      k.replace(/^assistant\./, ''),
    );
    const sent = new Set<string>();
    const walk = (obj: object, prefix: string): void => {
      for (const [k, v] of Object.entries(obj)) {
        if (v !== null && typeof v === 'object') {
          walk(v as object, `${prefix}${k}.`);
        } else {
          sent.add(`${prefix}${k}`);
        }
      }
    };
    walk(toServerSettings(settingsReader()), '');
    assert.deepEqual(declared.sort(), [...sent, ...START_KEYS].sort());
  });
});

describe('changeAction', () => {
  const affecting = (...sections: string[]) => (s: string) =>
    sections.some((x) => x === s || x.startsWith(`${s}.`));

  it('restarts the server when its path or arguments change', () => {
    assert.equal(changeAction(affecting('assistant.server.path')), 'restart');
    assert.equal(changeAction(affecting('assistant.server.args')), 'restart');
  });

  it('notifies the running server for any other assistant setting', () => {
    assert.equal(changeAction(affecting('assistant.completion.enabled')), 'notify');
    assert.equal(changeAction(affecting('assistant.model')), 'notify');
  });

  it('ignores changes outside the assistant section', () => {
    assert.equal(changeAction(affecting('editor.fontSize')), 'none');
  });
});

describe('serverLaunch', () => {
  it('defaults to `assistant lsp`', () => {
    assert.deepEqual(serverLaunch(settingsReader()), { path: 'assistant', args: ['lsp'] });
  });

  it('takes the configured path and arguments, and ignores arguments that are not strings', () => {
    assert.deepEqual(serverLaunch(settingsReader({ 'server.path': ' /opt/a ', 'server.args': ['lsp', '-m', 'x'] })), {
      path: '/opt/a',
      args: ['lsp', '-m', 'x'],
    });
    assert.deepEqual(serverLaunch(settingsReader({ 'server.args': ['lsp', 3] })).args, ['lsp']);
  });
});
