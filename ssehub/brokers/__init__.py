"""Brokers: the memory broker (default, one process) and the Redis broker (``ssehub[redis]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssehub.brokers.base import Broker, BrokerStatus, DeliverCallback, GapCallback, History, Replay
from ssehub.brokers.memory import MemoryBroker

if TYPE_CHECKING:
    from ssehub.settings import Settings

__all__ = [
    "Broker",
    "BrokerStatus",
    "DeliverCallback",
    "GapCallback",
    "History",
    "MemoryBroker",
    "Replay",
    "create_broker",
]


def create_broker(settings: Settings) -> Broker:
    """Build the broker that ``settings.broker_url`` names.

    Raises:
        MissingDependencyError: a Redis URL without the ``ssehub[redis]`` extra installed.
    """
    if settings.broker_url.startswith("memory://"):
        return MemoryBroker(
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            max_channels=settings.max_channels,
        )
    from ssehub.brokers._cluster_layout import is_cluster_url

    if is_cluster_url(settings.broker_url):
        from ssehub.brokers.cluster import ClusterBroker

        return ClusterBroker.from_settings(settings)
    from ssehub.brokers.redis import RedisBroker

    return RedisBroker.from_settings(settings)
