"""Modal screens: confirm a choice, edit hyperparameters, show the keys, list the changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from gantui.errors import GantuiError

Validate = Callable[[dict[str, str]], dict[str, Any]]
"""Turns raw text per key into typed values, or raises :class:`GantuiError` with one line."""


class ChoiceModal(ModalScreen[str]):
    """A question with a few answers, each on a button and a key; Escape answers ``cancel``."""

    BINDINGS = [Binding("escape", "choose('cancel')", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]]) -> None:
        """``choices``: ``(key, label, result)`` triples, e.g. ``("s", "Checkpoint and stop",
        "stop")``; the dialog is dismissed with the chosen ``result``."""
        super().__init__()
        self.question = question
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                for key, label, result in self.choices:
                    variant = "error" if result == "stop" else "default"
                    yield Button(f"{label} [{key}]", id=f"choice-{result}", variant=variant)

    def on_key(self, event) -> None:  # noqa: ANN001 - textual.events.Key
        for key, _, result in self.choices:
            if event.key == key:
                event.stop()
                self.dismiss(result)
                return

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss((event.button.id or "choice-cancel").removeprefix("choice-"))

    def action_choose(self, result: str) -> None:
        """Dismiss with ``result``."""
        self.dismiss(result)


class _FormBase(ModalScreen[dict[str, Any] | None]):
    """Shared behaviour: validate on Enter or Apply, show the error, Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, validate: Validate) -> None:
        super().__init__()
        self.title_text = title
        self.validate = validate
        self.error: str = ""
        """The last refusal shown to the user ("" when none)."""

    def raw_values(self) -> dict[str, str]:
        """The text the user typed, by key."""
        raise NotImplementedError

    def buttons(self) -> ComposeResult:
        with Horizontal(classes="buttons"):
            yield Button("Apply [enter]", id="apply", variant="primary")
            yield Button("Cancel [esc]", id="cancel")

    def submit(self) -> None:
        """Validate everything; dismiss with typed values, or stay open and say what's wrong."""
        try:
            typed = self.validate(self.raw_values())
        except GantuiError as exc:
            self.error = str(exc)
            self.query_one("#error", Static).update(Text(f"✖ {exc}", style="bold red"))
            return
        self.dismiss(typed)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        """Close without changing anything."""
        self.dismiss(None)


class FieldsModal(_FormBase):
    """One labelled input per key, prefilled with the current values (the ``l`` dialog)."""

    def __init__(self, title: str, values: dict[str, str], validate: Validate) -> None:
        super().__init__(title, validate)
        self.values = values

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            for key, value in self.values.items():
                with Horizontal(classes="field"):
                    yield Label(key, classes="field-label")
                    yield Input(value, id=f"in-{key}", select_on_focus=True)
            yield Static("", id="error")
            yield from self.buttons()

    def raw_values(self) -> dict[str, str]:
        return {key: self.query_one(f"#in-{key}", Input).value for key in self.values}


class KeyValueModal(_FormBase):
    """Pick any live key from a list, edit its value (the ``e`` dialog)."""

    def __init__(self, title: str, values: dict[str, str], validate: Validate,
                 docs: dict[str, str] | None = None) -> None:
        super().__init__(title, validate)
        self.values = values
        self.docs = docs or {}
        self.key = next(iter(values), "")
        """The key being edited."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            yield OptionList(*[Option(f"{k} = {v}", id=k) for k, v in self.values.items()],
                             id="keys")
            yield Static("", id="doc")
            with Horizontal(classes="field"):
                yield Label(self.key, id="key-label", classes="field-label")
                yield Input(self.values.get(self.key, ""), id="value", select_on_focus=True)
            yield Static("", id="error")
            yield from self.buttons()

    def on_mount(self) -> None:
        self.query_one("#keys", OptionList).highlighted = 0
        self.query_one("#value", Input).focus()

    def select(self, key: str) -> None:
        """Edit ``key``: prefill its current value."""
        self.key = key
        self.query_one("#key-label", Label).update(key)
        self.query_one("#value", Input).value = self.values.get(key, "")
        self.query_one("#doc", Static).update(Text(self.docs.get(key, ""), style="dim"))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.select(event.option.id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.select(event.option.id)
            self.query_one("#value", Input).focus()

    def raw_values(self) -> dict[str, str]:
        return {self.key: self.query_one("#value", Input).value}


class HelpModal(ModalScreen[None]):
    """The keys, generated from the app's bindings, plus how to read the dashboard."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("question_mark", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str, bool]], notes: str) -> None:
        """``keys``: ``(key, description, available_now)`` triples."""
        super().__init__()
        self.keys = keys
        self.notes = notes

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Keys\n", style="bold")
        for key, description, available in self.keys:
            text.append(f"  {key:>3}  ", style="bold cyan" if available else "dim")
            text.append(description + ("" if available else " (not now)") + "\n",
                        style="" if available else "dim")
        text.append("\n" + self.notes, style="dim")
        with Vertical(classes="dialog"):
            yield Static(text, id="help-text")
            yield Button("Close [esc]", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        """Back to the dashboard."""
        self.dismiss(None)


class ChangesModal(ModalScreen[None]):
    """The run's changes marked on the charts (all of them, or those near a click), newest
    first, scrolling when there are many."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("m", "close", "Close")]

    def __init__(self, title: str, text: Text) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            with VerticalScroll(id="changes"):
                yield Static(self.text, id="changes-text")
            yield Button("Close [esc]", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        """Back to the dashboard."""
        self.dismiss(None)
