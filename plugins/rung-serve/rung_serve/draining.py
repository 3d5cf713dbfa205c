"""uvicorn that drains on SIGTERM: it stops taking requests, lets those in flight finish, exits 0.

uvicorn on its own closes its socket at once on SIGTERM and then re-raises the signal, so the
process ends killed by it. Here the first SIGTERM (or Ctrl-C) only sets the app's gate to
draining: new requests get 503 (/health says "draining", so a load balancer stops sending),
the ones in flight, streams included, run to their end (each within the request time limit),
and when none is left uvicorn shuts down as usual and `rung serve` returns, exit status 0.
A second signal stops at once (uvicorn's forced exit, the signal then ends the process).
"""

from __future__ import annotations

import signal
from types import FrameType

import click
import uvicorn

from rung_serve.limits import Gate

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gate: Gate) -> None:
        super().__init__(config)
        self.gate = gate
        self._said_draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: only flags here, the event loop acts on them in on_tick.
        if sig in DRAIN_SIGNALS and not self.gate.draining:
            self.gate.drain()
            return
        self._captured_signals.append(sig)  # uvicorn re-raises it after its shutdown
        self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.gate.draining:
            if not self._said_draining:
                self._said_draining = True
                click.echo(f"rung serve: draining: {self.gate.in_flight} request(s) in flight, no new ones taken "
                           "(signal again to stop now)", err=True)
            if self.gate.in_flight == 0:
                self.should_exit = True
        return await super().on_tick(counter)
