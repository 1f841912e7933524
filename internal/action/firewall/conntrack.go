package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ti-mo/conntrack"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// flowMatcher says whether a block or an isolation cuts a flow.
type flowMatcher func(f conntrack.Flow) bool

// TCP states that no longer carry traffic: a TIME_WAIT entry is not a flow
// anyone would miss, so it counts neither for nor against the blast radius.
const (
	tcpTimeWait = 7
	tcpClose    = 8
)

func live(f conntrack.Flow) bool {
	if f.TupleOrig.Proto.Protocol == syscall.IPPROTO_TCP && f.ProtoInfo.TCP != nil {
		s := f.ProtoInfo.TCP.State
		return s != tcpTimeWait && s != tcpClose
	}
	return true
}

// blockMatcher matches flows whose peer is in p. ports, when given, limit it
// to flows whose packets toward the blocked side (in: arriving from p; out:
// sent to p) have one of these destination ports.
func blockMatcher(p netip.Prefix, dir Direction, ports []uint16) flowMatcher {
	has := func(port uint16) bool {
		if len(ports) == 0 {
			return true
		}
		for _, q := range ports {
			if q == port {
				return true
			}
		}
		return false
	}
	return func(f conntrack.Flow) bool {
		o := f.TupleOrig
		src, dst := o.IP.SourceAddress.Unmap(), o.IP.DestinationAddress.Unmap()
		sport, dport := o.Proto.SourcePort, o.Proto.DestinationPort
		switch {
		case p.Contains(src):
			// The peer opened the flow: its packets go to dport, ours to sport.
			if dir == In {
				return has(dport)
			}
			return has(sport)
		case p.Contains(dst):
			// We opened it: our packets go to dport, its packets to sport.
			if dir == In {
				return has(sport)
			}
			return has(dport)
		}
		return false
	}
}

// isolateMatcher matches flows with a peer outside allow (and not loopback).
func isolateMatcher(allow []netip.Prefix) flowMatcher {
	ok := func(a netip.Addr) bool {
		if a.IsLoopback() {
			return true
		}
		for _, p := range allow {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return func(f conntrack.Flow) bool {
		o := f.TupleOrig
		return !ok(o.IP.SourceAddress.Unmap()) || !ok(o.IP.DestinationAddress.Unmap())
	}
}

// FlowShare is the blast radius of an action: how many live flows it would
// cut out of how many.
type FlowShare struct {
	Matched int `json:"matched"`
	Total   int `json:"total"`
}

// Share is Matched/Total (0 when there are no flows).
func (s FlowShare) Share() float64 {
	if s.Total == 0 {
		return 0
	}
	return float64(s.Matched) / float64(s.Total)
}

// measure counts live flows and those m matches, from the live table.
func (b *Backend) measure(ctx context.Context, m flowMatcher) (FlowShare, error) {
	_, span := b.tracer.Start(ctx, "firewall.conntrack_measure")
	defer span.End()
	flows, err := b.flows.get()
	if err != nil {
		return FlowShare{}, fmt.Errorf("dump conntrack: %w", err)
	}
	var s FlowShare
	for _, f := range flows {
		if !live(f) {
			continue
		}
		s.Total++
		if m(f) {
			s.Matched++
		}
	}
	span.SetAttributes(attribute.Int("conntrack.total", s.Total), attribute.Int("conntrack.matched", s.Matched))
	return s, nil
}

// cut deletes every conntrack entry m matches (live or not: a TIME_WAIT
// entry of the blocked peer is gone too) and returns how many it deleted.
func (b *Backend) cut(ctx context.Context, m flowMatcher) (int, error) {
	_, span := b.tracer.Start(ctx, "firewall.conntrack_cut")
	defer span.End()
	flows, err := b.dumpFlows()
	if err != nil {
		return 0, fmt.Errorf("dump conntrack: %w", err)
	}
	n := 0
	var errs []error
	for _, f := range flows {
		if !m(f) {
			continue
		}
		if err := b.ct.Delete(f); err != nil {
			// Gone already (expired or deleted by someone else): fine.
			if errors.Is(err, syscall.ENOENT) {
				continue
			}
			errs = append(errs, fmt.Errorf("delete flow %s: %w", f.TupleOrig, err))
			continue
		}
		n++
	}
	b.m.ctDeleted.Add(float64(n))
	span.SetAttributes(attribute.Int("conntrack.deleted", n), attribute.Bool("error", len(errs) > 0))
	return n, errors.Join(errs...)
}

// remaining counts the assured (established) entries m still matches (the
// post-check). A flow the block cut and that was not deleted is assured;
// an attempt made after the block is not: when the host itself tries to
// connect to a peer blocked inbound, conntrack sees the SYN and even the
// SYN-ACK (it runs before quell's chain, which then drops it), but never
// the handshake's end, and counting that entry would fail Verify for a
// block that works.
func (b *Backend) remaining(ctx context.Context, m flowMatcher) (int, error) {
	_, span := b.tracer.Start(ctx, "firewall.conntrack_remaining", trace.WithAttributes())
	defer span.End()
	flows, err := b.dumpFlows()
	if err != nil {
		return 0, fmt.Errorf("dump conntrack: %w", err)
	}
	n := 0
	for _, f := range flows {
		if f.Status.Assured() && m(f) {
			n++
		}
	}
	return n, nil
}

// dumpFlows reads the whole conntrack table. Dumps are serialized: the
// background snapshot and the post-check share one netlink socket.
func (b *Backend) dumpFlows() ([]conntrack.Flow, error) {
	b.ctMu.Lock()
	defer b.ctMu.Unlock()
	return b.ct.Dump(nil)
}

// flowSnapshots keeps a recent conntrack dump for the blast-radius guard,
// refreshed in the background, so that measuring a block's share of
// flows does not wait for a walk of the kernel's table.
type flowSnapshots struct {
	dump   func() ([]conntrack.Flow, error)
	maxAge time.Duration

	mu    sync.Mutex
	flows []conntrack.Flow
	at    time.Time
	done  chan struct{}
	wg    sync.WaitGroup
}

func newFlowSnapshots(dump func() ([]conntrack.Flow, error), maxAge time.Duration) *flowSnapshots {
	s := &flowSnapshots{dump: dump, maxAge: maxAge, done: make(chan struct{})}
	if maxAge > 0 {
		s.wg.Add(1)
		go s.refresh()
	}
	return s
}

func (s *flowSnapshots) refresh() {
	defer s.wg.Done()
	t := time.NewTicker(s.maxAge / 2)
	defer t.Stop()
	for {
		if flows, err := s.dump(); err == nil {
			s.mu.Lock()
			s.flows, s.at = flows, time.Now()
			s.mu.Unlock()
		}
		select {
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

// get returns a snapshot no older than maxAge, dumping afresh when the
// background one is stale (or snapshots are off).
func (s *flowSnapshots) get() ([]conntrack.Flow, error) {
	if s.maxAge > 0 {
		s.mu.Lock()
		flows, at := s.flows, s.at
		s.mu.Unlock()
		if !at.IsZero() && time.Since(at) <= s.maxAge {
			return flows, nil
		}
	}
	flows, err := s.dump()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.flows, s.at = flows, time.Now()
	s.mu.Unlock()
	return flows, nil
}

func (s *flowSnapshots) stop() {
	close(s.done)
	s.wg.Wait()
}
