package builtin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/quell-ir/quell/internal/action"
)

// logAction writes one structured record. It is one-shot: nothing to undo,
// so Revert only records that the transaction was undone.
type logAction struct {
	message string
	level   string
	log     *slog.Logger
	m       *metrics
}

func logSpec(defaultLevel string) action.Spec {
	return action.Spec{
		Name:        "log",
		Provider:    "builtin",
		Description: "Write a structured log record with the transaction's fields (one-shot).",
		Params: []action.Param{
			{Name: "message", Type: action.TypeString, Required: true, Description: "the message; a template in playbooks"},
			{Name: "level", Type: action.TypeEnum, Enum: logLevels, Default: defaultLevel, Description: "debug, info, warn or error"},
		},
		Reversible: false,
		Example:    "action: log\nparams: {message: 'brute force from {{ .event.src_endpoint.ip }}', level: warn}",
	}
}

// Key covers the message and the level: the same record asked for twice
// (a redelivered event) is written once while its transaction holds the key.
func (a *logAction) Key() string {
	h := sha256.Sum256([]byte(a.level + "\x00" + a.message))
	return "log/" + hex.EncodeToString(h[:12])
}

func (a *logAction) Targets() []action.Target { return nil }

func (a *logAction) Check(context.Context) (action.Before, error) { return action.Before("{}"), nil }

func (a *logAction) Apply(ctx context.Context, eff action.Effect) error {
	a.write(ctx, a.message, eff)
	return nil
}

func (a *logAction) Verify(context.Context, action.Effect) error { return nil }

func (a *logAction) Revert(ctx context.Context, _ action.Before) error {
	a.write(ctx, "revert: "+a.message, action.Effect{})
	return nil
}

func (a *logAction) write(ctx context.Context, msg string, eff action.Effect) {
	attrs := []slog.Attr{slog.String("action", "log"), slog.String("key", a.Key())}
	if eff.TxnID != "" {
		attrs = append(attrs, slog.String("txn_id", eff.TxnID))
	}
	if eff.IncidentID != "" {
		attrs = append(attrs, slog.String("incident_id", eff.IncidentID))
	}
	if !eff.ExpiresAt.IsZero() {
		attrs = append(attrs, slog.String("expires_at", eff.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	a.log.LogAttrs(ctx, parseLevel(a.level), msg, attrs...)
	a.m.logRecords.WithLabelValues(a.level).Inc()
}

func parseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

func newLogConstructor(log *slog.Logger, m *metrics) action.Constructor {
	return func(v action.Values) (action.Action, error) {
		msg := v.String("message")
		if msg == "" {
			return nil, fmt.Errorf("parameter %q: required", "message")
		}
		return &logAction{message: msg, level: v.String("level"), log: log, m: m}, nil
	}
}
