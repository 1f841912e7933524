package firewall

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/testenv/netns"
)

// BenchmarkBlockLatency measures, over at least 100 runs, the time from the
// Apply call to the attacker's packets being dropped. While Apply runs, the
// attacker sends numbered UDP probes every 100µs to an echo server on the
// victim; the latency is the send time of the first probe from which on no
// probe is answered (within 20 ms after Apply returns), minus the Apply
// call's start. Between runs the block is reverted and reachability awaited.
func BenchmarkBlockLatency(b *testing.B) {
	lan := netns.NewLAN(b,
		netns.HostSpec{Name: "atk", Addrs: pfx("10.78.0.1/24")},
		netns.HostSpec{Name: "vic", Addrs: pfx("10.78.0.3/24")},
	)
	atk, vic := lan.Hosts["atk"], lan.Hosts["vic"]
	var srv net.PacketConn
	if err := vic.Do(func() (err error) { srv, err = net.ListenPacket("udp", "10.78.0.3:9000"); return err }); err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(buf[:n], from)
		}
	}()
	var cl net.Conn
	if err := atk.Do(func() (err error) { cl, err = net.Dial("udp", "10.78.0.3:9000"); return err }); err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	be := newTestBackend(b, vic.NS, nil)
	reg := action.NewRegistry()
	if err := Register(reg, be); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	runs := max(b.N, 100)
	lat := make([]time.Duration, 0, runs)
	var seq uint32
	for range runs {
		// Reachable again (the previous run's revert took effect)?
		ok := false
		for deadline := time.Now().Add(5 * time.Second); !ok && time.Now().Before(deadline); {
			seq++
			ok = roundTripUDP(cl, seq, 100*time.Millisecond)
		}
		if !ok {
			b.Fatal("victim unreachable before the block")
		}
		a, _, err := reg.Build("firewall.block", map[string]string{"address": "10.78.0.1"})
		if err != nil {
			b.Fatal(err)
		}
		before, err := a.Check(ctx)
		if err != nil {
			b.Fatal(err)
		}
		d, err := dropLatency(cl, &seq, func() error {
			return a.Apply(ctx, action.Effect{ExpiresAt: time.Now().Add(time.Hour)})
		})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, d)
		if err := a.Revert(ctx, before); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(lat)), "runs")
}

func roundTripUDP(c net.Conn, seq uint32, wait time.Duration) bool {
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], seq)
	if _, err := c.Write(out[:]); err != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	var in [8]byte
	for {
		n, err := c.Read(in[:])
		if err != nil {
			return false
		}
		if n == 4 && binary.BigEndian.Uint32(in[:4]) == seq {
			return true
		}
	}
}

// dropLatency runs apply while probing, and returns how long after apply's
// start the first probe was sent that, like every later one, got no echo.
func dropLatency(c net.Conn, seq *uint32, apply func() error) (time.Duration, error) {
	type probe struct {
		seq  uint32
		sent time.Time
	}
	var (
		mu       sync.Mutex
		sent     []probe
		answered = map[uint32]bool{}
	)
	stop := make(chan struct{})
	recvDone := make(chan struct{})
	go func() { // receiver
		defer close(recvDone)
		var in [8]byte
		for {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
			n, err := c.Read(in[:])
			select {
			case <-stop:
				return
			default:
			}
			if err == nil && n == 4 {
				mu.Lock()
				answered[binary.BigEndian.Uint32(in[:4])] = true
				mu.Unlock()
			}
		}
	}()
	sendDone := make(chan struct{})
	applied := make(chan struct{})
	go func() { // sender: every 100µs until 20ms after apply returned
		defer close(sendDone)
		var until time.Time
		for {
			select {
			case <-applied:
				if until.IsZero() {
					until = time.Now().Add(20 * time.Millisecond)
				}
			default:
			}
			if !until.IsZero() && time.Now().After(until) {
				return
			}
			mu.Lock()
			*seq++
			p := probe{seq: *seq, sent: time.Now()}
			sent = append(sent, p)
			mu.Unlock()
			var out [4]byte
			binary.BigEndian.PutUint32(out[:], p.seq)
			_, _ = c.Write(out[:])
			time.Sleep(100 * time.Microsecond)
		}
	}()
	t0 := time.Now()
	err := apply()
	close(applied)
	<-sendDone
	time.Sleep(20 * time.Millisecond) // let late echoes arrive
	close(stop)
	<-recvDone
	if err != nil {
		return 0, err
	}
	mu.Lock()
	defer mu.Unlock()
	first := -1
	for i := len(sent) - 1; i >= 0 && !answered[sent[i].seq]; i-- {
		first = i
	}
	if first < 0 {
		return 0, fmt.Errorf("the last probe was still answered after the block")
	}
	if d := sent[first].sent.Sub(t0); d > 0 {
		return d, nil
	}
	return 0, nil
}

// hosts returns n distinct host elements, a quarter of them IPv6.
func hosts(n int, exp time.Time) []Element {
	out := make([]Element, n)
	for i := range n {
		var a netip.Addr
		if i%4 == 3 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		} else {
			a = netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		}
		out[i] = Element{Kind: KindBlock, Dir: In, Prefix: netip.PrefixFrom(a, a.BitLen()), Expires: exp, Owner: fmt.Sprintf("bench/%d", i)}
	}
	return out
}

func verifyAll(b *testing.B, be *Backend, want []Element) {
	have, err := be.Present(context.Background(), want)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range want {
		if _, ok := have[e.ID()]; !ok {
			b.Fatalf("%s missing after the bulk add (%d of %d present)", e.ID(), len(have), len(want))
		}
	}
}

// BenchmarkBulk10k adds 10,000 blocks with the batch API and reads the
// sets back to check every one is present; both are timed.
func BenchmarkBulk10k(b *testing.B) {
	ns := netns.New(b, "qfwbulk")
	be := newTestBackend(b, ns, nil)
	ctx := context.Background()
	els := hosts(10000, time.Now().Add(time.Hour))
	b.ResetTimer()
	for range b.N {
		if err := be.AddElements(ctx, els); err != nil {
			b.Fatal(err)
		}
		verifyAll(b, be, els)
		b.StopTimer()
		if err := be.DeleteElements(ctx, els); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/10k")
}

// BenchmarkApplyConcurrent10k: 10,000 concurrent Apply calls (as the txn
// engine's concurrent transactions make them) coalesced by the batcher,
// then the read-back.
func BenchmarkApplyConcurrent10k(b *testing.B) {
	ns := netns.New(b, "qfwconc")
	be := newTestBackend(b, ns, nil)
	ctx := context.Background()
	els := hosts(10000, time.Now().Add(time.Hour))
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		errs := make(chan error, len(els))
		for _, e := range els {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := be.Apply(ctx, []Element{e}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		verifyAll(b, be, els)
		b.StopTimer()
		if err := be.DeleteElements(ctx, els); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/10k")
}
