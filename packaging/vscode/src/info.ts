/**
 * What the extension learns from the assistant itself and from the server's context command.
 *
 * `assistant config show --json` gives the model and backend the assistant's own settings name
 * (shown when the VS Code settings leave them empty) and the log file's path. The answer of the
 * server command `assistant.showContext` is rendered as Markdown for a read-only document.
 * Nothing here imports `vscode`.
 */

import type { ResolvedCommand } from './launch';

export interface AssistantInfo {
  model: string | null;
  backend: string | null;
  logFile: string | null;
}

/** Read `assistant config show --json`; anything unexpected leaves that field null. */
export function parseConfigShow(stdout: string): AssistantInfo {
  let data: unknown;
  try {
    data = JSON.parse(stdout);
  } catch {
    return { model: null, backend: null, logFile: null };
  }
  const obj = (data !== null && typeof data === 'object' ? data : {}) as Record<string, unknown>;
  const settings = (obj.settings !== null && typeof obj.settings === 'object' ? obj.settings : {}) as Record<
    string,
    unknown
  >;
  const str = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null);
  return { model: str(settings.model), backend: str(settings.backend), logFile: str(obj.log_file) };
}

/** The command line that asks the assistant for its settings. */
export function configShowCommand(server: ResolvedCommand): ResolvedCommand {
  return { command: server.command, args: ['config', 'show', '--json'] };
}

/** The TUI's command line: the same executable, with the model and backend the editor uses. */
export function chatCommand(server: ResolvedCommand, settings: { model: string; backend: string }): ResolvedCommand {
  const args = ['tui'];
  if (settings.model) {
    args.push('--model', settings.model);
  }
  if (settings.backend) {
    args.push('--backend', settings.backend);
  }
  return { command: server.command, args };
}

/** One snippet of `assistant.showContext`'s answer. */
export interface ContextSnippet {
  path: string;
  score: number;
  reason: string;
  text: string;
}

export interface ContextResult {
  kept: ContextSnippet[];
  dropped: ContextSnippet[];
  crossFile?: boolean;
  maxTokens?: number;
}

const FENCE_LANGUAGES: Record<string, string> = {
  py: 'python', js: 'javascript', jsx: 'javascript', mjs: 'javascript', ts: 'typescript', tsx: 'typescript',
  go: 'go', rs: 'rust', java: 'java', c: 'c', h: 'c', cc: 'cpp', cpp: 'cpp', hpp: 'cpp', lua: 'lua', sh: 'sh',
};

function relative(file: string, root: string | undefined): string {
  if (root !== undefined) {
    const prefix = root.endsWith('/') || root.endsWith('\\') ? root : `${root}/`;
    if (file.startsWith(prefix)) {
      return file.slice(prefix.length);
    }
  }
  return file;
}

/** A code fence longer than any run of backticks in `text`, so the snippet cannot close it. */
function fenceFor(text: string): string {
  const longest = Math.max(0, ...(text.match(/`+/g) ?? []).map((run) => run.length));
  return '`'.repeat(Math.max(3, longest + 1));
}

/** The context a completion at `where` would use, as Markdown. */
export function renderContext(
  result: ContextResult | null,
  where: { file: string; line: number; character: number },
  root: string | undefined,
): string {
  const title = `# Context for ${relative(where.file, root)}:${where.line + 1}:${where.character + 1}`;
  if (result === null) {
    return `${title}\n\nThe server has no context here (the document is not open on the server).\n`;
  }
  const out = [title, ''];
  if (result.crossFile === false) {
    out.push('Cross-file context is off (`assistant.context.crossFile`).', '');
  }
  const budget = typeof result.maxTokens === 'number' ? ` (budget ${result.maxTokens} tokens)` : '';
  out.push(`## ${result.kept.length} snippets in the prompt${budget}`, '');
  for (const s of result.kept) {
    const ext = s.path.split('.').pop()?.toLowerCase() ?? '';
    const fence = fenceFor(s.text);
    out.push(
      `### ${relative(s.path, root)}`,
      '',
      `score ${s.score.toFixed(2)}: ${s.reason}`,
      '',
      `${fence}${FENCE_LANGUAGES[ext] ?? ''}`,
      s.text.replace(/\s+$/, ''),
      fence,
      '',
    );
  }
  out.push(`## ${result.dropped.length} snippets dropped for the budget`, '');
  for (const s of result.dropped) {
    out.push(`- ${relative(s.path, root)} (score ${s.score.toFixed(2)}: ${s.reason})`);
  }
  return `${out.join('\n').replace(/\n+$/, '')}\n`;
}
