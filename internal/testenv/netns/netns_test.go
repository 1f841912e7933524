package netns

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLANConnectivity(t *testing.T) {
	lan := NewLAN(t,
		HostSpec{Name: "a", Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24"), netip.MustParsePrefix("fd00:99::1/64")}},
		HostSpec{Name: "b", Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24"), netip.MustParsePrefix("fd00:99::2/64")}},
	)
	a, b := lan.Hosts["a"], lan.Hosts["b"]
	for _, addr := range []netip.Addr{b.Addr4(), b.Addr6()} {
		l, err := b.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello"))
			_ = c.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := a.Dial(ctx, "tcp", l.Addr().String())
		cancel()
		if err != nil {
			t.Fatalf("dial %s from a: %v", l.Addr(), err)
		}
		got, _ := io.ReadAll(c)
		_ = c.Close()
		_ = l.Close()
		if string(got) != "hello" {
			t.Fatalf("read %q from %s, want hello", got, l.Addr())
		}
	}
}

func TestIsolationFromHost(t *testing.T) {
	ns := New(t, "qiso")
	// A listener in the namespace is not reachable from the host's loopback.
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second)
	if err == nil {
		_ = c.Close()
		// Something on the host may listen on the same port by chance;
		// only a connection accepted by our listener would be a failure.
		if tl, ok := l.(*net.TCPListener); ok {
			_ = tl.SetDeadline(time.Now().Add(100 * time.Millisecond))
			if ac, err := tl.Accept(); err == nil {
				_ = ac.Close()
				t.Fatal("host loopback reached a listener inside the namespace")
			}
		}
	}
}

func TestStartProcessInNamespace(t *testing.T) {
	ns := New(t, "qproc")
	if err := ns.LinkUp("lo", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	// The child's /proc/self/ns/net must be the namespace's inode.
	want, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(ns.FD()))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/readlink", "/proc/self/ns/net")
	var out strings.Builder
	cmd.Stdout = &out
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Fatalf("child namespace %s, want %s", got, want)
	}
	host, _ := os.Readlink("/proc/self/ns/net")
	if host == want {
		t.Fatal("namespace is the host's")
	}
}
