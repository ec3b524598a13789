"""The command room: what steering asks (pause, resume, checkpoint, stop, set) carried out
between steps, and answered.

Commands arrive through the :class:`~gantui.engine.control.Controller` (the dashboard, the
control socket, signals). The room shares them over the run's channel, so that on several
ranks every rank applies rank 0's commands at the same step, in the same order, and a stop
asked on any rank (its SIGTERM) stops them all; a single process shares them with itself
(:class:`~gantui.engine.distributed.LocalChannel`), every step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gantui import events as ev
from gantui.engine.control import Command
from gantui.errors import GantuiError

if TYPE_CHECKING:
    from gantui.engine.trainer import Trainer


class Commands:
    """Applies the controller's commands to a trainer at the step boundaries it chooses."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.stop_asked = False
        """A stop signal on a rank other than 0, sent to every rank at the next exchange."""
        self.stop_replies: list[Command] = []
        """Stop requests, answered once the final checkpoint is written."""

    def poll(self, force: bool = False) -> None:
        """Apply what arrived, at this step if it is a meeting step of the ranks (every step
        for a single process), or now with ``force`` (the end of the run)."""
        if force or self.t.step % self.t.channel.sync_every == 0:
            self._exchange()

    def wait_while_paused(self) -> None:
        """Block between steps while paused, applying commands as they come (rank 0 waits
        for one, the others for rank 0: the ranks keep meeting, so no collective waits
        anywhere near its timeout)."""
        t = self.t
        started = time.perf_counter()
        while t.paused and not t.stopping:
            first = t.controller.get(timeout=t.channel.paused_poll_s) if t.world.main else None
            self._exchange(first)
        t.paused_for(time.perf_counter() - started)

    def _exchange(self, first: Command | None = None) -> None:
        t = self.t
        local = [] if first is None else [first]
        while (command := t.controller.get()) is not None:
            local.append(command)
        if not t.world.main:  # only a stop is ever asked of another rank (its signal handler)
            for command in local:
                self.stop_asked = self.stop_asked or command.action == "stop"
                command.reply.set_result({"action": command.action, "step": t.step})
            local = []
        commands, stop = t.channel.share(local, self.stop_asked)
        for command in commands:
            self.apply(command)
        if stop and not t.stopping:
            self.apply(Command("stop", source="a signal on another rank"))

    def apply(self, command: Command) -> None:
        """Carry out one command and answer its future; refusals are journaled."""
        t = self.t
        try:
            ack = self._carry_out(command)
        except GantuiError as exc:
            t.emit(ev.Alert(t.step, "control", f"refused {command.action} from "
                            f"{command.source}: {exc}"))
            command.reply.set_exception(exc)
            return
        except OSError as exc:  # a requested checkpoint on a full disk: the run goes on
            t.set_state("paused" if t.paused else "running", journal=False)
            message = (f"{command.action} from {command.source} failed: "
                       f"{t.checkpoints.failure(exc)}; "
                       f"{'the run stays paused' if t.paused else 'training continues'}")
            t.emit(ev.Alert(t.step, "error", message))
            command.reply.set_exception(GantuiError(message))
            return
        if ack is not None:
            command.reply.set_result(ack)

    def _carry_out(self, command: Command) -> dict[str, Any] | None:
        t = self.t
        action = command.action
        ack: dict[str, Any] = {"action": action, "step": t.step}
        if action == "pause":
            if not t.paused:
                t.paused = True
                t.set_state("paused", f"paused by {command.source}")
        elif action == "resume":
            if t.paused:
                t.paused = False
                t.set_state("running", f"resumed by {command.source}")
        elif action == "checkpoint":
            path = t.checkpoints.write(f"requested by {command.source}")
            if path is None:
                raise GantuiError("checkpoint refused: the weights are not finite")
            ack["path"] = str(path)
        elif action == "stop":
            t.stopping = True
            self.stop_replies.append(command)
            return None  # answered once the final checkpoint is written
        elif action == "set":
            ack["changes"] = t.set_live(command.changes)
        elif action == "journal":
            t.emit(ev.Alert(t.step, str(command.changes["kind"]), str(command.changes["message"])))
        return ack

    def answer_stops(self, path: str) -> None:
        """The run ended as asked: answer every stop request with the final checkpoint."""
        for command in self.stop_replies:
            command.reply.set_result({"action": "stop", "step": self.t.step, "path": path})
        self.stop_replies.clear()

    def fail_pending(self, state: str) -> None:
        """Answer commands that arrived too late to be applied; a journal entry (a terminal
        lost while the run stopped, say) is still written, before the final state."""
        while (command := self.t.controller.get()) is not None:
            if command.action == "journal":
                self.apply(command)
            else:
                command.reply.set_exception(GantuiError(f"run already {state}"))

    def fail_all(self, exc: Exception) -> None:
        """The run crashed: every waiting stop request and late command learns why."""
        for command in self.stop_replies:
            command.reply.set_exception(GantuiError(f"run crashed: {exc}"))
        self.stop_replies.clear()
        self.fail_pending("crashed")
