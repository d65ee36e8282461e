"""ssehub: real-time updates over Server-Sent Events.

Publish events to named channels; browsers and services subscribe to one or more channels and receive them
within milliseconds; a subscriber that reconnects gets exactly what it missed.
"""

from ssehub.app import create_api, create_app
from ssehub.auth import Authenticator
from ssehub.brokers import Broker, BrokerStatus, History, MemoryBroker, create_broker
from ssehub.brokers.redis import RedisBroker
from ssehub.encoder import encode
from ssehub.events import Event, EventId
from ssehub.exceptions import (
    AuthenticationError,
    AuthUnavailableError,
    BrokerUnavailableError,
    ChannelLimitError,
    ConnectionLimitError,
    HubNotRunningError,
    InvalidEventIdError,
    InvalidValueError,
    LimitExceededError,
    MissingDependencyError,
    PermissionDeniedError,
    SSEHubError,
    UnknownChannelError,
)
from ssehub.grants import Grant
from ssehub.hub import Hub
from ssehub.publisher import AsyncPublisher, Publisher
from ssehub.settings import Settings
from ssehub.subscription import Subscription

__version__ = "0.1.0"

__all__ = [
    "AsyncPublisher",
    "AuthUnavailableError",
    "AuthenticationError",
    "Authenticator",
    "Broker",
    "BrokerStatus",
    "BrokerUnavailableError",
    "ChannelLimitError",
    "ConnectionLimitError",
    "Event",
    "EventId",
    "Grant",
    "History",
    "Hub",
    "HubNotRunningError",
    "InvalidEventIdError",
    "InvalidValueError",
    "LimitExceededError",
    "MemoryBroker",
    "MissingDependencyError",
    "PermissionDeniedError",
    "Publisher",
    "RedisBroker",
    "SSEHubError",
    "Settings",
    "Subscription",
    "UnknownChannelError",
    "__version__",
    "create_api",
    "create_app",
    "create_broker",
    "encode",
]
