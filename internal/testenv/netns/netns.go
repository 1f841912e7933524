// Package netns is a test harness for real network namespaces: it creates
// named namespaces, joins them with veth pairs (directly or through a bridge
// in a "switch" namespace), assigns addresses, runs Go code or a process
// inside a namespace, and tears everything down when the test ends.
//
// Everything is done over netlink (github.com/vishvananda/netlink); nothing
// shells out to ip(8). Tests that use it need root (CAP_SYS_ADMIN and
// CAP_NET_ADMIN): Require skips them otherwise, or fails them when
// QUELL_REQUIRE_INTEGRATION=1 says the integration suite must run.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "QUELL_REQUIRE_INTEGRATION"

// Require skips t (or fails it when QUELL_REQUIRE_INTEGRATION=1) unless the
// process can create network namespaces.
func Require(t testing.TB) {
	t.Helper()
	why := ""
	if runtime.GOOS != "linux" {
		why = "network namespaces need Linux"
	} else if os.Geteuid() != 0 {
		why = "network namespaces need root"
	} else if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		why = "no /proc/self/ns/net: " + err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s, and %s=1 requires this test to run", why, RequireEnv)
	}
	t.Skip(why)
}

// NS is one named network namespace (visible as /run/netns/<Name>).
type NS struct {
	Name string
	// mu guards handle and nl against Close while a Do is in flight (a
	// timed-out HTTP dial, say, may still be running when a test ends).
	mu     sync.RWMutex
	handle vns.NsHandle
	nl     *netlink.Handle
}

// New creates a fresh named namespace whose name starts with prefix, brings
// its loopback up, and deletes it when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	Require(t)
	ns, err := Create(prefix)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("netns: %v", err)
		}
	})
	return ns
}

// Create is New without a testing.TB, for benchmarks' helpers and programs;
// the caller must Close it.
func Create(prefix string) (*NS, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("random name: %w", err)
	}
	name := prefix + "-" + hex.EncodeToString(rnd[:])
	if len(name) > 64 {
		return nil, fmt.Errorf("namespace name %q too long", name)
	}
	var (
		h    vns.NsHandle
		nerr error
	)
	// NewNamed switches the calling thread into the new namespace: do it on
	// a locked thread and switch back before unlocking it.
	err := onLockedThread(func() error {
		h, nerr = vns.NewNamed(name)
		return nerr
	})
	if err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		_ = h.Close()
		_ = vns.DeleteNamed(name)
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	ns := &NS{Name: name, handle: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		_ = ns.Close()
		return nil, fmt.Errorf("loopback up in %s: %w", name, err)
	}
	return ns, nil
}

// onLockedThread runs fn on a locked OS thread and restores that thread's
// original namespace afterwards. If it cannot be restored, the thread stays
// locked, so the runtime discards it when the goroutine ends instead of
// reusing a thread that sits in the wrong namespace.
func onLockedThread(fn func() error) error {
	runtime.LockOSThread()
	orig, err := vns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current namespace: %w", err)
	}
	defer orig.Close()
	ferr := fn()
	if err := vns.Set(orig); err != nil {
		return errors.Join(ferr, fmt.Errorf("restore namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Close deletes the namespace. Interfaces inside it vanish with it (the
// peer end of a veth pair in another namespace goes too).
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	var errs []error
	if n.handle.IsOpen() {
		errs = append(errs, n.handle.Close())
		n.handle = vns.None()
	}
	if err := vns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete namespace %s: %w", n.Name, err))
	}
	return errors.Join(errs...)
}

// FD is a file descriptor referring to the namespace, for APIs that take one
// (nftables.WithNetNSFd, netlink.Config.NetNS). It stays valid until Close.
func (n *NS) FD() int { return int(n.handle) }

// Path is the namespace's bind mount, for tools and for configuration that
// names a namespace by path.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Netlink is a route-netlink handle operating inside the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on an OS thread switched into the namespace. Sockets created
// by fn belong to the namespace for their whole life, even when used later
// from other goroutines; goroutines started by fn do NOT run in it.
func (n *NS) Do(fn func() error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if !n.handle.IsOpen() {
		return fmt.Errorf("namespace %s is closed", n.Name)
	}
	return onLockedThread(func() error {
		if err := vns.Set(n.handle); err != nil {
			return fmt.Errorf("enter namespace %s: %w", n.Name, err)
		}
		return fn()
	})
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// Dial connects from inside the namespace. The connect happens on the
// namespace's thread; the returned connection can be used anywhere.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Start starts cmd inside the namespace: the child is forked from a thread
// that sits in the namespace, so it inherits it (no ip-netns-exec needed).
func (n *NS) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// Veth creates a veth pair with one end (ifA) in a and the other (ifB) in
// b, assigns the given addresses (each may be the zero Prefix for none), and
// brings both ends up.
func Veth(a *NS, ifA string, addrA netip.Prefix, b *NS, ifB string, addrB netip.Prefix) error {
	la := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ifA}, PeerName: ifB, PeerNamespace: netlink.NsFd(b.handle)}
	if err := a.nl.LinkAdd(la); err != nil {
		return fmt.Errorf("veth %s/%s <-> %s/%s: %w", a.Name, ifA, b.Name, ifB, err)
	}
	if err := a.LinkUp(ifA, addrA); err != nil {
		return err
	}
	return b.LinkUp(ifB, addrB)
}

// LinkUp assigns addr (unless zero) to the interface and brings it up. IPv6
// addresses are added with duplicate address detection off, so they are
// usable at once instead of after DAD's delay.
func (n *NS) LinkUp(ifname string, addr netip.Prefix) error {
	l, err := n.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: link %s: %w", n.Name, ifname, err)
	}
	if addr.IsValid() {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}}
		if addr.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := n.nl.AddrAdd(l, a); err != nil {
			return fmt.Errorf("%s: address %s on %s: %w", n.Name, addr, ifname, err)
		}
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: link %s up: %w", n.Name, ifname, err)
	}
	return nil
}

// AddBridge creates a bridge interface in the namespace and brings it up.
func (n *NS) AddBridge(name string) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := n.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("%s: bridge %s: %w", n.Name, name, err)
	}
	return n.LinkUp(name, netip.Prefix{})
}

// Enslave attaches an interface to a bridge in the same namespace.
func (n *NS) Enslave(ifname, bridge string) error {
	l, err := n.nl.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: link %s: %w", n.Name, ifname, err)
	}
	br, err := n.nl.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("%s: bridge %s: %w", n.Name, bridge, err)
	}
	if err := n.nl.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("%s: %s into %s: %w", n.Name, ifname, bridge, err)
	}
	return nil
}

// AddDefaultRoute sets the namespace's default route via gw (IPv4 or IPv6).
func (n *NS) AddDefaultRoute(gw netip.Addr) error {
	bits := gw.BitLen()
	dst := &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	if err := n.nl.RouteAdd(&netlink.Route{Dst: dst, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("%s: default route via %s: %w", n.Name, gw, err)
	}
	return nil
}
