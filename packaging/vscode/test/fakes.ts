/**
 * Small fakes for the unit tests: settings as VS Code hands them out, a file system and PATH
 * for command resolution, and the request side of vscode-languageclient's `LanguageClient`.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Host } from '../src/launch';
import type { RequestClient } from '../src/status';

export const PACKAGE_JSON = path.join(__dirname, '..', '..', 'package.json');

interface Contributed {
  contributes: {
    commands: { command: string }[];
    configuration: { properties: Record<string, { default?: unknown }> };
  };
}

export function manifest(): Contributed {
  return JSON.parse(fs.readFileSync(PACKAGE_JSON, 'utf8')) as Contributed;
}

/**
 * `vscode.workspace.getConfiguration('assistant')`: a value the user set, else the default
 * package.json declares (as VS Code does), read with dotted keys.
 */
export function settingsReader(user: Record<string, unknown> = {}): { get<T>(key: string): T | undefined } {
  const declared = manifest().contributes.configuration.properties;
  return {
    get<T>(key: string): T | undefined {
      if (key in user) {
        return user[key] as T;
      }
      return declared[`assistant.${key}`]?.default as T | undefined;
    },
  };
}

/** A machine with the given executables (and other, non-executable files). */
export function fakeHost(options: {
  platform?: NodeJS.Platform;
  env?: Record<string, string>;
  executables?: string[];
  home?: string;
}): Host & { probed: string[] } {
  const executables = new Set(options.executables ?? []);
  const probed: string[] = [];
  return {
    platform: options.platform ?? 'linux',
    env: options.env ?? {},
    home: options.home ?? '/home/dev',
    probed,
    isExecutable(file: string): boolean {
      probed.push(file);
      return executables.has(file);
    },
  };
}

/** `LanguageClient.sendRequest` answering from a table of handlers, recording every call. */
export class FakeClient implements RequestClient {
  readonly calls: { method: string; param: unknown }[] = [];

  constructor(private readonly answer: (method: string, param: unknown) => unknown) {}

  sendRequest<R>(method: string, param: unknown): Promise<R> {
    this.calls.push({ method, param });
    try {
      return Promise.resolve(this.answer(method, param) as R);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }
}
