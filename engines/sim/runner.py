"""``SimServer``: a simulator on a loopback port in a background thread.

Usable as a context manager; ``start()`` returns once the port accepts connections.
Several can run in one process, each with its own app, state and metrics registry.
"""

from __future__ import annotations

from engines.asgi_thread import BackgroundServer
from engines.sim.config import SimConfig
from engines.sim.server import create_sim_app
from engines.sim.state import SimState


class SimServer(BackgroundServer):
    def __init__(self, config: SimConfig, *, port: int | None = None) -> None:
        self.config = config
        self.app = create_sim_app(config)
        super().__init__(self.app, port=port)

    @property
    def state(self) -> SimState:
        """The live state (read it from tests; change it over ``/sim/control``)."""
        state: SimState = self.app.state.sim
        return state

    def __enter__(self) -> SimServer:
        self.start()
        return self
