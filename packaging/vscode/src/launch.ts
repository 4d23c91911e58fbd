/**
 * Finding the `assistant` executable that the extension starts as `assistant lsp`.
 *
 * `assistant.server.path` is either a bare name, looked up on PATH the way a shell would
 * (PATHEXT on Windows), or a path: `~` and `${workspaceFolder}` are expanded and a relative
 * path is taken from the workspace root. The file system and environment come in through
 * `Host`, so the rules are tested without touching the machine's PATH.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** What resolution needs from the machine. */
export interface Host {
  platform: NodeJS.Platform;
  env: Record<string, string | undefined>;
  home: string;
  isExecutable(file: string): boolean;
}

/** A command line ready for `child_process.spawn` (and vscode-languageclient's `Executable`). */
export interface ResolvedCommand {
  command: string;
  args: string[];
}

/** The configured executable cannot be found; the message says where it was looked for. */
export class ServerNotFound extends Error {
  override name = 'ServerNotFound';
}

/** The real machine. */
export function nodeHost(): Host {
  return {
    platform: process.platform,
    env: process.env,
    home: os.homedir(),
    isExecutable(file: string): boolean {
      try {
        if (!fs.statSync(file).isFile()) {
          return false;
        }
        fs.accessSync(file, process.platform === 'win32' ? fs.constants.F_OK : fs.constants.X_OK);
        return true;
      } catch {
        return false;
      }
    },
  };
}

function pathApi(host: Host): path.PlatformPath {
  return host.platform === 'win32' ? path.win32 : path.posix;
}

/** An environment variable, case-insensitively on Windows (where PATH is often `Path`). */
function envVar(host: Host, name: string): string | undefined {
  if (host.platform !== 'win32') {
    return host.env[name];
  }
  const key = Object.keys(host.env).find((k) => k.toUpperCase() === name.toUpperCase());
  return key === undefined ? undefined : host.env[key];
}

/** Expand `~` and `${workspaceFolder}` in a configured path. */
export function expandPath(value: string, host: Host, workspaceRoot: string | undefined): string {
  let out = value;
  if (out.includes('${workspaceFolder}')) {
    if (workspaceRoot === undefined) {
      throw new ServerNotFound(`assistant.server.path '${value}' uses \${workspaceFolder}, but no folder is open`);
    }
    out = out.split('${workspaceFolder}').join(workspaceRoot);
  }
  if (out === '~' || out.startsWith('~/') || (host.platform === 'win32' && out.startsWith('~\\'))) {
    out = host.home + out.slice(1);
  }
  return out;
}

/** The first executable called `name` on PATH, or undefined. */
export function which(name: string, host: Host): string | undefined {
  const p = pathApi(host);
  const dirs = (envVar(host, 'PATH') ?? '').split(p.delimiter).filter((d) => d !== '');
  let exts = [''];
  if (host.platform === 'win32') {
    const pathext = (envVar(host, 'PATHEXT') ?? '.COM;.EXE;.BAT;.CMD').split(';').filter((e) => e !== '');
    exts = p.extname(name) !== '' ? ['', ...pathext] : pathext;
  }
  for (const dir of dirs) {
    for (const ext of exts) {
      const candidate = p.join(dir, name + ext);
      if (host.isExecutable(candidate)) {
        return candidate;
      }
    }
  }
  return undefined;
}

function hasSeparator(value: string, host: Host): boolean {
  return value.includes('/') || (host.platform === 'win32' && value.includes('\\'));
}

/** The absolute executable and arguments for `assistant.server.path` and `assistant.server.args`. */
export function resolveServer(
  launch: { path: string; args: string[] },
  host: Host,
  workspaceRoot: string | undefined,
): ResolvedCommand {
  const p = pathApi(host);
  const configured = expandPath(launch.path, host, workspaceRoot);
  if (!hasSeparator(configured, host)) {
    const found = which(configured, host);
    if (found === undefined) {
      throw new ServerNotFound(
        `'${configured}' is not on PATH: set assistant.server.path to the assistant executable (such as .venv/bin/assistant)`,
      );
    }
    return { command: found, args: [...launch.args] };
  }
  let file = configured;
  if (!p.isAbsolute(file)) {
    if (workspaceRoot === undefined) {
      throw new ServerNotFound(`assistant.server.path '${launch.path}' is relative, but no folder is open`);
    }
    file = p.resolve(workspaceRoot, file);
  }
  if (!host.isExecutable(file)) {
    throw new ServerNotFound(`assistant.server.path '${launch.path}': ${file} is not an executable file`);
  }
  return { command: file, args: [...launch.args] };
}

/** The same executable with other arguments (the TUI, `config show`). */
export function withArgs(command: ResolvedCommand, args: string[]): ResolvedCommand {
  return { command: command.command, args: [...args] };
}
