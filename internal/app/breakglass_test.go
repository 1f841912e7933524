package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/action/builtin"
	"github.com/quell-ir/quell/internal/config"
	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/source/auth"
	"github.com/quell-ir/quell/internal/txn"
)

// TestBreakGlass: alice asks for elevated rights through the API; she
// cannot approve her own request, nor can carol, who is not in the
// approver group the policy names; bob approves; the grant command runs;
// the grant expires by itself and the revoke command runs.
func TestBreakGlass(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "grants.log")
	script := filepath.Join(dir, "grant.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$1 $2 $3\" >> "+log+"\n"), 0o755)
	a, srv := newAPI(t, func(c *config.Config) {
		c.Mode, c.Engine.Mode = txn.ModeEnforce, txn.ModeEnforce
		// The shipped rules of engagement decide, as in production.
		c.Policy.Enabled, c.Policy.Dir, c.Policy.Watch = true, filepath.Join("..", "..", "examples", "policies"), false
		c.Actions.BreakGlass = &builtin.BreakGlassConfig{
			Grant:  []string{"/bin/sh", script, "grant", "{person}", "{role}"},
			Revoke: []string{"/bin/sh", script, "revoke", "{person}", "{role}"},
		}
		c.Server.Auth.Tokens = []server.APIToken{
			{Name: "alice", Token: auth.SecretRef{Value: "alice-token-0123456789"}, Roles: []string{server.RoleRead, server.RoleWrite, server.RoleApprove}},
			{Name: "bob", Token: auth.SecretRef{Value: "bob-token-0123456789ab"}, Roles: []string{server.RoleRead, server.RoleApprove}, Groups: []string{"responders"}},
			{Name: "carol", Token: auth.SecretRef{Value: "carol-token-0123456789"}, Roles: []string{server.RoleRead, server.RoleApprove}},
		}
	})
	call := func(token, method, path, body string) (int, map[string]any) {
		req, _ := httpRequest(method, srv.URL+path, body)
		req.Header.Set("Authorization", "Bearer "+token)
		return doReq(t, req)
	}
	if code, m := call("alice-token-0123456789", "POST", "/v1/breakglass", `{"person":"alice","role":"db-admin","duration":"2h"}`); code != 400 || errField(m) != "duration" {
		t.Fatalf("over-long grant: %d %v", code, m)
	}
	if code, m := call("bob-token-0123456789ab", "POST", "/v1/breakglass", `{"person":"bob","role":"db-admin"}`); code != 403 {
		t.Fatalf("bob has no write role: %d %v", code, m)
	}
	code, m := call("alice-token-0123456789", "POST", "/v1/breakglass", `{"person":"alice","role":"db-admin","duration":"1s","reason":"INC-42 database lock"}`)
	if code != 202 || m["state"] != "awaiting_approval" || m["requester"] != "alice" {
		t.Fatalf("request: %d %v", code, m)
	}
	id := m["id"].(string)
	if code, m := call("alice-token-0123456789", "POST", "/v1/transactions/"+id+"/approve", `{}`); code != 400 || errField(m) != "by" {
		t.Fatalf("self-approval: %d %v", code, m)
	}
	// The policy wants an approver from the responders group.
	if code, m := call("carol-token-0123456789", "POST", "/v1/transactions/"+id+"/approve", `{}`); code != 400 || !strings.Contains(fmt.Sprint(m), "approver group responders") {
		t.Fatalf("approval outside the group: %d %v", code, m)
	}
	if code, m := call("bob-token-0123456789ab", "POST", "/v1/transactions/"+id+"/approve", `{"comment":"ok for INC-42"}`); code != 200 {
		t.Fatalf("approve: %d %v", code, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		tr, err := a.Engine.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if tr.State == txn.Expired {
			break
		}
		if tr.State.Terminal() {
			t.Fatalf("grant ended %s: %s %s", tr.State, tr.Reason, tr.Error)
		}
		a.Engine.WaitChange(ctx, id, tr.Version)
	}
	b, _ := os.ReadFile(log)
	if got := strings.TrimSpace(string(b)); got != "grant alice db-admin\nrevoke alice db-admin" {
		t.Fatalf("commands run:\n%s", got)
	}
	_, m = call("alice-token-0123456789", "GET", "/v1/transactions/"+id, "")
	j, _ := json.Marshal(m["approvals"])
	if !strings.Contains(string(j), `"by":"bob"`) {
		t.Fatalf("approval not recorded: %s", j)
	}
	if d, _ := m["decision"].(map[string]any); d == nil || d["engine"] != "opa" {
		t.Fatalf("no policy decision recorded: %v", m["decision"])
	}
}
