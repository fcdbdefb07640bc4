"""The built-in simulator of the Azure Backup REST API, used by `demo`, `simulate`, tests and benchmarks.

An `Estate` holds vaults and jobs whose status follows a clock; `start_simulator` serves it over HTTP(S)
the way Azure Resource Manager and the Backup service answer (bodies, headers, errors, paging,
throttling); `demo_estate` and `bench_estate` build ready-made estates.
"""

from watcher.sim.estate import Estate, ItemScript, RecurringJob, SimJob, SimOperation
from watcher.sim.scenarios import bench_estate, demo_estate, demo_vaults
from watcher.sim.server import (
    SIM_TOKEN,
    SUPPORTED_API_VERSIONS,
    RecordedRequest,
    Simulator,
    create_app,
    start_simulator,
)

__all__ = [
    "SIM_TOKEN",
    "SUPPORTED_API_VERSIONS",
    "Estate",
    "ItemScript",
    "RecordedRequest",
    "RecurringJob",
    "SimJob",
    "SimOperation",
    "Simulator",
    "bench_estate",
    "create_app",
    "demo_estate",
    "demo_vaults",
    "start_simulator",
]
