/**
 * The VS Code side: starts `assistant lsp`, shows its inline completions as ghost text, keeps
 * the server's settings in step with `assistant.*`, and runs the status-bar item and its menu.
 *
 * This is the only module that imports `vscode`; the rules live in the modules it wires
 * together (settings, launch, client, middleware, status, info, menu), which the unit tests
 * load without VS Code.
 */

import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as vscode from 'vscode';
import { DidChangeConfigurationNotification, LanguageClient, State } from 'vscode-languageclient/node';

import { clientOptions, serverOptions } from './client';
import { chatCommand, configShowCommand, parseConfigShow, renderContext, type ContextResult } from './info';
import { nodeHost, resolveServer, ServerNotFound, type ResolvedCommand } from './launch';
import { COMMANDS, menuEntries } from './menu';
import { createMiddleware } from './middleware';
import { changeAction, configurationPayload, serverLaunch, toServerSettings } from './settings';
import { StatusController, StatusModel } from './status';

const SECTION = 'assistant';
const CONTEXT_URI = vscode.Uri.parse('assistant-context:context.md');
const POLL_MS = 15_000;

/** Read-only documents holding the rendered `assistant.showContext` answers. */
class ContextDocuments implements vscode.TextDocumentContentProvider {
  private readonly texts = new Map<string, string>();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;

  set(uri: vscode.Uri, text: string): void {
    this.texts.set(uri.toString(), text);
    this.changed.fire(uri);
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.texts.get(uri.toString()) ?? '';
  }

  dispose(): void {
    this.changed.dispose();
  }
}

function workspaceRoot(): string | undefined {
  return vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
}

function settings(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

class AssistantExtension implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private server: ResolvedCommand | undefined;
  private logFile: string | null = null;
  private readonly output = vscode.window.createOutputChannel('assistant');
  private readonly item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private readonly documents = new ContextDocuments();
  private readonly status = new StatusModel();
  private readonly controller: StatusController;
  private readonly poll: ReturnType<typeof setInterval>;
  private readonly disposables: vscode.Disposable[] = [];

  constructor() {
    this.item.command = COMMANDS.menu;
    this.item.name = 'assistant';
    this.controller = new StatusController(this.status, this.item, undefined, (m) => this.output.appendLine(m));
    this.readSettings();
    this.item.show();
    this.poll = setInterval(() => void this.controller.refresh(), POLL_MS);
    this.disposables.push(
      vscode.workspace.registerTextDocumentContentProvider(CONTEXT_URI.scheme, this.documents),
      vscode.workspace.onDidChangeConfiguration((e) => void this.onSettingsChanged(e)),
      vscode.commands.registerCommand(COMMANDS.menu, () => this.menu()),
      vscode.commands.registerCommand(COMMANDS.toggle, () => this.toggle()),
      vscode.commands.registerCommand(COMMANDS.showContext, () => this.showContext()),
      vscode.commands.registerCommand(COMMANDS.openLog, () => this.openLog()),
      vscode.commands.registerCommand(COMMANDS.restart, () => this.restart()),
      vscode.commands.registerCommand(COMMANDS.chat, () => this.openChat()),
    );
  }

  private readSettings(): void {
    const s = toServerSettings(settings());
    this.status.setSettings({ model: s.model ?? '', backend: s.backend ?? '', enabled: s.completion.enabled });
    this.controller.render();
  }

  // --- the server ----------------------------------------------------------------------------

  async start(): Promise<void> {
    const root = workspaceRoot();
    try {
      this.server = resolveServer(serverLaunch(settings()), nodeHost(), root);
    } catch (e) {
      if (!(e instanceof ServerNotFound)) {
        throw e;
      }
      this.failed(e.message);
      return;
    }
    void this.readAssistantInfo(this.server);
    const client = new LanguageClient(
      'assistant',
      'assistant',
      serverOptions(this.server, root),
      clientOptions({
        settings: () => configurationPayload(settings()),
        outputChannel: this.output,
        middleware: createMiddleware({
          enabled: () => this.status.enabled,
          answered: () => this.controller.refreshSoon(),
          progress: (value) => this.controller.onProgress(value),
        }),
      }),
    );
    // textDocument/inlineCompletion is a proposed feature in vscode-languageclient 9.
    client.registerProposedFeatures();
    client.onDidChangeState((e) => {
      if (this.client !== client) {
        return;
      }
      if (e.newState === State.Running) {
        this.status.setServer('running');
        void this.controller.refresh();
      } else if (e.newState === State.Starting) {
        this.status.setServer('starting');
      } else if (this.status.server !== 'failed') {
        this.status.setServer('stopped');
      }
      this.controller.render();
    });
    this.client = client;
    this.controller.setClient(client);
    this.status.setServer('starting');
    this.controller.render();
    try {
      await client.start();
    } catch (e) {
      this.failed(`${this.server.command} ${this.server.args.join(' ')}: ${message(e)}`);
    }
  }

  private failed(reason: string): void {
    this.output.appendLine(`assistant: ${reason}`);
    this.status.setServer('failed', reason);
    this.controller.render();
    void vscode.window.showErrorMessage(`assistant: ${reason}`, 'Open Settings', 'Open the Log').then((choice) => {
      if (choice === 'Open Settings') {
        void vscode.commands.executeCommand('workbench.action.openSettings', 'assistant.server');
      } else if (choice === 'Open the Log') {
        this.output.show(true);
      }
    });
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.controller.setClient(undefined);
    if (client !== undefined) {
      try {
        await client.dispose(2000);
      } catch (e) {
        this.output.appendLine(`assistant: stopping the server: ${message(e)}`);
      }
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  private async readAssistantInfo(server: ResolvedCommand): Promise<void> {
    const cmd = configShowCommand(server);
    const stdout = await new Promise<string>((resolve) => {
      execFile(cmd.command, cmd.args, { timeout: 15_000, cwd: workspaceRoot() }, (err, out) => {
        if (err) {
          this.output.appendLine(`assistant: ${cmd.command} ${cmd.args.join(' ')}: ${err.message}`);
        }
        resolve(err ? '' : out);
      });
    });
    const info = parseConfigShow(stdout);
    this.status.defaultModel = info.model;
    this.status.defaultBackend = info.backend;
    this.logFile = info.logFile;
    this.controller.render();
  }

  private async onSettingsChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
    const action = changeAction((section) => e.affectsConfiguration(section));
    if (action === 'none') {
      return;
    }
    this.readSettings();
    if (action === 'restart') {
      await this.restart();
      return;
    }
    const client = this.client;
    if (client !== undefined && client.state === State.Running) {
      try {
        await client.sendNotification(DidChangeConfigurationNotification.type, {
          settings: configurationPayload(settings()),
        });
      } catch (err) {
        this.output.appendLine(`assistant: sending settings: ${message(err)}`);
      }
    }
  }

  // --- commands ------------------------------------------------------------------------------

  private async menu(): Promise<void> {
    const entries = menuEntries({
      enabled: this.status.enabled,
      running: this.status.server === 'running',
      logFile: this.logFile,
    });
    const picked = await vscode.window.showQuickPick(entries, { title: this.status.tooltip().split('\n')[0] });
    if (picked !== undefined) {
      await vscode.commands.executeCommand(picked.command);
    }
  }

  private async toggle(): Promise<void> {
    const cfg = settings();
    const inspected = cfg.inspect<boolean>('completion.enabled');
    const target =
      inspected?.workspaceFolderValue !== undefined
        ? vscode.ConfigurationTarget.WorkspaceFolder
        : inspected?.workspaceValue !== undefined
          ? vscode.ConfigurationTarget.Workspace
          : vscode.ConfigurationTarget.Global;
    await cfg.update('completion.enabled', !this.status.enabled, target);
  }

  private async showContext(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const client = this.client;
    if (editor === undefined) {
      void vscode.window.showInformationMessage('assistant: put the cursor in a file first');
      return;
    }
    if (client === undefined || client.state !== State.Running) {
      void vscode.window.showWarningMessage('assistant: the server is not running');
      return;
    }
    const pos = editor.selection.active;
    let result: ContextResult | null;
    try {
      result = await client.sendRequest<ContextResult | null>('workspace/executeCommand', {
        command: 'assistant.showContext',
        arguments: [editor.document.uri.toString(), { line: pos.line, character: pos.character }],
      });
    } catch (e) {
      void vscode.window.showErrorMessage(`assistant: showContext failed: ${message(e)}`);
      return;
    }
    const where = { file: editor.document.uri.fsPath, line: pos.line, character: pos.character };
    this.documents.set(CONTEXT_URI, renderContext(result, where, workspaceRoot()));
    const doc = await vscode.workspace.openTextDocument(CONTEXT_URI);
    await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preview: true });
  }

  private async openLog(): Promise<void> {
    if (this.logFile !== null && fs.existsSync(this.logFile)) {
      const doc = await vscode.workspace.openTextDocument(vscode.Uri.file(this.logFile));
      await vscode.window.showTextDocument(doc, { preview: true });
      return;
    }
    this.output.show(true);
  }

  private openChat(): void {
    const root = workspaceRoot();
    let server = this.server;
    if (server === undefined) {
      try {
        server = resolveServer(serverLaunch(settings()), nodeHost(), root);
      } catch (e) {
        void vscode.window.showErrorMessage(`assistant: ${message(e)}`);
        return;
      }
    }
    const cmd = chatCommand(server, { model: this.status.model, backend: this.status.backend });
    const options: vscode.TerminalOptions = { name: 'assistant', shellPath: cmd.command, shellArgs: cmd.args };
    if (root !== undefined) {
      options.cwd = root;
    }
    vscode.window.createTerminal(options).show();
  }

  dispose(): void {
    clearInterval(this.poll);
    this.controller.dispose();
    for (const d of this.disposables) {
      d.dispose();
    }
    this.documents.dispose();
    this.item.dispose();
    this.output.dispose();
  }
}

// deactivate() takes no arguments: this is where the one instance is kept between the two calls.
let running: AssistantExtension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const ext = new AssistantExtension();
  running = ext;
  context.subscriptions.push(ext);
  await ext.start();
}

export async function deactivate(): Promise<void> {
  const ext = running;
  running = undefined;
  await ext?.stop();
}
