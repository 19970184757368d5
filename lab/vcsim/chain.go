// Snapshot chains: what a real ESXi does to a VM's disks when a snapshot is taken, removed
// or reverted to, which govmomi's simulator does not model (its snapshots have no disks).
//
//   - CreateSnapshot: each disk gets a delta: a descriptor "<disk>-00000N.vmdk"
//     (createType "vmfsSparse", parentFileNameHint the disk it sits on) and its extent
//     "<disk>-00000N-delta.vmdk" in the vmfsSparse (COWD) format of VMware's Virtual Disk
//     Format 5.0 spec: 512-byte grains, 4096-entry grain tables, allocated on write. The
//     VM's disk backing now names the delta, with `parent` the disk below it; the base
//     (and every delta under the current one) is frozen. The snapshot's own
//     config.hardware.device names the disk as it was (its point in time), with the
//     changeId it had when the snapshot was taken.
//   - RemoveSnapshot: the delta the snapshot created is merged into the disk below it
//     (consolidation), its files are removed, and whatever sat on it sits on that disk.
//   - RevertToSnapshot (the newest snapshot only): the current delta is emptied.
//
// A base disk whose descriptor is empty (the simulator's default) gets a real one
// (createType "vmfs", extent "<disk>-flat.vmdk") on its first snapshot. Whoever writes
// into a VM's disk from outside (the lab, tests) writes into the current top of the chain,
// the highest-numbered "<disk>-NNNNNN.vmdk" beside the base, holding an exclusive flock on
// "<disk>-chain.lck"; the simulator holds it while it changes the chain.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	sector    = 512
	gtEntries = 4096
	cowdMagic = "COWD"
	cowdHdr   = 2048 // bytes: 4 sectors
)

var deltaSuffix = regexp.MustCompile(`-\d{6}$`)

// chainBase maps any file of a disk's chain ("<disk>.vmdk", "<disk>-000002.vmdk") to the
// base descriptor's local path, where the change tracking and the chain lock live.
func chainBase(local string) string {
	return deltaSuffix.ReplaceAllString(strings.TrimSuffix(local, ".vmdk"), "") + ".vmdk"
}

type layer struct {
	local  string // local path of the descriptor
	dsPath string // "[ds] vm/disk1-000001.vmdk"
}

func (l layer) delta() bool { return deltaSuffix.MatchString(strings.TrimSuffix(l.local, ".vmdk")) }

// extentPath is the file holding the layer's data: "<disk>-flat.vmdk" for the base,
// "<disk>-00000N-delta.vmdk" for a delta.
func (l layer) extentPath() string {
	if l.delta() {
		return strings.TrimSuffix(l.local, ".vmdk") + "-delta.vmdk"
	}
	return flatPath(l.local)
}

// chain is one disk's layers: [0] the base, then one delta per snapshot in snaps
// (snaps[i] created layers[i+1], and its point in time is layers[:i+1]).
type chain struct {
	base      types.VirtualDiskFlatVer2BackingInfo // the disk's backing before any snapshot
	capacity  int64
	layers    []layer
	snaps     []types.ManagedObjectReference
	changeIDs []string // the disk's changeId when snaps[i] was taken
}

type chains struct {
	mu  sync.Mutex
	all map[types.ManagedObjectReference]map[int32]*chain // VM -> device key -> chain
}

func newChains() *chains {
	return &chains{all: map[types.ManagedObjectReference]map[int32]*chain{}}
}

// lockChain takes the chain's exclusive flock (see the package comment).
func lockChain(base string) (func(), error) {
	f, err := os.OpenFile(strings.TrimSuffix(base, ".vmdk")+"-chain.lck", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// pointInTime returns the layers a snapshot's disk reads (nil: not a snapshot of this VM
// disk), or the current chain for a nil snapshot.
func (cs *chains) pointInTime(vm types.ManagedObjectReference, key int32, snap *types.ManagedObjectReference) ([]layer, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	ch := cs.all[vm][key]
	if ch == nil {
		return nil, snap == nil
	}
	if snap == nil {
		return append([]layer(nil), ch.layers...), true
	}
	for i, s := range ch.snaps {
		if s == *snap {
			return append([]layer(nil), ch.layers[:i+1]...), true
		}
	}
	return nil, false
}

// created materializes a new snapshot's deltas, one per disk of the VM.
func (cs *chains) created(vm *simulator.VirtualMachine, snap types.ManagedObjectReference, changeID func(string) string) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var err error
	simulator.Map.WithLock(vm, func() {
		for key, d := range disks(vm) {
			ch := cs.all[vm.Self][key]
			if ch == nil {
				fb, ok := d.backing2()
				if !ok {
					err = fmt.Errorf("disk %d of %s: only flat (FlatVer2) disks take simulated snapshots", key, vm.Name)
					return
				}
				// the lab writes disks bigger than the 1 MiB the VMs declare: the file decides
				capacity := d.capacity
				if st, err := os.Stat(flatPath(d.local)); err == nil && st.Size() > capacity {
					capacity = st.Size()
				}
				ch = &chain{base: fb, capacity: capacity, layers: []layer{{local: d.local, dsPath: d.backing.FileName}}}
				if cs.all[vm.Self] == nil {
					cs.all[vm.Self] = map[int32]*chain{}
				}
				cs.all[vm.Self][key] = ch
			}
			if err = ch.push(snap, changeID(d.local)); err != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	cs.apply(vm)
	return nil
}

func (ch *chain) push(snap types.ManagedObjectReference, changeID string) error {
	base := ch.layers[0]
	unlock, err := lockChain(base.local)
	if err != nil {
		return err
	}
	defer unlock()
	if err := ensureBaseDescriptor(base.local, ch.capacity); err != nil {
		return err
	}
	n := 1
	for _, l := range ch.layers[1:] {
		var k int
		s := strings.TrimSuffix(l.local, ".vmdk")
		fmt.Sscanf(s[len(s)-6:], "%d", &k)
		if k >= n {
			n = k + 1
		}
	}
	stem := strings.TrimSuffix(base.local, ".vmdk")
	top := ch.layers[len(ch.layers)-1]
	l := layer{
		local:  fmt.Sprintf("%s-%06d.vmdk", stem, n),
		dsPath: fmt.Sprintf("%s-%06d.vmdk", strings.TrimSuffix(base.dsPath, ".vmdk"), n),
	}
	if err := createCOWD(l.extentPath(), ch.capacity, filepath.Base(top.local)); err != nil {
		return err
	}
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%08x\n"+
		"createType=\"vmfsSparse\"\nparentFileNameHint=\"%s\"\n\n# Extent description\n"+
		"RW %d VMFSSPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\nddb.toolsVersion = \"0\"\n",
		0xfffffffe-n, descriptorCID(top.local), filepath.Base(top.local),
		ch.capacity/sector, filepath.Base(l.extentPath()))
	if err := writeFileSync(l.local, []byte(desc)); err != nil {
		return err
	}
	ch.layers = append(ch.layers, l)
	ch.snaps = append(ch.snaps, snap)
	ch.changeIDs = append(ch.changeIDs, changeID)
	return nil
}

// reconcile consolidates the deltas of snapshots that no longer exist (RemoveSnapshot,
// with or without its children), newest first, each into the disk below it.
func (cs *chains) reconcile(vm *simulator.VirtualMachine) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, ch := range cs.all[vm.Self] {
		for i := len(ch.snaps) - 1; i >= 0; i-- {
			if simulator.Map.Get(ch.snaps[i]) != nil {
				continue
			}
			if err := ch.consolidate(i); err != nil {
				return err
			}
		}
	}
	cs.apply(vm)
	return nil
}

// consolidate merges layers[i+1] (snaps[i]'s delta) into layers[i] and drops it.
func (ch *chain) consolidate(i int) error {
	unlock, err := lockChain(ch.layers[0].local)
	if err != nil {
		return err
	}
	defer unlock()
	upper, lower := ch.layers[i+1], ch.layers[i]
	if err := mergeCOWD(upper.extentPath(), lower); err != nil {
		return fmt.Errorf("consolidating %s into %s: %w", upper.dsPath, lower.dsPath, err)
	}
	if i+2 < len(ch.layers) { // the disk above now sits on the lower one
		if err := setParentHint(ch.layers[i+2].local, filepath.Base(lower.local)); err != nil {
			return err
		}
	}
	_ = os.Remove(upper.extentPath())
	_ = os.Remove(upper.local)
	ch.layers = append(ch.layers[:i+1], ch.layers[i+2:]...)
	ch.snaps = append(ch.snaps[:i], ch.snaps[i+1:]...)
	ch.changeIDs = append(ch.changeIDs[:i], ch.changeIDs[i+1:]...)
	return nil
}

// reverted empties the current delta when snap is the newest snapshot of the VM's disks.
func (cs *chains) reverted(vm *simulator.VirtualMachine, snap types.ManagedObjectReference) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, ch := range cs.all[vm.Self] {
		if len(ch.snaps) == 0 || ch.snaps[len(ch.snaps)-1] != snap {
			return errors.New("the simulator reverts only to the newest snapshot")
		}
		unlock, err := lockChain(ch.layers[0].local)
		if err != nil {
			return err
		}
		top := ch.layers[len(ch.layers)-1]
		parent := ch.layers[len(ch.layers)-2]
		err = createCOWD(top.extentPath(), ch.capacity, filepath.Base(parent.local))
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// apply points the VM's disks at their chains' tops and each snapshot's disks at its
// point in time (new device objects: the simulator's snapshot config shares the VM's).
func (cs *chains) apply(vm *simulator.VirtualMachine) {
	byKey := cs.all[vm.Self]
	backing := func(ch *chain, n int, changeID string) *types.VirtualDiskFlatVer2BackingInfo {
		var b *types.VirtualDiskFlatVer2BackingInfo
		for j := 0; j < n; j++ {
			nb := ch.base
			nb.FileName, nb.Parent, nb.ChangeId = ch.layers[j].dsPath, b, ""
			b = &nb
		}
		b.ChangeId = changeID
		return b
	}
	swap := func(devs []types.BaseVirtualDevice, pick func(key int32) *types.VirtualDiskFlatVer2BackingInfo) []types.BaseVirtualDevice {
		out := make([]types.BaseVirtualDevice, len(devs))
		for i, dev := range devs {
			out[i] = dev
			if d, ok := dev.(*types.VirtualDisk); ok {
				if b := pick(d.Key); b != nil {
					nd := *d
					nd.Backing = b
					out[i] = &nd
				}
			}
		}
		return out
	}
	simulator.Map.WithLock(vm, func() {
		vm.Config.Hardware.Device = swap(vm.Config.Hardware.Device, func(key int32) *types.VirtualDiskFlatVer2BackingInfo {
			if ch := byKey[key]; ch != nil {
				return backing(ch, len(ch.layers), "") // the changeId refresh fills it
			}
			return nil
		})
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
	})
	snaps := map[types.ManagedObjectReference]bool{}
	for _, ch := range byKey {
		for _, s := range ch.snaps {
			snaps[s] = true
		}
	}
	for ref := range snaps {
		obj, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
		if !ok {
			continue
		}
		simulator.Map.WithLock(obj, func() {
			obj.Config.Hardware.Device = swap(obj.Config.Hardware.Device, func(key int32) *types.VirtualDiskFlatVer2BackingInfo {
				ch := byKey[key]
				if ch == nil {
					return nil
				}
				for i, s := range ch.snaps {
					if s == ref {
						return backing(ch, i+1, ch.changeIDs[i])
					}
				}
				return nil
			})
		})
	}
}

// backing2 is the disk's backing as FlatVer2 (the only kind our VMs have).
func (d disk) backing2() (types.VirtualDiskFlatVer2BackingInfo, bool) {
	return d.flat, d.isFlat
}

// ---- descriptors ----

func writeFileSync(name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// ensureBaseDescriptor writes a monolithic-flat ESXi descriptor for a base disk whose
// descriptor is empty or missing (the simulator creates empty files).
func ensureBaseDescriptor(local string, capacity int64) error {
	if st, err := os.Stat(local); err == nil && st.Size() > 0 {
		return nil
	}
	flat := flatPath(local)
	if _, err := os.Stat(flat); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(flat, nil, 0o644); err != nil {
			return err
		}
	}
	if st, err := os.Stat(flat); err == nil && st.Size() < capacity {
		if err := os.Truncate(flat, capacity); err != nil {
			return err
		}
	}
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\n"+
		"parentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW %d VMFS \"%s\"\n\n"+
		"# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"13\"\n",
		capacity/sector, filepath.Base(flat))
	return writeFileSync(local, []byte(desc))
}

var cidLine = regexp.MustCompile(`(?m)^CID=([0-9a-fA-F]+)`)

func descriptorCID(local string) uint32 {
	data, _ := os.ReadFile(local)
	var cid uint32
	if m := cidLine.FindSubmatch(data); m != nil {
		fmt.Sscanf(string(m[1]), "%x", &cid)
	}
	return cid
}

var parentHint = regexp.MustCompile(`(?m)^parentFileNameHint="[^"]*"`)
var parentCIDLine = regexp.MustCompile(`(?m)^parentCID=[0-9a-fA-F]+`)

func setParentHint(local, parent string) error {
	data, err := os.ReadFile(local)
	if err != nil {
		return err
	}
	data = parentHint.ReplaceAll(data, []byte(fmt.Sprintf("parentFileNameHint=%q", parent)))
	cid := descriptorCID(filepath.Join(filepath.Dir(local), parent))
	data = parentCIDLine.ReplaceAll(data, []byte(fmt.Sprintf("parentCID=%08x", cid)))
	return writeFileSync(local, data)
}

// ---- vmfsSparse (COWD) extents ----

type cowd struct {
	f                           *os.File
	sectors, grain, gdOff, free uint32
	gd                          []uint32
}

// createCOWD writes an empty delta extent (header and grain directory) of capacity bytes.
func createCOWD(name string, capacity int64, parent string) error {
	sectors := uint32((capacity + sector - 1) / sector)
	gdN := (sectors + gtEntries - 1) / gtEntries // grain size 1 sector
	gdSectors := (gdN*4 + sector - 1) / sector
	hdr := make([]byte, cowdHdr)
	copy(hdr, cowdMagic)
	le := binary.LittleEndian
	le.PutUint32(hdr[4:], 1) // version
	le.PutUint32(hdr[8:], 3) // flags
	le.PutUint32(hdr[12:], sectors)
	le.PutUint32(hdr[16:], 1) // grain size, in sectors
	le.PutUint32(hdr[20:], cowdHdr/sector)
	le.PutUint32(hdr[24:], gdN)
	le.PutUint32(hdr[28:], cowdHdr/sector+gdSectors) // first free sector
	copy(hdr[32:32+1023], parent)                    // u.child.parentFileName
	buf := append(hdr, make([]byte, gdSectors*sector)...)
	return writeFileSync(name, buf)
}

func openCOWD(name string, write bool) (*cowd, error) {
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(name, flags, 0)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, 32)
	if _, err := f.ReadAt(hdr, 0); err != nil || string(hdr[:4]) != cowdMagic {
		f.Close()
		return nil, fmt.Errorf("%s: not a vmfsSparse (COWD) extent", name)
	}
	le := binary.LittleEndian
	c := &cowd{f: f, sectors: le.Uint32(hdr[12:]), grain: le.Uint32(hdr[16:]),
		gdOff: le.Uint32(hdr[20:]), free: le.Uint32(hdr[28:])}
	raw := make([]byte, 4*le.Uint32(hdr[24:]))
	if _, err := f.ReadAt(raw, int64(c.gdOff)*sector); err != nil {
		f.Close()
		return nil, err
	}
	c.gd = make([]uint32, len(raw)/4)
	for i := range c.gd {
		c.gd[i] = le.Uint32(raw[4*i:])
	}
	return c, nil
}

// grains returns the allocated grains as (disk offset, file offset, length) runs.
func (c *cowd) grains() ([][3]int64, error) {
	var out [][3]int64
	gt := make([]byte, 4*gtEntries)
	gs := int64(c.grain) * sector
	for i, gtSec := range c.gd {
		if gtSec == 0 {
			continue
		}
		if _, err := c.f.ReadAt(gt, int64(gtSec)*sector); err != nil {
			return nil, err
		}
		for j := 0; j < gtEntries; j++ {
			g := binary.LittleEndian.Uint32(gt[4*j:])
			if g == 0 {
				continue
			}
			disk, file := (int64(i)*gtEntries+int64(j))*gs, int64(g)*sector
			if n := len(out); n > 0 && out[n-1][0]+out[n-1][2] == disk && out[n-1][1]+out[n-1][2] == file {
				out[n-1][2] += gs
			} else {
				out = append(out, [3]int64{disk, file, gs})
			}
		}
	}
	return out, nil
}

// write puts sector-aligned data at a disk offset, allocating grain tables and grains.
func (c *cowd) write(off int64, data []byte) error {
	gs := int64(c.grain) * sector
	if off%gs != 0 || int64(len(data))%gs != 0 {
		return fmt.Errorf("unaligned write at %d (%d bytes)", off, len(data))
	}
	le := binary.LittleEndian
	four := make([]byte, 4)
	// Order (as adapters/vsphere/vmdk.py): new space written, then the header's free
	// sector moved past it, then the table entry: a kill in between leaks space, never
	// lets two entries share a sector.
	setFree := func(v uint32) error {
		c.free = v
		le.PutUint32(four, v)
		_, err := c.f.WriteAt(four, 28)
		return err
	}
	for p := int64(0); p < int64(len(data)); p += gs {
		g := (off + p) / gs
		i, j := g/gtEntries, g%gtEntries
		if i >= int64(len(c.gd)) {
			return fmt.Errorf("write at %d is beyond the disk", off+p)
		}
		if c.gd[i] == 0 { // a new grain table, zeroed
			table := c.free
			if _, err := c.f.WriteAt(make([]byte, 4*gtEntries), int64(table)*sector); err != nil {
				return err
			}
			if err := setFree(table + 4*gtEntries/sector); err != nil {
				return err
			}
			le.PutUint32(four, table)
			if _, err := c.f.WriteAt(four, int64(c.gdOff)*sector+4*i); err != nil {
				return err
			}
			c.gd[i] = table
		}
		entry := int64(c.gd[i])*sector + 4*j
		if _, err := c.f.ReadAt(four, entry); err != nil {
			return err
		}
		if gsec := le.Uint32(four); gsec != 0 { // already in this delta: in place
			if _, err := c.f.WriteAt(data[p:p+gs], int64(gsec)*sector); err != nil {
				return err
			}
			continue
		}
		gsec := c.free
		if _, err := c.f.WriteAt(data[p:p+gs], int64(gsec)*sector); err != nil {
			return err
		}
		if err := setFree(gsec + c.grain); err != nil {
			return err
		}
		le.PutUint32(four, gsec)
		if _, err := c.f.WriteAt(four, entry); err != nil {
			return err
		}
	}
	return nil
}

// mergeCOWD writes every allocated grain of the delta extent into the layer below it.
func mergeCOWD(deltaExtent string, lower layer) error {
	up, err := openCOWD(deltaExtent, false)
	if err != nil {
		return err
	}
	defer up.f.Close()
	runs, err := up.grains()
	if err != nil {
		return err
	}
	var put func(off int64, data []byte) error
	var sync func() error
	if lower.delta() {
		dst, err := openCOWD(lower.extentPath(), true)
		if err != nil {
			return err
		}
		defer dst.f.Close()
		put, sync = dst.write, dst.f.Sync
	} else {
		dst, err := os.OpenFile(lower.extentPath(), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer dst.Close()
		put = func(off int64, data []byte) error { _, err := dst.WriteAt(data, off); return err }
		sync = dst.Sync
	}
	for _, r := range runs {
		for done := int64(0); done < r[2]; {
			n := min64(r[2]-done, 8<<20)
			buf := make([]byte, n)
			if _, err := up.f.ReadAt(buf, r[1]+done); err != nil {
				return err
			}
			if err := put(r[0]+done, buf); err != nil {
				return err
			}
			done += n
		}
	}
	return sync()
}

// allocatedChain is the union of the layers' data extents, widened to whole blocks.
func allocatedChain(layers []layer, offset, blockSize int64) ([][2]int64, error) {
	var all [][2]int64
	for _, l := range layers {
		if !l.delta() {
			ext, err := allocated(l.extentPath(), offset, blockSize)
			if err != nil {
				return nil, err
			}
			all = append(all, ext...)
			continue
		}
		c, err := openCOWD(l.extentPath(), false)
		if err != nil {
			return nil, err
		}
		runs, err := c.grains()
		c.f.Close()
		if err != nil {
			return nil, err
		}
		for _, r := range runs {
			all = append(all, [2]int64{r[0] - r[0]%blockSize, (r[0] + r[2] + blockSize - 1) / blockSize * blockSize})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i][0] < all[j][0] })
	return all, nil
}
