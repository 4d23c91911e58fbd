"""The approval dialog: the argv a command would run, or an edit's diff hunk by hunk.

A command shows one argument per line (exactly what the program receives) and any warnings the
policy found; the user runs it once, allows this exact argv from now on (a rule in the
approvals file), or rejects it. An edit shows each hunk with a checkbox, all ticked; the user
unticks the hunks to leave out and applies the rest, or rejects the edit. Only the user's keys
and clicks here produce an `Approval`: the model's text never reaches this code as a decision."""

from __future__ import annotations

import shlex

from rich.syntax import Syntax
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Label, Static

from assistant.approval import Approval, ApprovalRequest, Rule


class ApprovalScreen(ModalScreen[Approval]):
    """Asks about one tool call; dismisses with the user's `Approval`."""

    CSS_PATH = "approval.tcss"
    BINDINGS = [
        Binding("y", "approve", "Approve", id="approval.approve"),
        Binding("a", "always", "Always allow", id="approval.always"),
        Binding("n,escape", "reject", "Reject", id="approval.reject"),
    ]

    def __init__(self, request: ApprovalRequest) -> None:
        super().__init__()
        self.request = request

    def compose(self) -> ComposeResult:
        req = self.request
        with Vertical(id="dialog"):
            yield Label(f"Allow the assistant to {req.summary}?", id="question", markup=False)
            for warning in req.warnings:
                yield Label(f"⚠ {warning}", classes="warning", markup=False)
            with VerticalScroll(id="details"):
                if req.argv:
                    yield Static("\n".join(f"argv[{i}] = {shlex.quote(a)}" for i, a in enumerate(req.argv)),
                                 id="argv", markup=False)
                for i, hunk in enumerate(req.hunks):
                    yield Checkbox(f"apply hunk {i + 1} of {len(req.hunks)}", True, id=f"hunk-{i}")
                    yield Static(Syntax(hunk, "diff", theme="ansi_dark", word_wrap=True), classes="hunk")
            with Horizontal(id="buttons"):
                yield Button("Approve (y)", id="approve", variant="success")
                if req.argv and not req.warnings:
                    yield Button("Always (a)", id="always")
                yield Button("Reject (n)", id="reject", variant="error")

    def on_mount(self) -> None:
        self.query_one("#approve", Button).focus()

    def _chosen_hunks(self) -> frozenset[int]:
        return frozenset(i for i in range(len(self.request.hunks)) if self.query_one(f"#hunk-{i}", Checkbox).value)

    @on(Button.Pressed, "#approve")
    def action_approve(self) -> None:
        hunks = self._chosen_hunks()
        self.dismiss(Approval(approved=not self.request.hunks or bool(hunks), hunks=hunks))

    @on(Button.Pressed, "#always")
    def action_always(self) -> None:
        if not self.request.argv or self.request.warnings:
            self.notify("only a command without warnings can be allowed always", severity="warning")
            return
        self.dismiss(Approval(approved=True, remember=Rule("run_command", argv=self.request.argv)))

    @on(Button.Pressed, "#reject")
    def action_reject(self) -> None:
        self.dismiss(Approval(approved=False))
