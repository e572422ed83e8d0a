"""ONVIF for the camera workers: device facts, stream and snapshot URIs, PTZ, PullPoint
events turned into hub events, camera clock skew, and WS-Discovery. See README.md."""
from cameras.onvif.client import (AUTH, BAD_REPLY, NO_RETRY, NOT_SUPPORTED, REASONS, REJECTED, UNREACHABLE,
                                  ClockSkew, DeviceInformation, MediaProfile, OnvifCamera, OnvifError,
                                  RetryPolicy, StreamInfo, StreamUris, strip_credentials)
from cameras.onvif.discovery import DiscoveredDevice, DiscoveryProgress, discover, discover_cli
from cameras.onvif.events import BACKOFF, PullPointSubscriber, SubscriberStats
from cameras.onvif.parsers import HubEvent, Notification, parse, parser
from cameras.onvif.ptz import PtzControl, PtzPreset

__all__ = [
    "AUTH", "BACKOFF", "BAD_REPLY", "NOT_SUPPORTED", "NO_RETRY", "REASONS", "REJECTED", "UNREACHABLE",
    "ClockSkew", "DeviceInformation", "DiscoveredDevice", "DiscoveryProgress", "HubEvent", "MediaProfile",
    "Notification", "OnvifCamera", "OnvifError", "PtzControl", "PtzPreset", "PullPointSubscriber", "RetryPolicy",
    "StreamInfo", "StreamUris", "SubscriberStats", "discover", "discover_cli", "parse", "parser",
    "strip_credentials",
]
