/**
 * The quick-pick menu behind the status-bar item: each entry names the command it runs.
 * Nothing here imports `vscode`.
 */

export const COMMANDS = {
  menu: 'assistant.menu',
  toggle: 'assistant.toggleCompletions',
  showContext: 'assistant.showContextAtCursor',
  openLog: 'assistant.openLog',
  restart: 'assistant.restartServer',
  chat: 'assistant.openChat',
} as const;

export interface MenuEntry {
  label: string;
  description: string;
  command: string;
}

/** The menu for the current state: the toggle says what choosing it will do. */
export function menuEntries(state: { enabled: boolean; running: boolean; logFile: string | null }): MenuEntry[] {
  const entries: MenuEntry[] = [
    state.enabled
      ? { label: '$(circle-slash) Turn completions off', description: 'assistant.completion.enabled', command: COMMANDS.toggle }
      : { label: '$(check) Turn completions on', description: 'assistant.completion.enabled', command: COMMANDS.toggle },
  ];
  if (state.running) {
    entries.push({
      label: '$(list-tree) Show context for the cursor',
      description: 'what the next completion here puts in the prompt',
      command: COMMANDS.showContext,
    });
  }
  entries.push(
    { label: '$(output) Open the log', description: state.logFile ?? 'the server output', command: COMMANDS.openLog },
    { label: '$(debug-restart) Restart the server', description: 'assistant lsp', command: COMMANDS.restart },
    { label: '$(terminal) Open the chat in a terminal', description: 'assistant tui', command: COMMANDS.chat },
  );
  return entries;
}
