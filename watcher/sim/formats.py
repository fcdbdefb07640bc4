"""Time and duration text exactly as the Azure Backup service writes it.

Times are .NET round-trip UTC strings with up to seven fractional digits, trailing zeros dropped
(`2022-05-13T10:52:22.884816Z`); Backup vault recovery points keep all seven. Durations are ISO
8601 as `XmlConvert` writes a TimeSpan (`PT20M23.0896697S`, `PT0S`), or the TimeSpan's own text
(`00:20:23.0896697`) that older API versions, Backup vault job listings and the REST documentation
show. All arithmetic is in 100 ns ticks, the service's own unit.
"""

from __future__ import annotations

import datetime as dt
import functools

TICKS_PER_SECOND = 10_000_000
_TICKS_PER_MINUTE = 60 * TICKS_PER_SECOND
_TICKS_PER_HOUR = 60 * _TICKS_PER_MINUTE
_TICKS_PER_DAY = 24 * _TICKS_PER_HOUR
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# What an operation that has not ended reports as its end time.
UNSET_OPERATION_END = "0001-01-01T00:00:00"


def ticks(seconds: float) -> int:
    """Seconds (epoch or span) as whole 100 ns ticks."""
    return round(seconds * TICKS_PER_SECOND)


@functools.lru_cache(maxsize=1 << 16)  # job start/end times are rendered on every poll
def format_time(epoch: float) -> str:
    """An epoch time as the service writes it: `2017-08-03T05:31:07.014604Z`."""
    whole, frac = divmod(ticks(epoch), TICKS_PER_SECOND)
    stamp = (_EPOCH + dt.timedelta(seconds=whole)).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:07d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def format_time_fixed(epoch: float) -> str:
    """An epoch time with all seven fraction digits, as recovery points write it:
    `2023-06-16T04:41:20.5055980Z`."""
    whole, frac = divmod(ticks(epoch), TICKS_PER_SECOND)
    stamp = (_EPOCH + dt.timedelta(seconds=whole)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:07d}Z"


def format_duration(seconds: float, *, timespan: bool = False) -> str:
    """A span as ISO 8601 (`PT1M51.4104816S`), or as TimeSpan text (`00:01:51.4104816`)."""
    total = max(ticks(seconds), 0)
    days, rest = divmod(total, _TICKS_PER_DAY)
    hours, rest = divmod(rest, _TICKS_PER_HOUR)
    minutes, rest = divmod(rest, _TICKS_PER_MINUTE)
    secs, frac = divmod(rest, TICKS_PER_SECOND)
    if timespan:
        text = (
            f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}"
            if days
            else f"{hours:02d}:{minutes:02d}:{secs:02d}"
        )
        return f"{text}.{frac:07d}" if frac else text
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs or frac or not (days or clock):
        digits = f"{frac:07d}".rstrip("0")
        clock += f"{secs}.{digits}S" if digits else f"{secs}S"
    return "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")


def format_bag_time(epoch: float) -> str:
    """A time as propertyBag values write it (.NET en-US, UTC): `10/19/2017 7:11:28 AM`."""
    moment = _EPOCH + dt.timedelta(seconds=int(epoch))
    hour = moment.hour % 12 or 12
    meridiem = "AM" if moment.hour < 12 else "PM"
    return (
        f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} {meridiem}"
    )
