"""The config service: gateway.config.yml loaded, watched and swapped whole.

The compiled config is one immutable object swapped whole on reload (a reference assignment):
each request sees the old config or the new one, never a mix, and a bad file leaves the old one
serving. The addons that act on a new config (listeners, the request gate, observation) follow
`CurrentConfig` and are told of each swap in the order they began to follow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mitmproxy import ctx, exceptions

from ..config.assemble import load_config
from ..config.errors import ConfigError
from ..config.model import GatewayConfig
from ..config.source import FileSignature, file_signature
from ..observe.metrics import GatewayMetrics
from ..policies import StepState
from ..shared_consumers import SharedConsumers

logger = logging.getLogger("mitmgateway")

CONFIG_POLL_SECONDS = 0.2
Follower = Callable[[GatewayConfig, "GatewayConfig | None"], None]


class CurrentConfig:
    """The config in service (None until one is valid), and who follows its swaps."""

    def __init__(self) -> None:
        self.config: GatewayConfig | None = None
        self._file_sources: dict[str, object] = {}
        self._followers: list[Follower] = []

    def follow(self, apply: Follower) -> None:
        """Call ``apply(new, previous)`` on every swap."""
        self._followers.append(apply)

    def served(self) -> dict[str, object]:
        """What the config in service was read from, as it was then: each file's signature, and
        the version of consumers kept in Redis. The admin API waits for its writes to show here."""
        sources = dict(self._file_sources)
        config = self.config
        if config is not None and isinstance(config.consumers, SharedConsumers):
            sources[config.consumers.source_key] = config.consumers.version
        return sources

    def swap(self, config: GatewayConfig, read: Mapping[Path, FileSignature | None] | None = None) -> None:
        """Serve `config`; `read`: the signatures its files had when it was read (else now)."""
        signatures = read or {}
        self._file_sources = {
            str(file): list(sig) if (sig := signatures.get(file, file_signature(file))) else None
            for file in config.watched_files
        }
        previous, self.config = self.config, config
        for apply in self._followers:
            apply(config, previous)


class WatchedFiles:
    """Which of a config's files (the config file first, then what it was read from) changed
    since it was last loaded; shared by the serving config and the shadow config."""

    def __init__(self) -> None:
        self._seen: tuple[FileSignature | None, ...] = ()

    @contextmanager
    def loading(
        self, config_file: Path, others: Callable[[], Iterable[Path]]
    ) -> Iterator[dict[Path, FileSignature | None]]:
        """Around a load: yields the signatures the config's files had before it was read (the
        config file and `others()`, the files of the config in service). Afterwards (loaded or
        refused) each file counts as it was then, so an edit made while the load read it is
        seen next poll; a file the new config adds, as it is now."""
        before = {f: file_signature(f) for f in (config_file, *others())}
        try:
            yield before
        finally:
            files = (config_file, *others())
            self._seen = tuple(before[f] if f in before else file_signature(f) for f in files)

    def changed(self, files: tuple[Path, ...]) -> list[Path]:
        """The files that changed since the last load (none while the config file is missing)."""
        now = tuple(file_signature(f) for f in files)
        if now[0] is None or now == self._seen:
            return []
        seen = self._seen
        return [f for i, f in enumerate(files) if i >= len(seen) or seen[i] != now[i]] or [files[0]]


class ConfigService:
    def __init__(self, current: CurrentConfig, metrics: GatewayMetrics) -> None:
        self.current = current
        self.metrics = metrics
        self.state = StepState()
        self.config_file: Path | None = None
        self.files = WatchedFiles()
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
        with self.files.loading(path, lambda: self._watched(path)[1:]) as read:
            config = load_config(path, self.state)
            self.state.keep_only(set(config.used_state))
            self.current.swap(config, read)

    def _watched(self, config_file: Path) -> tuple[Path, ...]:
        """The config file (first) and every other file the config in service was read from."""
        config = self.current.config
        return (config_file, *(config.watched_files[1:] if config is not None else ()))

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            if self.config_file is None:
                continue
            changed = self.files.changed(self._watched(self.config_file))
            if not changed:
                continue
            try:
                self._load(self.config_file)
            except ConfigError as e:
                self.metrics.config_reloaded(False)
                logger.error("config change refused, still serving the last good config: %s", e)
                continue
            self.metrics.config_reloaded(True)
            logger.info("config reloaded: %s changed", ", ".join(map(str, changed)))
