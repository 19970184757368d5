"""Fact keys: what one step tells the later ones (StepResult.facts, StepContext.facts).

The workflow merges every step's facts into one `dict[str, str]` it passes to the next
steps (and records in its history), so a key is part of the recorded contract: never
rename one. Per-disk facts are `<prefix><disk>` (disk IDs from `disk_id`); per-VM ones
`<prefix><vm name>`.
"""

from __future__ import annotations

from collections.abc import Mapping

from cutover.inventory import VM

# --- source (vSphere)
#: The application's source VMs, comma-separated (resolved once; later steps reuse it).
SOURCE_VMS = "source_vms"
#: Per VM: its inventory model (cutover.inventory.VM) as JSON, what the target is built from.
SOURCE_VM = "source_vm."

# --- disks
#: The disks a sync step copied, comma-separated.
DISKS = "disks"
#: Per disk: the staged raw copy.
STAGING_PATH = "staging_path."
#: Per disk: the source's changed-block-tracking ID the staged copy matches.
CHANGE_ID = "change_id."
#: Per disk: the root of the staged copy's digest map (final sync).
DIGEST_ROOT = "digest_root."
#: Per disk: the converted image, and its format.
CONVERTED_PATH = "converted_path."
CONVERTED_FORMAT = "converted_format."

# --- target
#: Per disk: the target volume the domain boots from, and its format.
TARGET_VOLUME = "target_volume."
TARGET_FORMAT = "target_format."
#: Per disk: the frozen base under the volume the domain boots (a qcow2 overlay holding
#: only what the target wrote), and the base's format. Absent: the domain boots the base.
TARGET_BASE = "target_base."
TARGET_BASE_FORMAT = "target_base_format."
#: Buses chosen for the guest (a guest without virtio drivers gets sata/e1000).
TARGET_DISK_BUS = "target_disk_bus"
TARGET_NIC_MODEL = "target_nic_model"
#: The target domains powered on, comma-separated.
TARGET_DOMAIN = "target_domain"
#: The target's address (from its DHCP lease), what traffic is switched to.
TARGET_ADDRESS = "target_address"

# --- checks
#: Pre-check HTTP latency baseline, per percentile (`baseline_p95_ms`).
BASELINE_MS = "baseline_p{}_ms"

# --- load balancer
LB_BACKEND = "lb_backend"
LB_SERVING = "lb_serving"
LB_TARGET_ADDRESS = "lb_target_address"
#: The backend's state before the switch (BackendPrior as JSON).
LB_PRIOR = "lb_prior"
#: Per role (source/target): that server's state before the switch.
LB_PREVIOUS_STATE = "lb_previous_{}_state"
LB_SOURCE_RETIRED = "lb_source_retired"
LB_PERSISTED = "lb_persisted"

# --- DNS
DNS_VALUE = "dns_value"
DNS_PREVIOUS_VALUE = "dns_previous_value"
DNS_PREVIOUS_TTL = "dns_previous_ttl"
DNS_ORIGINAL_TTL = "dns_original_ttl"
DNS_TTL_LOWERED_AT = "dns_ttl_lowered_at"


def per_disk(prefix: str, disk: str) -> str:
    """The key of a per-disk fact: `per_disk(STAGING_PATH, "web-2000")`."""
    return prefix + disk


def disk_keys(facts: Mapping[str, str], prefix: str) -> list[str]:
    """The disks (or VMs) that have a `prefix` fact, sorted."""
    return sorted(k[len(prefix) :] for k in facts if k.startswith(prefix))


def baseline_ms(percentile: int) -> str:
    return BASELINE_MS.format(percentile)


def lb_previous_state(role: str) -> str:
    return LB_PREVIOUS_STATE.format(role)


def source_vm_models(facts: Mapping[str, str]) -> list[VM]:
    """The source VMs' inventory models published as facts `source_vm.<name>`."""
    return [VM.model_validate_json(facts[k]) for k in sorted(facts) if k.startswith(SOURCE_VM)]


def per_vm(prefix: str, vm: str) -> str:
    """The key of a per-VM fact: `per_vm(SOURCE_VM, "web-1")`."""
    return prefix + vm
