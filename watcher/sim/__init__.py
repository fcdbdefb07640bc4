"""The built-in simulator of the Azure Backup REST API, used by `demo`, `simulate`, tests and benchmarks.

An `Estate` holds subscriptions, vaults of both kinds (Recovery Services vaults and Backup vaults),
their jobs and protected items, whose states follow a clock; `start_simulator` serves it over
HTTP(S) the way Azure Resource Manager and the Backup services answer (bodies, headers, errors,
paging, throttling); `demo_estate` and `scale_estate` build ready-made estates.
"""

from watcher.sim.arm import DATAPROTECTION_API_VERSIONS, SUPPORTED_API_VERSIONS, VAULT_API_VERSIONS
from watcher.sim.estate import (
    BACKUP_VAULT,
    RECOVERY_SERVICES,
    Estate,
    ItemScript,
    RecurringJob,
    SimItem,
    SimJob,
    SimOperation,
    SimVault,
)
from watcher.sim.scenarios import demo_estate, demo_subscriptions, demo_vaults
from watcher.sim.server import SIM_TOKEN, RecordedRequest, Simulator, create_app, start_simulator

__all__ = [
    "BACKUP_VAULT",
    "DATAPROTECTION_API_VERSIONS",
    "RECOVERY_SERVICES",
    "SIM_TOKEN",
    "SUPPORTED_API_VERSIONS",
    "VAULT_API_VERSIONS",
    "Estate",
    "ItemScript",
    "RecordedRequest",
    "RecurringJob",
    "SimItem",
    "SimJob",
    "SimOperation",
    "SimVault",
    "Simulator",
    "create_app",
    "demo_estate",
    "demo_subscriptions",
    "demo_vaults",
    "start_simulator",
]
