"""Express Gateway's admin REST API, served on the admin port (observe/admin.py): ``/users``,
``/apps``, ``/credentials`` and ``/scopes`` over consumers.yml, ``/api-endpoints``,
``/service-endpoints``, ``/pipelines`` and ``/policies`` over gateway.config.yml. Every write is
checked as the gateway loads the file, kept out of the file if invalid, and served before the
answer; ``mitmgateway consumers`` runs the same handlers on the files when no gateway runs."""

from __future__ import annotations

from pathlib import Path

from ..stores import StoreSettings
from .config_sections import ConfigSections, check_gateway_config
from .consumer_entities import ConsumerEntities
from .credential_entities import CredentialEntities
from .routes import AdminRequest, Reply, RouteTable
from .store import Applied, ConsumerFile, ConsumerStore, EditedFile, SharedConsumerDocument

__all__ = ["AdminApi", "AdminRequest", "Reply"]


class AdminApi:
    def __init__(
        self,
        config_file: Path | None,
        consumers_file: Path,
        applied: Applied = lambda _source, _is_served: None,
        consumer_store: StoreSettings | None = None,
    ) -> None:
        """`applied`: see store.py; `config_file` None: only the consumers' endpoints;
        `consumer_store`: the Redis that keeps the consumers, if not `consumers_file`."""
        consumers: ConsumerStore = (
            SharedConsumerDocument(consumer_store, applied)
            if consumer_store is not None
            else ConsumerFile(consumers_file, applied)
        )
        self.routes = RouteTable()
        self.routes.extend(ConsumerEntities(consumers).routes())
        self.routes.extend(CredentialEntities(consumers).routes())
        if config_file is not None:
            self.routes.extend(
                ConfigSections(EditedFile(config_file, check_gateway_config, applied)).routes()
            )

    def handle(self, request: AdminRequest) -> Reply:
        return self.routes.dispatch(request)
