"""Rules: devices the target cannot give the VM (passthrough, vGPU, SR-IOV, USB, TPM)."""

from __future__ import annotations

from collections.abc import Iterator

from cutover.concerns.model import Hit, TargetLimits, _rule
from cutover.inventory import VM, Inventory


@_rule(
    "device.passthrough",
    "critical",
    """We refuse: the device is a physical card in the ESXi host; the target gets nothing in
    its place.""",
)
def _passthrough(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the application presumably needs the device, and vSphere cannot snapshot a
    VM with a DirectPath device, so the data path does not work either."""
    for dev in vm.pciDevices:
        if dev.kind in ("passthrough", "dynamic-passthrough"):
            what = f" ({dev.detail})" if dev.detail else ""
            yield Hit(
                f"PCI device '{dev.label or dev.key}'{what} is passed through "
                f"({dev.kind}). Remove it from the VM, and plan an equivalent device on the "
                "KVM host (VFIO) after the cutover."
            )


@_rule(
    "device.vgpu",
    "critical",
    """We refuse: a vGPU profile is specific to the ESXi host's GPU and driver; the target gets
    no GPU.""",
)
def _vgpu(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Critical: the workload that needs a GPU fails without one."""
    for dev in vm.pciDevices:
        if dev.kind == "vgpu":
            what = f" ({dev.detail})" if dev.detail else ""
            yield Hit(
                f"The VM has a vGPU '{dev.label or dev.key}'{what}. Remove it, and provide a "
                "mediated device (mdev) or GPU passthrough on the KVM host after the cutover."
            )


@_rule(
    "nic.sriov",
    "warning",
    """The NIC becomes a virtio-net NIC on the mapped network, with the same MAC address.""",
)
def _sriov(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning (Forklift agrees): the VM keeps its network, but throughput and latency change
    and the guest sees a new adapter; the smoke test guards against a dead network."""
    for nic in vm.nics:
        if nic.sriov:
            yield Hit(
                f"NIC '{nic.label or nic.key}' is an SR-IOV adapter. Check that the "
                "application tolerates virtio-net performance, and that the guest's network "
                "configuration follows the MAC address rather than the driver or device name."
            )


@_rule(
    "device.usb_controller",
    "info",
    """The target gets libvirt's default USB controller; USB devices passed through from the
    ESXi host (license dongles, tokens) are not carried.""",
)
def _usb(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Info (Forklift says warning): most USB controllers are template defaults with nothing
    attached; the inventory cannot see attached devices, so we only mention it."""
    if vm.usbControllers:
        yield Hit(
            f"The VM has {vm.usbControllers} USB controller(s). If a USB device is attached "
            "(e.g. a license dongle), arrange a replacement on the KVM host."
        )


@_rule(
    "device.tpm",
    "warning",
    """The target domain gets a new, empty emulated TPM 2.0 (swtpm); the vTPM's contents (keys,
    sealed secrets) are not carried.""",
)
def _tpm(inv: Inventory, vm: VM, t: TargetLimits) -> Iterator[Hit]:
    """Warning: secrets sealed to the vTPM (BitLocker, LUKS with TPM unlock, certificates) are
    gone on the target; a BitLocker guest stops at its recovery screen."""
    if vm.tpm:
        yield Hit(
            "The VM has a virtual TPM. Suspend BitLocker (or TPM-bound LUKS unlock) for one "
            "reboot and keep the recovery keys at hand; re-enroll TPM-bound secrets on the "
            "target."
        )
