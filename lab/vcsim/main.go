// Command vcsim is cutover's vSphere (vCenter) API simulator for tests and the lab.
//
// It is govmomi 0.24.2's simulator (Debian's golang-github-vmware-govmomi-dev, built
// offline with GO111MODULE=off GOPATH=/usr/share/gocode) plus:
//
//   - an inventory sized by flags, with VMs created per host (-vm is VMs per host, for
//     cluster and standalone hosts alike; names "<host>_VM<i>", e.g. DC0_C0_H0_VM0);
//   - our own TLS certificate (-cert/-key) on a loopback address we choose (-listen);
//   - the vAPI REST endpoints (/rest/com/vmware/cis/session, .../cis/tagging/...);
//   - changed-block tracking (CBT): QueryChangedDiskAreas, and disk backings whose
//     changeId follows the change-tracking file below;
//   - one JSON line on stdout when ready, and a clean exit 0 on SIGTERM/SIGINT.
//
// Datastores are real directories made by the simulator under $TMPDIR
// (govcsim-<DC>-<DS>-*); the ready line lists them. Nothing is removed at exit: the
// caller owns $TMPDIR. Each default VM has the empty files
// "[LocalDS_0] <vm>/disk1.vmdk" and "<vm>/disk1-flat.vmdk" there.
//
// Change-tracking file format (written by the data path / lab code, read here): beside
// each disk descriptor <name>.vmdk in the datastore, a JSON file <name>-ctk.json:
//
//	{"uuid": "<any string>", "blockSize": 65536, "seq": N,
//	 "changes": {"<blockIndex>": seqWhenLastWritten, ...}, "capacityBytes": C}
//
// A writer that writes a batch of blocks increments seq by 1 and sets changes[b] = seq
// for every block b it wrote. The disk's current change ID is "<uuid>/<seq>"; it shows
// as the backing's changeId when the VM has config.changeTrackingEnabled = true.
//
// QueryChangedDiskAreas(vm, snapshot, deviceKey, startOffset, changeId):
//   - changeId "*": the allocated extents of <name>-flat.vmdk (SEEK_DATA/SEEK_HOLE,
//     widened to whole blocks); without a flat file, every block present in changes;
//   - changeId "<uuid>/<k>": the blocks with changes[b] > k, coalesced into extents;
//     a different uuid or a malformed changeId is an InvalidArgument fault.
//
// Extents are clipped to [startOffset, capacity); the response has startOffset as asked
// and length = capacity - startOffset. With a snapshot, "*" lists the data of that
// snapshot's point in time (its flat base and deltas, chain.go); a change ID's answer is
// the same superset as without one (safe: extra reads, never a missed block). The
// change-tracking file of a chain sits beside its base descriptor. CBT must be enabled on
// the VM (FileFault otherwise). The method is answered by a wrapper around the simulator's
// HTTP handler, not by patching govmomi or replacing objects in simulator.Map; so are the
// snapshot tasks' effects on disks (chain.go).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers the /rest endpoints
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const defaultBlockSize = 65536

func main() {
	var (
		dcs        = flag.Int("datacenter", 1, "number of datacenters")
		clusters   = flag.Int("cluster", 1, "clusters per datacenter")
		hosts      = flag.Int("host", 2, "hosts per cluster")
		standalone = flag.Int("standalone-host", 0, "standalone hosts per datacenter")
		vms        = flag.Int("vm", 4, "VMs per host (cluster and standalone hosts)")
		listen     = flag.String("listen", "127.0.0.1:0", "loopback address to listen on")
		certFile   = flag.String("cert", "", "TLS certificate (PEM); plain HTTP without it")
		keyFile    = flag.String("key", "", "TLS private key (PEM)")
		username   = flag.String("username", "cutover", "the only user that may log in")
	)
	flag.Parse()
	log.SetPrefix("vcsim: ")
	sig := make(chan os.Signal, 1) // early, so a stop during start-up still exits 0
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	model := simulator.VPX()
	model.Datacenter, model.Cluster, model.ClusterHost = *dcs, *clusters, *hosts
	model.Host, model.Machine = *standalone, 0 // VMs are created per host below
	if err := model.Create(); err != nil {
		log.Fatalf("create model: %v", err)
	}
	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service) // in-process, no HTTP
	if err != nil {
		log.Fatal(err)
	}
	if err := createVMs(ctx, client, *vms); err != nil {
		log.Fatalf("create VMs: %v", err)
	}
	datastores, err := datastoreDirs(ctx, client)
	if err != nil {
		log.Fatal(err)
	}

	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			log.Fatalf("TLS key pair: %v", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if addr, err := net.ResolveTCPAddr("tcp", *listen); err != nil || !addr.IP.IsLoopback() {
		log.Fatalf("-listen %q: want a loopback address such as 127.0.0.1:0 (%v)", *listen, err)
	}
	// Logins are checked against this user and the password from $VCSIM_PASSWORD (kept out
	// of argv); without a user set, the simulator accepts any non-empty credentials.
	password := os.Getenv("VCSIM_PASSWORD")
	if password == "" {
		log.Fatal("VCSIM_PASSWORD is not set")
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, password)}
	model.Service.RegisterEndpoints = true
	// NewServer starts serving at once (it panics if it cannot listen). Swapping the
	// handler afterwards is safe in practice: nobody knows the port before the ready line.
	srv := model.Service.NewServer()

	// Changed-block tracking in front of the simulator's own handler.
	cbt := &cbtHandler{next: srv.Config.Handler, ctk: map[string]ctkCache{}, chains: newChains()}
	srv.Config.Handler = cbt

	u := *srv.URL
	u.User = nil
	port, _ := strconv.Atoi(u.Port())
	ready, _ := json.Marshal(map[string]interface{}{
		"url": u.String(), "host": u.Hostname(), "port": port, "username": *username,
		"datastores": datastores, "pid": os.Getpid(),
	})
	fmt.Println(string(ready))

	<-sig
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }() // waits for in-flight requests
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		log.Print("shutdown: requests still running after 5s, exiting anyway")
	}
	os.Exit(0)
}

// createVMs creates n VMs on every host, like the simulator's model does per resource
// pool: a pvscsi controller with a 1 MiB disk "[LocalDS_0] <vm>/disk1.vmdk", an IDE
// CD-ROM and an e1000 NIC on the datacenter's first DV port group; powered on.
func createVMs(ctx context.Context, c *vim25.Client, n int) error {
	finder := find.NewFinder(c, false)
	dcs, err := finder.DatacenterList(ctx, "*")
	if err != nil {
		return err
	}
	for _, dc := range dcs {
		finder.SetDatacenter(dc)
		folders, err := dc.Folders(ctx)
		if err != nil {
			return err
		}
		backing := esx.EthernetCard.Backing
		if pg, err := finder.Network(ctx, dc.Name()+"_DVPG0"); err == nil {
			if b, err := pg.EthernetCardBackingInfo(ctx); err == nil {
				backing = b
			}
		}
		v, err := view.NewManager(c).CreateContainerView(ctx, folders.HostFolder.Reference(), []string{"HostSystem"}, true)
		if err != nil {
			return err
		}
		var hosts []mo.HostSystem
		err = v.Retrieve(ctx, []string{"HostSystem"}, []string{"name"}, &hosts)
		_ = v.Destroy(ctx)
		if err != nil {
			return err
		}
		sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })

		for _, h := range hosts {
			host := object.NewHostSystem(c, h.Self)
			pool, err := host.ResourcePool(ctx)
			if err != nil {
				return err
			}
			for i := 0; i < n; i++ {
				name := fmt.Sprintf("%s_VM%d", h.Name, i)
				var devices object.VirtualDeviceList
				scsi, _ := devices.CreateSCSIController("pvscsi")
				ide, _ := devices.CreateIDEController()
				cdrom, _ := devices.CreateCdrom(ide.(*types.VirtualIDEController))
				disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{},
					"[LocalDS_0] "+path.Join(name, "disk1.vmdk"))
				disk.CapacityInKB = 1024
				nic := esx.EthernetCard // a fresh copy per VM: in-process calls share pointers
				nic.Backing = backing
				devices = append(devices, scsi, cdrom, disk, &nic)
				spec := types.VirtualMachineConfigSpec{
					Name:    name,
					GuestId: string(types.VirtualMachineGuestOsIdentifierOtherGuest),
					Files:   &types.VirtualMachineFileInfo{VmPathName: "[LocalDS_0]"},
				}
				spec.DeviceChange, _ = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
				task, err := folders.VmFolder.CreateVM(ctx, spec, pool, host)
				if err != nil {
					return err
				}
				info, err := task.WaitForResult(ctx, nil)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				vm := object.NewVirtualMachine(c, info.Result.(types.ManagedObjectReference))
				if task, err = vm.PowerOn(ctx); err == nil {
					_ = task.Wait(ctx)
				}
			}
		}
	}
	return nil
}

// datastoreDirs maps datacenter name -> datastore name -> local directory.
func datastoreDirs(ctx context.Context, c *vim25.Client) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	finder := find.NewFinder(c, false)
	dcs, err := finder.DatacenterList(ctx, "*")
	if err != nil {
		return nil, err
	}
	for _, dc := range dcs {
		finder.SetDatacenter(dc)
		list, err := finder.DatastoreList(ctx, "*")
		if err != nil {
			return nil, err
		}
		out[dc.Name()] = map[string]string{}
		for _, ds := range list {
			out[dc.Name()][ds.Name()] = localDir(ds.Reference())
		}
	}
	return out, nil
}

func localDir(ds types.ManagedObjectReference) string {
	if d, ok := simulator.Map.Get(ds).(*simulator.Datastore); ok {
		return d.Info.GetDatastoreInfo().Url
	}
	return ""
}

// ---- changed-block tracking ----

type ctkFile struct {
	UUID          string           `json:"uuid"`
	BlockSize     int64            `json:"blockSize"`
	Seq           int64            `json:"seq"`
	Changes       map[string]int64 `json:"changes"`
	CapacityBytes int64            `json:"capacityBytes"`
}

// ctkCache is a parsed ctk file and the stat it was read with. It is trusted only if the
// file was already a second old when read: mtimes are coarse (a few ms), so a rewrite of
// the same size within the same tick would otherwise go unnoticed.
type ctkCache struct {
	mtime, readAt time.Time
	size          int64
	ino           uint64
	ctk           *ctkFile
}

type cbtHandler struct {
	next   http.Handler
	mu     sync.Mutex // guards ctk
	ctk    map[string]ctkCache
	chains *chains // snapshot chains (chain.go)
}

func (h *cbtHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != vim25.Path {
		h.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if bytes.Contains(body, []byte("QueryChangedDiskAreas")) {
		m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		if err == nil && m.Name == "QueryChangedDiskAreas" {
			h.queryChangedDiskAreas(w, r, m.Body.(*types.QueryChangedDiskAreas))
			return
		}
	}
	for _, name := range []string{"CreateSnapshot_Task", "RemoveSnapshot_Task", "RevertToSnapshot_Task"} {
		if bytes.Contains(body, []byte(name)) {
			if m, err := simulator.UnmarshalBody(types.TypeFunc(), body); err == nil && m.Name == name {
				h.snapshotTask(w, r, body, m.Body)
				return
			}
		}
	}
	// Only property reads can see a changeId: refresh them before those.
	for _, s := range []string{"Retrieve", "WaitForUpdates", "CheckForUpdates", "Fetch"} {
		if bytes.Contains(body, []byte(s)) {
			h.refreshChangeIDs()
			break
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	h.next.ServeHTTP(w, r)
}

// authenticated asks the simulator itself whether the caller's session cookie is valid,
// with a CurrentTime call (which needs a session) carrying the same headers.
func (h *cbtHandler) authenticated(r *http.Request) bool {
	probe := httptest.NewRequest(http.MethodPost, vim25.Path, strings.NewReader(
		`<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">`+
			`<soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this>`+
			`</CurrentTime></soapenv:Body></soapenv:Envelope>`))
	probe.Header = r.Header.Clone()
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, probe)
	return rec.Code == http.StatusOK
}

// disk is what QueryChangedDiskAreas and the changeId refresh need from a VM's disk.
type disk struct {
	local    string // local path of <name>.vmdk (the current top of its chain)
	capacity int64
	backing  *types.VirtualDeviceFileBackingInfo
	changeID *string // the backing's changeId field, if its type has one
	flat     types.VirtualDiskFlatVer2BackingInfo
	isFlat   bool
}

// disks lists a VM's disks; call with the VM locked.
func disks(vm *simulator.VirtualMachine) map[int32]disk {
	out := map[int32]disk{}
	if vm.Config == nil {
		return out
	}
	for _, dev := range vm.Config.Hardware.Device {
		d, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		var changeID *string
		var flat types.VirtualDiskFlatVer2BackingInfo
		isFlat := false
		switch b := d.Backing.(type) {
		case *types.VirtualDiskFlatVer2BackingInfo:
			changeID, flat, isFlat = &b.ChangeId, *b, true
		case *types.VirtualDiskSparseVer2BackingInfo:
			changeID = &b.ChangeId
		case *types.VirtualDiskSeSparseBackingInfo:
			changeID = &b.ChangeId
		}
		fb, ok := d.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		info := fb.GetVirtualDeviceFileBackingInfo()
		var p object.DatastorePath
		if !p.FromString(info.FileName) {
			continue
		}
		dir := ""
		if info.Datastore != nil {
			dir = localDir(*info.Datastore)
		}
		if dir == "" {
			for _, ref := range vm.Datastore {
				if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && ds.Name == p.Datastore {
					dir = localDir(ref)
				}
			}
		}
		if dir == "" {
			continue
		}
		capacity := d.CapacityInBytes
		if capacity == 0 {
			capacity = d.CapacityInKB * 1024
		}
		out[d.Key] = disk{local: path.Join(dir, p.Path), capacity: capacity, backing: info, changeID: changeID,
			flat: flat, isFlat: isFlat}
	}
	return out
}

// ctkPath is the chain's change-tracking file: beside its base descriptor.
func ctkPath(vmdk string) string  { return strings.TrimSuffix(chainBase(vmdk), ".vmdk") + "-ctk.json" }
func flatPath(vmdk string) string { return strings.TrimSuffix(vmdk, ".vmdk") + "-flat.vmdk" }

// readCtk returns the parsed change-tracking file (nil, nil when there is none),
// re-reading it only when its mtime or size changed.
func (h *cbtHandler) readCtk(vmdk string) (*ctkFile, error) {
	p := ctkPath(vmdk)
	st, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	h.mu.Lock()
	c, ok := h.ctk[p]
	h.mu.Unlock()
	if ok && c.mtime.Equal(st.ModTime()) && c.size == st.Size() && c.ino == ino &&
		c.readAt.Sub(c.mtime) > time.Second {
		return c.ctk, nil
	}
	readAt := time.Now()
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	ctk := new(ctkFile)
	if err := json.Unmarshal(data, ctk); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if ctk.BlockSize <= 0 {
		ctk.BlockSize = defaultBlockSize
	}
	h.mu.Lock()
	h.ctk[p] = ctkCache{mtime: st.ModTime(), readAt: readAt, size: st.Size(), ino: ino, ctk: ctk}
	h.mu.Unlock()
	return ctk, nil
}

// refreshChangeIDs sets every disk backing's changeId to "<uuid>/<seq>" from its ctk
// file when the VM tracks changes, and clears it otherwise.
func (h *cbtHandler) refreshChangeIDs() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			enabled := vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
			changed := false
			for _, d := range disks(vm) {
				if d.changeID == nil {
					continue
				}
				id := ""
				if enabled {
					if ctk, err := h.readCtk(d.local); err == nil && ctk != nil {
						id = fmt.Sprintf("%s/%d", ctk.UUID, ctk.Seq)
					}
				}
				if *d.changeID != id {
					*d.changeID, changed = id, true
				}
			}
			if changed { // tell property collectors (WaitForUpdates) about it
				simulator.Map.Update(vm, []types.PropertyChange{
					{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
				})
			}
		})
	}
}

func (h *cbtHandler) queryChangedDiskAreas(w http.ResponseWriter, r *http.Request, req *types.QueryChangedDiskAreas) {
	if !h.authenticated(r) {
		writeFault(w, "not authenticated", &types.NotAuthenticated{
			NoPermission: types.NoPermission{Object: req.This, PrivilegeId: "System.View"}})
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		writeFault(w, fmt.Sprintf("managed object not found: %s", req.This), &types.ManagedObjectNotFound{Obj: req.This})
		return
	}
	var d disk
	var found, enabled bool
	simulator.Map.WithLock(vm, func() {
		d, found = disks(vm)[req.DeviceKey]
		enabled = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	})
	if !found {
		writeFault(w, fmt.Sprintf("no virtual disk with deviceKey %d", req.DeviceKey),
			&types.InvalidArgument{InvalidProperty: "deviceKey"})
		return
	}
	fileFault := func(msg string) {
		writeFault(w, msg, &types.FileFault{File: ctkPath(d.backing.FileName)})
	}
	if !enabled {
		fileFault("change tracking is not enabled on this virtual machine")
		return
	}
	ctk, err := h.readCtk(d.local)
	if err != nil {
		fileFault(fmt.Sprintf("cannot read change tracking file: %v", err))
		return
	}
	if ctk == nil { // no writes tracked yet: an empty history
		ctk = &ctkFile{BlockSize: defaultBlockSize}
	}
	capacity := ctk.CapacityBytes
	if capacity <= 0 {
		capacity = d.capacity
	}
	if req.StartOffset < 0 || req.StartOffset > capacity {
		writeFault(w, fmt.Sprintf("startOffset %d is outside the disk (capacity %d)", req.StartOffset, capacity),
			&types.InvalidArgument{InvalidProperty: "startOffset"})
		return
	}

	// The point in time asked for: the snapshot's layers (chain.go), or the current chain.
	layers, ok := h.chains.pointInTime(vm.Self, req.DeviceKey, req.Snapshot)
	if !ok {
		writeFault(w, fmt.Sprintf("%v is not a snapshot of this virtual machine's disk %d", req.Snapshot, req.DeviceKey),
			&types.InvalidArgument{InvalidProperty: "snapshot"})
		return
	}
	var extents [][2]int64 // [start, end) in bytes, sorted
	if req.ChangeId == "*" {
		if layers == nil { // never snapshotted: the flat file
			layers = []layer{{local: chainBase(d.local)}}
		}
		extents, err = allocatedChain(layers, req.StartOffset, ctk.BlockSize)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.EINVAL) {
			extents, err = changedBlocks(ctk, -1), nil
		}
		if err != nil {
			fileFault(fmt.Sprintf("cannot read disk data extents: %v", err))
			return
		}
	} else {
		i := strings.LastIndex(req.ChangeId, "/")
		k, perr := strconv.ParseInt(req.ChangeId[i+1:], 10, 64)
		switch {
		case i < 0 || perr != nil:
			writeFault(w, fmt.Sprintf("malformed changeId %q (want \"<uuid>/<seq>\" or \"*\")", req.ChangeId),
				&types.InvalidArgument{InvalidProperty: "changeId"})
			return
		case req.ChangeId[:i] != ctk.UUID:
			writeFault(w, fmt.Sprintf("changeId %q does not belong to the current change tracking epoch %q of %s",
				req.ChangeId, ctk.UUID, d.backing.FileName), &types.InvalidArgument{InvalidProperty: "changeId"})
			return
		case k > ctk.Seq:
			writeFault(w, fmt.Sprintf("changeId %q is newer than the disk's %s/%d", req.ChangeId, ctk.UUID, ctk.Seq),
				&types.InvalidArgument{InvalidProperty: "changeId"})
			return
		}
		extents = changedBlocks(ctk, k)
	}

	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: capacity - req.StartOffset}
	for _, e := range coalesce(extents) {
		start, end := max64(e[0], req.StartOffset), min64(e[1], capacity)
		if end > start {
			info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: start, Length: end - start})
		}
	}
	writeSOAP(w, http.StatusOK, &struct {
		XMLName   xml.Name             `xml:"urn:vim25 QueryChangedDiskAreasResponse"`
		Returnval types.DiskChangeInfo `xml:"returnval"`
	}{Returnval: info})
}

// snapshotTask runs CreateSnapshot_Task, RemoveSnapshot_Task or RevertToSnapshot_Task in
// the simulator (its tasks run to completion before it answers), then does to the disks
// what ESXi does (chain.go) before the caller learns the task's ID: nobody can see the
// task done before its disks are. A failure there fails the task with a FileFault.
func (h *cbtHandler) snapshotTask(w http.ResponseWriter, r *http.Request, body []byte, req interface{}) {
	rec := httptest.NewRecorder()
	r.Body = io.NopCloser(bytes.NewReader(body))
	h.next.ServeHTTP(rec, r)
	defer func() {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}()
	m := taskRef.FindSubmatch(rec.Body.Bytes())
	if rec.Code != http.StatusOK || m == nil {
		return
	}
	task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: string(m[1])}).(*simulator.Task)
	if !ok {
		return
	}
	var state types.TaskInfoState
	var result interface{}
	simulator.Map.WithLock(task, func() { state, result = task.Info.State, task.Info.Result })
	if state != types.TaskInfoStateSuccess {
		return
	}
	var err error
	switch req := req.(type) {
	case *types.CreateSnapshot_Task:
		vm, _ := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
		snap, _ := result.(types.ManagedObjectReference)
		if vm != nil {
			err = h.chains.created(vm, snap, h.currentChangeID)
		}
	case *types.RemoveSnapshot_Task:
		for _, e := range simulator.Map.All("VirtualMachine") {
			if vm, ok := e.(*simulator.VirtualMachine); ok && err == nil {
				err = h.chains.reconcile(vm)
			}
		}
	case *types.RevertToSnapshot_Task:
		if snap, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachineSnapshot); ok {
			if vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine); ok {
				err = h.chains.reverted(vm, req.This)
			}
		}
	}
	if err != nil {
		log.Printf("snapshot disks: %v", err)
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.state", Val: types.TaskInfoStateError},
			{Name: "info.error", Val: &types.LocalizedMethodFault{
				Fault: &types.FileFault{File: err.Error()}, LocalizedMessage: err.Error()}},
		})
	}
}

var taskRef = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// currentChangeID is a disk's change ID now ("" without a change-tracking file).
func (h *cbtHandler) currentChangeID(local string) string {
	if ctk, err := h.readCtk(local); err == nil && ctk != nil {
		return fmt.Sprintf("%s/%d", ctk.UUID, ctk.Seq)
	}
	return ""
}

// changedBlocks returns the block extents with changes[b] > since (sorted, uncoalesced).
func changedBlocks(ctk *ctkFile, since int64) [][2]int64 {
	var blocks []int64
	for key, seq := range ctk.Changes {
		b, err := strconv.ParseInt(key, 10, 64)
		if err == nil && b >= 0 && seq > since {
			blocks = append(blocks, b)
		}
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	out := make([][2]int64, 0, len(blocks))
	for _, b := range blocks {
		out = append(out, [2]int64{b * ctk.BlockSize, (b + 1) * ctk.BlockSize})
	}
	return out
}

// allocated returns the data extents of a (sparse) file from offset on, widened to whole
// blocks, using lseek(SEEK_DATA/SEEK_HOLE).
func allocated(name string, offset, blockSize int64) ([][2]int64, error) {
	const seekData, seekHole = 3, 4
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][2]int64
	for off := offset - offset%blockSize; ; {
		start, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) { // no data after off
			return out, nil
		} else if err != nil {
			return nil, err
		}
		end, err := f.Seek(start, seekHole)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]int64{start - start%blockSize, (end + blockSize - 1) / blockSize * blockSize})
		off = end
	}
}

// coalesce merges sorted extents that touch or overlap.
func coalesce(in [][2]int64) [][2]int64 {
	var out [][2]int64
	for _, e := range in {
		if n := len(out); n > 0 && e[0] <= out[n-1][1] {
			out[n-1][1] = max64(out[n-1][1], e[1])
		} else {
			out = append(out, e)
		}
	}
	return out
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

// ---- SOAP envelopes, shaped like the simulator's own (simulator.go) ----

type soapEnvelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

type soapFault struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault faultDetail
	} `xml:"detail"`
}

// faultDetail encodes as <${Type}Fault xmlns="urn:vim25" xsi:type="${Type}">.
type faultDetail struct{ fault types.BaseMethodFault }

func (d faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := fmt.Sprintf("%T", d.fault)
	kind = kind[strings.LastIndex(kind, ".")+1:]
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.fault, start)
}

func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	f := &soapFault{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = faultDetail{fault}
	writeSOAP(w, http.StatusInternalServerError, &struct{ Fault *soapFault }{f})
}

func writeSOAP(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	err := xml.NewEncoder(&out).Encode(&soapEnvelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}
