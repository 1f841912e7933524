package policy

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/quell-ir/quell/internal/event"
)

// guardDutyEvent maps a real GuardDuty finding (bare, or in an EventBridge
// envelope) to the normalized event, as far as these tests need: the
// source parser (internal/source/guardduty) owns the full mapping.
func guardDutyEvent(t testing.TB, path string) *event.Event {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read sample: %v", err)
	}
	var env struct {
		Detail json.RawMessage `json:"detail"`
	}
	doc := raw
	if json.Unmarshal(raw, &env) == nil && len(env.Detail) > 0 {
		doc = env.Detail
	}
	var f struct {
		ID        string  `json:"id"`
		AccountID string  `json:"accountId"`
		Region    string  `json:"region"`
		Type      string  `json:"type"`
		Severity  float64 `json:"severity"`
		Title     string  `json:"title"`
		UpdatedAt string  `json:"updatedAt"`
		Resource  struct {
			AccessKeyDetails *struct {
				AccessKeyID string `json:"accessKeyId"`
				PrincipalID string `json:"principalId"`
				UserType    string `json:"userType"`
				UserName    string `json:"userName"`
			} `json:"accessKeyDetails"`
			InstanceDetails *struct {
				InstanceID string `json:"instanceId"`
			} `json:"instanceDetails"`
		} `json:"resource"`
	}
	if err := json.Unmarshal(doc, &f); err != nil {
		t.Fatalf("decode finding %s: %v", path, err)
	}
	ts, _ := time.Parse(time.RFC3339, f.UpdatedAt)
	ev := &event.Event{
		ID:         "gd-" + f.ID,
		Source:     "guardduty",
		Rule:       f.Type,
		Message:    f.Title,
		Time:       ts,
		Severity:   json.Number(jsonNum(f.Severity)).String(),
		SeverityID: gdSeverityID(f.Severity),
		Cloud:      &event.Cloud{Provider: "aws", Account: f.AccountID, Region: f.Region},
		Raw:        raw,
	}
	if a := f.Resource.AccessKeyDetails; a != nil {
		ev.Actor = &event.Actor{User: a.UserName, UID: a.PrincipalID, Type: a.UserType, AccessKeyID: a.AccessKeyID}
	}
	if i := f.Resource.InstanceDetails; i != nil {
		ev.Cloud.InstanceID = i.InstanceID
	}
	ev.Normalize(ts)
	if err := ev.Validate(); err != nil {
		t.Fatalf("sample event invalid: %v", err)
	}
	return ev
}

func jsonNum(f float64) string { b, _ := json.Marshal(f); return string(b) }

// GuardDuty: 1.0-3.9 low, 4.0-6.9 medium, 7.0-8.9 high, 9.0+ critical.
func gdSeverityID(s float64) int {
	switch {
	case s >= 9:
		return 5
	case s >= 7:
		return 4
	case s >= 4:
		return 3
	case s > 0:
		return 2
	}
	return 0
}
