/**
 * The language client's options: how `assistant lsp` is started and what the client sends it.
 *
 * Two choices here matter for the server. The executable is given without a `transport`:
 * vscode-languageclient appends `--stdio` to the arguments when `TransportKind.stdio` is named,
 * and `assistant lsp` would refuse the unknown flag (stdio is its default). And
 * `synchronize.configurationSection` is left out: the client would send the whole `assistant`
 * section, `server.*` included, which the server reports as unknown settings; the extension
 * sends `configurationPayload` itself. Only types come from vscode-languageclient here.
 */

import type { Executable, LanguageClientOptions, Middleware } from 'vscode-languageclient/node';
import type { ResolvedCommand } from './launch';
import type { ServerSettings } from './settings';

/** The executable for vscode-languageclient's `ServerOptions` (stdio, no extra flags). */
export function serverOptions(server: ResolvedCommand, cwd: string | undefined): Executable {
  const options: Executable = { command: server.command, args: [...server.args] };
  if (cwd !== undefined) {
    options.options = { cwd };
  }
  return options;
}

/** Documents the server completes: files on disk and unsaved buffers, any language. */
export const DOCUMENT_SELECTOR = [{ scheme: 'file' }, { scheme: 'untitled' }];

/** The client options; `settings` is read again at each (re)start for initializationOptions. */
export function clientOptions(parts: {
  settings: () => { assistant: ServerSettings };
  middleware: Middleware;
  outputChannel?: LanguageClientOptions['outputChannel'];
}): LanguageClientOptions {
  const options: LanguageClientOptions = {
    documentSelector: DOCUMENT_SELECTOR,
    initializationOptions: () => parts.settings(),
    middleware: parts.middleware,
  };
  if (parts.outputChannel !== undefined) {
    options.outputChannel = parts.outputChannel;
  }
  return options;
}
