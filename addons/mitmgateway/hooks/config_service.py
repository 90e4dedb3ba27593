"""The config service: gateway.config.yml loaded, watched and swapped whole.

The compiled config is one immutable object swapped whole on reload (a reference assignment):
each request sees the old config or the new one, never a mix, and a bad file leaves the old one
serving. The addons that act on a new config (listeners, the request gate, observation) follow
`CurrentConfig` and are told of each swap in the order they began to follow it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, exceptions

from ..config.assemble import load_config
from ..config.errors import ConfigError
from ..config.model import GatewayConfig
from ..observe.metrics import GatewayMetrics
from ..policies import StepState

logger = logging.getLogger("mitmgateway")

CONFIG_POLL_SECONDS = 0.2
Follower = Callable[[GatewayConfig, "GatewayConfig | None"], None]


class CurrentConfig:
    """The config in service (None until one is valid), and who follows its swaps."""

    def __init__(self) -> None:
        self.config: GatewayConfig | None = None
        self._followers: list[Follower] = []

    def follow(self, apply: Follower) -> None:
        """Call ``apply(new, previous)`` on every swap."""
        self._followers.append(apply)

    def swap(self, config: GatewayConfig) -> None:
        previous, self.config = self.config, config
        for apply in self._followers:
            apply(config, previous)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class ConfigService:
    def __init__(self, current: CurrentConfig, metrics: GatewayMetrics) -> None:
        self.current = current
        self.metrics = metrics
        self.state = StepState()
        self.config_file: Path | None = None
        self._config_signature: tuple[object, ...] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "gateway_config",
            str,
            "gateway.config.yml",
            "The gateway's config file (Express Gateway's gateway.config.yml format, YAML or JSON).",
        )

    def configure(self, updated: set[str]) -> None:
        if "gateway_config" not in updated:
            return
        path = Path(ctx.options.gateway_config).expanduser().absolute()
        try:
            self._load(path)
        except ConfigError as e:
            if self.current.config is not None:
                # A change of the option at run time is refused and rolled back.
                raise exceptions.OptionsError(f"invalid gateway config: {e}") from None
            # At startup one clear line is enough: mitmproxy exits on errors logged then.
            # Nothing listens meanwhile (mitmproxy would otherwise open its default proxy port
            # and say so just before exiting); a host that keeps running (no error check)
            # listens once the file is fixed.
            logger.error("invalid gateway config: %s", e)
            self.config_file = path
            ctx.options.update(mode=[])
            return
        self.config_file = path
        assert self.current.config is not None
        logger.info("serving %s: %s", path, self.current.config.summary)

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_config())

    def done(self) -> None:
        self.state.keep_only(set())  # a code reload starts afresh: release what the old code held
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _load(self, path: Path) -> None:
        """Load `path` and swap it in (a ConfigError leaves the config in service as it is)."""
        first = file_signature(path)
        try:
            config = load_config(path, self.state)
            self.state.keep_only(set(config.used_state))
            self.current.swap(config)
        finally:
            # The config file as it was before loading (an edit meanwhile is seen next poll), and
            # the files the config in service was read from as they are now.
            self._config_signature = (first, *self._signature(path)[1:])

    def _watched(self, config_file: Path) -> tuple[Path, ...]:
        """The config file (first) and every other file the config in service was read from."""
        config = self.current.config
        return (config_file, *(config.watched_files[1:] if config is not None else ()))

    def _signature(self, config_file: Path) -> tuple[object, ...]:
        return tuple(file_signature(f) for f in self._watched(config_file))

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            if self.config_file is None:
                continue
            signature = self._signature(self.config_file)
            if signature[0] is None or signature == self._config_signature:
                continue
            before = self._config_signature or ()
            files = self._watched(self.config_file)
            # The files whose change the signature shows, for the reload's log line.
            changed = [f for i, f in enumerate(files) if i >= len(before) or before[i] != signature[i]]
            try:
                self._load(self.config_file)
            except ConfigError as e:
                self.metrics.config_reloaded(False)
                logger.error("config change refused, still serving the last good config: %s", e)
                continue
            self.metrics.config_reloaded(True)
            logger.info("config reloaded: %s changed", ", ".join(map(str, changed or [self.config_file])))
