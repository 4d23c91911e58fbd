/**
 * The extension's settings (`assistant.*`) and the section the language server reads.
 *
 * `lsp/config.py` merges what the client sends over the settings it already holds, so every
 * key is always sent, unset ones as `null`: clearing `assistant.model` in VS Code must clear it
 * in the server too. `server.path` and `server.args` start the server and are not sent.
 * This module does not import `vscode`; it reads settings through `SettingsReader`, which
 * `vscode.WorkspaceConfiguration` satisfies.
 */

export type Multiline = 'auto' | 'always' | 'never';
export type Backend = 'auto' | 'llama';

/** The part of `vscode.WorkspaceConfiguration` this module uses. */
export interface SettingsReader {
  get<T>(key: string): T | undefined;
}

/** The server's section `assistant`, as `lsp/config.py` validates it. */
export interface ServerSettings {
  model: string | null;
  backend: Backend | null;
  context: { crossFile: boolean; maxTokens: number };
  completion: { maxTokens: number; multiline: Multiline; enabled: boolean };
}

/** Defaults, the same as in package.json and `lsp/config.py`. */
export const DEFAULTS = {
  model: '',
  backend: '',
  'context.crossFile': true,
  'context.maxTokens': 1024,
  'completion.maxTokens': 96,
  'completion.multiline': 'auto' as Multiline,
  'completion.enabled': true,
  'server.path': 'assistant',
  'server.args': ['lsp'],
} as const;

/** Settings that change how the server is started: a change restarts it. */
export const START_KEYS = ['server.path', 'server.args'] as const;

function bool(cfg: SettingsReader, key: keyof typeof DEFAULTS): boolean {
  const v = cfg.get<unknown>(key);
  return typeof v === 'boolean' ? v : (DEFAULTS[key] as boolean);
}

function int(cfg: SettingsReader, key: keyof typeof DEFAULTS): number {
  const v = cfg.get<unknown>(key);
  return typeof v === 'number' && Number.isInteger(v) ? v : (DEFAULTS[key] as number);
}

function text(cfg: SettingsReader, key: keyof typeof DEFAULTS): string {
  const v = cfg.get<unknown>(key);
  return typeof v === 'string' ? v.trim() : '';
}

/** The `assistant` section for initializationOptions and workspace/didChangeConfiguration. */
export function toServerSettings(cfg: SettingsReader): ServerSettings {
  const backend = text(cfg, 'backend');
  const multiline = text(cfg, 'completion.multiline');
  return {
    model: text(cfg, 'model') || null,
    // A value the server does not know is passed on: the server reports it by key and falls back.
    backend: backend === '' ? null : (backend as Backend),
    context: {
      crossFile: bool(cfg, 'context.crossFile'),
      maxTokens: int(cfg, 'context.maxTokens'),
    },
    completion: {
      maxTokens: int(cfg, 'completion.maxTokens'),
      multiline: (multiline || DEFAULTS['completion.multiline']) as Multiline,
      enabled: bool(cfg, 'completion.enabled'),
    },
  };
}

/** The payload of workspace/didChangeConfiguration (and of initializationOptions). */
export function configurationPayload(cfg: SettingsReader): { assistant: ServerSettings } {
  return { assistant: toServerSettings(cfg) };
}

/** How a settings change should be applied: restart the server, notify it, or neither. */
export function changeAction(affects: (section: string) => boolean): 'restart' | 'notify' | 'none' {
  if (START_KEYS.some((k) => affects(`assistant.${k}`))) {
    return 'restart';
  }
  return affects('assistant') ? 'notify' : 'none';
}

/** The configured server executable and arguments, before resolution. */
export function serverLaunch(cfg: SettingsReader): { path: string; args: string[] } {
  const path = text(cfg, 'server.path') || DEFAULTS['server.path'];
  const raw = cfg.get<unknown>('server.args');
  const args = Array.isArray(raw) && raw.every((a) => typeof a === 'string') ? raw : [...DEFAULTS['server.args']];
  return { path, args };
}
