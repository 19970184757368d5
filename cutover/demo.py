"""Helpers of `scripts/demo.sh`: the world the demo checks and cleans (not operator CLI).

python -m cutover.demo seed DATASTORE VM          # a 256 MiB disk with checkable data
python -m cutover.demo write DATASTORE VM         # the application writes (tracked)
python -m cutover.demo verify SITE APP RESULT DATASTORE VM
python -m cutover.demo teardown SITE              # domains, pools, staging the demo made
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from cutover import labdisk
from cutover.site import load_site

MiB = 1 << 20


def _conn(site_file: str) -> object:
    import libvirt

    site = load_site(site_file)
    assert site.libvirt is not None
    return libvirt.open(site.libvirt.uri)


def verify(site_file: str, app: str, result_file: str, datastore: str, vm: str) -> int:
    """The target domain runs, from a volume byte-identical to the frozen source disk."""
    result = json.loads(Path(result_file).read_text())
    problems = []
    if result["outcome"] != "COMPLETED":
        problems.append(f"outcome {result['outcome']}: {result['reason']}")
    conn = _conn(site_file)
    try:
        dom = conn.lookupByName(app)  # type: ignore[attr-defined]
        if not dom.isActive():
            problems.append(f"domain {app} is not running")
        src = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/source")
        volume = Path(src.get("file", "") if src is not None else "")
        flat, _ = labdisk.paths(Path(datastore), vm)
        same = labdisk.digest(volume) == labdisk.digest(flat)
        print(f"   target domain {app}: {'running' if dom.isActive() else 'NOT running'}")
        print(f"   volume {volume}: sha256 {'equals' if same else 'DIFFERS FROM'} the source disk")
        if not same:
            problems.append("the target volume differs from the source disk")
    finally:
        conn.close()  # type: ignore[attr-defined]
    for p in problems:
        print(f"demo: {p}", file=sys.stderr)
    return 1 if problems else 0


def teardown(site_file: str) -> int:
    """Remove what the demo's cutovers made: domains (ours only), the mapped pools, staging."""
    import libvirt

    from activities.libvirt_target import remove_cutover_domains

    site = load_site(site_file)
    assert site.libvirt is not None
    removed = remove_cutover_domains(site.libvirt.uri)
    conn = libvirt.open(site.libvirt.uri)
    try:
        for m in site.storageMappings:
            with contextlib.suppress(libvirt.libvirtError):
                pool = conn.storagePoolLookupByName(m.targetPool)
                for vol in pool.listAllVolumes(0) if pool.isActive() else []:
                    vol.delete(0)
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
                removed.append(f"pool {m.targetPool}")
    finally:
        conn.close()
    if site.stagingDir and Path(site.stagingDir).exists():
        shutil.rmtree(site.stagingDir)
        removed.append(site.stagingDir)
    print(f"   removed: {', '.join(removed) or 'nothing'}")
    return 0


def main(argv: list[str]) -> int:
    cmd, *args = argv or [""]
    if cmd == "seed" and len(args) == 2:
        print(labdisk.seed(Path(args[0]), args[1], size=256 * MiB))
        return 0
    if cmd == "write" and len(args) == 2:
        n = labdisk.write(Path(args[0]), args[1], [i * 9 * MiB + 12345 for i in range(1, 6)])
        print(f"   the application wrote {n // 1024} KiB to {args[1]} (change tracking updated)")
        return 0
    if cmd == "verify" and len(args) == 5:
        return verify(*args)
    if cmd == "teardown" and len(args) == 1:
        return teardown(args[0])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
