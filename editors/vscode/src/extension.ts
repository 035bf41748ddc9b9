// duet for VS Code: starts the `duet-lsp` bridge as a language server for the workspace's files,
// and shows what the bridge tells about the room: a status-bar item, the peers' cursors and
// selections, follow mode. Edits themselves need nothing here: the bridge sends the peers' edits
// as `workspace/applyEdit` and hears ours from `didChange`, like any language server. Undo does:
// VS Code's own undo stack holds the peers' edits too, so in shared documents the undo and redo
// keys go to the bridge, which undoes the user's own edits only. The room's history: "Room
// history…" picks a version and shows a file beside its text then (a diff), with commands to
// restore it or every file; "What changed while I was away" shows, after rejoining, each file
// changed since beside its text when we left.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import {
  ApplyWorkspaceEditParams,
  ApplyWorkspaceEditResult,
  DynamicFeature,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  StaticFeature,
  TextDocumentEdit,
} from 'vscode-languageclient/node';

/** `duet/status`, as the bridge sends it (`duet.status` adds `invite` and the readable `text`). */
interface Status {
  state: 'connected' | 'connecting' | 'offline' | 'idle';
  room?: string;
  server?: string;
  invite?: string;
  peers?: { name: string; color: string }[];
  files?: string[];
  text?: string;
}

interface Position {
  line: number;
  character: number;
}

/**
 * One entry of `duet/peers`. `path` is the peer's file in the room; `uri` where it is (or would
 * be) here; `range` is missing when that file is not open here.
 */
interface Peer {
  clientId: number;
  name: string;
  color: string;
  path?: string;
  uri?: string;
  range?: { start: Position; end: Position };
}

interface Message {
  type: number;
  message: string;
}

/** One version of the room, as `duet.versions` lists it. */
interface Version {
  id: number;
  created_at: number;
  reason: string;
  label: string | null;
  authors: string[];
  files: { path: string; change: string }[];
}

/** `duet/away` and `duet.away`: the files changed while we were away. */
interface Away {
  since: number;
  files: { path: string; change: string }[];
  authors?: string[];
}

/** The scheme of the texts the history diffs show: `duet-history:/<path>?version=<n>` or `?away`. */
const HISTORY_SCHEME = 'duet-history';
/** The context key of the restore commands: a history diff is the active editor. */
const HISTORY_DIFF = 'duet.historyDiff';

const BRIDGE = 'duet-lsp';
/** The context key the undo and redo keybindings depend on: the active editor's document is shared. */
const SHARED_DOCUMENT = 'duet.sharedDocument';
const CURSOR_INTERVAL_MS = 50;
/**
 * Bridge messages shown for a while in the status bar instead of popping up: the answer to an
 * undo key pressed once more than there was to undo (VS Code's own undo says nothing then).
 */
const STATUS_BAR_MESSAGES = ['duet: nothing of yours to '];
const STATUS_BAR_MESSAGE_MS = 5000;
/** The read-only documents that show the status. */
const STATUS_SCHEME = 'duet-status';
/** The start of the bridge's message for our own `duet.status` (we show the status whole instead). */
const STATUS_MESSAGE = 'duet: status: ';
/** The bridge's message when a peer adds a file to the room; the file's path follows it. */
const NEW_FILE_MESSAGE = 'duet: new in the room: ';

/** Whether a bridge message says the connection is down: it is shown until it is back. */
function saysOffline(message: string): boolean {
  return message.startsWith('duet: offline (') || (message.startsWith('duet: cannot reach ') && message.includes('still trying'));
}
const DEFAULT_COLOR = '#888888';

let extension: Duet | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new Duet(context);
  await extension.start();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
  extension = undefined;
}

class Duet {
  private client: LanguageClient | undefined;
  private bridgePath: string | undefined;
  private bridgeError: string | undefined;
  private status: Status = { state: 'idle' };
  private peers: Peer[] = [];
  /** The documents the language client syncs with the bridge (`duet.files`). */
  private selector: vscode.DocumentFilter[] = [];
  /** The value last given to the `duet.sharedDocument` context key. */
  private sharedDocument = false;
  private following: number | undefined;
  private followedUri: string | undefined;
  private readonly messages: Message[] = [];
  /** The last status the bridge gave, shown read-only as `duet-status:` (see `showStatus`). */
  private statusText = '';
  private readonly statusChanged = new vscode.EventEmitter<vscode.Uri>();
  /** Ends the notification that says we are offline (or cannot reach the server yet). */
  private endOfflineNotice: (() => void) | undefined;
  /** Bridge messages not to pop up while (and shortly after) a command of ours is running. */
  private readonly quiet = new Set<string>();
  private readonly statusItem: vscode.StatusBarItem;
  private readonly output: vscode.OutputChannel;
  /** One decoration type per peer (their colour and name), recreated when either changes. */
  private readonly decorations = new Map<
    number,
    { key: string; selection: vscode.TextEditorDecorationType; cursor: vscode.TextEditorDecorationType }
  >();
  private decorationCount = 0;
  private cursorTimer: NodeJS.Timeout | undefined;
  private cursorSentAt = 0;
  private testTimer: NodeJS.Timeout | undefined;
  private testWritten = '';
  private editQueue: Promise<void> = Promise.resolve();
  /** The version and file of the history diff shown last. */
  private historyShown: { version: number; path: string } | undefined;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel('duet');
    this.statusItem = vscode.window.createStatusBarItem('duet.status', vscode.StatusBarAlignment.Left, 100);
    this.statusItem.name = 'duet';
    this.statusItem.command = 'duet.showPeers';
    this.render();
    this.statusItem.show();

    const command = (id: string, f: (...args: any[]) => unknown) =>
      context.subscriptions.push(vscode.commands.registerCommand(id, f));
    command('duet.createRoom', (server?: string) => this.createRoom(server));
    command('duet.joinRoom', (invite?: string) => this.joinRoom(invite));
    command('duet.leaveRoom', () => this.leaveRoom());
    command('duet.copyInvite', () => this.copyInvite());
    command('duet.showPeers', () => this.showPeers());
    command('duet.jumpToPeer', () => this.showPeers());
    command('duet.openRoomFile', () => this.openRoomFile());
    command('duet.followPeer', (who?: number | string) => this.followPeer(who));
    command('duet.undo', () => this.undo('undo'));
    command('duet.redo', () => this.undo('redo'));
    command('duet.status', () => this.showStatus());
    command('duet.restart', () => this.restart());
    command('duet._testState', () => this.testState());
    command('duet.history', () => this.history());
    command('duet.restoreFile', () => this.restore(false));
    command('duet.restoreAll', () => this.restore(true));
    command('duet.away', () => this.away());
    context.subscriptions.push(
      vscode.workspace.registerTextDocumentContentProvider(HISTORY_SCHEME, {
        provideTextDocumentContent: (uri) => this.historyText(uri),
      }),
    );

    context.subscriptions.push(
      vscode.workspace.registerTextDocumentContentProvider(STATUS_SCHEME, {
        onDidChange: this.statusChanged.event,
        provideTextDocumentContent: () => this.statusText,
      }),
      this.statusChanged,
      this.output,
      this.statusItem,
      vscode.window.onDidChangeTextEditorSelection((e) => this.selectionChanged(e)),
      vscode.window.onDidChangeVisibleTextEditors(() => this.decorate()),
      vscode.window.onDidChangeActiveTextEditor(() => {
        this.render();
        void vscode.commands.executeCommand('setContext', HISTORY_DIFF, this.historyDiffShown());
      }),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (['path', 'server', 'name', 'color', 'invite', 'files'].some((k) => e.affectsConfiguration(`duet.${k}`))) {
          this.log('settings changed: restarting the bridge');
          void this.restart();
        }
      }),
      { dispose: () => this.disposeDecorations() },
    );

    // The end-to-end test reads the editor's state from this file (see tests/vscode/driver.mjs).
    const stateFile = process.env.DUET_TEST_STATE_FILE;
    if (stateFile) {
      this.testTimer = setInterval(() => this.writeTestState(stateFile), 100);
      context.subscriptions.push({ dispose: () => clearInterval(this.testTimer) });
    }
  }

  // ----- the bridge ----------------------------------------------------------------------------

  async start(): Promise<void> {
    const config = vscode.workspace.getConfiguration('duet');
    this.bridgePath = findBridge(config.get<string>('path', ''));
    if (!this.bridgePath && !config.get<string>('path', '').trim()) {
      this.bridgePath = cargoInstalled();
      if (this.bridgePath) {
        this.offerBridgePath(this.bridgePath);
      }
    }
    if (!this.bridgePath) {
      const configured = config.get<string>('path', '');
      this.bridgeError = configured
        ? `duet: the bridge was not found at "${configured}" (setting duet.path).`
        : `duet: ${BRIDGE} was not found on PATH nor in ${cargoBin()}. Install it (cargo install --path lsp) or set duet.path to the binary.`;
      this.log(this.bridgeError);
      this.render();
      void vscode.window.showErrorMessage(this.bridgeError, 'Open Settings').then((choice) => {
        if (choice) {
          void vscode.commands.executeCommand('workbench.action.openSettings', 'duet.path');
        }
      });
      return;
    }
    this.bridgeError = undefined;

    const options: Record<string, string> = {};
    for (const key of ['invite', 'server', 'name', 'color']) {
      const value = config.get<string>(key, '').trim();
      if (value) {
        options[key] = value;
      }
    }
    this.selector = documentSelector(config.get<string>('files', '**/*'));

    const serverOptions: ServerOptions = { command: this.bridgePath, args: [] };
    const clientOptions: LanguageClientOptions = {
      // A vscode.RelativePattern in a filter is passed through to vscode.languages.match as is.
      documentSelector: this.selector as LanguageClientOptions['documentSelector'],
      initializationOptions: options,
      outputChannel: this.output,
    };
    const client = new DuetClient('duet', 'duet', serverOptions, clientOptions);
    client.onNotification('duet/status', (status: Status) => this.onStatus(status));
    client.onNotification('duet/peers', (params: { peers: Peer[] }) => this.onPeers(params.peers ?? []));
    client.onNotification('window/showMessage', (message: Message) => this.onMessage(message));
    client.onNotification('duet/away', (away: Away) => this.onAway(away));
    client.onRequest('workspace/applyEdit', (params: ApplyWorkspaceEditParams) => this.applyEdit(client, params));
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped) {
        this.status = { state: 'idle' };
        this.onPeers([]);
      }
      this.render();
    });
    this.client = client;
    this.render();
    try {
      await client.start();
      this.log(`started ${this.bridgePath}`);
    } catch (e) {
      this.bridgeError = `duet: could not start ${this.bridgePath}: ${errorText(e)}`;
      this.log(this.bridgeError);
      void vscode.window.showErrorMessage(this.bridgeError);
    }
    this.render();
  }

  /**
   * `duet-lsp` was not on the PATH VS Code has (code-server takes its PATH from a login shell,
   * which may lack ~/.cargo/bin) but where `cargo install` puts it: it is used, and saving it as
   * `duet.path` is offered.
   */
  private offerBridgePath(found: string): void {
    const message = `duet: ${BRIDGE} is not on the PATH VS Code was given; using ${found}. Save it as the setting duet.path?`;
    this.log(message);
    void vscode.window.showInformationMessage(message, 'Save as duet.path').then((choice) => {
      if (choice) {
        void vscode.workspace.getConfiguration('duet').update('path', found, vscode.ConfigurationTarget.Global);
      }
    });
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.stopFollowing();
    if (client) {
      try {
        await client.stop(2000);
      } catch (e) {
        this.log(`stopping the bridge: ${errorText(e)}`);
      }
    }
    this.status = { state: 'idle' };
    this.onPeers([]);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Runs one of the bridge's commands; `undefined` when it failed (the bridge says why). */
  private async execute(command: string, args: unknown[], quiet?: string): Promise<any> {
    const client = this.client;
    if (!client || !client.isRunning()) {
      void vscode.window.showErrorMessage(this.bridgeError ?? 'duet: the bridge is not running.');
      return undefined;
    }
    if (quiet) {
      this.quiet.add(quiet);
    }
    try {
      return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
    } catch (e) {
      // The bridge has already shown the reason with window/showMessage.
      this.log(`${command} failed: ${errorText(e)}`);
      return undefined;
    } finally {
      if (quiet) {
        // The bridge's message may arrive just after the answer.
        setTimeout(() => this.quiet.delete(quiet), 2000);
      }
    }
  }

  /**
   * `workspace/applyEdit`, applied only if the document is still at the version the bridge saw.
   *
   * The language client's own handler checks the version when the request arrives, and VS Code
   * checks it again before an asynchronous step (for the active editor it first computes a
   * "more minimal" edit in a web worker) — but not after it: a key typed meanwhile goes in
   * first, the edit is applied on top of it with stale positions and answered `applied: true`,
   * and its echo comes after the user's change. duet-lsp relies on VS Code refusing such an
   * edit. A visible editor's `TextEditor.edit` is checked and applied in one step in the
   * renderer, so it is used whenever the document is shown; otherwise no editor is involved
   * and `workspace.applyEdit` checks the version right before applying.
   */
  private applyEdit(client: LanguageClient, params: ApplyWorkspaceEditParams): Promise<ApplyWorkspaceEditResult> {
    const run = this.editQueue.then(() => this.applyEditNow(client, params));
    this.editQueue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async applyEditNow(client: LanguageClient, params: ApplyWorkspaceEditParams): Promise<ApplyWorkspaceEditResult> {
    const changes = params.edit.documentChanges;
    const change = changes?.length === 1 && TextDocumentEdit.is(changes[0]) ? changes[0] : undefined;
    const uri = change && client.protocol2CodeConverter.asUri(change.textDocument.uri);
    const document = uri && vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
    if (!change || !uri || !document) {
      // Not the bridge's usual single-document edit: as the language client would do it.
      const edit = await client.protocol2CodeConverter.asWorkspaceEdit(params.edit);
      return { applied: await vscode.workspace.applyEdit(edit) };
    }
    const version = change.textDocument.version;
    if (typeof version === 'number' && document.version !== version) {
      return { applied: false, failureReason: `the document is at version ${document.version}, not ${version}` };
    }
    const edits = change.edits.map((e) => ({ range: toRange(e.range), newText: e.newText }));
    try {
      const editor = vscode.window.visibleTextEditors.find((e) => e.document === document);
      if (editor) {
        // Checked against the version the document has now (the one just compared).
        const applied = await editor.edit((builder) => edits.forEach((e) => builder.replace(e.range, e.newText)));
        return { applied };
      }
      const edit = new vscode.WorkspaceEdit();
      edits.forEach((e) => edit.replace(uri, e.range, e.newText));
      return { applied: await vscode.workspace.applyEdit(edit) };
    } catch (e) {
      return { applied: false, failureReason: errorText(e) };
    }
  }

  // ----- commands ------------------------------------------------------------------------------

  private async createRoom(server?: string): Promise<string | undefined> {
    server = server || vscode.workspace.getConfiguration('duet').get<string>('server', '').trim() || undefined;
    const result = await this.execute('duet.createRoom', server ? [server] : [], 'duet: room created');
    const invite: string | undefined = result?.invite;
    if (invite) {
      await vscode.env.clipboard.writeText(invite);
      void vscode.window.showInformationMessage(`duet: room created; the invite is in the clipboard: ${invite}`);
    }
    return invite;
  }

  private async joinRoom(invite?: string): Promise<void> {
    if (typeof invite !== 'string' || !invite) {
      invite = await vscode.window.showInputBox({
        title: 'duet: join a room',
        prompt: 'Paste an invite',
        placeHolder: 'ws://HOST:PORT/ws/<room>?token=<token>',
        ignoreFocusOut: true,
        validateInput: (value) =>
          /^wss?:\/\/[^/\s]+\/ws\/[^?\s]+\?token=\S+$/.test(value.trim())
            ? undefined
            : 'An invite looks like ws://HOST:PORT/ws/<room>?token=<token>',
      });
      if (!invite) {
        return;
      }
    }
    await this.execute('duet.joinRoom', [invite.trim()]);
  }

  private async leaveRoom(): Promise<void> {
    await this.execute('duet.leaveRoom', []);
    this.stopFollowing();
    this.onPeers([]);
  }

  private async copyInvite(): Promise<void> {
    const status: Status | undefined = await this.execute('duet.status', [], STATUS_MESSAGE);
    const invite = status?.invite;
    if (!invite) {
      void vscode.window.showInformationMessage('duet: not in a room. Create one or join one first.');
      return;
    }
    await vscode.env.clipboard.writeText(invite);
    void vscode.window.showInformationMessage('duet: invite copied to the clipboard.');
  }

  /**
   * The bridge's status, whole (room, server, connection and since when, peers, files, the
   * invite, recent messages), in a read-only editor tab that can be read and copied from.
   */
  private async showStatus(): Promise<void> {
    const status: Status | undefined = await this.execute('duet.status', [], STATUS_MESSAGE);
    if (status?.text) {
      this.statusText = status.text;
      const uri = vscode.Uri.from({ scheme: STATUS_SCHEME, path: 'duet status.md' });
      this.statusChanged.fire(uri);
      const document = await vscode.workspace.openTextDocument(uri);
      await vscode.languages.setTextDocumentLanguage(document, 'markdown');
      await vscode.window.showTextDocument(document, { preview: true });
    }
  }

  /**
   * "Open a room file…": the room's files in a quick pick; the bridge opens the one picked,
   * first creating it in the folder with the room's text if the folder lacks it.
   */
  private async openRoomFile(): Promise<void> {
    const status: Status | undefined = await this.execute('duet.status', [], STATUS_MESSAGE);
    if (!status) {
      return;
    }
    if (status.state === 'idle' || !status.files?.length) {
      void vscode.window.showInformationMessage(status.state === 'idle' ? 'duet: not in a room.' : 'duet: the room has no files.');
      return;
    }
    const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const items = status.files.map((file) => ({
      label: `$(file) ${file}`,
      description: root && fs.existsSync(path.join(root, file)) ? undefined : 'not in your folder yet',
      file,
    }));
    const picked = await vscode.window.showQuickPick(items, {
      title: `duet: open a file of room ${shortRoom(status.room)}`,
      placeHolder: 'A file your folder lacks is created with the room\'s text',
    });
    if (picked) {
      await this.execute('duet.openFile', [picked.file]);
    }
  }

  private async pickPeer(placeHolder: string, extra: vscode.QuickPickItem[] = []): Promise<Peer | 'extra' | undefined> {
    if (this.peers.length === 0 && extra.length === 0) {
      void vscode.window.showInformationMessage(
        this.status.state === 'idle' ? 'duet: not in a room.' : 'duet: nobody else is in the room.',
      );
      return undefined;
    }
    type Item = vscode.QuickPickItem & { peer?: Peer };
    const items: Item[] = this.peers.map((peer) => ({
      label: `$(account) ${peer.name}`,
      description: this.where(peer),
      detail: peer.clientId === this.following ? 'following' : undefined,
      peer,
    }));
    const picked = await vscode.window.showQuickPick<Item>([...items, ...extra], { placeHolder });
    if (!picked) {
      return undefined;
    }
    return picked.peer ?? 'extra';
  }

  private async showPeers(): Promise<void> {
    const peer = await this.pickPeer(`${this.peers.length} peer(s) in room ${shortRoom(this.status.room)}: pick one to go to their cursor`);
    if (peer && peer !== 'extra') {
      await this.reveal(peer, true);
    }
  }

  private async followPeer(who?: number | string): Promise<void> {
    let peer: Peer | 'extra' | undefined;
    if (who !== undefined) {
      peer = this.peers.find((p) => p.clientId === who || p.name === who);
      if (!peer) {
        void vscode.window.showWarningMessage(`duet: no peer ${who} in the room.`);
        return;
      }
    } else {
      const stop = this.following !== undefined ? [{ label: '$(circle-slash) Stop following' }] : [];
      peer = await this.pickPeer('Follow whom?', stop);
    }
    if (peer === 'extra') {
      this.stopFollowing();
    } else if (peer) {
      this.following = peer.clientId;
      // Where the peer is now: they may have moved while the list was open.
      const current = this.peers.find((p) => p.clientId === peer.clientId) ?? peer;
      this.followedUri = current.uri;
      this.render();
      await this.reveal(current, true);
    }
  }

  /**
   * Undo or redo in the active editor. In a shared document the bridge undoes the user's own
   * edits only (a peer's stay), for everyone, and the change comes back as an ordinary
   * `workspace/applyEdit`; then it puts the cursor there (`window/showDocument`). Anywhere else
   * it is VS Code's own undo or redo.
   */
  private async undo(which: 'undo' | 'redo'): Promise<void> {
    const document = vscode.window.activeTextEditor?.document;
    const client = this.client;
    if (!client || !document || !this.isShared(document)) {
      await vscode.commands.executeCommand(which);
      return;
    }
    await this.execute(`duet.${which}`, [client.code2ProtocolConverter.asUri(document.uri)]);
  }

  /** Whether the bridge shares `document` with the room: the client syncs it, and the room has it. */
  private isShared(document: vscode.TextDocument): boolean {
    // The bridge's root is the first workspace folder (the client's rootUri); room paths use `/`.
    const root = vscode.workspace.workspaceFolders?.[0]?.uri;
    if (!root || !this.status.files || !this.client?.isRunning() || document.uri.scheme !== 'file') {
      return false;
    }
    const relative = path.relative(root.fsPath, document.uri.fsPath).split(path.sep).join('/');
    return this.status.files.includes(relative) && vscode.languages.match(this.selector, document) > 0;
  }

  private stopFollowing(): void {
    if (this.following !== undefined) {
      this.following = undefined;
      this.followedUri = undefined;
      this.render();
    }
  }

  /** Shows the peer's cursor: opens their file if it is not the active one. */
  private async reveal(peer: Peer, open: boolean): Promise<void> {
    if (!peer.uri || !peer.range) {
      if (open) {
        void vscode.window.showInformationMessage(`duet: ${peer.name} has no file open.`);
      }
      return;
    }
    const uri = vscode.Uri.parse(peer.uri);
    if (uri.scheme === 'file' && !fs.existsSync(uri.fsPath)) {
      // A file of the room your folder lacks: the bridge creates it and shows the peer's cursor.
      if (open) {
        await this.execute('duet.jump', [peer.clientId]);
      }
      return;
    }
    const range = toRange(peer.range);
    let editor = vscode.window.visibleTextEditors.find((e) => sameUri(e.document.uri, uri));
    if (!editor || (open && vscode.window.activeTextEditor !== editor)) {
      editor = await vscode.window.showTextDocument(uri, { preserveFocus: false, preview: true });
    }
    editor.revealRange(range, vscode.TextEditorRevealType.InCenterIfOutsideViewport);
  }

  // ----- the room's history --------------------------------------------------------------------

  /** The workspace path of the active editor's file (the modified side of a diff), if shared. */
  private activePath(): string | undefined {
    const document = vscode.window.activeTextEditor?.document;
    const root = vscode.workspace.workspaceFolders?.[0]?.uri;
    if (!document || !root || document.uri.scheme !== 'file') {
      return undefined;
    }
    return path.relative(root.fsPath, document.uri.fsPath).split(path.sep).join('/');
  }

  /** "Room history…": pick a version, then see the active file (or the version's first) beside its text then. */
  private async history(): Promise<void> {
    const result = await this.execute('duet.versions', [100]);
    const versions: Version[] = result?.versions ?? [];
    if (!result) {
      return;
    }
    if (versions.length === 0) {
      void vscode.window.showInformationMessage('duet: the room has no versions yet.');
      return;
    }
    type Item = vscode.QuickPickItem & { version: Version };
    const items: Item[] = versions.map((version) => ({
      label: `#${version.id}${version.label ? `  ${version.label}` : ''}`,
      description: `${new Date(version.created_at).toLocaleString()} · ${version.authors.join(', ') || '—'}`,
      detail: version.files.map((f) => (f.change === 'changed' ? f.path : `${f.path} (${f.change})`)).join(', ') || 'no change',
      version,
    }));
    const picked = await vscode.window.showQuickPick(items, { placeHolder: 'duet: versions of the room, newest first' });
    if (!picked) {
      return;
    }
    const file = this.activePath() ?? picked.version.files[0]?.path;
    if (!file) {
      void vscode.window.showInformationMessage('duet: open a file of the room to compare it with that version.');
      return;
    }
    await this.showDiff(`version=${picked.version.id}`, file, `${file}: version ${picked.version.id} ↔ now`);
    this.historyShown = { version: picked.version.id, path: file };
    void vscode.commands.executeCommand('setContext', HISTORY_DIFF, true);
    void vscode.window
      .showInformationMessage(`duet: ${file} as in version ${picked.version.id} (left) and now (right).`, 'Restore this file', 'Restore all files')
      .then((choice) => {
        if (choice) {
          void this.restore(choice === 'Restore all files');
        }
      });
  }

  /** A diff of a history text (left) and the workspace file (right). */
  private async showDiff(query: string, file: string, title: string): Promise<void> {
    const root = vscode.workspace.workspaceFolders?.[0]?.uri;
    if (!root) {
      return;
    }
    const before = vscode.Uri.from({ scheme: HISTORY_SCHEME, path: `/${file}`, query });
    await vscode.commands.executeCommand('vscode.diff', before, vscode.Uri.joinPath(root, file), title);
  }

  private historyDiffShown(): boolean {
    const tab = vscode.window.tabGroups.activeTabGroup.activeTab;
    return tab?.input instanceof vscode.TabInputTextDiff && tab.input.original.scheme === HISTORY_SCHEME;
  }

  /** The text a history diff shows on its left: a file at a version, or when we left the room. */
  private async historyText(uri: vscode.Uri): Promise<string> {
    const file = uri.path.replace(/^\//, '');
    if (uri.query === 'away') {
      const result = await this.execute('duet.awayText', [file]);
      return typeof result?.text === 'string' ? result.text : '';
    }
    const version = Number(new URLSearchParams(uri.query).get('version'));
    const result = await this.execute('duet.versionText', [version, file]);
    return typeof result?.text === 'string' ? result.text : '';
  }

  /** Restores the file of the history diff shown (or every file) as in its version. */
  private async restore(all: boolean): Promise<void> {
    const shown = this.historyShown;
    if (!shown) {
      void vscode.window.showInformationMessage('duet: pick a version first (duet: Room history…).');
      return;
    }
    const args = all ? [shown.version] : [shown.version, shown.path];
    if (await this.execute('duet.restore', args)) {
      const tab = vscode.window.tabGroups.activeTabGroup.activeTab;
      if (tab && this.historyDiffShown()) {
        await vscode.window.tabGroups.close(tab);
      }
      void vscode.commands.executeCommand('setContext', HISTORY_DIFF, false);
    }
  }

  /** `duet/away`: the bridge says what changed; offer to show it. */
  private onAway(away: Away): void {
    if (away.files.length > 0) {
      this.quiet.add('duet: while you were away');
      setTimeout(() => this.quiet.delete('duet: while you were away'), 2000);
      const who = away.authors?.length ? away.authors.join(', ') : 'someone';
      const files = away.files.map((f) => f.path).join(', ');
      void vscode.window
        .showInformationMessage(`duet: while you were away, ${who} changed ${files}.`, 'Show changes')
        .then((choice) => {
          if (choice) {
            void this.away();
          }
        });
    }
  }

  /** "What changed while I was away": pick a file, see it beside its text when we left. */
  private async away(): Promise<void> {
    const away: Away | undefined = await this.execute('duet.away', []);
    if (!away) {
      return;
    }
    if (away.files.length === 0) {
      void vscode.window.showInformationMessage('duet: nothing changed while you were away.');
      return;
    }
    const picked = await vscode.window.showQuickPick(
      away.files.map((f) => ({ label: f.path, description: f.change })),
      { placeHolder: `duet: changed since you left (${new Date(away.since).toLocaleString()})` },
    );
    if (picked) {
      await this.showDiff('away', picked.label, `${picked.label}: when you left ↔ now`);
    }
  }

  // ----- from the bridge -----------------------------------------------------------------------

  private onStatus(status: Status): void {
    this.status = status;
    if (status.state !== 'offline' && status.state !== 'connecting') {
      this.endOfflineNotice?.();
      this.endOfflineNotice = undefined;
    }
    if (status.state === 'idle') {
      this.stopFollowing();
      this.onPeers([]);
    }
    this.render();
  }

  private onPeers(peers: Peer[]): void {
    this.peers = peers;
    if (this.following !== undefined) {
      const followed = peers.find((p) => p.clientId === this.following);
      if (!followed) {
        this.stopFollowing();
        void vscode.window.showInformationMessage('duet: the peer you followed left.');
      } else if (followed.uri) {
        const switched = followed.uri !== this.followedUri;
        this.followedUri = followed.uri;
        void this.reveal(followed, switched).catch((e) => this.log(`follow: ${errorText(e)}`));
      }
    }
    this.decorate();
    this.render();
  }

  private onMessage(message: Message): void {
    this.messages.push(message);
    if (this.messages.length > 50) {
      this.messages.shift();
    }
    this.log(message.message);
    if ([...this.quiet].some((prefix) => message.message.startsWith(prefix))) {
      return;
    }
    if (STATUS_BAR_MESSAGES.some((prefix) => message.message.startsWith(prefix))) {
      vscode.window.setStatusBarMessage(message.message, STATUS_BAR_MESSAGE_MS);
      return;
    }
    if (saysOffline(message.message)) {
      this.showOfflineNotice(message.message);
      return;
    }
    if (message.message.startsWith(NEW_FILE_MESSAGE)) {
      const file = message.message.slice(NEW_FILE_MESSAGE.length).trim();
      void vscode.window.showInformationMessage(message.message, 'Open').then((choice) => {
        if (choice) {
          void this.execute('duet.openFile', [file]);
        }
      });
      return;
    }
    switch (message.type) {
      case 1:
        void vscode.window.showErrorMessage(message.message);
        break;
      case 2:
        void vscode.window.showWarningMessage(message.message);
        break;
      default:
        void vscode.window.showInformationMessage(message.message);
    }
  }

  /**
   * The offline notice, as a notification that closes itself once the connection is back (or
   * the room is left): an ordinary one would stay on screen beside "back online".
   */
  private showOfflineNotice(text: string): void {
    this.endOfflineNotice?.();
    void vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: text, cancellable: false },
      () =>
        new Promise<void>((resolve) => {
          this.endOfflineNotice = resolve;
        }),
    );
  }

  // ----- our cursor ----------------------------------------------------------------------------

  private selectionChanged(e: vscode.TextEditorSelectionChangeEvent): void {
    if (e.textEditor.document.uri.scheme !== 'file') {
      return;
    }
    if (
      this.following !== undefined &&
      (e.kind === vscode.TextEditorSelectionChangeKind.Keyboard || e.kind === vscode.TextEditorSelectionChangeKind.Mouse)
    ) {
      this.stopFollowing();
    }
    // Throttled: at most one `duet/cursor` per 50 ms, the last selection always goes out.
    if (this.cursorTimer) {
      return;
    }
    const wait = Math.max(0, this.cursorSentAt + CURSOR_INTERVAL_MS - Date.now());
    this.cursorTimer = setTimeout(() => {
      this.cursorTimer = undefined;
      this.cursorSentAt = Date.now();
      this.sendCursor();
    }, wait);
  }

  private sendCursor(): void {
    const client = this.client;
    const editor = vscode.window.activeTextEditor;
    if (!client || !client.isRunning() || !editor || editor.document.uri.scheme !== 'file') {
      return;
    }
    const selection = editor.selection;
    const params = {
      uri: client.code2ProtocolConverter.asUri(editor.document.uri),
      position: { line: selection.active.line, character: selection.active.character },
      anchor: { line: selection.anchor.line, character: selection.anchor.character },
    };
    client.sendNotification('duet/cursor', params).catch((e) => this.log(`duet/cursor: ${errorText(e)}`));
  }

  // ----- peers' cursors ------------------------------------------------------------------------

  private decorationsFor(peer: Peer) {
    const color = safeColor(peer.color);
    const key = `${color}\n${peer.name}`;
    let entry = this.decorations.get(peer.clientId);
    if (entry && entry.key !== key) {
      entry.selection.dispose();
      entry.cursor.dispose();
      entry = undefined;
    }
    if (!entry) {
      entry = {
        key,
        selection: vscode.window.createTextEditorDecorationType({
          backgroundColor: withAlpha(color, 0.25),
          borderRadius: '2px',
          rangeBehavior: vscode.DecorationRangeBehavior.ClosedClosed,
        }),
        cursor: vscode.window.createTextEditorDecorationType({
          rangeBehavior: vscode.DecorationRangeBehavior.ClosedClosed,
          before: {
            contentText: '',
            border: `1px solid ${color}`,
            margin: '0 -1px 0 0',
            height: '1.1em',
          },
          after: {
            contentText: peer.name,
            color: '#ffffff',
            backgroundColor: color,
            margin: '0 0 0 2px',
            fontWeight: 'bold',
            textDecoration: 'none; font-size: 0.85em; padding: 0 3px; border-radius: 3px',
          },
        }),
      };
      this.decorations.set(peer.clientId, entry);
    }
    return entry;
  }

  /** Draws every peer's selection and cursor in the visible editors of their file. */
  private decorate(): void {
    const live = new Set(this.peers.map((p) => p.clientId));
    for (const [id, entry] of this.decorations) {
      if (!live.has(id)) {
        entry.selection.dispose();
        entry.cursor.dispose();
        this.decorations.delete(id);
      }
    }
    let count = 0;
    for (const editor of vscode.window.visibleTextEditors) {
      for (const peer of this.peers) {
        const { selection, cursor } = this.decorationsFor(peer);
        const here = peer.uri && peer.range && sameUri(editor.document.uri, vscode.Uri.parse(peer.uri));
        const range = here ? toRange(peer.range!) : undefined;
        const selections = range && !range.isEmpty ? [range] : [];
        const cursors = range ? [new vscode.Range(range.end, range.end)] : [];
        editor.setDecorations(selection, selections);
        editor.setDecorations(cursor, cursors);
        count += selections.length + cursors.length;
      }
    }
    this.decorationCount = count;
  }

  private disposeDecorations(): void {
    for (const entry of this.decorations.values()) {
      entry.selection.dispose();
      entry.cursor.dispose();
    }
    this.decorations.clear();
  }

  // ----- status bar and context ----------------------------------------------------------------

  /** Shows the state: the status-bar item, and the context key the undo keys depend on. */
  private render(): void {
    const editor = vscode.window.activeTextEditor;
    const shared = editor !== undefined && this.isShared(editor.document);
    if (shared !== this.sharedDocument) {
      this.sharedDocument = shared;
      void vscode.commands.executeCommand('setContext', SHARED_DOCUMENT, shared);
    }
    const item = this.statusItem;
    const peers = this.peers.length;
    const peerText = `${peers} ${peers === 1 ? 'peer' : 'peers'}`;
    const room = shortRoom(this.status.room);
    if (this.bridgeError && (!this.client || !this.client.isRunning())) {
      item.text = '$(error) duet: no bridge';
      item.tooltip = this.bridgeError;
    } else if (!this.client || this.client.state !== State.Running) {
      item.text = '$(sync~spin) duet: starting';
      item.tooltip = `Starting ${this.bridgePath ?? BRIDGE}`;
    } else {
      switch (this.status.state) {
        case 'connected':
          item.text = `$(broadcast) duet ${room} · connected · ${peerText}`;
          break;
        case 'connecting':
          item.text = `$(sync~spin) duet ${room} · connecting`;
          break;
        case 'offline':
          // Who is in the room is not known while offline.
          item.text = `$(debug-disconnect) duet ${room} · offline`;
          break;
        default:
          item.text = '$(broadcast) duet: no room';
      }
      const followed = this.peers.find((p) => p.clientId === this.following);
      if (followed) {
        item.text += ` · following ${followed.name}`;
      }
      const lines = [
        this.status.room ? `Room ${this.status.room} on ${this.status.server ?? '?'} (${this.status.state})` : 'Not in a room',
        ...(this.status.state === 'offline' ? [] : this.peers.map((p) => `${p.name}${p.path ? ` — ${this.where(p)}` : ''}`)),
        'Click for the peer list',
      ];
      item.tooltip = lines.join('\n');
    }
  }

  private where(peer: Peer): string {
    if (!peer.uri || !peer.range) {
      return peer.path ?? '';
    }
    const file = vscode.workspace.asRelativePath(vscode.Uri.parse(peer.uri));
    return `${file}:${peer.range.end.line + 1}`;
  }

  private log(line: string): void {
    this.output.appendLine(`[duet] ${line}`);
  }

  // ----- for the end-to-end test ---------------------------------------------------------------

  testState() {
    const editor = vscode.window.activeTextEditor;
    return {
      activated: true,
      bridge: this.bridgePath ?? null,
      bridgeError: this.bridgeError ?? null,
      running: this.client?.isRunning() ?? false,
      active: editor
        ? {
            path: editor.document.uri.fsPath,
            version: editor.document.version,
            dirty: editor.document.isDirty,
            text: editor.document.getText(),
            selection: {
              anchor: { line: editor.selection.anchor.line, character: editor.selection.anchor.character },
              active: { line: editor.selection.active.line, character: editor.selection.active.character },
            },
          }
        : null,
      sharedDocument: this.sharedDocument,
      history: this.historyShown ?? null,
      historyDiff: this.historyDiffShown(),
      tabs: vscode.window.tabGroups.all.flatMap((g) => g.tabs.map((t) => t.label)),
      statusBarText: this.statusItem.text,
      status: this.status,
      peers: this.peers,
      following: this.following ?? null,
      decorations: this.decorationCount,
      messages: this.messages.map((m) => m.message),
    };
  }

  private writeTestState(file: string): void {
    const text = JSON.stringify(this.testState());
    if (text === this.testWritten) {
      return;
    }
    try {
      fs.writeFileSync(`${file}.tmp`, text);
      fs.renameSync(`${file}.tmp`, file);
      this.testWritten = text;
    } catch (e) {
      this.log(`test state: ${errorText(e)}`);
    }
  }
}

// ----- helpers ---------------------------------------------------------------------------------

/**
 * The language client without its command feature. The bridge's commands are the extension's own
 * (they need an input box, the clipboard, ...) and send `workspace/executeCommand` themselves; the
 * stock feature would register VS Code commands under the same names as the bridge lists them.
 */
class DuetClient extends LanguageClient {
  override registerFeature(feature: StaticFeature | DynamicFeature<unknown>): void {
    if ('registrationType' in feature && feature.registrationType.method === ExecuteCommandRequest.method) {
      return;
    }
    super.registerFeature(feature);
  }
}

/** The bridge binary: `duet.path` if set (with `~` and `${workspaceFolder}`), else `duet-lsp` on PATH. */
function findBridge(configured: string): string | undefined {
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  configured = configured.trim();
  if (configured) {
    let p = configured.replace(/^~(?=$|\/)/, os.homedir());
    if (folder) {
      p = p.replace(/\$\{workspaceFolder\}/g, folder);
    }
    if (!path.isAbsolute(p) && folder) {
      p = path.join(folder, p);
    }
    return executable(p) ? p : undefined;
  }
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir || '.', BRIDGE);
    if (executable(p)) {
      return p;
    }
  }
  return undefined;
}

/** Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`. */
function cargoBin(): string {
  return path.join(process.env.CARGO_HOME || path.join(os.homedir(), '.cargo'), 'bin');
}

/** `duet-lsp` where `cargo install` puts it, if it is there. */
function cargoInstalled(): string | undefined {
  const p = path.join(cargoBin(), BRIDGE);
  return executable(p) ? p : undefined;
}

function executable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** All files (`**\/*`), or the files matching the glob in each workspace folder. */
function documentSelector(glob: string): vscode.DocumentFilter[] {
  glob = glob.trim();
  const folders = vscode.workspace.workspaceFolders ?? [];
  if (!glob || glob === '**/*' || glob === '**' || folders.length === 0) {
    return [{ scheme: 'file' }];
  }
  return folders.map((folder) => ({ scheme: 'file', pattern: new vscode.RelativePattern(folder, glob) }));
}

function toRange(range: { start: Position; end: Position }): vscode.Range {
  return new vscode.Range(range.start.line, range.start.character, range.end.line, range.end.character);
}

function sameUri(a: vscode.Uri, b: vscode.Uri): boolean {
  return a.scheme === b.scheme && (a.scheme === 'file' ? a.fsPath === b.fsPath : a.toString() === b.toString());
}

function shortRoom(room?: string): string {
  return room ? room.slice(0, 8) : '—';
}

function safeColor(color: string | undefined): string {
  return color && /^#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?$/.test(color) ? color : DEFAULT_COLOR;
}

function withAlpha(color: string, alpha: number): string {
  let hex = color.slice(1);
  if (hex.length === 3) {
    hex = [...hex].map((c) => c + c).join('');
  }
  const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
