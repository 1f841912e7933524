package app

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/quell-ir/quell/internal/event"
	"github.com/quell-ir/quell/internal/server"
	"github.com/quell-ir/quell/internal/source"
	"github.com/quell-ir/quell/internal/source/auth"
	"github.com/quell-ir/quell/internal/source/tail"
	"github.com/quell-ir/quell/internal/store"
	"github.com/quell-ir/quell/internal/store/sqlite"
)

// sourcesAdapter serves POST /v1/sources/{name} from the parser registry
// and the intake authenticator.
type sourcesAdapter struct {
	reg *source.Registry
	chk *auth.Checker
}

func (s sourcesAdapter) Known(name string) bool { return s.reg.Known(name) }

func (s sourcesAdapter) Authenticate(name string, r *http.Request, body []byte) error {
	return s.chk.Check(r, name, body)
}

func (s sourcesAdapter) Parse(ctx context.Context, name string, body []byte) (server.SourceResult, error) {
	res, err := s.reg.Parse(ctx, name, body)
	if err != nil {
		return server.SourceResult{}, err
	}
	out := server.SourceResult{Events: make([]*event.Event, len(res.Events))}
	for i := range res.Events {
		out.Events[i] = &res.Events[i]
	}
	for _, k := range res.Skipped {
		out.Skipped = append(out.Skipped, server.Skip{Index: k.Index, Reason: k.Reason})
	}
	return out, nil
}

// history feeds the risk scorer's anomaly model from the store.
type history struct{ st *sqlite.Store }

func (h history) Recent(ctx context.Context, since time.Time, limit int) ([]event.Event, error) {
	var out []event.Event
	before := ""
	for len(out) < limit {
		page := min(limit-len(out), 1000)
		recs, err := h.st.ListEvents(ctx, store.EventFilter{Since: since, Limit: page, Before: before})
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			out = append(out, *r.Event)
		}
		if len(recs) < page {
			break
		}
		before = recs[len(recs)-1].Event.ID
	}
	return out, nil
}

// startTails follows the configured NDJSON files. A line is acknowledged
// (its offset saved) only after its events are durable.
func (a *App) startTails(ctx context.Context) error {
	for i, c := range a.cfg.Tail {
		if c.StateDir == "" {
			c.StateDir = filepath.Join(a.cfg.DataDir, "tail")
		}
		p, ok := a.Sources.Get(c.Source)
		if !ok {
			return fmt.Errorf("tail[%d].source: unknown source %q", i, c.Source)
		}
		src := c.Source
		sink := func(ctx context.Context, res source.Result) error {
			evs := make([]*event.Event, len(res.Events))
			for i := range res.Events {
				evs[i] = &res.Events[i]
			}
			if len(res.Skipped) > 0 {
				a.Committer.Count(src, "skipped", len(res.Skipped))
			}
			if len(evs) == 0 {
				return nil
			}
			if err := a.Committer.Prepare(evs); err != nil {
				// A line that is not a valid event can never become one:
				// count it and move on rather than stall the file.
				a.Committer.Count(src, "rejected", len(evs))
				a.log.Warn("tail: rejected events", "path", c.Path, "err", err)
				return nil
			}
			_, err := a.Committer.Append(ctx, evs)
			return err
		}
		t, err := tail.New(c, p, sink, a.Metrics, a.log.With("component", "tail", "path", c.Path))
		if err != nil {
			return fmt.Errorf("tail[%d]: %w", i, err)
		}
		a.tailers = append(a.tailers, t)
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			if err := t.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("tail stopped", "path", c.Path, "err", err)
			}
		}()
	}
	return nil
}
