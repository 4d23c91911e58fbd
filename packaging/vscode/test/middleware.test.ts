/** The language client's middleware: the toggle, the stats hook, silenced classic completion, progress. */

import * as assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { createMiddleware } from '../src/middleware';
import type { ProgressValue } from '../src/status';

// Stand-ins for vscode.TextDocument, Position, InlineCompletionContext and CancellationToken:
// the middleware only hands them on to `next`.
const DOC = { uri: 'file:///ws/a.py' } as never;
const POS = { line: 3, character: 7 } as never;
const CTX = { triggerKind: 1 } as never;
const TOKEN = { isCancellationRequested: false } as never;

function hooks(enabled: boolean) {
  const seen = { answered: 0, progress: [] as ProgressValue[] };
  const mw = createMiddleware({
    enabled: () => enabled,
    answered: () => {
      seen.answered += 1;
    },
    progress: (v) => seen.progress.push(v),
  });
  return { mw, seen };
}

describe('inline completion middleware', () => {
  it('asks the server and reports the answer when completions are on', async () => {
    const { mw, seen } = hooks(true);
    const items = { items: [{ insertText: 'return a + b' }] };
    const calls: unknown[][] = [];
    const result = await mw.provideInlineCompletionItems!(DOC, POS, CTX, TOKEN, (...args) => {
      calls.push(args);
      return Promise.resolve(items as never);
    });
    assert.equal(result, items);
    assert.deepEqual(calls, [[DOC, POS, CTX, TOKEN]]);
    assert.equal(seen.answered, 1);
  });

  it('sends no request when completions are off', async () => {
    const { mw, seen } = hooks(false);
    let called = false;
    const result = await mw.provideInlineCompletionItems!(DOC, POS, CTX, TOKEN, () => {
      called = true;
      return null;
    });
    assert.equal(result, null);
    assert.equal(called, false);
    assert.equal(seen.answered, 0);
  });

  it('still refreshes the stats when the request fails, and lets the error through', async () => {
    const { mw, seen } = hooks(true);
    await assert.rejects(
      Promise.resolve(mw.provideInlineCompletionItems!(DOC, POS, CTX, TOKEN, () => Promise.reject(new Error('boom')))),
      /boom/,
    );
    assert.equal(seen.answered, 1);
  });
});

describe('other middleware', () => {
  it('answers classic completion requests with nothing, without asking the server', () => {
    const { mw } = hooks(true);
    let called = false;
    const result = mw.provideCompletionItem!(DOC, POS, { triggerKind: 0 } as never, TOKEN, () => {
      called = true;
      return [];
    });
    assert.equal(result, null);
    assert.equal(called, false);
  });

  it('shows each progress value to the status and passes it on to VS Code', () => {
    const { mw, seen } = hooks(true);
    const passed: unknown[] = [];
    const value = { kind: 'report' as const, message: '3/9 files', percentage: 33 };
    mw.handleWorkDoneProgress!('tok', value, (_t, v) => passed.push(v));
    assert.deepEqual(seen.progress, [value]);
    assert.deepEqual(passed, [value]);
  });
});
