package firewall_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/quell-ir/quell/internal/app"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/testenv/netns"
	"github.com/quell-ir/quell/internal/txn"
)

// BenchmarkPostToDrop measures what the firewall issue asks: the time from
// the POST of a brute-force event to the attacker's packets being dropped,
// on real packets. quell runs in-process in enforce mode with its firewall
// in the victim's namespace; for each run a fresh attacker address streams
// sequence-numbered UDP datagrams to the victim every 100µs, and the drop
// time is the send time of the first datagram after which none arrived.
func BenchmarkPostToDrop(b *testing.B) {
	const runs = 100
	lan := netns.NewLAN(b,
		netns.HostSpec{Name: "batk", Addrs: []netip.Prefix{netip.MustParsePrefix("10.78.0.1/24")}},
		netns.HostSpec{Name: "bvic", Addrs: []netip.Prefix{netip.MustParsePrefix("10.78.0.3/24")}},
	)
	atk, vic := lan.Hosts["batk"], lan.Hosts["bvic"]
	link, err := atk.Netlink().LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < runs; i++ {
		addr, _ := netlink.ParseAddr(fmt.Sprintf("10.78.0.%d/24", 100+i))
		if err := atk.Netlink().AddrAdd(link, addr); err != nil {
			b.Fatal(err)
		}
	}
	var rx net.PacketConn
	if err := vic.Do(func() error { var err error; rx, err = net.ListenPacket("udp4", "10.78.0.3:9999"); return err }); err != nil {
		b.Fatal(err)
	}
	defer rx.Close()

	dir := b.TempDir()
	pb := filepath.Join(dir, "pb.yaml")
	os.WriteFile(pb, []byte(`apiVersion: quell.dev/v1
kind: Playbook
metadata: {name: block}
spec:
  match: 'event.type == "brute_force"'
  mode: enforce
  steps:
    - action: firewall.block
      params: {address: '{{ .event.src_endpoint.ip }}', direction: in}
      ttl: 1h
`), 0o644)
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Server.Addr = "127.0.0.1:0"
	cfg.Mode, cfg.Engine.Mode = txn.ModeEnforce, txn.ModeEnforce
	cfg.Playbooks = []string{pb}
	cfg.Firewall.NetNS = vic.Path()
	a, err := app.New(context.Background(), cfg, app.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer a.Stop(context.Background())
	url := "http://" + a.Addr() + "/v1/events"

	var lat []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := 0; i < runs; i++ {
			src := fmt.Sprintf("10.78.0.%d", 100+(n*runs+i)%runs)
			if n > 0 {
				b.Fatal("run with -benchtime 1x: each run uses its own attacker address")
			}
			d, err := dropAfterPost(atk, rx, src, url)
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, d)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat)), "runs")
}

func dropAfterPost(atk *netns.Host, rx net.PacketConn, src, url string) (time.Duration, error) {
	var tx net.Conn
	err := atk.Do(func() error {
		var err error
		tx, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src)}, &net.UDPAddr{IP: net.ParseIP("10.78.0.3"), Port: 9999})
		return err
	})
	if err != nil {
		return 0, err
	}
	defer tx.Close()
	const maxPackets = 20000 // 2 s at 100µs: the loop always ends
	sent := make([]time.Time, maxPackets)
	got := make([]bool, maxPackets)
	var mu sync.Mutex
	stop := make(chan struct{})
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		buf := make([]byte, 64)
		for {
			rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, addr, err := rx.ReadFrom(buf)
			if err != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			if n == 8 && addr.(*net.UDPAddr).IP.String() == src {
				seq := binary.BigEndian.Uint64(buf)
				mu.Lock()
				if seq < maxPackets {
					got[seq] = true
				}
				mu.Unlock()
			}
		}
	}()
	pkt := make([]byte, 8)
	var t0 time.Time
	var posted chan error
	last := 0
	for seq := 0; seq < maxPackets; seq++ {
		binary.BigEndian.PutUint64(pkt, uint64(seq))
		sent[seq] = time.Now()
		tx.Write(pkt)
		last = seq
		if seq == 200 { // 20 ms of traffic flowing before the event
			t0 = time.Now()
			posted = make(chan error, 1)
			go func() {
				ev := fmt.Sprintf(`{"source":"bench","type":"brute_force","severity_id":4,"rule":"ssh-bf","src_endpoint":{"ip":%q}}`, src)
				resp, err := http.Post(url, "application/json", bytes.NewReader([]byte(ev)))
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != 202 {
						err = fmt.Errorf("POST: %d", resp.StatusCode)
					}
				}
				posted <- err
			}()
		}
		// Stop 300 ms after the last datagram that arrived.
		if seq > 200 && seq%100 == 0 {
			mu.Lock()
			lastGot := -1
			for i := seq; i >= 0; i-- {
				if got[i] {
					lastGot = i
					break
				}
			}
			mu.Unlock()
			if lastGot >= 0 && time.Since(sent[lastGot]) > 300*time.Millisecond {
				break
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	close(stop)
	<-recvDone
	if err := <-posted; err != nil {
		return 0, err
	}
	firstLost := -1
	for i := last; i >= 0; i-- {
		if got[i] {
			break
		}
		firstLost = i
	}
	if firstLost < 0 || firstLost <= 200 {
		return 0, fmt.Errorf("%s: packets were never dropped (or dropped before the event)", src)
	}
	return sent[firstLost].Sub(t0), nil
}
