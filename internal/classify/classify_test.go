package classify

import (
	"strings"
	"testing"

	"github.com/quell-ir/quell/internal/event"
)

func TestPriorityFor(t *testing.T) {
	for _, tc := range []struct {
		typ  string
		sev  int
		want string
	}{
		{DataExfiltration, 1, P0}, {DNSTunneling, 3, P0}, {CredentialCompromise, 3, P0},
		{BruteForce, 3, P1}, {BruteForce, 5, P0}, {SuspiciousConnection, 6, P0}, {FailedAuthentication, 2, P1},
		{PolicyViolation, 5, P2}, {Anomaly, 5, P2}, {PortScan, 4, P2},
		{Informational, 5, P3}, {"made_up", 3, P2},
	} {
		if got := PriorityFor(tc.typ, tc.sev); got != tc.want {
			t.Errorf("%s/%d: %s, want %s", tc.typ, tc.sev, got, tc.want)
		}
	}
}

func TestOverrides(t *testing.T) {
	c, err := New(Config{Overrides: map[string]Override{
		"Terminal shell in container": {Priority: P2},
		"crowdsecurity/ssh-bf":        {Type: PortScan},
		"Heartbeat":                   {SeverityID: 1, Type: Informational},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in        event.Event
		typ, prio string
		sev       int
	}{
		{event.Event{Rule: "Terminal shell in container", Type: Execution, SeverityID: 5}, Execution, P2, 5},
		{event.Event{Rule: "CROWDSECURITY/SSH-BF", Type: BruteForce, SeverityID: 4}, PortScan, P2, 4},
		{event.Event{Rule: "Heartbeat", Type: Anomaly, SeverityID: 3, Priority: P1}, Informational, P3, 1},
		{event.Event{Rule: "other", Type: "", SeverityID: 9}, Anomaly, P2, 0},
		{event.Event{Rule: "parser chose", Type: PolicyViolation, Priority: P1}, PolicyViolation, P1, 0},
	} {
		e := tc.in
		c.Apply(&e)
		if e.Type != tc.typ || e.Priority != tc.prio || e.SeverityID != tc.sev {
			t.Errorf("%s: got %s %s %d, want %s %s %d", tc.in.Rule, e.Type, e.Priority, e.SeverityID, tc.typ, tc.prio, tc.sev)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		o    Override
		want string
	}{
		{Override{}, "sets none"},
		{Override{Type: "nope"}, ".type: unknown type"},
		{Override{Priority: "P9"}, ".priority:"},
		{Override{SeverityID: 7}, ".severity_id:"},
	} {
		err := Config{Overrides: map[string]Override{"r": tc.o}}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `overrides["r"]`) {
			t.Errorf("%+v: %v", tc.o, err)
		}
	}
}

func TestFromKeywords(t *testing.T) {
	for in, want := range map[string]string{
		"Outbound Connection to C2 Servers": CommandAndControl,
		"Detect crypto miners":              CryptoMining,
		"DNSTunnelingSuspected":             DNSTunneling,
		"SSHBruteForce":                     BruteForce,
		"Tor exit node contacted":           SuspiciousConnection,
		"HighMemoryUsage":                   "",
		"Watchdog":                          Informational,
		"Launch Privileged Container":       PrivilegeEscalation,
		"monitor":                           "",
	} {
		if got := FromKeywords(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if FromMITRETags([]string{"container", "mitre_execution", "mitre_persistence"}) != Persistence {
		t.Error("tag precedence")
	}
}
