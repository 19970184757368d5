"""Error kinds: the `type` of every ApplicationError an activity or a workflow raises.

One name per failure a person or a retry policy acts on. The workflow's activity retry
policy never retries the kinds in `NEVER_RETRIED` (whatever the raiser said); every other
kind is retried or not as raised (`error(..., retryable=...)`).
"""

from __future__ import annotations

from enum import StrEnum

from temporalio.exceptions import ApplicationError


class ErrorKind(StrEnum):
    # The kinds the workflow's retry policy never retries come first, in the order the
    # recorded histories carry them (NON_RETRYABLE below keeps that order).
    CONFIG_ERROR = "ConfigError"
    STEP_NOT_IMPLEMENTED = "StepNotImplemented"
    INTEGRITY_ERROR = "IntegrityError"
    INVALID_STATE = "InvalidState"
    SMOKE_TEST_FAILED = "SmokeTestFailed"
    TARGET_UNHEALTHY = "TargetUnhealthy"

    # the workflow refuses a request (update validators, wave input)
    REFUSED = "Refused"
    # any system
    NOT_FOUND = "NotFound"
    PATH_REJECTED = "PathRejected"
    TOOL_MISSING = "ToolMissing"
    # vSphere
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    PERMISSION_DENIED = "PermissionDenied"
    VSPHERE_FAULT = "VSphereFault"
    VSPHERE_UNAVAILABLE = "VSphereUnavailable"
    # disks, conversion
    SOURCE_READ_ERROR = "SourceReadError"
    CONVERSION_FAILED = "ConversionFailed"
    VERIFICATION_FAILED = "VerificationFailed"
    # libvirt
    LIBVIRT_FAULT = "LibvirtFault"
    LIBVIRT_UNAVAILABLE = "LibvirtUnavailable"
    FOREIGN_DOMAIN = "ForeignDomain"
    GUEST_NOT_BOOTABLE = "GuestNotBootable"
    # load balancer
    SOURCE_UNHEALTHY = "SourceUnhealthy"
    LOAD_BALANCER_CHANGED = "LoadBalancerChanged"
    LOAD_BALANCER_ERROR = "LoadBalancerError"
    LOAD_BALANCER_UNAVAILABLE = "LoadBalancerUnavailable"
    # DNS
    DNS_AUTH_FAILED = "DnsAuthFailed"
    DNS_CONFLICT = "DnsConflict"
    DNS_ERROR = "DnsError"
    DNS_RECORD_NOT_FOUND = "DnsRecordNotFound"
    DNS_UNAVAILABLE = "DnsUnavailable"
    DNS_UPDATE_REFUSED = "DnsUpdateRefused"


#: Kinds no retry can fix: wrong configuration, a broken invariant, a failed verdict.
NEVER_RETRIED = frozenset(
    {
        ErrorKind.CONFIG_ERROR,
        ErrorKind.STEP_NOT_IMPLEMENTED,
        ErrorKind.INTEGRITY_ERROR,
        ErrorKind.INVALID_STATE,
        ErrorKind.SMOKE_TEST_FAILED,
        ErrorKind.TARGET_UNHEALTHY,
    }
)

#: The activity retry policy's `non_retryable_error_types` (declaration order).
NON_RETRYABLE: list[str] = [k.value for k in ErrorKind if k in NEVER_RETRIED]


def error(kind: ErrorKind, message: str, retryable: bool = False) -> ApplicationError:
    """A typed failure: `kind` names it for people and retry policies alike."""
    return ApplicationError(message, type=kind.value, non_retryable=not retryable)


def config_error(message: str) -> ApplicationError:
    """The site config or runbook is wrong: nothing a retry can fix."""
    return error(ErrorKind.CONFIG_ERROR, message)
