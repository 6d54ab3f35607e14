"""The device SDK: record every play durably, keep honest time, deliver exactly once.

The public API is asyncio. Start with `Device.open(DeviceConfig(...))`; the parts
(`Journal`, `Clock`, `Recorder`, `Uplink`, `ScreenshotStore`) can be used alone.
See docs/device.md.
"""

from playproof.device.clock import Clock, NtpServer, parse_server
from playproof.device.journal import Journal, JournalStats
from playproof.device.recorder import Content, Loop, Play, Recorder
from playproof.device.screenshot import (
    CaptureSource,
    MssCapture,
    ScreenshotStore,
    default_capture,
    screenshot_moment,
)
from playproof.device.sdk import DEFAULT_CAPTURE, Device, DeviceConfig, opened
from playproof.device.transport import UplinkConfig
from playproof.device.uplink import Uplink

__all__ = [
    "DEFAULT_CAPTURE",
    "CaptureSource",
    "Clock",
    "Content",
    "Device",
    "DeviceConfig",
    "Journal",
    "JournalStats",
    "Loop",
    "MssCapture",
    "NtpServer",
    "Play",
    "Recorder",
    "ScreenshotStore",
    "Uplink",
    "UplinkConfig",
    "default_capture",
    "opened",
    "parse_server",
    "screenshot_moment",
]
