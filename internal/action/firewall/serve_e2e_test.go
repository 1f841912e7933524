package firewall_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/quell-ir/quell/internal/testenv/netns"
)

// TestQuellServeBlocksBruteForce runs the real `quell serve` binary inside
// the victim's namespace in enforce mode with the example playbook (mode
// switched to enforce), POSTs a brute-force event from the management host
// (the bystander) over the namespace network, and observes the attacker's
// new connections being dropped while the bystander still gets through.
//
// The binary is built from ./cmd/quell, or taken from $QUELL_BINARY. The
// test skips while that build does not offer firewall.block (the wiring of
// firewall.Register into internal/app is pending). Everything the binary
// does to nftables happens inside the namespace the test created.
func TestQuellServeBlocksBruteForce(t *testing.T) { serveScenario(t, "enforce") }

// TestQuellServeAuditModeTouchesNothing is the same scenario with quell in
// its default audit mode: the transaction is recorded as audited, the
// attacker still gets through, and quell never even creates its table.
func TestQuellServeAuditModeTouchesNothing(t *testing.T) { serveScenario(t, "audit") }

func serveScenario(t *testing.T, mode string) {
	lan := netns.NewLAN(t,
		netns.HostSpec{Name: "atk", Addrs: []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")}},
		netns.HostSpec{Name: "mgt", Addrs: []netip.Prefix{netip.MustParsePrefix("10.79.0.2/24")}},
		netns.HostSpec{Name: "vic", Addrs: []netip.Prefix{netip.MustParsePrefix("10.79.0.3/24")}},
	)
	atk, mgt, vic := lan.Hosts["atk"], lan.Hosts["mgt"], lan.Hosts["vic"]
	dir := t.TempDir()
	bin := os.Getenv("QUELL_BINARY")
	if bin == "" {
		bin = filepath.Join(dir, "quell")
		build := exec.Command("go", "build", "-o", bin, "github.com/quell-ir/quell/cmd/quell")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/quell: %v\n%s", err, out)
		}
	}
	// Inside the victim namespace even for listing: a build that wires the
	// firewall may install its table when it builds the registry.
	// quell reads QUELL_* variables as configuration overrides: keep the
	// test's own (QUELL_BINARY, QUELL_REQUIRE_INTEGRATION) away from it.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QUELL_") {
			env = append(env, kv)
		}
	}
	ls := exec.Command(bin, "actions", "ls", "-o", "json")
	ls.Env = env
	var lsOut bytes.Buffer
	ls.Stdout, ls.Stderr = &lsOut, &lsOut
	if err := vic.Start(ls); err != nil {
		t.Fatal(err)
	}
	if err := ls.Wait(); err != nil {
		t.Fatalf("quell actions ls: %v\n%s", err, lsOut.String())
	}
	var specs []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(lsOut.Bytes(), &specs); err != nil {
		t.Fatalf("quell actions ls -o json: %v\n%s", err, lsOut.String())
	}
	offered := false
	for _, s := range specs {
		offered = offered || s.Name == "firewall.block"
	}
	if !offered {
		t.Fatal("quell actions ls does not offer firewall.block")
	}

	// The victim's service.
	web, err := vic.Listen("tcp", "10.79.0.3:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	go func() { _ = srv.Serve(web) }()
	t.Cleanup(func() { _ = srv.Close() })

	example, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", "playbooks", "firewall-block-bruteforce.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pb := strings.Replace(string(example), "  mode: audit\n", "  mode: enforce\n", 1)
	if pb == string(example) {
		t.Fatal("example playbook has no 'mode: audit' line to switch")
	}
	pbPath := filepath.Join(dir, "block.yaml")
	if err := os.WriteFile(pbPath, []byte(pb), 0o600); err != nil {
		t.Fatal(err)
	}
	// The API listens on the namespace LAN, not loopback: quell refuses
	// that without tokens unless told the network is trusted.
	cfgPath := filepath.Join(dir, "quell.yaml")
	if err := os.WriteFile(cfgPath, []byte("server:\n  auth:\n    allow_open: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	serve := exec.Command(bin, "serve", "-c", cfgPath, "--addr", "10.79.0.3:7070", "--data", filepath.Join(dir, "data"),
		"--mode", mode, "--playbooks", pbPath)
	serve.Stdout, serve.Stderr, serve.Env = &logs, &logs, env
	if err := vic.Start(serve); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the process is gone
	var exitErr error
	go func() { exitErr = serve.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = serve.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = serve.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("quell serve output:\n%s", logs.String())
		}
	})

	client := func(h *netns.Host) *http.Client {
		return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				// The transport lets a dial outlive its request: bound it,
				// or a SYN to a blocked peer retries for two minutes.
				ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				return h.Dial(ctx, network, addr)
			},
		}}
	}
	reach := func(h *netns.Host) error {
		c := client(h)
		c.Timeout = 500 * time.Millisecond
		resp, err := c.Get("http://10.79.0.3:8080/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	await := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			select {
			case <-exited:
				t.Fatalf("quell serve exited while waiting for %s: %v", what, exitErr)
			default:
			}
			if cond() {
				return
			}
		}
		t.Fatalf("timed out after %v waiting for %s", within, what)
	}
	mc := client(mgt)
	await("quell to be ready", 30*time.Second, func() bool {
		resp, err := mc.Get("http://10.79.0.3:7070/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	await("the attacker to reach the victim before the block", 5*time.Second, func() bool { return reach(atk) == nil })

	ev := fmt.Sprintf(`{"source":"generic","type":"brute_force","severity_id":4,"time":%q,"rule":"ssh-bf","src_endpoint":{"ip":"10.79.0.1"},"dst_endpoint":{"ip":"10.79.0.3","port":22}}`,
		time.Now().UTC().Format(time.RFC3339))
	resp, err := mc.Post("http://10.79.0.3:7070/v1/events", "application/json", strings.NewReader(ev))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %d %s", resp.StatusCode, body)
	}
	txns := func() []struct{ ID, Key, State string } {
		resp, err := mc.Get("http://10.79.0.3:7070/v1/transactions?action=firewall.block")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var list struct {
			Transactions []struct{ ID, Key, State string }
		}
		if json.NewDecoder(resp.Body).Decode(&list) != nil {
			return nil
		}
		return list.Transactions
	}
	if mode == "audit" {
		await("the audited transaction", 20*time.Second, func() bool {
			ts := txns()
			return len(ts) == 1 && ts[0].State == "audited"
		})
		if err := reach(atk); err != nil {
			t.Fatalf("audit mode blocked the attacker: %v", err)
		}
		conn, err := nftables.New(nftables.WithNetNSFd(vic.FD()))
		if err != nil {
			t.Fatal(err)
		}
		tables, err := conn.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			if tb.Name == "quell" {
				t.Fatal("audit mode created the nftables table")
			}
		}
		return
	}
	await("the attacker to be blocked", 20*time.Second, func() bool { return reach(atk) != nil })
	if err := reach(mgt); err != nil {
		// One retry: a single request may time out on a loaded machine.
		if err := reach(mgt); err != nil {
			t.Fatalf("management host blocked too: %v", err)
		}
	}
	resp, err = mc.Get("http://10.79.0.3:7070/v1/transactions")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "firewall.block/in/10.79.0.1/32") {
		t.Fatalf("GET /v1/transactions does not list the block: %s", body)
	}

	// Revert through the API: the attacker gets through again.
	ts := txns()
	if len(ts) != 1 || ts[0].State != "active" {
		t.Fatalf("transactions: %+v, want one active", ts)
	}
	resp, err = mc.Post("http://10.79.0.3:7070/v1/transactions/"+ts[0].ID+"/revert", "application/json", strings.NewReader(`{"by":"e2e","comment":"test over"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"state": "reverted"`) {
		t.Fatalf("revert: %d %s", resp.StatusCode, body)
	}
	await("the attacker to get through after the revert", 10*time.Second, func() bool { return reach(atk) == nil })
}
