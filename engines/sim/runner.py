"""``SimServer``: a simulator on a loopback port in a background thread."""

from __future__ import annotations

from engines.asgi_thread import BackgroundServer
from engines.sim.config import SimConfig
from engines.sim.server import create_sim_app


class SimServer(BackgroundServer):
    def __init__(self, config: SimConfig, *, port: int | None = None) -> None:
        self.config = config
        super().__init__(create_sim_app(config), port=port)
