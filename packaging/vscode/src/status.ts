/**
 * The status-bar item's state and text: model, backend, indexing progress, last latency.
 *
 * `StatusModel` is plain state fed by three sources: the settings, the server's `$/progress`
 * (indexing, seen through the client's `handleWorkDoneProgress` middleware) and the answers of
 * the server command `assistant.stats`. `StatusController` asks for the stats through the
 * client and writes the text into a `StatusView`, which `vscode.StatusBarItem` satisfies.
 * Nothing here imports `vscode`.
 */

/** What `assistant.stats` answers (lsp/server.py: the completer's counters plus the index). */
export interface ServerStats {
  requested?: number;
  started?: number;
  finished?: number;
  cancelled?: number;
  failed?: number;
  last_latency_ms?: number | null;
  last_prompt_tokens?: number | null;
  last_reused_tokens?: number | null;
  indexed?: boolean;
  files?: number;
}

/** A work-done progress value, as in the LSP `$/progress` notification. */
export type ProgressValue =
  | { kind: 'begin'; title: string; message?: string; percentage?: number }
  | { kind: 'report'; message?: string; percentage?: number }
  | { kind: 'end'; message?: string };

export type ServerState = 'starting' | 'running' | 'stopped' | 'failed';

/** The part of `vscode.StatusBarItem` the controller writes. */
export interface StatusView {
  text: string;
  tooltip: string | object | undefined;
}

/** The part of vscode-languageclient's `LanguageClient` the controller uses. */
export interface RequestClient {
  sendRequest<R>(method: string, param: unknown): Promise<R>;
}

export const STATS_COMMAND = 'assistant.stats';

/** A model setting as shown: a `.gguf` path by its file name. */
export function shortModel(model: string): string {
  const base = model.split(/[\\/]/).pop() ?? model;
  return base.toLowerCase().endsWith('.gguf') ? base.slice(0, -'.gguf'.length) : base;
}

export class StatusModel {
  /** The model and backend the VS Code settings ask for ('' = the assistant's own settings). */
  model = '';
  backend = '';
  /** The model and backend in the assistant's own settings (from `assistant config show`). */
  defaultModel: string | null = null;
  defaultBackend: string | null = null;
  enabled = true;
  server: ServerState = 'starting';
  error: string | null = null;
  indexing: { percentage: number | null; message: string | null } | null = null;
  stats: ServerStats = {};

  setSettings(s: { model: string; backend: string; enabled: boolean }): void {
    this.model = s.model;
    this.backend = s.backend;
    this.enabled = s.enabled;
  }

  setServer(state: ServerState, error: string | null = null): void {
    this.server = state;
    this.error = state === 'failed' ? error : null;
    if (state !== 'running') {
      this.indexing = null;
    }
  }

  applyProgress(value: ProgressValue): void {
    if (value.kind === 'end') {
      this.indexing = null;
      return;
    }
    const previous = this.indexing;
    this.indexing = {
      percentage: typeof value.percentage === 'number' ? value.percentage : (previous?.percentage ?? null),
      message: value.message ?? previous?.message ?? null,
    };
  }

  applyStats(stats: ServerStats): void {
    this.stats = { ...stats };
    if (stats.indexed === true) {
      this.indexing = null; // the end notification may have been missed across a restart
    } else if (stats.indexed === false && this.indexing === null) {
      this.indexing = { percentage: null, message: null };
    }
  }

  effectiveModel(): string {
    return shortModel(this.model || this.defaultModel || 'default model');
  }

  effectiveBackend(): string {
    return this.backend || this.defaultBackend || 'auto';
  }

  text(): string {
    if (this.server === 'failed') {
      return '$(error) assistant';
    }
    if (this.server === 'stopped') {
      return '$(debug-stop) assistant';
    }
    if (this.server === 'starting') {
      return '$(loading~spin) assistant';
    }
    const parts = [this.effectiveModel(), this.effectiveBackend()];
    if (!this.enabled) {
      return `$(circle-slash) ${parts.join(' · ')} · off`;
    }
    if (this.indexing !== null) {
      const pct = this.indexing.percentage;
      parts.push(pct === null ? 'indexing' : `indexing ${Math.round(pct)}%`);
      return `$(sync~spin) ${parts.join(' · ')}`;
    }
    const latency = this.stats.last_latency_ms;
    if (typeof latency === 'number') {
      parts.push(`${Math.round(latency)} ms`);
    }
    return `$(hubot) ${parts.join(' · ')}`;
  }

  tooltip(): string {
    const lines = [`assistant: ${this.effectiveModel()} on ${this.effectiveBackend()}`];
    if (this.server === 'failed') {
      lines.push(`server failed: ${this.error ?? 'unknown error'}`);
    } else if (this.server !== 'running') {
      lines.push(`server ${this.server}`);
    } else {
      lines.push(this.enabled ? 'completions on' : 'completions off');
      if (this.indexing !== null) {
        lines.push(`indexing the workspace${this.indexing.message ? `: ${this.indexing.message}` : ''}`);
      } else if (typeof this.stats.files === 'number') {
        lines.push(`${this.stats.files} files indexed`);
      }
      const s = this.stats;
      if (typeof s.requested === 'number') {
        lines.push(
          `completions: ${s.finished ?? 0} answered, ${s.cancelled ?? 0} cancelled, ` +
            `${s.failed ?? 0} failed of ${s.requested} asked`,
        );
      }
      if (typeof s.last_latency_ms === 'number') {
        lines.push(`last completion: ${Math.round(s.last_latency_ms)} ms`);
      }
    }
    lines.push('Click for the menu');
    return lines.join('\n');
  }
}

/** Keeps a `StatusView` in step with a `StatusModel`, asking the server for stats as needed. */
export class StatusController {
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly model: StatusModel,
    private readonly view: StatusView,
    private client: RequestClient | undefined = undefined,
    private readonly log: (message: string) => void = () => undefined,
  ) {
    this.render();
  }

  setClient(client: RequestClient | undefined): void {
    this.client = client;
  }

  render(): void {
    this.view.text = this.model.text();
    this.view.tooltip = this.model.tooltip();
  }

  /** The middleware hook for `$/progress`: the value goes to the status, then on to VS Code. */
  onProgress(value: ProgressValue): void {
    this.model.applyProgress(value);
    this.render();
    if (value.kind === 'end') {
      void this.refresh();
    }
  }

  /** Ask the server for `assistant.stats`; a failure leaves the last figures in place. */
  async refresh(): Promise<void> {
    const client = this.client;
    if (client === undefined || this.model.server !== 'running') {
      return;
    }
    try {
      const stats = await client.sendRequest<ServerStats | null>('workspace/executeCommand', {
        command: STATS_COMMAND,
        arguments: [],
      });
      if (stats !== null && typeof stats === 'object') {
        this.model.applyStats(stats);
      }
    } catch (e) {
      this.log(`assistant.stats failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.render();
  }

  /** Refresh once, shortly: completions arrive in bursts while typing. */
  refreshSoon(delayMs = 300): void {
    if (this.timer !== undefined) {
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.refresh();
    }, delayMs);
  }

  dispose(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }
}
