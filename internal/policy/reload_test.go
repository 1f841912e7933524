package policy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quell-ir/quell/internal/action"
	"github.com/quell-ir/quell/internal/txn"
)

const (
	allowRego = "package quell\n\ndecision := {\"allow\": true, \"reasons\": {\"v1\"}}\n"
	denyRego  = "package quell\n\ndecision := {\"deny\": {\"v2 denies\"}}\n"
)

func simpleInput() txn.DecisionInput {
	return txn.DecisionInput{
		Request: txn.Request{Action: "firewall.block_ip", Params: map[string]string{"ip": "198.51.100.7"}},
		Spec:    action.Spec{Name: "firewall.block_ip", Provider: "firewall", Reversible: true},
		Targets: []action.Target{{Kind: "ip", Value: "198.51.100.7"}},
		Mode:    txn.ModeEnforce,
		Time:    time.Unix(1_800_000_000, 0),
	}
}

func TestReloadSwapsAndKeepsOldOnFailure(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", allowRego)
	reg := prometheus.NewRegistry()
	e := newEngine(t, dir, Options{Registerer: reg})
	ctx := context.Background()
	rev1 := e.Revision()
	if d, _ := e.Decide(ctx, simpleInput()); d.Verdict != txn.Allow || d.PolicyRevision != rev1 {
		t.Fatalf("v1: %+v", d)
	}

	write(t, dir, "p.rego", denyRego)
	if err := e.Reload(ctx); err != nil {
		t.Fatalf("reload v2: %v", err)
	}
	rev2 := e.Revision()
	if rev2 == rev1 {
		t.Fatal("revision did not change with the policy text")
	}
	if d, _ := e.Decide(ctx, simpleInput()); d.Verdict != txn.Deny || d.Reasons[0] != "v2 denies" || d.PolicyRevision != rev2 {
		t.Fatalf("v2: %+v", d)
	}

	write(t, dir, "p.rego", "package quell\n\ndecision := {\n")
	err := e.Reload(ctx)
	if err == nil {
		t.Fatal("reload of a broken policy succeeded")
	}
	st := e.Status()
	if st.Revision != rev2 || !strings.Contains(st.LastError, "p.rego") || st.LastErrorAt.IsZero() {
		t.Fatalf("status after failed reload: %+v", st)
	}
	if d, _ := e.Decide(ctx, simpleInput()); d.Verdict != txn.Deny || d.PolicyRevision != rev2 {
		t.Fatalf("failed reload changed the policy in force: %+v", d)
	}
	if got := testutil.ToFloat64(e.m.reloads.WithLabelValues("failure")); got != 1 {
		t.Errorf("failure reloads %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.m.reloads.WithLabelValues("success")); got != 2 {
		t.Errorf("successful reloads %v, want 2", got)
	}

	write(t, dir, "p.rego", allowRego)
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.LastError != "" || st.Revision != rev1 {
		t.Fatalf("status after recovery: %+v", st)
	}
}

// TestReloadUnderLoad: decisions keep coming while the policy is swapped;
// none may fail, and each must carry the verdict of the revision it names.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", allowRego)
	e := newEngine(t, dir, Options{})
	// Under -race on two cores an evaluation can queue behind a compile for
	// longer than the production timeout; that would (rightly) deny, which
	// is not what this test is about.
	e.cfg.Timeout = time.Minute
	ctx := context.Background()
	revAllow := e.Revision()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, 100)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d, err := e.Decide(ctx, simpleInput())
				if err != nil {
					errs <- err.Error()
					return
				}
				wantAllow := d.PolicyRevision == revAllow
				if (d.Verdict == txn.Allow) != wantAllow || len(d.Reasons) == 0 || strings.Contains(d.Reasons[0], "fail closed") {
					errs <- d.PolicyRevision + " " + string(d.Verdict) + " " + strings.Join(d.Reasons, ";")
					return
				}
			}
		}()
	}
	for i := range 20 {
		if i%2 == 0 {
			write(t, dir, "p.rego", denyRego)
		} else {
			write(t, dir, "p.rego", allowRego)
		}
		if err := e.Reload(ctx); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Errorf("inconsistent decision during reload: %s", msg)
	}
}

func TestWatchReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", allowRego)
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Dir, cfg.WatchDebounce = true, dir, 20*time.Millisecond
	e, err := New(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	rev1 := e.Revision()
	// The watch may not be armed yet when the first write lands: rewrite
	// until the revision changes, within a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for e.Revision() == rev1 {
		if time.Now().After(deadline) {
			t.Fatal("policy change not picked up within 10s")
		}
		write(t, dir, "p.rego", denyRego)
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for a condition we could await
	}
	if d, _ := e.Decide(context.Background(), simpleInput()); d.Verdict != txn.Deny {
		t.Fatalf("after watch reload: %+v", d)
	}
	// A new sub-directory is watched too.
	sub := filepath.Join(dir, "more")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	rev2 := e.Revision()
	for e.Revision() == rev2 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("change in a new sub-directory not picked up")
		}
		write(t, sub, "q.rego", "package quell.more\n\nx := 1\n")
		time.Sleep(50 * time.Millisecond)
	}
}

// signedBundle builds an OPA bundle from the shipped policies, signs it with
// key and writes it as a .tar.gz.
func signedBundle(t *testing.T, path string, key *rsa.PrivateKey, revision string) {
	t.Helper()
	src := examplesDir(t)
	b := bundle.Bundle{Manifest: bundle.Manifest{Revision: revision}, Data: map[string]any{}}
	for _, f := range []string{"quell/decision.rego", "quell/settings.rego"} {
		raw, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		b.Modules = append(b.Modules, bundle.ModuleFile{URL: "/" + f, Path: "/" + f, Raw: raw})
	}
	if key != nil {
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		if err := b.GenerateSignature(bundle.NewSigningConfig(string(pemKey), "RS256", ""), "quell-test", false); err != nil {
			t.Fatalf("sign bundle: %v", err)
		}
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		t.Fatalf("write bundle: %v", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writePublicKey(t *testing.T, path string, key *rsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSignedBundle(t *testing.T) {
	dir := t.TempDir()
	good, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "quell-test.pem")
	writePublicKey(t, pub, good)
	bpath := filepath.Join(dir, "policy.tar.gz")
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Bundle = true, bpath
	cfg.Verification = Verification{KeyID: "quell-test", PublicKeys: map[string]PublicKey{"quell-test": {File: pub, Algorithm: "RS256"}}}

	signedBundle(t, bpath, good, "2026-11-24.1")
	e, err := New(context.Background(), cfg, Options{})
	if err != nil {
		t.Fatalf("signed bundle refused: %v", err)
	}
	if e.Revision() != "2026-11-24.1" {
		t.Fatalf("revision %q, want the manifest's", e.Revision())
	}
	ev := guardDutyEvent(t, samplePath(t, gdIAMSample))
	d, _ := e.Decide(context.Background(), gdRequest(ev, "HIGH", disableKeySpec, []action.Target{{Kind: "access_key", Value: "AK"}}, ""))
	if d.Verdict != txn.Allow || d.PolicyRevision != "2026-11-24.1" {
		t.Fatalf("decision from bundle: %+v", d)
	}

	for _, tc := range []struct {
		name string
		key  *rsa.PrivateKey
		want string
	}{
		{"unsigned", nil, "signature"},
		{"wrong key", evil, "verification"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signedBundle(t, bpath, tc.key, "2026-11-24.2")
			if _, err := New(context.Background(), cfg, Options{}); err == nil {
				t.Fatal("New accepted a bundle that should not verify")
			}
			err := e.Reload(context.Background())
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Fatalf("reload: %v, want an error about %s", err, tc.want)
			}
			if e.Revision() != "2026-11-24.1" {
				t.Fatalf("failed reload replaced the policy: %s", e.Revision())
			}
		})
	}

	// Without keys configured, the same unsigned bundle loads.
	signedBundle(t, bpath, nil, "2026-11-24.3")
	cfg.Verification = Verification{}
	e2, err := New(context.Background(), cfg, Options{})
	if err != nil || e2.Revision() != "2026-11-24.3" {
		t.Fatalf("unsigned bundle without keys: %v %q", err, e2.Revision())
	}
}
