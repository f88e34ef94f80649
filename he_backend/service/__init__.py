"""The HTTP service (:mod:`~he_backend.service.app`) with its tokens
(:mod:`~he_backend.service.auth`) and memory bounds (:mod:`~he_backend.service.memory`), and
its remote client (:mod:`~he_backend.service.remote`)."""
from .app import ServiceLimits, create_app
from .remote import RemoteClient, ServiceError

__all__ = ["RemoteClient", "ServiceError", "ServiceLimits", "create_app"]
