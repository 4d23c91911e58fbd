/**
 * The language client's middleware: ghost text only, stats after each answer, progress seen.
 *
 * Inline completions pass through to the server (vscode-languageclient 9 sends
 * `textDocument/inlineCompletion` through its proposed InlineCompletionItemFeature) unless the
 * user turned completions off, and each answer triggers a stats refresh for the latency shown.
 * The classic completion provider is silenced: the server runs one request per document and a
 * newer request supersedes the older, so suggest-widget requests would cancel the ghost text.
 * `$/progress` values are observed and passed on to VS Code's own progress display.
 * Only types come from vscode-languageclient here, so this module loads without VS Code.
 */

import type { Middleware } from 'vscode-languageclient/node';
import type { ProgressValue } from './status';

export interface MiddlewareHooks {
  /** Whether ghost text is wanted now (`assistant.completion.enabled`). */
  enabled(): boolean;
  /** Called when the server has answered an inline completion request (or failed to). */
  answered(): void;
  /** Called with every work-done progress value the server sends. */
  progress(value: ProgressValue): void;
}

export function createMiddleware(hooks: MiddlewareHooks): Middleware {
  return {
    async provideInlineCompletionItems(document, position, context, token, next) {
      if (!hooks.enabled()) {
        return null;
      }
      try {
        return await next(document, position, context, token);
      } finally {
        hooks.answered();
      }
    },
    provideCompletionItem() {
      return null;
    },
    handleWorkDoneProgress(token, params, next) {
      hooks.progress(params);
      next(token, params);
    },
  };
}
